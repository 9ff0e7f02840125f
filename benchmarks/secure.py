"""Benchmark of one SecPC round (cluster sums and distances) through a committee.

``python -m benchmarks.secure --sites N --dim D --clusters C [--committee M] --out FILE``

Each round a committee of ``M`` sites (:func:`secpc.committee.select_committee`, seeded by the
signed key directory) receives the shares and answers the coded queries. Every site runs the
real :func:`secpc.protocol.share_round` on a random update and reduced vector ``z_i`` (one
plaintext per committee member: its shares of both and a blinding share of its own distance row)
and seals each plaintext for its member (AES-GCM over X25519/HKDF keys announced with Ed25519
signatures; a site derives channel keys to the ``M`` members only). Each committee member opens
the ``N`` ciphertexts it received and runs :func:`secpc.protocol.participant_answer`. After
``--drop`` members drop out, the server decodes sums and distances with
:func:`secpc.decode_robust` (error correction on the redundant answers). ``correct`` compares the
decoded integers with the same sums and distances computed on the quantized integers in plain
numpy.

Per-site figures are medians: ``seconds_site_total`` and ``bytes_up_per_site`` over the
non-committee sites (share + seal, key derivation included since a site's channel keys live
only for one message), ``seconds_committee_member`` over the answering members (open +
answer). ``seconds_*`` are CPU seconds of the work (``time.thread_time``: the integer field
arithmetic does not use BLAS threads), so that a shared, overloaded machine measures the work
rather than its scheduler; the same figures in wall-clock seconds carry a ``wall_`` prefix.
Prints one JSON object as its last line and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from secpc import (
    EphemeralKey,
    IdentityKey,
    KeyAnnouncement,
    KeyDirectory,
    PairwiseChannel,
    decode_robust,
    dequantize,
    field_to_bytes,
    quantize,
)
from secpc.committee import committee_size, select_committee
from secpc.protocol import ProtocolConfig, participant_answer, share_round

RUN_ID = 7
ROUND = 1
STAGE = "secpc-shares"


def plaintext_distances(z: np.ndarray, clusters: list[list[int]]) -> np.ndarray:
    """``|| |C| z_i - sum_{m in C} z_m ||^2`` for every site and cluster, in plain numpy."""
    sizes = np.array([len(c) for c in clusters])
    sums = np.stack([z[c].sum(axis=0) for c in clusters])
    out = np.empty((z.shape[0], len(clusters)), dtype=z.dtype)
    for c in range(len(clusters)):  # per cluster: an (N, C, dim) temporary is 40 MB at 10k sites
        diff = z * sizes[c] - sums[c]
        out[:, c] = (diff * diff).sum(axis=1)
    return out


class Clock:
    """CPU (``thread_time``) and wall (``perf_counter``) time since construction or ``lap``."""

    def __init__(self) -> None:
        self.lap()

    def lap(self) -> tuple[float, float]:
        """``(cpu, wall)`` seconds since the previous lap; starts the next one."""
        cpu, wall = time.thread_time(), time.perf_counter()
        out = (cpu - self._cpu, wall - self._wall) if hasattr(self, "_cpu") else (0.0, 0.0)
        self._cpu, self._wall = cpu, wall
        return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--dim", type=int, default=64, help="dimension of z_i")
    parser.add_argument("--update-dim", type=int, default=64, help="length of the P_G update")
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument(
        "--committee", type=int, default=0, help="committee size M (0: automatic, 2(2(K+T-1)+1)+1)"
    )
    parser.add_argument("--k", type=int, default=1, help="LCC data slices K")
    parser.add_argument("--t", type=int, default=4, help="colluders tolerated T")
    parser.add_argument("--scale-bits", type=int, default=12, help="quantization of z_i")
    parser.add_argument(
        "--drop", type=int, default=0, help="committee members that drop before answering"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    n, dim, n_clusters = args.sites, args.dim, args.clusters
    config = ProtocolConfig(
        k=args.k, t=args.t, z_dim=dim, z_scale_bits=args.scale_bits, z_bound=1.0, update_bound=1.0
    )
    config.check(n, args.update_dim)  # wrap-around and threshold, with the real sizes
    up, zp = config.update_params, config.z_params
    m = committee_size(n, zp.quadratic_threshold, args.committee)
    if m - args.drop < zp.quadratic_threshold:
        parser.error(f"--drop {args.drop} leaves fewer than {zp.quadratic_threshold} answers")
    data_rng = np.random.default_rng(args.seed)
    z = data_rng.uniform(-1.0, 1.0, size=(n, dim))
    updates = data_rng.uniform(-1.0, 1.0, size=(n, args.update_dim))
    assignment = np.arange(n) % n_clusters
    clusters = [np.flatnonzero(assignment == c).tolist() for c in range(n_clusters)]
    sites = [f"site-{i:05d}" for i in range(n)]
    index = {s: i for i, s in enumerate(sites)}

    # Key setup (once per run): announcements, the server's directory check, one site's check.
    clock = Clock()
    identities = [IdentityKey.generate() for _ in sites]
    ephemerals = [EphemeralKey() for _ in sites]
    announcements = [
        KeyAnnouncement.create(idk, s, RUN_ID, eph).to_bytes()
        for idk, s, eph in zip(identities, sites, ephemerals, strict=True)
    ]
    known = {s: idk.public_bytes for s, idk in zip(sites, identities, strict=True)}
    directory_bytes = KeyDirectory.verify(announcements, known, RUN_ID).to_bytes()
    key_setup_all, _ = clock.lap()
    directory = KeyDirectory.from_bytes(directory_bytes, known, RUN_ID)
    key_setup_site, _ = clock.lap()  # a site re-verifies the relayed directory: O(N), per run
    key_setup_all += key_setup_site
    del identities, announcements

    # The committee: public, from the signed directory, the round and the participants.
    clock.lap()
    committee = select_committee(sites, m, ROUND, directory_bytes)
    select_s, _ = clock.lap()
    position = {s: j for j, s in enumerate(committee)}

    # Exchange 1: every site shares to the M members and seals; a member keeps its own share.
    inbox: list[dict[int, bytes]] = [{} for _ in range(m)]
    share_s, seal_s, wall_s = np.zeros(n), np.zeros(n), np.zeros(n)
    bytes_up = np.zeros(n, dtype=np.int64)
    for i, site in enumerate(sites):
        clock.lap()
        plaintexts, _ = share_round(updates[i], z[i], m, n_clusters, config)
        share_s[i], wall_share = clock.lap()
        channel = PairwiseChannel(site, ephemerals[i], directory)
        for j, member in enumerate(committee):
            if member == site:
                inbox[j][i] = plaintexts[j]
                continue
            sealed = channel.seal(plaintexts[j], round=ROUND, stage=STAGE, receiver=member)
            inbox[j][i] = sealed
            bytes_up[i] += len(sealed)
        seal_s[i], wall_seal = clock.lap()
        wall_s[i] = wall_share + wall_seal
    outsiders = [i for i, s in enumerate(sites) if s not in position] or list(range(n))

    # Exchange 2: each surviving member opens N ciphertexts and answers.
    dropped = set(range(m - args.drop, m))
    answers_sum: dict[int, np.ndarray] = {}
    answers_dist: dict[int, np.ndarray] = {}
    member_s, member_open_s, member_wall_s, bytes_answer = [], [], [], []
    for j, member in enumerate(committee):
        if j in dropped:
            inbox[j] = {}
            continue
        me = index[member]
        clock.lap()
        channel = PairwiseChannel(member, ephemerals[me], directory)
        opened = {
            i: data if i == me else channel.open(data, round=ROUND, stage=STAGE, sender=sites[i])
            for i, data in inbox[j].items()
        }
        open_cpu, open_wall = clock.lap()
        sums, dists = participant_answer(opened, n, clusters, clusters, config)
        answer_cpu, answer_wall = clock.lap()
        member_s.append(open_cpu + answer_cpu)
        member_open_s.append(open_cpu)
        member_wall_s.append(open_wall + answer_wall)
        bytes_answer.append(len(field_to_bytes(sums, up)) + len(field_to_bytes(dists, zp)))
        answers_sum[j], answers_dist[j] = sums, dists
        inbox[j] = {}  # what a member received is gone once it answered
        del opened

    # The server decodes every value once, with error correction over the redundant answers.
    clock.lap()
    decoded_sums, wrong_sums = [], set()
    for c in range(n_clusters):
        value, wrong = decode_robust(
            {j: a[c] for j, a in answers_sum.items()}, up, 1, length=args.update_dim
        )
        decoded_sums.append(value)
        wrong_sums |= set(wrong)
    decode_sums_s, decode_sums_wall = clock.lap()
    shape = (n, n_clusters, zp.field.r)
    decoded_dist, wrong_dist = decode_robust(answers_dist, zp, 2, shape=shape)
    decode_dist_s, decode_dist_wall = clock.lap()

    qz = zp.field.to_signed(quantize(z, zp))
    qu = up.field.to_signed(quantize(updates, up))
    expected_dist = plaintext_distances(qz, clusters)  # exact integers (|values| < 2^62)
    expected_sums = np.stack([qu[c].sum(axis=0) for c in clusters])
    got_sums = np.stack([up.field.to_signed(v) for v in decoded_sums])
    correct = bool(
        np.array_equal(zp.field.to_signed(decoded_dist), expected_dist)
        and np.array_equal(got_sums, expected_sums)
        and not wrong_sums
        and not wrong_dist
    )
    float_error = float(
        np.max(np.abs(dequantize(decoded_dist, zp, 2) - plaintext_distances(z, clusters)))
    )

    clock.lap()
    reps = 5
    for _ in range(reps):
        plaintext_distances(z, clusters)
    plain_s = clock.lap()[0] / reps

    site_total = share_s + seal_s
    member = statistics.median(member_s)
    secure_total = (
        float(np.sum(site_total)) + member * len(member_s) + decode_sums_s + decode_dist_s
    )
    result = {
        "sites": n,
        "dim": dim,
        "update_dim": args.update_dim,
        "clusters": n_clusters,
        "k": config.k,
        "t": config.t,
        "scale_bits": zp.scale_bits,
        "committee_size": m,
        "dropped": len(dropped),
        "answers_received": len(answers_dist),
        "answers_needed": zp.quadratic_threshold,
        "correctable_wrong_answers": (len(answers_dist) - zp.quadratic_threshold) // 2,
        "correct": correct,
        "max_abs_error_float": float_error,
        "seconds_key_setup_per_site": key_setup_site,
        "seconds_key_setup_all_sites": key_setup_all,
        "seconds_select_committee": select_s,
        "seconds_share_per_site": float(np.median(share_s[outsiders])),
        "seconds_seal_per_site": float(np.median(seal_s[outsiders])),
        "seconds_site_total": float(np.median(site_total[outsiders])),
        "seconds_site_total_p90": float(np.percentile(site_total[outsiders], 90)),
        "seconds_committee_member": member,
        "seconds_committee_member_open": statistics.median(member_open_s),
        "seconds_decode_server": decode_sums_s + decode_dist_s,
        "seconds_decode_sums": decode_sums_s,
        "seconds_decode_distances": decode_dist_s,
        # Earlier names, kept for existing readers: a site's encoding, a receiver's coded answer.
        "seconds_encode_per_site": float(np.median(share_s[outsiders])),
        "seconds_coded_distance_per_site": member,
        "seconds_plaintext_distances_all": plain_s,
        # All sites' exchange 1, the members' answers and the decoding, over plain numpy distances.
        "ratio_vs_plaintext": secure_total / plain_s,
        "wall_seconds_site_total": float(np.median(wall_s[outsiders])),
        "wall_seconds_committee_member": statistics.median(member_wall_s),
        "wall_seconds_decode_server": decode_sums_wall + decode_dist_wall,
        "bytes_up_per_site": int(np.median(bytes_up[outsiders])),
        "bytes_up_committee_member": int(
            np.median([bytes_up[index[s]] for s in committee]) + statistics.median(bytes_answer)
        ),
        "bytes_answer_committee_member": int(statistics.median(bytes_answer)),
        "peak_rss_mb": peak_rss_mb(),
        "wall_seconds_benchmark": time.perf_counter() - started,
    }
    line = json.dumps(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
