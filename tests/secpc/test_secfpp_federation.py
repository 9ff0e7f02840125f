"""SecFPP end to end through the in-process grid: privacy of what leaves a site, equivalence
with the plaintext twin, and faults (tampered, replayed, malformed, dropped)."""

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord

from benchmarks.federation import run_federation
from client_app.local_store import LocalPromptStore

SITES = 6  # as tests/secpc/conftest.py runs them


def run(tmp_path, sites_root, strategy, name, rounds=2, reply_hook=None, **extra):
    overrides = {
        "strategy": strategy,
        "num-server-rounds": rounds,
        "local-epochs": 1,
        "batch-size": 512,
        "learning-rate": 0.02,
        "num-domains": 2,
        "sim-state-root": str(sites_root),
        "output-dir": str(tmp_path / "out"),
        "run-name": name,
        "device": "cpu",
        "site-wait-timeout": 0.0,
        **extra,
    }
    return run_federation(SITES, overrides, reply_hook=reply_hook, echo=lambda line: None)


def strategy_views(result):
    return json.loads((result.writer.folder / "results.json").read_text())


@pytest.fixture(scope="module")
def secure_run(federation):
    return federation("secfpp", "t-secfpp")[0]


@pytest.fixture(scope="module")
def plain_run(federation):
    return federation("clustered", "t-clustered")[0]


def assignments(result):
    return [r["extra"].get("assignment") for r in strategy_views(result)["rounds"]]


def test_secfpp_and_twin_agree(secure_run, plain_run):
    assert assignments(secure_run) == assignments(plain_run)
    assert all(a for a in assignments(secure_run))
    sec, pla = secure_run.final_arrays, plain_run.final_arrays
    assert set(sec.keys()) == set(pla.keys())
    # Per coordinate, one aggregation differs by at most the quantization step 2^-(24+1);
    # a second round trains from prompts that differ by that much, and float32 transport adds
    # its own rounding, so the bound asserted is a generous multiple of both.
    for key in sec.keys():
        diff = np.abs(sec[key].numpy().astype(np.float64) - pla[key].numpy().astype(np.float64))
        assert diff.max() < 1e-4, key
    acc_sec = secure_run.writer.records[-1].mean_accuracy
    acc_pla = plain_run.writer.records[-1].mean_accuracy
    assert abs(acc_sec - acc_pla) < 0.005


def test_steady_state_uses_two_exchanges(secure_run):
    rounds = strategy_views(secure_run)["rounds"]
    # Round 1 adds the one-off key setup, the last round the final evaluation.
    assert [r["cost"]["exchanges"] for r in rounds] == [3, 3]
    assert secure_run.meter.totals().exchanges == 2 * len(rounds) + 2
    for r in rounds:
        assert r["cost"]["bytes_up"] > 0 and r["cost"]["bytes_down"] > 0
        assert r["cost"]["seconds_crypto_server"] > 0 and r["cost"]["seconds_crypto_site"] > 0


def _up(result, message_type):
    return [w for w in result.grid.wire if w.direction == "up" and w.message_type == message_type]


def test_nothing_private_leaves_a_site(secure_run, sites_root):
    train_up = _up(secure_run, "train")
    assert train_up
    for w in train_up:
        msg = w.message()
        # No arrays at all: no P_G update, no z_i, no P_L in any form.
        assert len(msg.content.array_records) == 0
        shares = msg.content["shares"]
        for value in shares.values():
            assert isinstance(value, bytes)
            # Plaintext field arrays start with b"SFF1"; a sealed share never does.
            assert b"SFF1" not in value
    for site in range(SITES):
        stored = LocalPromptStore(sites_root / f"site-{site}").load("t-secfpp")
        assert stored is not None
        needle = stored.local_ctx[0, 0].numpy().astype(np.float32).tobytes()[:64]
        assert all(needle not in w.payload for w in secure_run.grid.wire if w.direction == "up")
    for w in _up(secure_run, "query.secpc"):
        msg = w.message()
        assert set(msg.content.array_records["answer"].keys()) == {"sums", "distances"}


def test_server_relays_ciphertexts_it_cannot_read(secure_run):
    sent = {}
    for w in _up(secure_run, "train"):
        for receiver, value in w.message().content["shares"].items():
            sent[value] = receiver
    relayed = [
        w for w in secure_run.grid.wire if w.direction == "down" and w.message_type == "query.secpc"
    ]
    assert relayed
    for w in relayed:
        for value in w.message().content["relay"].values():
            assert value in sent  # relayed byte for byte, never re-encrypted or opened


