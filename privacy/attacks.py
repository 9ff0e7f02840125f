"""Attacks of a curious (honest-but-curious) server, as pure functions of what it holds.

Nothing here touches a site's private state: every function takes the server's observation
(:class:`ServerObservation`) or model outputs the attacker can compute itself (probabilities
on public images, losses of a prompt it holds), plus, for scoring an attack, the ground truth
the benchmark supplies (a site's labels, which images it trained on, its domain).

Four attacks:

1. **Prompt stealing**: the ``P_G`` the server holds or can rebuild for site ``i``
   (:func:`candidate_prompts`), scored on site ``i``'s held-out images with ``P_L = 0``.
2. **Class-mix inference**: how the prompt moved the predicted class frequencies on public
   images relative to the public initial prompt (:func:`implied_class_mix`), compared with the
   site's true label mix by Spearman correlation (:func:`class_mix_correlation`).
3. **Membership inference**: a loss threshold (lower loss: member), calibrated on a shadow
   model (:func:`calibrate_loss_threshold`), scored by AUC (:func:`membership_auc`) and by
   advantage at the calibrated threshold (:func:`membership_advantage`).
4. **Domain inference**: the server's grouping of sites (cluster assignments, or k-means on
   uploaded updates, :func:`kmeans_assignment`) against the true domains (:func:`domain_ari`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Candidate names, from the most site-specific to the least (see :func:`candidate_prompts`).
CANDIDATE_ORDER = ("rebuilt", "held")


@dataclass
class SiteObservation:
    """What the server holds about one site at the end of a run (prompts as full ``P_G``).

    Attributes
    ----------
    site_id : str
        The site.
    held : np.ndarray or None
        ``(n_ctx, ctx_dim)``: the ``P_G`` the server holds for the site and sends it last
        (the global prompt for the baselines, the site's cluster prompt for SecFPP and its
        twin).
    rebuilt : np.ndarray or None
        ``(n_ctx, ctx_dim)``: the site's own ``P_G`` after its last local training, when the
        server can rebuild it from what the site sent (the uploaded ``P_G`` of the baselines;
        for the twin, the prompt the server sent plus the plaintext update). ``None`` for
        SecFPP, whose server never sees one site's update.
    update : np.ndarray or None
        The site's last ``P_G`` update as the server saw it (flattened), if it saw one.
    """

    site_id: str
    held: np.ndarray | None = None
    rebuilt: np.ndarray | None = None
    update: np.ndarray | None = None


@dataclass
class ServerObservation:
    """The server's view of a whole run, reduced to what the attacks use.

    Attributes
    ----------
    method : str
        ``promptfl``, ``hierarchical``, ``clustered`` or ``secfpp`` (or a DP variant).
    sites : dict
        Site id to :class:`SiteObservation`.
    assignment : dict or None
        Site id to cluster label after the last round (SecFPP and its twin), else ``None``.
    """

    method: str
    sites: dict[str, SiteObservation] = field(default_factory=dict)
    assignment: dict[str, int] | None = None


def candidate_prompts(site: SiteObservation) -> dict[str, np.ndarray]:
    """Every ``P_G`` the server can attribute to ``site``, most site-specific first.

    Returns
    -------
    dict
        ``{"rebuilt": ..., "held": ...}`` for what is available (see
        :class:`SiteObservation`), in :data:`CANDIDATE_ORDER`.
    """
    out = {}
    for name in CANDIDATE_ORDER:
        value = getattr(site, name)
        if value is not None:
            out[name] = np.asarray(value, dtype=np.float64)
    return out


def attack_prompt(site: SiteObservation) -> np.ndarray:
    """The most site-specific ``P_G`` the server has for ``site`` (what the attacks use).

    A rebuilt own prompt carries the site's data more directly than a prompt averaged over
    sites, so it is preferred; the choice is fixed per method, never made with the site's
    labels.

    Raises
    ------
    ValueError
        If the server holds no prompt for the site.
    """
    candidates = candidate_prompts(site)
    if not candidates:
        raise ValueError(f"the server holds no prompt for {site.site_id}")
    return next(iter(candidates.values()))


# -- 1. prompt stealing ---------------------------------------------------------------------
def stealing_summary(
    stolen_accuracy: Mapping[str, Mapping[str, float]], own_accuracy: Mapping[str, float]
) -> dict:
    """Means over sites of the stolen prompts' accuracy and of the sites' own prompts.

    Parameters
    ----------
    stolen_accuracy : mapping
        Site id to ``{candidate name: accuracy on the site's held-out images, P_L = 0}``.
    own_accuracy : mapping
        Site id to the accuracy of the site's own personalized prompt on the same images.

    Returns
    -------
    dict
        ``prompt_stealing_accuracy`` (per site the best candidate: an upper bound on an
        attacker who must pick one without the site's labels), ``own_prompt_accuracy``,
        ``prompt_stealing_accuracy_by_candidate`` (mean per candidate name, over the sites
        that have it) and ``stealing_ratio`` (stolen over own).
    """
    sites = sorted(own_accuracy)
    best = [max(stolen_accuracy[s].values()) for s in sites if stolen_accuracy.get(s)]
    own = [own_accuracy[s] for s in sites]
    names = sorted({n for s in sites for n in stolen_accuracy.get(s, {})})
    by_name = {
        n: float(np.mean([stolen_accuracy[s][n] for s in sites if n in stolen_accuracy.get(s, {})]))
        for n in names
    }
    stolen_mean = float(np.mean(best)) if best else None
    own_mean = float(np.mean(own)) if own else None
    return {
        "prompt_stealing_accuracy": stolen_mean,
        "own_prompt_accuracy": own_mean,
        "prompt_stealing_accuracy_by_candidate": by_name,
        "stealing_ratio": (stolen_mean / own_mean)
        if stolen_mean is not None and own_mean
        else None,
    }


# -- 2. class-mix inference -----------------------------------------------------------------
def implied_class_mix(
    probs_attack: np.ndarray, probs_reference: np.ndarray, eps: float = 1e-8
) -> np.ndarray:
    """The class prior a prompt implies: how it moved the mean predicted class frequencies.

    A prompt trained on a skewed label mix raises the predicted probability of the site's
    frequent classes on any images; comparing with the public initial prompt on the same
    public images cancels the backbone's own bias.

    Parameters
    ----------
    probs_attack : np.ndarray
        ``(N, C)`` softmax outputs of the attacked prompt on public images.
    probs_reference : np.ndarray
        ``(N, C)`` softmax outputs of the public initial prompt on the same images.
    eps : float
        Floor against ``log 0``.

    Returns
    -------
    np.ndarray
        ``(C,)`` log ratio of mean probabilities (higher: the site holds more of the class).
    """
    attack = np.asarray(probs_attack, dtype=np.float64).mean(axis=0)
    reference = np.asarray(probs_reference, dtype=np.float64).mean(axis=0)
    if attack.shape != reference.shape:
        raise ValueError(f"shapes differ: {attack.shape} vs {reference.shape}")
    return np.log(attack + eps) - np.log(reference + eps)


def label_distribution(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Normalised label counts, shape ``(num_classes,)``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(float)
    return counts / max(1.0, counts.sum())


def class_mix_correlation(estimated: np.ndarray, true_mix: np.ndarray) -> float:
    """Spearman correlation of an inferred class mix with the true one (``nan`` if constant)."""
    from scipy.stats import spearmanr

    estimated, true_mix = np.asarray(estimated, float), np.asarray(true_mix, float)
    if np.ptp(estimated) == 0 or np.ptp(true_mix) == 0:
        return float("nan")
    return float(spearmanr(estimated, true_mix).statistic)


# -- 3. membership inference ----------------------------------------------------------------
def membership_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC of the score ``-loss`` separating training images (members) from held-out ones.

    0.5 is chance; 1.0 means every member has a lower loss than every non-member.
    """
    from sklearn.metrics import roc_auc_score

    member, nonmember = np.ravel(member_losses), np.ravel(nonmember_losses)
    if member.size == 0 or nonmember.size == 0:
        return float("nan")
    truth = np.r_[np.ones(member.size), np.zeros(nonmember.size)]
    return float(roc_auc_score(truth, -np.r_[member, nonmember]))


def calibrate_loss_threshold(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """The loss threshold (member if ``loss <= threshold``) of best balanced accuracy.

    Fitted on a shadow model whose members the attacker chose itself, then applied unchanged
    to the target (:func:`membership_advantage`).
    """
    member, nonmember = np.ravel(member_losses), np.ravel(nonmember_losses)
    if member.size == 0 or nonmember.size == 0:
        raise ValueError("need shadow members and non-members to calibrate")
    candidates = np.unique(np.r_[member, nonmember])
    tpr = (member[None, :] <= candidates[:, None]).mean(axis=1)
    fpr = (nonmember[None, :] <= candidates[:, None]).mean(axis=1)
    return float(candidates[int(np.argmax(tpr - fpr))])


def membership_advantage(
    member_losses: np.ndarray, nonmember_losses: np.ndarray, threshold: float
) -> float:
    """True-positive minus false-positive rate of ``loss <= threshold`` (0: no better than chance)."""
    member, nonmember = np.ravel(member_losses), np.ravel(nonmember_losses)
    if member.size == 0 or nonmember.size == 0:
        return float("nan")
    return float((member <= threshold).mean() - (nonmember <= threshold).mean())


# -- 4. domain inference --------------------------------------------------------------------
def kmeans_assignment(vectors: Mapping[str, np.ndarray], k: int, seed: int = 0) -> dict[str, int]:
    """k-means over per-site vectors (e.g. uploaded ``P_G`` updates); site id to label."""
    from sklearn.cluster import KMeans

    sites = sorted(vectors)
    if not sites:
        return {}
    k = max(1, min(k, len(sites)))
    data = np.stack([np.ravel(np.asarray(vectors[s], dtype=np.float64)) for s in sites])
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(data)
    return {s: int(lab) for s, lab in zip(sites, labels, strict=True)}


def domain_ari(assignment: Mapping[str, int], domains: Mapping[str, int]) -> float:
    """Adjusted Rand index of a grouping of sites against their true domains (common sites)."""
    from sklearn.metrics import adjusted_rand_score

    sites = sorted(set(assignment) & set(domains))
    if not sites:
        return float("nan")
    return float(adjusted_rand_score([domains[s] for s in sites], [assignment[s] for s in sites]))


def mean_finite(values: Sequence[float]) -> float | None:
    """Mean of the finite values (``None`` when there are none), for per-site summaries."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None
