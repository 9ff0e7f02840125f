"""One dishonest participant against SecFPP: a site that lies or a server that over-asks.

Every test runs a real federation on the in-process grid (Flower's own serialisation both
ways) and asserts what the server could learn, or that the run survives and names the culprit.
Run them all with ``python -m pytest -m adversarial``.
"""

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from secpc import messages as wire
from strategies.secfpp_workflow import SecFPPWorkflow

SITES = 6  # as tests/secpc/conftest.py runs them

pytestmark = pytest.mark.adversarial
FLOOR = 3


def _site_of(reply):
    return reply.content.config_records.get("site", ConfigRecord()).get("site-id")


@pytest.fixture(scope="module")
def honest(federation):
    return federation("secfpp", "adv-honest")


def _decoded_values_reveal_no_site(run, secrets):
    """No decoded sum, and no difference of two decoded sums of a round, is one site's share."""
    for view in run.views:
        updates = [u[: -len(wire.UPDATE_STATS)] for s, r, u, _ in secrets if r == view.server_round]
        sums = [np.asarray(v) for v in view.cluster_update_sums.values()]
        candidates = sums + [a - b for i, a in enumerate(sums) for b in sums[i + 1 :]]
        for value in candidates:
            for update in updates:
                assert not np.allclose(value, update, atol=1e-6)


def test_fake_rejection_never_makes_the_server_decode_twice(federation, honest):
    # site-3 claims it rejected site-1's share, in every round: the old retry leak.
    def fake(node_id, reply):
        if reply.metadata.message_type == wire.SECPC and node_id == 1003 and not reply.has_error():
            for name in list(reply.content.keys()):
                del reply.content[name]
            reply.content[wire.REFUSAL] = ConfigRecord(
                {wire.REASON: "shares rejected: site-1: TamperedMessageError"}
            )
        return reply

    run, secrets = federation("secfpp", "adv-fake-reject", reply_hook=fake)
    assert run.views and all(v.assignment for v in run.views)
    for view in run.views:
        labels = list(view.cluster_update_sums)
        assert len(labels) == len(set(labels)) == len(view.decoded_sum_groups)
        assert all(len(g) >= FLOOR for g in view.decoded_sum_groups)
        members = [m for g in view.decoded_sum_groups for m in g]
        assert len(members) == len(set(members))  # one member set per value
        assert "site-1" in view.senders  # an unverified claim excludes nobody
        assert "site-3" in view.refusals
    _decoded_values_reveal_no_site(run, secrets)
    _decoded_values_reveal_no_site(*honest)
    # The decoded values equal the honest run's: the refusal only cost one answer.
    for a, b in zip(run.views, honest[0].views, strict=True):
        for label, value in a.cluster_update_sums.items():
            assert np.allclose(value, b.cluster_update_sums[label], atol=1e-6)


class _Greedy(SecFPPWorkflow):
    """A curious server: asks for what it must not learn."""

    ask = "single"

    def fix_grouping(self, rnd):
        super().fix_grouping(rnd)
        senders = [rnd.participants.index(s) for s in rnd.senders]
        if self.ask == "single":
            rnd.sum_groups = [[senders[0]], senders[1:]]
        elif self.ask == "overlap":
            rnd.sum_groups = [senders[:4], senders[2:]]
        elif self.ask == "twice":
            pass

    def query(self, grid, state, rnd, meter=None):
        super().query(grid, state, rnd, meter)
        if self.ask == "twice":
            # A second, different grouping for the same round: drop one member and ask again.
            rnd.senders = rnd.senders[:-1]
            rnd.view.refusals.clear()
            super().query(grid, state, rnd, meter)


@pytest.mark.parametrize(
    ("ask", "reason"),
    [
        ("single", "fewer than 3"),
        ("overlap", "overlaps"),
        ("twice", "already answered another grouping"),
    ],
)
def test_honest_sites_refuse_a_greedy_server(federation, monkeypatch, ask, reason):
    import strategies.secfpp as module

    greedy = type("Greedy", (_Greedy,), {"ask": ask})
    monkeypatch.setattr(module, "SecFPPWorkflow", greedy)
    run, _ = federation("secfpp", f"adv-greedy-{ask}", rounds=1)
    view = run.views[0]
    assert set(view.refusals) == set(view.committee)  # every site asked refused...
    assert all(reason in why for why in view.refusals.values())  # ...and said why
    assert not view.cluster_update_sums and not view.assignment  # nothing was decoded


