"""SecPC server-side clustering: adaptive k-means from decoded site-to-centre distances only.

The server never sees a reduced prompt ``z_i``. Each round, for every participating site ``i`` and
every *centre* ``c`` (the mean of a group ``C_c`` of sites), it decodes the scaled squared distance
``|| |C_c| z_i - sum_{m in C_c} z_m ||^2`` and divides by ``|C_c|^2`` (:func:`true_sq_distances`)
to get the true ``d[i, c] = ||z_i - mu_c||^2``. Everything below uses those numbers and nothing else.

Rules
-----
Size floor
    Every cluster returned by :func:`initial_labels` and :func:`lloyd_step`, and every landmark
    group of :func:`landmark_groups`, has at least ``min_cluster_size`` members (counted over all
    labelled sites, active or not), so no decoded cluster sum is one site's value. The floor is on
    the *assignment*: in a round where a cluster has fewer than ``min_cluster_size`` *participating*
    members, the strategy must not decode that cluster's sum (this module cannot see that).
Round 1 (landmarks)
    :func:`landmark_groups` draws a seeded balanced partition of the sites into ``L`` groups; the
    server learns each site's distances to the ``L`` group means (its *distance profile*).
    :func:`initial_labels` maps the profiles to Euclidean coordinates (:func:`profile_embedding`:
    landmark MDS when the landmark groups are passed, row-centred profiles otherwise) and
    clusters them with seeded k-means (``n_init=10``) for ``k = 1..max_clusters``, keeps
    the partitions whose clusters all meet the size floor, and picks the ``k`` with the best
    silhouette; ``k = 1`` when no ``k >= 2`` is feasible or the best silhouette is below
    ``silhouette_threshold``.
Later rounds (:func:`lloyd_step`), column ``c`` of ``sq_dist`` is the distance to the mean of
the *active* sites whose current label is ``c`` (the "old groups"):

1. Reassign: every active site moves to its nearest centre; ties keep the current label. Inactive
   sites keep their label.
2. Dissolve: while some cluster is below the floor, the smallest (lowest label on ties) is
   dissolved; its active members go to their nearest remaining centre, its inactive members to the
   remaining cluster whose old centre is nearest to the dissolved cluster's old centre.
3. Merge: the pair of clusters ``(a, b)`` with the closest centres is merged while
   ``||mu_a - mu_b||^2 < merge_ratio * (disp_a + disp_b)``. ``mu`` and ``disp`` are the *old*
   groups' centres and dispersions (``disp_a`` = mean of ``d[i, a]`` over the old active members
   of ``a``), and ``||mu_a - mu_b||^2`` comes from the parallel-axis identity
   (:func:`centre_sq_distances`). After a merge, the merged centre's distances are computed exactly
   as the size-weighted mean of the two columns minus the between-centre term, so later merges in
   the same step stay exact.
4. Split: while there are fewer than ``max_clusters`` clusters, the cluster with the largest
   dispersion is split if ``disp > split_ratio * median(disp over clusters)`` and it has at least
   ``2 * min_cluster_size`` members. Its active members are split by seeded 2-means on their
   distance profiles (their rows over all centres measured this round; with a single centre this is
   a near/far split on the one distance); inactive members stay with the part that keeps the
   label. The split is dropped if either part is below the floor.
5. Labels are renumbered ``0..k'-1`` by first appearance.

Limits
------
- Merge and split act on the clusters as *measured* (old groups): they lag one round behind the
  reassignment of step 1.
- The split reference is the median dispersion, so with one or two clusters the split rule can
  never fire (``disp_a > 2 * median`` is impossible when ``median`` is the mean of two
  non-negative values, or the value itself); re-run the landmark round to re-detect ``k`` there.
- A distance profile only sees ``z`` through ``L`` landmark means; two clusters whose difference is
  orthogonal to every landmark offset, and that lie at equal distance from the landmarks, get the
  same profile. Random balanced landmarks make this unlikely, not impossible: with 12 sites in
  4 clusters of 3 (only 4 landmark groups fit the floor), about one seed in a few hundred draws
  two landmark groups with the same cluster mix, init merges two clusters, and the split's
  2-means on distances to 3 centres may not pull them apart (a strict xfail test pins it).
- Sites with no active member in their old group have no distance column; they take no part in
  merge or split decisions until measured again.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

__all__ = [
    "ClusteringConfig",
    "centre_sq_distances",
    "groups_from_labels",
    "initial_labels",
    "landmark_groups",
    "lloyd_step",
    "profile_embedding",
    "true_sq_distances",
]


@dataclass(frozen=True)
class ClusteringConfig:
    """Hyperparameters of SecPC's adaptive k-means.

    Parameters
    ----------
    max_clusters
        Largest number of clusters, ``>= 1``.
    min_cluster_size
        Smallest allowed cluster (and landmark group), ``>= 1``.
    split_ratio
        A cluster whose dispersion exceeds ``split_ratio`` times the median cluster dispersion is
        split (if large enough); ``> 0``.
    merge_ratio
        Two clusters are merged when their squared centre distance is below ``merge_ratio`` times
        the sum of their dispersions; ``>= 0``.
    silhouette_threshold
        Below this best silhouette the initial clustering keeps a single cluster; in ``[-1, 1]``.
        The default 0.5 (Kaufman and Rousseeuw's "reasonable structure") is deliberate: k-means
        on one Gaussian blob of 9-20 sites reaches silhouettes up to ~0.45 in the landmark
        embedding, while well-separated clusters score above 0.8.
    seed
        Seed of the landmark partition and of every k-means run, ``>= 0``.
    """

    max_clusters: int = 4
    min_cluster_size: int = 3
    split_ratio: float = 2.0
    merge_ratio: float = 0.5
    silhouette_threshold: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_clusters", "min_cluster_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in ("split_ratio", "merge_ratio", "silhouette_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if self.max_clusters < 1:
            raise ValueError(f"max_clusters must be at least 1, got {self.max_clusters}")
        if self.min_cluster_size < 1:
            raise ValueError(f"min_cluster_size must be at least 1, got {self.min_cluster_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if self.split_ratio <= 0:
            raise ValueError(f"split_ratio must be > 0, got {self.split_ratio}")
        if self.merge_ratio < 0:
            raise ValueError(f"merge_ratio must be >= 0, got {self.merge_ratio}")
        if not -1.0 <= self.silhouette_threshold <= 1.0:
            raise ValueError(
                f"silhouette_threshold must lie in [-1, 1], got {self.silhouette_threshold}"
            )


def _check_n_sites(n_sites: int, config: ClusteringConfig) -> None:
    if n_sites < config.min_cluster_size:
        raise ValueError(
            f"n_sites ({n_sites}) is smaller than min_cluster_size ({config.min_cluster_size}): "
            "no cluster can meet the size floor"
        )


def true_sq_distances(scaled: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Turn decoded scaled distances into true squared distances.

    Parameters
    ----------
    scaled
        ``(n, k)`` decoded ``|| |C_c| z_i - sum_{m in C_c} z_m ||^2``; NaN rows (sites that did not
        answer) pass through.
    sizes
        ``(k,)`` group sizes ``|C_c|``, each ``>= 1``.

    Returns
    -------
    numpy.ndarray
        ``(n, k)`` float array ``d[i, c] = ||z_i - mean_{m in C_c} z_m||^2 = scaled / |C_c|^2``.
    """
    scaled = np.asarray(scaled, dtype=float)
    sizes = np.asarray(sizes)
    if scaled.ndim != 2 or sizes.shape != (scaled.shape[1],):
        raise ValueError(
            f"sizes must have shape ({scaled.shape[-1]},) matching scaled {scaled.shape}, "
            f"got {sizes.shape}"
        )
    if np.any(sizes < 1):
        raise ValueError(f"sizes must all be >= 1, got {sizes.tolist()}")
    return scaled / sizes.astype(float) ** 2


def groups_from_labels(labels: np.ndarray, active: np.ndarray | None = None) -> list[list[int]]:
    """Member indices of each label ``0..max(labels)``, restricted to active sites.

    Parameters
    ----------
    labels
        ``(n,)`` non-negative integer labels.
    active
        Optional ``(n,)`` boolean mask; inactive sites are left out.

    Returns
    -------
    list of list of int
        ``groups[c]`` lists the (active) sites labelled ``c``, ascending; it may be empty.
    """
    labels = _as_labels(labels)
    mask = _as_active(active, labels.shape[0])
    n_labels = int(labels.max()) + 1 if labels.size else 0
    groups: list[list[int]] = [[] for _ in range(n_labels)]
    for i in np.flatnonzero(mask):
        groups[labels[i]].append(int(i))
    return groups


def centre_sq_distances(
    labels: np.ndarray, sq_dist: np.ndarray, active: np.ndarray | None = None
) -> np.ndarray:
    """Squared distances between centres, from site-to-centre distances alone.

    Column ``c`` of ``sq_dist`` must be the distance to the mean of the active sites labelled
    ``c``. The parallel-axis identity
    ``sum_{i in a} d[i, b] = sum_{i in a} d[i, a] + |a| ||mu_a - mu_b||^2`` gives
    ``||mu_a - mu_b||^2 = mean_{i in a} d[i, b] - mean_{i in a} d[i, a]``; both directions are
    exact, so their average is returned (it halves rounding error, keeps the result symmetric).

    Parameters
    ----------
    labels
        ``(n,)`` labels the columns were measured against, in ``0..k-1``.
    sq_dist
        ``(n, k)`` true squared distances; rows of inactive sites are ignored.
    active
        Optional ``(n,)`` boolean mask of sites whose rows (and membership) count.

    Returns
    -------
    numpy.ndarray
        ``(k, k)`` symmetric, zero diagonal, clipped at 0; NaN rows/columns for labels with no
        active member.
    """
    labels, sq_dist, mask = _check_inputs(labels, sq_dist, active)
    k = sq_dist.shape[1]
    means = np.full((k, k), np.nan)
    for c, members in enumerate(groups_from_labels(labels, mask)[:k]):
        if members:
            means[c] = sq_dist[members].mean(axis=0)
    one_way = means - np.diag(means)[:, None]
    dist = 0.5 * (one_way + one_way.T)
    np.fill_diagonal(dist, np.where(np.isnan(np.diag(means)), np.nan, 0.0))
    return np.maximum(dist, 0.0, where=~np.isnan(dist), out=dist)


def landmark_groups(n_sites: int, config: ClusteringConfig) -> list[list[int]]:
    """Seeded balanced random partition of the sites into landmark groups (round-1 centres).

    ``L = max(1, min(2 * max_clusters, n_sites // min_cluster_size))``. Each landmark adds one
    coordinate to every site's distance profile (and ``n_sites`` decoded distances the server
    learns), so more landmarks separate clusters better; ``2 * max_clusters`` gives each of up to
    ``max_clusters`` clusters about two independent random "viewpoints" while keeping round 1's
    degree-2 work linear in ``max_clusters``. ``n_sites // min_cluster_size`` is the most groups
    that can all meet the size floor.

    Parameters
    ----------
    n_sites
        Number of sites, at least ``min_cluster_size``.
    config
        Clustering configuration (``max_clusters``, ``min_cluster_size``, ``seed``).

    Returns
    -------
    list of list of int
        ``L`` disjoint groups covering ``range(n_sites)``, sizes differing by at most one, each
        sorted ascending and of size ``>= min_cluster_size``.
    """
    _check_n_sites(n_sites, config)
    n_groups = max(1, min(2 * config.max_clusters, n_sites // config.min_cluster_size))
    order = np.random.default_rng(config.seed).permutation(n_sites)
    return [sorted(int(i) for i in part) for part in np.array_split(order, n_groups)]


def profile_embedding(sq_dist: np.ndarray, groups: list[list[int]] | None = None) -> np.ndarray:
    """Euclidean coordinates of the sites recovered from their landmark distance profiles.

    With the landmark ``groups`` (landmark MDS): the landmark means' squared distances ``Delta``
    follow from the parallel-axis identity, classical MDS on ``Delta`` places the landmarks, and
    each site is triangulated from its profile. The result is the exact orthogonal projection of
    ``z_i`` onto the landmarks' affine hull (up to a rigid motion), plus one coordinate, the norm
    of the residual orthogonal to it. Both parts are 1-Lipschitz in ``z``, so the embedding never
    stretches a cluster; it only loses directions the landmarks do not span.

    Without ``groups``: each profile minus its own mean over landmarks. That removes the
    ``||z_i||^2`` term of ``||z_i - m_l||^2 = ||z_i||^2 - 2 z_i . m_l + ||m_l||^2``, leaving an
    affine (but not isometric) image of ``z_i``.

    Parameters
    ----------
    sq_dist
        ``(n, L)`` true squared distances of every site to every landmark mean.
    groups
        The ``L`` landmark groups the columns were measured against, or ``None``.

    Returns
    -------
    numpy.ndarray
        ``(n, q)`` coordinates.
    """
    profiles = np.asarray(sq_dist, dtype=float)
    if groups is None:
        return profiles - profiles.mean(axis=1, keepdims=True)
    if len(groups) != profiles.shape[1]:
        raise ValueError(f"groups must list {profiles.shape[1]} landmark groups, got {len(groups)}")
    labels = np.full(profiles.shape[0], -1)
    for c, members in enumerate(groups):
        labels[members] = c
    if np.any(labels < 0):
        raise ValueError("groups must cover every site (landmark groups partition the sites)")
    delta = centre_sq_distances(labels, profiles)
    n_land = delta.shape[0]
    centring = np.eye(n_land) - 1.0 / n_land
    gram = -0.5 * centring @ delta @ centring
    vals, vecs = np.linalg.eigh(gram)
    keep = vals > 1e-10 * max(float(vals.max()), 1e-300)
    if not keep.any():
        # All landmark means coincide: only the distance to that one point is known.
        return np.sqrt(np.maximum(profiles[:, :1], 0.0))
    vals, vecs = vals[keep], vecs[:, keep]
    landmarks = vecs * np.sqrt(vals)
    coords = -0.5 * (profiles - delta.mean(axis=0)) @ (vecs / np.sqrt(vals))
    residual = profiles - ((coords[:, None, :] - landmarks[None]) ** 2).sum(axis=2)
    return np.hstack([coords, np.sqrt(np.maximum(residual.mean(axis=1, keepdims=True), 0.0))])


def initial_labels(
    sq_dist: np.ndarray, config: ClusteringConfig, groups: list[list[int]] | None = None
) -> np.ndarray:
    """First clustering, from each site's distances to the landmark centres.

    Row ``i`` of ``sq_dist`` is site ``i``'s distance profile ``p_i[l] = ||z_i - m_l||^2``. Close
    sites have close profiles: ``|p_i[l] - p_j[l]| = |(z_i - z_j) . (z_i + z_j - 2 m_l)|
    <= ||z_i - z_j|| (||z_i - m_l|| + ||z_j - m_l||)`` (Cauchy-Schwarz and the triangle
    inequality), so a tight cluster maps to a tight cloud of profiles. The converse can fail (see
    the module's *Limits*); the Lloyd steps then work on true distances to cluster centres.

    Parameters
    ----------
    sq_dist
        ``(n, L)`` finite true squared distances of every site to every landmark centre.
    config
        Clustering configuration.
    groups
        The landmark groups the columns were measured against (from :func:`landmark_groups`).
        Pass them: they enable the landmark-MDS embedding, which recovered every well-separated
        layout we tried, where raw or row-centred profiles mis-pick ``k`` in roughly one case
        in ten.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int labels ``0..k-1`` (by first appearance); every cluster has at least
        ``min_cluster_size`` members.
    """
    profiles = np.asarray(sq_dist, dtype=float)
    if profiles.ndim != 2 or profiles.shape[1] < 1:
        raise ValueError(f"sq_dist must be a 2-D (n, L) array, got shape {profiles.shape}")
    if not np.all(np.isfinite(profiles)):
        raise ValueError("sq_dist must be finite for the landmark round (every site answers)")
    n = profiles.shape[0]
    _check_n_sites(n, config)
    profiles = profile_embedding(profiles, groups)
    best = np.zeros(n, dtype=int)
    best_score = -np.inf
    max_k = min(config.max_clusters, n // config.min_cluster_size, n - 1)
    for k in range(2, max_k + 1):
        labels = _kmeans(profiles, k, config.seed)
        sizes = np.bincount(labels)
        if np.unique(labels).size < 2 or sizes[sizes > 0].min() < config.min_cluster_size:
            continue
        score = float(silhouette_score(profiles, labels))
        if score > best_score:
            best, best_score = labels, score
    if best_score < config.silhouette_threshold:
        best = np.zeros(n, dtype=int)
    return _relabel(best)


def lloyd_step(
    labels: np.ndarray,
    sq_dist: np.ndarray,
    active: np.ndarray | None,
    config: ClusteringConfig,
) -> np.ndarray:
    """One adaptive Lloyd step: reassign, dissolve small clusters, merge, split.

    The rules (and exactly which quantities each uses) are in the module docstring.

    Parameters
    ----------
    labels
        ``(n,)`` current labels in ``0..k-1``.
    sq_dist
        ``(n, k)`` true squared distances; column ``c`` is measured against the mean of the
        active sites labelled ``c``. Rows of inactive sites are ignored (may be NaN); columns of
        labels with no active member are ignored.
    active
        ``(n,)`` boolean mask of sites that answered this round; ``None`` means all.
    config
        Clustering configuration.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int labels ``0..k'-1`` by first appearance, every cluster of size
        ``>= min_cluster_size``. Inactive sites keep their label unless their cluster is
        dissolved, merged or split.
    """
    old, dist, mask = _check_inputs(labels, sq_dist, active)
    n, k = dist.shape
    _check_n_sites(n, config)
    old_sizes = np.bincount(old[mask], minlength=k)
    measured = old_sizes > 0
    # Unmeasured columns must never win a reassignment; NaN would poison argmin.
    work = np.where(measured[None, :] & mask[:, None], dist, np.inf)

    new = old.copy()
    rows = np.flatnonzero(mask)
    if rows.size:
        nearest = np.argmin(work[rows], axis=1)
        current = work[rows, old[rows]]
        keep = current <= work[rows, nearest]
        new[rows] = np.where(keep, old[rows], nearest)

    centre = centre_sq_distances(old, dist, mask)
    new = _dissolve_small(new, old, work, mask, centre, config.min_cluster_size)
    new, columns, measured_by = _merge_close(new, old, dist, mask, centre, old_sizes, config)
    new = _split_dispersed(new, columns, measured_by, work, mask, config)
    return _relabel(new)


# --------------------------------------------------------------------------- helpers


def _as_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ValueError("labels must be non-negative")
    return arr.astype(int)


def _as_active(active: np.ndarray | None, n: int) -> np.ndarray:
    if active is None:
        return np.ones(n, dtype=bool)
    mask = np.asarray(active)
    if mask.shape != (n,) or mask.dtype != bool:
        raise ValueError(f"active must be a boolean array of shape ({n},), got {mask.shape}")
    return mask


def _check_inputs(
    labels: np.ndarray, sq_dist: np.ndarray, active: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = _as_labels(labels)
    dist = np.asarray(sq_dist, dtype=float)
    if dist.ndim != 2 or dist.shape[0] != labels.shape[0]:
        raise ValueError(
            f"sq_dist must have shape (n, k) with n = {labels.shape[0]}, got {dist.shape}"
        )
    if labels.size and labels.max() >= dist.shape[1]:
        raise ValueError(
            f"labels must lie in 0..{dist.shape[1] - 1} (one sq_dist column per label), "
            f"got {int(labels.max())}"
        )
    mask = _as_active(active, labels.shape[0])
    if not np.all(
        np.isfinite(dist[mask][:, np.bincount(labels[mask], minlength=dist.shape[1]) > 0])
    ):
        raise ValueError("sq_dist must be finite on active rows and measured columns")
    return labels, dist, mask


def _relabel(labels: np.ndarray) -> np.ndarray:
    _, first = np.unique(labels, return_index=True)
    order = np.asarray(labels)[np.sort(first)]
    mapping = {int(old): new for new, old in enumerate(order)}
    return np.array([mapping[int(v)] for v in labels], dtype=int)


def _kmeans(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    with warnings.catch_warnings():
        # Duplicate profiles (identical sites) make k-means report fewer distinct clusters;
        # the caller checks sizes, so the warning is noise.
        warnings.simplefilter("ignore", ConvergenceWarning)
        # Problems here have tens of points: OpenMP start-up costs ~50x the work itself.
        with threadpool_limits(limits=1):
            model = KMeans(n_clusters=k, n_init=10, random_state=seed)
            return model.fit_predict(points).astype(int)


def _dissolve_small(
    new: np.ndarray,
    old: np.ndarray,
    work: np.ndarray,
    mask: np.ndarray,
    centre: np.ndarray,
    floor: int,
) -> np.ndarray:
    new = new.copy()
    while True:
        sizes = np.bincount(new, minlength=work.shape[1])
        present = np.flatnonzero(sizes > 0)
        small = [c for c in present if sizes[c] < floor]
        if not small or present.size == 1:
            return new
        victim = min(small, key=lambda c: (sizes[c], c))
        remaining = np.array([c for c in present if c != victim])
        for i in np.flatnonzero(new == victim):
            row = work[i, remaining] if mask[i] else np.full(remaining.size, np.inf)
            if np.isfinite(row).any():
                new[i] = remaining[int(np.argmin(row))]
            else:
                new[i] = _fallback(old[i], remaining, centre, sizes)


def _fallback(old_label: int, remaining: np.ndarray, centre: np.ndarray, sizes: np.ndarray) -> int:
    # A site without a usable distance row follows its old centre's nearest neighbour; with no
    # measured neighbour either, the largest cluster is the least risky home.
    via_centre = centre[old_label, remaining] if old_label < centre.shape[0] else None
    if via_centre is not None and np.isfinite(via_centre).any():
        return int(remaining[int(np.nanargmin(via_centre))])
    return int(remaining[int(np.argmax(sizes[remaining]))])


def _merge_close(
    new: np.ndarray,
    old: np.ndarray,
    dist: np.ndarray,
    mask: np.ndarray,
    centre: np.ndarray,
    old_sizes: np.ndarray,
    config: ClusteringConfig,
) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Merge close clusters; return labels, each cluster's exact centre column and old members."""
    new = new.copy()
    # Each surviving measured cluster keeps the distance column of its old group's mean, the
    # old group's active members (for dispersion) and their count.
    columns = {int(c): dist[:, c].copy() for c in np.unique(new) if old_sizes[c] > 0}
    members = {c: mask & (old == c) for c in columns}
    col_sizes = {c: int(old_sizes[c]) for c in columns}
    while len(columns) > 1:
        labels = sorted(columns)
        disp = {c: float(columns[c][members[c]].mean()) for c in labels}
        best: tuple[float, int, int] | None = None
        for x, a in enumerate(labels):
            for b in labels[x + 1 :]:
                gap = _pair_sq_distance(columns[a], columns[b], members[a], members[b])
                if gap < config.merge_ratio * (disp[a] + disp[b]) and (
                    best is None or gap < best[0]
                ):
                    best = (gap, a, b)
        if best is None:
            break
        gap, a, b = best
        na, nb = col_sizes[a], col_sizes[b]
        total = na + nb
        # Parallel-axis identity for the union's mean: the size-weighted mean of the squared
        # distances to the two centres exceeds the distance to the joint mean by the spread of
        # the two centres around it, na*nb/total^2 * ||mu_a - mu_b||^2.
        columns[a] = (na * columns[a] + nb * columns[b]) / total - na * nb / total**2 * gap
        members[a] = members[a] | members[b]
        col_sizes[a] = total
        del columns[b], members[b], col_sizes[b]
        new[new == b] = a
    return new, columns, members


def _pair_sq_distance(
    col_a: np.ndarray, col_b: np.ndarray, in_a: np.ndarray, in_b: np.ndarray
) -> float:
    one = col_b[in_a].mean() - col_a[in_a].mean()
    two = col_a[in_b].mean() - col_b[in_b].mean()
    return max(0.0, 0.5 * float(one + two))


def _split_dispersed(
    new: np.ndarray,
    columns: dict[int, np.ndarray],
    measured_by: dict[int, np.ndarray],
    work: np.ndarray,
    mask: np.ndarray,
    config: ClusteringConfig,
) -> np.ndarray:
    new = new.copy()
    floor = config.min_cluster_size
    # Dispersion of each measured (old, possibly merged) group around its own centre.
    disp = {c: float(col[measured_by[c]].mean()) for c, col in columns.items()}
    if not disp:
        return new
    median = float(np.median(list(disp.values())))
    next_label = int(new.max()) + 1
    for c in sorted(disp, key=lambda c: (-disp[c], c)):
        if np.unique(new).size >= config.max_clusters:
            break
        if not disp[c] > config.split_ratio * median:
            continue
        in_c = new == c
        if in_c.sum() < 2 * floor:
            continue
        rows = np.flatnonzero(in_c & mask)
        if rows.size < 2:
            continue
        profile = work[rows][:, np.isfinite(work[rows]).all(axis=0)]
        parts = _kmeans(profile, 2, config.seed)
        moved = rows[parts == 1]
        if moved.size < floor or in_c.sum() - moved.size < floor:
            continue
        new[moved] = next_label
        next_label += 1
    return new
