"""Deterministic split of an embedded data set across sites and visual domains."""

from __future__ import annotations

import numpy as np


def domain_of(partition_id: int, num_domains: int) -> int:
    """The visual domain a site belongs to: sites are dealt out round-robin."""
    return partition_id % num_domains


def partition_indices(
    labels: np.ndarray, num_partitions: int, num_domains: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """Split sample indices over sites: one domain per site, Dirichlet label skew within it.

    Every sample is first dealt to exactly one domain (a seeded permutation cut into
    ``num_domains`` near-equal parts); each domain's samples are then shared among the sites
    of that domain with Flower Datasets' :class:`DirichletPartitioner`.

    Parameters
    ----------
    labels : np.ndarray
        ``(N,)`` integer class labels.
    num_partitions : int
        Number of sites.
    num_domains : int
        Number of visual domains (``<= num_partitions``).
    alpha : float
        Dirichlet concentration; smaller means more label skew.
    seed : int
        Seed of the whole split; the same seed gives the same split on every site.

    Returns
    -------
    list of np.ndarray
        Sorted sample indices of each site; pairwise disjoint, together covering every sample.
    """
    if not 1 <= num_domains <= num_partitions:
        raise ValueError(
            f"num_domains: expected 1 <= num_domains <= num_partitions ({num_partitions}), "
            f"got {num_domains}"
        )
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    result: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * num_partitions
    for domain, members in enumerate(np.array_split(order, num_domains)):
        sites = [p for p in range(num_partitions) if domain_of(p, num_domains) == domain]
        if len(sites) == 1:
            result[sites[0]] = np.sort(members)
            continue
        table = datasets.Dataset.from_dict(
            {"label": labels[members].tolist(), "index": members.tolist()}
        )
        partitioner = DirichletPartitioner(
            num_partitions=len(sites),
            partition_by="label",
            alpha=alpha,
            min_partition_size=max(1, min(10, len(members) // (4 * len(sites)))),
            self_balancing=True,
            seed=seed + domain,
        )
        partitioner.dataset = table
        for local, site in enumerate(sites):
            result[site] = np.sort(np.asarray(partitioner.load_partition(local)["index"]))
    return result


def train_test_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into train and test positions (test gets at least one)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(test_fraction * n))) if n > 1 else 0
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def label_convention(group: int, num_classes: int) -> np.ndarray:
    """The class convention of a site group in a conflicting-label setting.

    Group ``g`` names the image of true class ``y`` as class ``(y + g) mod num_classes``: group 0
    keeps the data set's convention, every other group shifts all names by ``g``. This is the
    permuted-label construction of the clustered-FL literature (label-swapped clusters in
    Sattler et al., 2020, CFL; permuted-label clusters in Ghosh et al., 2020, IFCA), taken to the
    limit where two groups disagree on *every* class, so no single shared classifier (here: one
    shared prompt ``P_G`` over fixed class names) can serve two groups.

    Parameters
    ----------
    group : int
        The site's group, ``>= 0`` (``partition_id mod num_domains``).
    num_classes : int
        Number of classes, ``>= 2``; groups ``g`` and ``g + num_classes`` share a convention.

    Returns
    -------
    np.ndarray
        ``(num_classes,)`` int64 permutation ``perm`` with ``perm[y]`` the label group ``group``
        gives an image of true class ``y``.
    """
    if group < 0 or num_classes < 2:
        raise ValueError(f"expected group >= 0 and num_classes >= 2, got {group}, {num_classes}")
    return (np.arange(num_classes, dtype=np.int64) + group) % num_classes
