"""Plaintext study of SecPC clustering: site descriptors and the verified per-round selection.

No federation code runs: every simulated site is built the way the ClientApp builds it
(:func:`client_app.runtime.site_runtime` with the simulation's site configuration), trains its own
prompt locally each round (:mod:`prompts.training`), computes its descriptor
(:mod:`prompts.descriptor`), and the server side sees exactly what SecPC would decode: the scaled
distances of :func:`secpc.protocol.plain_scaled_distances` for the groups the rule asks for.

Example::

    python -m benchmarks.cluster_study --dataset digits-domains --sites 12 --rounds 5

Optionally (``--share``) the study also averages ``P_G`` within share groups after each round
(``none``: never; ``all``: over every site; ``oracle``: within the true domain; ``selected``:
within the clusters the rule chose that round) and reports personalized test accuracy, to ask
whether a shared part is worth sharing by cluster (``--shared-part``: ``P_G``, a class-specific
``P_G``, or an image-side adapter, :mod:`prompts.adapter`). Prints one JSON object as its last
line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

DATASETS = ("digits-domains", "fashion-mnist-domains", "digits-label-swap")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults: the embedded default federation)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster_study", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dataset", default="digits-domains", choices=DATASETS)
    parser.add_argument("--sites", type=int, default=12)
    parser.add_argument("--num-domains", type=int, default=4)
    parser.add_argument("--dirichlet-alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--local-epochs", type=int, default=2, help="local epochs per round (0: P_i = P_init)"
    )
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--max-images", type=int, default=0, help="images per site (0: all; for Fashion-MNIST)"
    )
    parser.add_argument("--block-dim", type=int, default=16)
    parser.add_argument("--mean-weight", type=float, default=1.0)
    parser.add_argument("--std-weight", type=float, default=1.0)
    parser.add_argument("--prompt-weight", type=float, default=0.0)
    parser.add_argument(
        "--z-scale-bits", type=int, default=12, help="quantize z as SecPC would (2^-bits grid)"
    )
    parser.add_argument("--z-bound", type=float, default=8.0, help="clip z as SecPC would")
    parser.add_argument("--max-clusters", type=int, default=4)
    parser.add_argument("--min-cluster-size", type=int, default=3)
    parser.add_argument("--max-groups", type=int, default=8)
    parser.add_argument("--score-threshold", type=float, default=None, help="default: the rule's")
    parser.add_argument("--margin", type=float, default=None, help="default: the rule's")
    parser.add_argument(
        "--share", default="", help="comma list of none,all,oracle,selected (P_G averaging)"
    )
    parser.add_argument(
        "--shared-part",
        default="generic",
        choices=("generic", "class", "adapter"),
        help="what --share averages: P_G as one context for all classes (generic), one "
        "context per class (class), with P_L the private residual either way, or an "
        "image-side residual linear map (adapter; the whole prompt then stays private)",
    )
    parser.add_argument(
        "--adapter-rank",
        type=int,
        default=0,
        help="with --shared-part adapter: 0 for a full feature_dim x feature_dim map, r for rank r",
    )
    parser.add_argument(
        "--rule-seeds",
        type=int,
        default=0,
        help="with --local-epochs 0: also rerun the rule with seeds 0..N-1 on the fixed descriptors",
    )
    parser.add_argument("--state-root", default="~/.cache/secfpp/study")
    parser.add_argument("--out", default=None, help="write the JSON result here too")
    return parser.parse_args(argv)


def load_sites(args: argparse.Namespace) -> list:
    """The runtimes of all simulated sites, as the ClientApp builds them."""
    from client_app.data import CONFLICT_SOURCES, label_convention
    from client_app.data.partition import domain_of
    from client_app.runtime import site_runtime
    from client_app.settings import ClientSettings
    from client_app.site_config import simulated_site_config

    base = CONFLICT_SOURCES.get(args.dataset, args.dataset)
    settings = ClientSettings.from_run_config(
        {
            "dataset": base,
            "num-domains": args.num_domains,
            "dirichlet-alpha": float(args.dirichlet_alpha),
            "seed": args.seed,
            "device": "cpu",
            "sim-state-root": str(Path(args.state_root).expanduser() / base),
        }
    )
    runtimes = []
    for i in range(args.sites):
        # The node config the simulation engine gives site i: {"partition-id": i, ...}.
        config = simulated_site_config(
            partition_id=i,
            num_partitions=args.sites,
            state_root=settings.sim_state_root,
            source=base,
            seed=args.seed,
            device="cpu",
            num_domains=min(args.num_domains, args.sites),
            dirichlet_alpha=settings.dirichlet_alpha,
        )
        if args.max_images:
            config = dataclasses.replace(
                config, data=dataclasses.replace(config.data, max_images=args.max_images)
            )
        runtime = site_runtime(config, settings)
        if args.dataset in CONFLICT_SOURCES:
            # The same images and split as the base source; the group's class convention is
            # what client_app.data.load_site_data applies for this source (site_config does not
            # list the source yet, so it is applied here on a copy).
            perm = label_convention(domain_of(i, args.num_domains), len(runtime.data.class_names))
            lookup = __import__("torch").from_numpy(perm)
            runtime = dataclasses.replace(
                runtime,
                train_labels=lookup[runtime.train_labels],
                test_labels=lookup[runtime.test_labels],
            )
        runtimes.append(runtime)
    return runtimes


def _old_rule(z: np.ndarray, rounds_labels: list, config, r: int) -> np.ndarray:
    """The current rule (landmarks, then Lloyd steps) on the same descriptors, for comparison."""
    from secpc.protocol import plain_scaled_distances
    from strategies.clustering import (
        groups_from_labels,
        initial_labels,
        landmark_groups,
        lloyd_step,
        true_sq_distances,
    )

    n = z.shape[0]
    zs = {i: z[i] for i in range(n)}
    if not rounds_labels:
        groups = landmark_groups(n, config)
        scaled = plain_scaled_distances(zs, n, groups)
        sizes = np.array([len(g) for g in groups])
        return initial_labels(true_sq_distances(scaled, sizes), config, groups)
    labels = rounds_labels[-1]
    groups = groups_from_labels(labels)
    scaled = plain_scaled_distances(zs, n, groups)
    sizes = np.array([len(g) for g in groups])
    return lloyd_step(labels, true_sq_distances(scaled, sizes), None, config)


def run_study(args: argparse.Namespace, runtimes: list, share: str) -> dict:
    """Train locally for ``args.rounds`` rounds, cluster every round, optionally share ``P_G``."""
    import torch
    from sklearn.metrics import adjusted_rand_score

    from client_app.data.partition import domain_of
    from prompts.descriptor import DescriptorConfig, site_descriptor
    from prompts.training import TrainConfig, evaluate_prompt, train_prompt
    from secpc.protocol import plain_scaled_distances
    from strategies.clustering import (
        ClusteringConfig,
        SelectionConfig,
        partition_scores,
        plan_groups,
        select_clusters,
    )

    n = len(runtimes)
    truth = np.array([domain_of(i, args.num_domains) for i in range(n)])
    descriptor = DescriptorConfig(
        block_dim=args.block_dim,
        mean_weight=args.mean_weight,
        std_weight=args.std_weight,
        prompt_weight=args.prompt_weight,
        seed=args.seed,
    )
    overrides = {
        k: v
        for k, v in (("score_threshold", args.score_threshold), ("margin", args.margin))
        if v is not None
    }
    selection = SelectionConfig(
        max_clusters=args.max_clusters,
        min_cluster_size=args.min_cluster_size,
        max_groups=args.max_groups,
        seed=args.seed,
        **overrides,
    )
    old_config = ClusteringConfig(
        max_clusters=args.max_clusters, min_cluster_size=args.min_cluster_size, seed=args.seed
    )
    prompts = [rt.new_prompt() for rt in runtimes]
    if args.shared_part == "class":
        from prompts.learner import HierarchicalPrompt

        prompts = [
            HierarchicalPrompt(p.global_ctx.detach().expand(p.n_cls, -1, -1), p.n_cls)
            for p in prompts
        ]
    adapters = [None] * n
    if args.shared_part == "adapter":
        from prompts.adapter import FeatureAdapter

        adapters = [
            FeatureAdapter(rt.train_features.shape[1], rank=args.adapter_rank, seed=args.seed)
            for rt in runtimes
        ]
    state = None
    old_labels: list[np.ndarray] = []
    per_round = []
    for r in range(1, args.rounds + 1):
        train = TrainConfig(
            epochs=args.local_epochs,
            batch_size=args.batch_size,
            lr=args.learning_rate,
            seed=args.seed * 1_000 + r,
        )
        z = []
        for rt, prompt, adapter in zip(runtimes, prompts, adapters, strict=True):
            if args.local_epochs:
                train_prompt(
                    rt.backbone,
                    prompt,
                    rt.text_inputs,
                    rt.train_features,
                    rt.train_labels,
                    train,
                    adapter=adapter,
                )
            offset = (prompt.personalized() - rt.global_init.unsqueeze(0)).double().numpy()
            z.append(site_descriptor(offset, rt.train_features.numpy(), descriptor))
        # What SecPC encodes: z clipped to [-z_bound, z_bound] and rounded to the 2^-bits grid.
        z = np.round(np.clip(np.stack(z), -args.z_bound, args.z_bound) * 2.0**args.z_scale_bits)
        z = z / 2.0**args.z_scale_bits
        groups = plan_groups(n, state, selection, r)
        scaled = plain_scaled_distances({i: z[i] for i in range(n)}, n, groups)
        _, scores = partition_scores(scaled, groups, selection.max_clusters)
        state = select_clusters(scaled, groups, state, selection, r)
        labels = np.asarray(state.labels)
        old_labels.append(_old_rule(z, old_labels, old_config, r))
        row = {
            "round": r,
            "k": state.k,
            "ari": float(adjusted_rand_score(truth, labels)),
            "score": None if np.isnan(state.score) else round(state.score, 4),
            # The best score any partition of the measured groups reached: on a federation
            # without domain shift this is what the acceptance threshold must stay above.
            "best_candidate_score": round(float(scores.max()), 4) if scores.size else None,
            "groups_measured": len(groups),
            "old_rule_k": int(np.unique(old_labels[-1]).size),
            "old_rule_ari": float(adjusted_rand_score(truth, old_labels[-1])),
            "max_abs_z": float(np.abs(z).max()),
        }
        if share:
            share_labels = {
                "none": np.arange(n),
                "all": np.zeros(n, dtype=int),
                "oracle": truth,
                "selected": labels,
            }[share]
            # The shared part: P_G, or the adapter's parameters (P_G then stays private).
            shared = [
                [p.global_ctx] if a is None else list(a.parameters())
                for p, a in zip(prompts, adapters, strict=True)
            ]
            with torch.no_grad():
                for c in np.unique(share_labels):
                    members = np.flatnonzero(share_labels == c)
                    for j in range(len(shared[members[0]])):
                        mean = torch.stack([shared[i][j] for i in members]).mean(0)
                        for i in members:
                            shared[i][j].copy_(mean)
            acc = [
                evaluate_prompt(
                    rt.backbone, p, rt.text_inputs, rt.test_features, rt.test_labels, True, a
                )[1]
                for rt, p, a in zip(runtimes, prompts, adapters, strict=True)
            ]
            row["mean_accuracy"] = float(np.mean(acc))
            row["worst_accuracy"] = float(np.min(acc))
        per_round.append(row)
        print(json.dumps(row), file=sys.stderr)
    return {
        "share": share or None,
        "shared_part": args.shared_part,
        "adapter_rank": args.adapter_rank if args.shared_part == "adapter" else None,
        "k_per_round": [row["k"] for row in per_round],
        "ari_per_round": [row["ari"] for row in per_round],
        "old_rule_k_per_round": [row["old_rule_k"] for row in per_round],
        "old_rule_ari_per_round": [row["old_rule_ari"] for row in per_round],
        "per_round": per_round,
        "final_labels": list(state.labels),
        "true_domains": truth.tolist(),
        "descriptor": dataclasses.asdict(descriptor),
        "selection": dataclasses.asdict(selection),
    }


def rule_seed_sweep(args: argparse.Namespace, runtimes: list) -> dict:
    """The rule's own randomness (landmarks, k-means) over many seeds, on fixed descriptors."""
    from sklearn.metrics import adjusted_rand_score

    from client_app.data.partition import domain_of
    from prompts.descriptor import DescriptorConfig, site_descriptor
    from secpc.protocol import plain_scaled_distances
    from strategies.clustering import (
        SelectionConfig,
        partition_scores,
        plan_groups,
        select_clusters,
    )

    n = len(runtimes)
    truth = np.array([domain_of(i, args.num_domains) for i in range(n)])
    descriptor = DescriptorConfig(
        block_dim=args.block_dim,
        mean_weight=args.mean_weight,
        std_weight=args.std_weight,
        prompt_weight=args.prompt_weight,
        seed=args.seed,
    )
    z = np.stack(
        [site_descriptor(np.zeros(1), rt.train_features.numpy(), descriptor) for rt in runtimes]
    )
    z = np.round(np.clip(z, -args.z_bound, args.z_bound) * 2.0**args.z_scale_bits)
    z = z / 2.0**args.z_scale_bits
    finals = []
    for seed in range(args.rule_seeds):
        overrides = {
            k: v
            for k, v in (("score_threshold", args.score_threshold), ("margin", args.margin))
            if v is not None
        }
        config = SelectionConfig(
            max_clusters=args.max_clusters,
            min_cluster_size=args.min_cluster_size,
            max_groups=args.max_groups,
            seed=seed,
            **overrides,
        )
        state, ks, best = None, [], -1.0
        for r in range(1, args.rounds + 1):
            groups = plan_groups(n, state, config, r)
            scaled = plain_scaled_distances({i: z[i] for i in range(n)}, n, groups)
            _, scores = partition_scores(scaled, groups, config.max_clusters)
            best = max(best, float(scores.max()) if scores.size else -1.0)
            state = select_clusters(scaled, groups, state, config, r)
            ks.append(state.k)
        finals.append(
            {
                "seed": seed,
                "k": ks,
                "final_ari": float(adjusted_rand_score(truth, state.labels)),
                "best_candidate_score": round(best, 4),
            }
        )
    return {
        "seeds": args.rule_seeds,
        "final_k_counts": {
            str(k): sum(f["k"][-1] == k for f in finals)
            for k in sorted({f["k"][-1] for f in finals})
        },
        "final_ari_min": min(f["final_ari"] for f in finals),
        "final_ari_mean": float(np.mean([f["final_ari"] for f in finals])),
        "best_candidate_score_max": max(f["best_candidate_score"] for f in finals),
        "per_seed": finals,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the study and print one JSON object as the last line."""
    import torch

    args = parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    start = time.perf_counter()
    runtimes = load_sites(args)
    loaded = time.perf_counter() - start
    shares = [s for s in args.share.split(",") if s] or [""]
    bad = [s for s in shares if s not in ("", "none", "all", "oracle", "selected")]
    if bad:
        raise SystemExit(f"--share: unknown value {bad[0]!r}")
    runs = [run_study(args, runtimes, share) for share in shares]
    sweep = rule_seed_sweep(args, runtimes) if args.rule_seeds and not args.local_epochs else None
    result = {
        "dataset": args.dataset,
        "sites": args.sites,
        "num_domains": args.num_domains,
        "dirichlet_alpha": args.dirichlet_alpha,
        "seed": args.seed,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "max_images": args.max_images,
        "runs": runs,
        "rule_seed_sweep": sweep,
        "seconds_load": round(loaded, 1),
        "seconds_total": round(time.perf_counter() - start, 1),
    }
    if args.out:
        out = Path(args.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