def test_server_view_matches_the_twin_and_names_only_groups(secure_run, plain_run):
    # What the SecFPP server decodes is what the twin computes in the clear, up to
    # quantization; and each decoded value combines at least min-cluster-size sites.
    for sec, pla in zip(secure_run.views, plain_run.views, strict=True):
        assert sec.decoded_sum_groups == pla.decoded_sum_groups
        assert all(len(g) >= 3 for g in sec.decoded_sum_groups)
        for label, value in sec.cluster_update_sums.items():
            assert np.allclose(value, pla.cluster_update_sums[label], atol=1e-5)
        # z is quantized at 2^-12 (error <= 2^-13 per value) before sharing: with |C| <= 6 and
        # z-dim 32 the scaled distance moves by at most about 2 |v| |dv| + |dv|^2 < 0.02.
        assert np.allclose(
            np.nan_to_num(sec.scaled_distances),
            np.nan_to_num(pla.scaled_distances),
            rtol=0,
            atol=0.02,
        )
        assert set(sec.evaluations) == set(sec.participants)


def _tamper(target_type, victim, mutate):
    def hook(node_id, reply):
        if reply.metadata.message_type == target_type and not reply.has_error():
            site = reply.content.config_records.get("site", ConfigRecord()).get("site-id")
            if site == victim:
                return mutate(reply)
        return reply

    return hook


def test_tampered_share_leaves_sender_out(tmp_path, sites_root):
    def flip(reply):
        shares = reply.content["shares"]
        first = sorted(shares.keys())[1]
        raw = bytearray(shares[first])
        raw[-1] ^= 0xFF
        shares[first] = bytes(raw)
        return reply

    result = run(
        tmp_path,
        sites_root,
        "secfpp",
        "t-tamper",
        rounds=1,
        reply_hook=_tamper("train", "site-2", flip),
    )
    # The receiver of the tampered share refuses (naming site-2); its answer counts as
    # missing and the round still decodes from the others, over the same member set.
    view = result.views[0]
    assert len(view.senders) == SITES
    assert len(view.refusals) == 1
    assert "site-2" in next(iter(view.refusals.values()))
    assert view.assignment


def test_malformed_reply_is_left_out(tmp_path, sites_root):
    def strip(reply):
        del reply.content["shares"]
        return reply

    result = run(
        tmp_path,
        sites_root,
        "secfpp",
        "t-malformed",
        rounds=1,
        reply_hook=_tamper("train", "site-4", strip),
    )
    senders = strategy_views(result)["rounds"][0]["extra"]["senders"]
    assert "site-4" not in senders and len(senders) == SITES - 1


def test_replayed_shares_are_rejected(tmp_path, sites_root):
    first_round = {}

    def replay(node_id, reply):
        if reply.metadata.message_type != "train" or reply.has_error():
            return reply
        site = reply.content["site"]["site-id"]
        if site != "site-1":
            return reply
        if "shares" in reply.content.config_records and not first_round:
            first_round.update(dict(reply.content["shares"]))
            return reply
        shares = reply.content["shares"]
        for key, value in first_round.items():
            shares[key] = value
        return reply

    result = run(tmp_path, sites_root, "secfpp", "t-replay", rounds=2, reply_hook=replay)
    first, second = result.views
    assert not first.refusals
    # Every receiver of a replayed share refuses: too few answers, round 2 changes nothing.
    assert len(second.refusals) == SITES - 1
    assert all("ReplayError" in why for why in second.refusals.values())
    assert "skipped" in result.writer.records[1].extra


def test_dropout_after_exchange_one_is_tolerated(tmp_path, sites_root):
    def drop(node_id, reply):
        if reply.metadata.message_type == "query.secpc" and node_id == 1000:
            return None
        return reply

    result = run(tmp_path, sites_root, "secfpp", "t-drop", rounds=1, reply_hook=drop)
    rounds = strategy_views(result)["rounds"]
    assert len(rounds[0]["extra"]["senders"]) == SITES
    assert rounds[0]["extra"]["assignment"]


def test_too_few_answers_skip_the_round_and_keep_state(tmp_path, sites_root):
    def drop(node_id, reply):
        if reply.metadata.message_type == "query.secpc" and node_id in (1000, 1001):
            return None
        return reply

    # K=1, T=2: distances need 5 answers; only 4 arrive.
    result = run(tmp_path, sites_root, "secfpp", "t-skip", rounds=1, reply_hook=drop)
    rounds = strategy_views(result)["rounds"]
    assert "could not be decoded" in rounds[0]["extra"]["skipped"]
    assert len(result.final_arrays.keys()) == 0


