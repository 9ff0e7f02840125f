"""Benchmark of the secure primitives on the SecPC distance step.

``python -m benchmarks.secure --sites N --dim D --clusters C --out FILE``

Every site quantizes a random reduced vector ``z_i``, LCC-shares it, draws blinding shares for the
``N x C`` distance outputs, and seals one packed plaintext per peer (AES-GCM over X25519/HKDF keys
announced with Ed25519 signatures). Every participant opens what it received, computes the coded
scaled distances and returns them; the server decodes from the threshold answers (after
``--drop`` participants drop out). ``correct`` compares the decoded integers with the same
distances computed on the quantized integers in plain numpy. Prints one JSON object as its last
line and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
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
    SecureParams,
    blinding_shares,
    check_no_wraparound,
    coded_scaled_distances,
    decode,
    dequantize,
    field_to_bytes,
    pack_field_arrays,
    quantize,
    share,
    unpack_field_arrays,
)

RUN_ID = 7
ROUND = 1
STAGE = "secpc-distance"


def plaintext_distances(z: np.ndarray, clusters: list[list[int]]) -> np.ndarray:
    """``|| |C| z_i - sum_{m in C} z_m ||^2`` for every site and cluster, in plain numpy."""
    sizes = np.array([len(c) for c in clusters])
    sums = np.stack([z[c].sum(axis=0) for c in clusters])
    diff = z[:, None, :] * sizes[None, :, None] - sums[None]
    return (diff * diff).sum(axis=2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument("--k", type=int, default=1, help="LCC data slices K")
    parser.add_argument("--t", type=int, default=4, help="colluders tolerated T")
    parser.add_argument("--scale-bits", type=int, default=12)
    parser.add_argument(
        "--drop", type=int, default=0, help="participants that drop before answering"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    n, dim, n_clusters = args.sites, args.dim, args.clusters
    params = SecureParams(k=args.k, t=args.t, scale_bits=args.scale_bits, value_bound=1.0)
    bound = check_no_wraparound(dim, n, 2, params)
    data_rng = np.random.default_rng(args.seed)
    z = data_rng.uniform(-1.0, 1.0, size=(n, dim))
    assignment = np.arange(n) % n_clusters
    clusters = [np.flatnonzero(assignment == c).tolist() for c in range(n_clusters)]
    sites = [f"site-{i:04d}" for i in range(n)]

    # Key setup (once per run): announcements, directory verification, channels.
    t0 = time.perf_counter()
    identities = [IdentityKey.generate() for _ in sites]
    ephemerals = [EphemeralKey() for _ in sites]
    announcements = [
        KeyAnnouncement.create(idk, s, RUN_ID, eph).to_bytes()
        for idk, s, eph in zip(identities, sites, ephemerals, strict=True)
    ]
    known = {s: idk.public_bytes for s, idk in zip(sites, identities, strict=True)}
    directory_bytes = KeyDirectory.verify(announcements, known, RUN_ID).to_bytes()
    t1 = time.perf_counter()
    directory = KeyDirectory.from_bytes(directory_bytes, known, RUN_ID)  # one site's check
    channels = [PairwiseChannel(s, e, directory) for s, e in zip(sites, ephemerals, strict=True)]
    seconds_key_setup_site = time.perf_counter() - t1
    seconds_key_setup_all = time.perf_counter() - t0

    # Exchange 1: every site encodes and seals one plaintext per peer.
    encode_s, encrypt_s, bytes_shares = [], [], []
    outbox: list[dict[int, bytes]] = []
    own: list[bytes] = []
    for i in range(n):
        t0 = time.perf_counter()
        z_shares = share(quantize(z[i], params), n, params, degree=2)
        blind = blinding_shares(n, (n, n_clusters), params)
        t1 = time.perf_counter()
        sealed: dict[int, bytes] = {}
        for j in range(n):
            plain = pack_field_arrays({"z": z_shares[j], "blind": blind[j]}, params)
            if j == i:
                own.append(plain)
            else:
                sealed[j] = channels[i].seal(plain, round=ROUND, stage=STAGE, receiver=sites[j])
        t2 = time.perf_counter()
        encode_s.append(t1 - t0)
        encrypt_s.append(t2 - t1)
        bytes_shares.append(sum(len(c) for c in sealed.values()))
        outbox.append(sealed)

    # Exchange 2: each participant opens its ciphertexts and computes coded distances.
    length = -(-dim // params.k)
    shapes = {"z": (length, params.field.r), "blind": (n, n_clusters, params.field.r)}
    dropped = set(range(n - args.drop, n))
    answers: dict[int, np.ndarray] = {}
    coded_s, bytes_answer = [], []
    for j in range(n):
        t0 = time.perf_counter()
        received = []
        for i in range(n):
            plain = (
                own[j]
                if i == j
                else channels[j].open(outbox[i][j], round=ROUND, stage=STAGE, sender=sites[i])
            )
            received.append(unpack_field_arrays(plain, params, shapes))
        z_held = np.stack([r["z"] for r in received])
        blind_sum = np.stack([r["blind"] for r in received]).sum(axis=0) % params.field.p
        answer = coded_scaled_distances(z_held, clusters, params, blind_sum)
        bytes_answer.append(len(field_to_bytes(answer, params)))
        coded_s.append(time.perf_counter() - t0)
        if j not in dropped:
            answers[j] = answer

    t0 = time.perf_counter()
    decoded = decode(answers, params, degree=2)
    seconds_decode = time.perf_counter() - t0

    q = params.field.to_signed(np.stack([quantize(zi, params) for zi in z])[..., :])
    expected = plaintext_distances(q, clusters)  # exact integers (|values| < 2^62)
    got = params.field.to_signed(decoded)
    correct = bool(np.array_equal(got, expected))
    float_error = float(
        np.max(np.abs(dequantize(decoded, params, 2) - plaintext_distances(z, clusters)))
    )

    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        plaintext_distances(z, clusters)
    seconds_plain = (time.perf_counter() - t0) / reps

    per_site = statistics.mean(encode_s) + statistics.mean(encrypt_s) + statistics.mean(coded_s)
    result = {
        "sites": n,
        "dim": dim,
        "clusters": n_clusters,
        "k": params.k,
        "t": params.t,
        "scale_bits": params.scale_bits,
        "moduli": list(params.moduli),
        "dropped": len(dropped),
        "answers_used": params.quadratic_threshold,
        "correct": correct,
        "max_abs_error_float": float_error,
        "wraparound_bound": bound,
        "field_max_signed": params.field.max_signed,
        "seconds_key_setup_per_site": seconds_key_setup_site,
        "seconds_key_setup_all_sites": seconds_key_setup_all,
        "seconds_encode_per_site": statistics.mean(encode_s),
        "seconds_encrypt_per_site": statistics.mean(encrypt_s),
        "seconds_coded_distance_per_site": statistics.mean(coded_s),
        "seconds_site_total": per_site,
        "seconds_site_total_max": max(
            a + b + c for a, b, c in zip(encode_s, encrypt_s, coded_s, strict=True)
        ),
        "seconds_decode_server": seconds_decode,
        "bytes_up_per_site": statistics.mean(bytes_shares) + statistics.mean(bytes_answer),
        "bytes_up_per_site_shares": statistics.mean(bytes_shares),
        "bytes_up_per_site_answer": statistics.mean(bytes_answer),
        "bytes_plaintext_z_per_site": dim * 4,
        "seconds_plaintext_distances_all": seconds_plain,
        "ratio_vs_plaintext": (per_site * n + seconds_decode) / seconds_plain,
    }
    line = json.dumps(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
