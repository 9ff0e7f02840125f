"""From a recorded federation to the server's observation of each site.

The input is exactly what the server handled: the wire (every serialised message; the
``up`` direction is what sites sent, the ``down`` direction is what the server itself computed
and sent, i.e. its own state) and, for SecFPP and its twin, the
:class:`~strategies.secfpp_workflow.ServerView` list. Nothing is read from a site.

Prompts are turned into full ``P_G`` arrays with the public initial prompt (the server of
SecFPP keeps offsets from it; the initial prompt depends only on the public backbone and
``ctx-init``, so a curious server can compute it too).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .attacks import ServerObservation, SiteObservation

#: The key of the baselines' ``P_G`` in their ``arrays`` record (client_app.prompt_handlers).
GLOBAL_KEY = "global-ctx"
CLUSTER_MODES = ("secfpp", "clustered")


def _round(group_id: str) -> int:
    try:
        return int(group_id)
    except (TypeError, ValueError):
        return -1


def _site_of(content) -> str | None:
    """The site id an up-direction message names (``site`` or ``keysetup`` record)."""
    for record in ("site", "keysetup"):
        if record in content.config_records and "site-id" in content[record]:
            return str(content[record]["site-id"])
    return None


def _array(content, record: str, key: str) -> np.ndarray | None:
    if record in content.array_records and key in content[record]:
        return np.asarray(content[record][key].numpy(), dtype=np.float64)
    return None


def up_fields(wire: Iterable[Any]) -> dict[str, list[str]]:
    """Per message type, every ``record/key`` sites sent (share peers folded to ``*``)."""
    from secpc.messages import clear_fields

    out: dict[str, set[str]] = defaultdict(set)
    for w in wire:
        if w.direction != "up":
            continue
        fields = clear_fields(w.message().content)
        out[w.message_type] |= {f"{r}/{k}" for r, k in fields}
    return {t: sorted(v) for t, v in sorted(out.items())}


def observe(
    method: str, wire: Sequence[Any], global_init: np.ndarray, views: Sequence[Any] = ()
) -> ServerObservation:
    """The server's end-of-run observation of every site.

    Parameters
    ----------
    method : str
        The strategy (``promptfl``, ``hierarchical``, ``clustered``, ``secfpp``).
    wire : sequence of WireRecord
        ``FederationRun.grid.wire``.
    global_init : np.ndarray
        ``(n_ctx, ctx_dim)`` public initial ``P_G``.
    views : sequence of ServerView
        ``FederationRun.views`` (SecFPP and its twin); the last assignment is used.

    Returns
    -------
    ServerObservation
        Per site: ``held`` (the last ``P_G`` the server sent it), ``rebuilt`` (its own trained
        ``P_G``, where what it sent allows) and ``update``.
    """
    from secpc import messages as msg

    init = np.asarray(global_init, dtype=np.float64)
    shape = init.shape
    node_site: dict[int, str] = {}
    for w in wire:
        if w.direction == "up":
            site = _site_of(w.message().content)
            if site is not None:
                node_site.setdefault(w.node_id, site)

    # Per site and round: the P_G the server sent for training, and what the site sent back.
    sent: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    returned: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    last_eval: dict[str, tuple[int, np.ndarray]] = {}
    clustered = method in CLUSTER_MODES
    n_stats = len(msg.UPDATE_STATS)
    for w in wire:
        site = node_site.get(w.node_id)
        if site is None or w.message_type not in ("train", "evaluate"):
            continue
        content = w.message().content
        rnd = _round(w.group_id)
        if w.direction == "down":
            if clustered:
                offset = _array(content, msg.ARRAYS, msg.OFFSET)
                # No offset (round 1): the site starts from the public initial prompt.
                prompt = init if offset is None else init + offset.reshape(shape)
            else:
                received = _array(content, "arrays", GLOBAL_KEY)
                prompt = init if received is None else received.reshape(shape)
            if w.message_type == "train":
                sent[site][rnd] = prompt
            if rnd >= last_eval.get(site, (-1, None))[0]:
                last_eval[site] = (rnd, prompt)
        elif w.message_type == "train":
            if clustered:
                plain = _array(content, msg.PLAIN, msg.UPDATE)
                if plain is not None:
                    # The twin's update carries the site's statistics at its end.
                    returned[site][rnd] = plain[:-n_stats].reshape(shape)
            else:
                uploaded = _array(content, "arrays", GLOBAL_KEY)
                if uploaded is not None:
                    returned[site][rnd] = uploaded.reshape(shape)

    obs = ServerObservation(method=method)
    for site in sorted(set(node_site.values())):
        so = SiteObservation(site_id=site)
        if site in last_eval:
            so.held = last_eval[site][1]
        rounds = sorted(set(returned[site]) & set(sent[site]))
        if rounds:
            r = rounds[-1]
            if clustered:
                so.update = returned[site][r].ravel()
                so.rebuilt = sent[site][r] + returned[site][r]
            else:
                so.rebuilt = returned[site][r]
                so.update = (returned[site][r] - sent[site][r]).ravel()
        obs.sites[site] = so
    assignments = [v.assignment for v in views if getattr(v, "assignment", None)]
    if assignments:
        obs.assignment = {str(s): int(c) for s, c in assignments[-1].items()}
    return obs
