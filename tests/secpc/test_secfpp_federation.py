"""SecFPP end to end through the in-process grid: privacy of what leaves a site, equivalence
with the plaintext twin, and faults (tampered, replayed, malformed, dropped)."""

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord

from benchmarks.federation import run_federation
from client_app.local_store import LocalPromptStore
from strategies.secfpp import ServerView

SITES = 6


@pytest.fixture(scope="module")
def sites_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sites")


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
        **extra,
    }
    result = run_federation(SITES, overrides, reply_hook=reply_hook, echo=lambda line: None)
    return result


def strategy_views(result):
    doc = json.loads((result.writer.folder / "results.json").read_text())
    return doc


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory, sites_root):
    tmp = tmp_path_factory.mktemp("secfpp")
    return run(tmp, sites_root, "secfpp", "t-secfpp")


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, sites_root):
    tmp = tmp_path_factory.mktemp("clustered")
    return run(tmp, sites_root, "clustered", "t-clustered")


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
    # Round 1 adds the one-off key setup; later rounds are train + SecPC.
    assert rounds[0]["extra"]["exchanges"] == 3
    assert rounds[1]["extra"]["exchanges"] == 2


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


def test_server_view_holds_only_what_the_design_allows():
    assert set(ServerView.__dataclass_fields__) == {
        "participants",
        "senders",
        "assignment",
        "cluster_sizes",
        "scaled_distances",
        "cluster_update_sums",
    }


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
    rounds = strategy_views(result)["rounds"]
    assert "site-2" not in rounds[0]["extra"]["senders"]
    assert len(rounds[0]["extra"]["senders"]) == SITES - 1


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
    rounds = strategy_views(result)["rounds"]
    assert "site-1" in rounds[0]["extra"]["senders"]
    assert "site-1" not in rounds[1]["extra"]["senders"]


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
    assert rounds[0]["extra"] == {}
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


def test_refuses_thresholds_it_cannot_decode(tmp_path, sites_root):
    with pytest.raises(ValueError, match="secure-t"):
        run(tmp_path, sites_root, "secfpp", "t-refuse", rounds=1, **{"secure-t": 4})