def _lie(kind, victim=1002, last_round=2):
    def hook(node_id, reply):
        if (
            reply.metadata.message_type != wire.SECPC
            or node_id != victim
            or reply.has_error()
            or int(reply.metadata.group_id) != last_round
        ):
            return reply
        answer = reply.content[wire.ANSWER]
        sums = answer[wire.SUMS].numpy()
        from flwr.app import Array

        if kind == "random":
            rng = np.random.default_rng(0)
            answer[wire.SUMS] = Array(rng.integers(0, 2**31 - 20, sums.shape).astype(np.uint32))
        elif kind == "shape":
            answer[wire.SUMS] = Array(sums[..., :1].copy())
        return reply

    return hook


@pytest.mark.parametrize("kind", ["random", "shape"])
def test_a_lying_site_is_named_and_changes_nothing(federation, honest, kind):
    run, _ = federation("secfpp", f"adv-lie-{kind}", reply_hook=_lie(kind))
    last = run.views[-1]
    assert last.assignment, "the round must still decode"
    if kind == "random":
        assert last.wrong == ["site-2"]  # located by error correction, excluded
    else:
        assert "malformed" in last.dropped["site-2"]  # dropped for the round, named
    for label, value in last.cluster_update_sums.items():
        assert np.allclose(value, honest[0].views[-1].cluster_update_sums[label], atol=1e-6)
    record = run.writer.records[-1]
    assert ("site-2" in record.extra["excluded"]) == (kind == "random")
    ours = {s.site_id: s.accuracy for s in record.sites}
    theirs = {s.site_id: s.accuracy for s in honest[0].writer.records[-1].sites}
    common = sorted(set(ours) & set(theirs) - {"site-2"})
    assert len(common) == SITES - 1
    assert abs(np.mean([ours[s] for s in common]) - np.mean([theirs[s] for s in common])) <= 0.005


class _KeySwapper(SecFPPWorkflow):
    """A man-in-the-middle server: in round 2 it relays a directory with site-1's key replaced.

    Sites verified the honest directory in round 1 and skip its signatures from then on
    (``client_app/secure_handlers.py``); the swapped one must be checked, and refused.
    """

    def train(self, grid, state, rnd):
        from secpc import EphemeralKey, KeyAnnouncement, KeyDirectory

        honest = state.directory
        if rnd.server_round == 2:
            anns = {s: KeyAnnouncement.from_bytes(a) for s, a in state.announcements.items()}
            real = anns["site-1"]
            anns["site-1"] = KeyAnnouncement(
                real.site_id, real.run_id, EphemeralKey().public_bytes, real.signature
            )
            state.directory = KeyDirectory(real.run_id, anns).to_bytes()
        try:
            super().train(grid, state, rnd)
        finally:
            state.directory = honest


def test_a_key_swapped_after_the_first_round_is_refused_by_every_site(federation, monkeypatch):
    import strategies.secfpp as module

    monkeypatch.setattr(module, "SecFPPWorkflow", _KeySwapper)
    run, secrets = federation("secfpp", "adv-key-swap", rounds=2)
    first, second = run.views
    assert len(first.senders) == SITES  # the honest directory of round 1 was accepted
    assert not second.senders and not second.cluster_update_sums
    assert len(second.dropped) == SITES
    assert all("not signed" in why for why in second.dropped.values()), second.dropped
    assert {r for _, r, _, _ in secrets} == {1, 2}  # round 2 trained, but nothing was sealed
    assert "skipped" in run.writer.records[-1].extra


def test_nan_metrics_drop_the_site_for_the_round(federation):
    def nan(node_id, reply):
        if reply.metadata.message_type == wire.TRAIN and node_id == 1004 and not reply.has_error():
            reply.content[wire.METRICS][wire.ACCURACY] = float("nan")
        return reply

    run, _ = federation("secfpp", "adv-nan", rounds=1, reply_hook=nan)
    assert "site-4" not in run.views[0].senders
    assert run.views[0].assignment


def test_everyone_dropping_in_exchange_two_skips_only_that_round(federation):
    def drop(node_id, reply):
        if reply.metadata.message_type == wire.SECPC and reply.metadata.group_id == "1":
            return None
        return reply

    run, _ = federation("secfpp", "adv-all-drop", reply_hook=drop)
    rounds = run.writer.records
    assert [r.server_round for r in rounds] == [1, 2]
    assert "skipped" in rounds[0].extra
    assert rounds[1].extra.get("assignment")