def test_checkpoint_and_resume(tmp_path, sites_root):
    first = run(tmp_path, sites_root, "clustered", "t-resume", rounds=1)
    checkpoint = json.loads((first.writer.folder / "checkpoint.json").read_text())
    assert checkpoint["completed_round"] == 1
    resumed = run(tmp_path, sites_root, "clustered", "t-resume", rounds=2, resume=True)
    doc = strategy_views(resumed)
    assert [r["server_round"] for r in doc["rounds"]] == [1, 2]
    assert [r.server_round for r in resumed.writer.records] == [2]
    assert (
        json.loads((resumed.writer.folder / "checkpoint.json").read_text())["completed_round"] == 2
    )


def test_a_stop_before_a_round_is_evaluated_loses_nothing_on_resume(tmp_path, sites_root):
    """Evaluations ride on the next exchange; a stop in between must not cost round 1's."""
    from PIL import Image

    def stop_at_round_2(node_id, reply):
        meta = reply.metadata
        if meta.message_type == "train" and meta.group_id == "2":
            raise KeyboardInterrupt  # what `flwr stop` looks like to the ServerApp
        return reply

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, sites_root, "clustered", "t-stop", rounds=3, reply_hook=stop_at_round_2)
    folder = tmp_path / "out" / "t-stop"
    doc = json.loads((folder / "results.json").read_text())
    assert doc["status"] == "stopped"
    (row,) = doc["rounds"]
    assert row["server_round"] == 1 and row["sites"] == []
    assert row["extra"]["evaluation"].startswith("not measured")
    assert row["extra"]["num_clusters"] >= 1  # the round's own facts are kept
    assert json.loads((folder / "checkpoint.json").read_text())["completed_round"] == 1

    resumed = run(tmp_path, sites_root, "clustered", "t-stop", rounds=3, resume=True)
    doc = strategy_views(resumed)
    rows = [(r["server_round"], r["segment"], r["superseded"]) for r in doc["rounds"]]
    assert rows == [(1, 0, True), (1, 1, False), (2, 1, False), (3, 1, False)]
    current = [r for r in doc["rounds"] if not r["superseded"]]
    assert all(len(r["sites"]) == SITES for r in current), current
    assert current[0]["extra"]["evaluation"] == "measured after resume"
    assert current[0]["extra"]["num_clusters"] == row["extra"]["num_clusters"]
    assert doc["status"] == "completed" and doc["final_mean_accuracy"] is not None
    png = Image.open(folder / "accuracy.png").text
    assert (png["Rounds"], png["Resumed-after"], png["Status"]) == ("1,2,3", "1", "completed")


def test_refuses_thresholds_it_cannot_decode(tmp_path, sites_root):
    with pytest.raises(ValueError, match="secure-t"):
        run(tmp_path, sites_root, "secfpp", "t-refuse", rounds=1, **{"secure-t": 4, "min-sites": 9})


def test_a_committee_smaller_than_the_federation_decodes_with_a_member_dropped(
    federation, plain_run
):
    dropped = []

    def drop_one_member(node_id, reply):
        if reply.metadata.message_type == "query.secpc" and not dropped:
            dropped.append(node_id)
            return None
        return reply

    run, _ = federation(
        "secfpp",
        "t-committee",
        reply_hook=drop_one_member,
        **{"secure-t": 1, "committee-size": 4},
    )
    assert dropped
    for view, twin in zip(run.views, plain_run.views, strict=True):
        assert len(view.committee) == 4 and set(view.committee) <= set(view.participants)
        assert len(view.senders) == SITES  # everyone shared, only the committee answered
        for label, value in view.cluster_update_sums.items():
            assert np.allclose(value, twin.cluster_update_sums[label], atol=1e-5)
    # Shares went to the committee only: a train reply carries one ciphertext per other member.
    for w in run.grid.wire:
        if w.direction == "up" and w.message_type == "train":
            shares = w.message().content["shares"]
            assert len(shares) in (3, 4)
    for view in run.views:
        queried = {
            w.node_id
            for w in run.grid.wire
            if w.direction == "down"
            and w.message_type == "query.secpc"
            and w.group_id == str(view.server_round)
        }
        assert len(queried) == 4  # the query goes to the round's committee only