def _run_with_a_restart(federation, name, rounds, **config):
    """Run SecFPP where site-5 loses its in-memory state after round 1 (a restart)."""
    from server_app.inprocess_grid import InProcessGrid

    grids = []

    def restart(node_id, reply):
        # After round 1's SecPC answer, site-5 loses everything in memory (a restart).
        if reply.metadata.message_type == wire.SECPC and node_id == 1005:
            if reply.metadata.group_id == "1":
                grids[0].contexts[1005].state = RecordDict()
        return reply

    original = InProcessGrid.__init__

    def remember(self, *args, **kwargs):
        original(self, *args, **kwargs)
        grids.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(InProcessGrid, "__init__", remember)
        run, _ = federation("secfpp", name, rounds=rounds, reply_hook=restart, **config)
    return run


def test_a_restarted_site_rejoins_from_the_next_round(federation):
    run = _run_with_a_restart(federation, "adv-restart", rounds=3)
    senders = [v.senders for v in run.views]
    assert "site-5" in senders[0]
    assert "site-5" not in senders[1]  # re-announced its key instead of sharing
    assert "site-5" in senders[2]  # and takes part again
    assert all(r.extra.get("assignment") for r in run.writer.records)


def test_a_round_that_needs_the_restarted_site_trains_again_with_it(federation):
    # Every site is needed (clusters of at least 6): without the restarted one round 2 is lost.
    config = {"min-sites": SITES, "min-cluster-size": SITES}
    run = _run_with_a_restart(federation, "adv-restart-all", rounds=3, **config)
    senders = [v.senders for v in run.views]
    assert len(senders[1]) == SITES and "site-5" in senders[1]
    records = run.writer.records
    assert "skipped" not in records[1].extra, records[1].extra
    # Round 2 has no key setup but trains twice: key setup, train, query vs train x2, query.
    assert records[1].cost["exchanges"] == records[0].cost["exchanges"] == 3


def test_every_field_that_leaves_a_site_is_declared(honest, sites_root):
    from client_app.local_store import LocalPromptStore

    run, secrets = honest
    up = [w for w in run.grid.wire if w.direction == "up"]
    assert up
    for w in up:
        fields = wire.clear_fields(w.message().content)
        assert fields <= wire.SITE_CLEAR_FIELDS, fields - wire.SITE_CLEAR_FIELDS
    assert all(k in wire.SITE_CLEAR_MEANING for k in wire.SITE_CLEAR_FIELDS)
    # No array the server can read equals a site's private values.
    readable = []
    for w in up:
        content = w.message().content
        for record in content.array_records.values():
            readable += [record[k].numpy().astype(np.float64).ravel() for k in record.keys()]
    private = [u for *_, u, _ in secrets] + [z for *_, z in secrets]
    for site in range(SITES):
        stored = LocalPromptStore(sites_root / f"site-{site}").load("adv-honest")
        private.append(stored.local_ctx.numpy().astype(np.float64).ravel())
    for array in readable:
        for secret in private:
            n = min(array.size, secret.size, 64)
            assert not np.allclose(array[:n], secret[:n], atol=1e-6)
            # nor its quantized form
            assert not np.array_equal(array[:n], np.rint(secret[:n] * 2**24))
    for view in run.views:
        assert all(len(g) >= FLOOR for g in view.decoded_sum_groups + view.decoded_dist_groups)


def test_readme_declares_every_clear_field():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("**What leaves a site in the clear**") :]
    section = section[: section.index("**What the server learns**")]
    for record, key in wire.SITE_CLEAR_FIELDS:
        assert f"`{record}`" in section, record
        if key != "*":
            assert f"`{key}`" in section, key


def test_an_oversized_reply_is_dropped_unparsed(federation):
    def pad(node_id, reply):
        if reply.metadata.message_type == wire.TRAIN and node_id == 1003 and not reply.has_error():
            reply.content[wire.SITE]["padding"] = b"x" * 4_000_000
        return reply

    run, _ = federation("secfpp", "adv-oversized", rounds=1, reply_hook=pad)
    view = run.views[0]
    assert "site-3" not in view.senders and len(view.senders) == SITES - 1
    assert view.assignment
