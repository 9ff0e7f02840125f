"""A site's data: which images it holds, rendered and split, from its site configuration."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..site_config import SiteConfig
from .domains import DOMAINS, render
from .partition import domain_of, label_convention, partition_indices, train_test_split
from .sources import DIGIT_NAMES, FASHION_NAMES, digits_glyphs, fashion_mnist_glyphs, image_folder

__all__ = ["SiteData", "load_site_data", "DOMAINS", "CONFLICT_SOURCES", "label_convention"]

# Conflicting-label settings: the base embedded source's images and visual domains, with the
# site group's class convention applied to the labels (group = visual domain, so a site's image
# statistics reveal its group; see label_convention for the literature and the choice).
CONFLICT_SOURCES = {"digits-label-swap": "digits-domains"}


@dataclass(frozen=True)
class SiteData:
    """One site's images, split into train and test.

    Attributes
    ----------
    train_images, test_images : np.ndarray
        ``(N, S, S, 3)`` uint8 RGB images.
    train_labels, test_labels : np.ndarray
        ``(N,)`` int64 class indices into ``class_names``.
    class_names : tuple of str
        Names used as the text side of the classifier.
    domain : str
        Visual domain (embedded sources) or ``image-folder``.
    indices : np.ndarray
        Indices of the site's samples in the source data set (embedded sources).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    domain: str
    indices: np.ndarray


def load_site_data(config: SiteConfig) -> SiteData:
    """Load, render and split the data a site configuration points at.

    Parameters
    ----------
    config : SiteConfig
        The site's validated configuration.

    Returns
    -------
    SiteData
        The site's train and test images.
    """
    d = config.data
    base = CONFLICT_SOURCES.get(d.source, d.source)
    if base == "image-folder":
        images, labels, names = image_folder(d.root, d.class_names, d.image_size)
        indices = np.arange(len(labels))
        domain = "image-folder"
    else:
        glyphs, labels, names = _embedded(base)
        parts = _partition(base, d.num_partitions, d.num_domains, d.dirichlet_alpha, config.seed)
        indices = parts[d.partition_id]
        domain = DOMAINS[domain_of(d.partition_id, d.num_domains)]
        labels = labels[indices]
        if d.source in CONFLICT_SOURCES:
            group = domain_of(d.partition_id, d.num_domains)
            labels = label_convention(group, len(names))[labels]
        images = None  # rendered after the optional subset, to skip work on unused images
    rng = np.random.default_rng([config.seed, d.partition_id, 1])
    if d.max_images and len(labels) > d.max_images:
        keep = np.sort(rng.choice(len(labels), size=d.max_images, replace=False))
        indices, labels = indices[keep], labels[keep]
        if images is not None:
            images = images[keep]
    if images is None:
        images = render(
            glyphs[indices], domain, d.image_size, seed=config.seed * 1_000_003 + d.partition_id
        )
    train, test = train_test_split(
        len(labels), d.test_fraction, seed=config.seed * 7919 + d.partition_id
    )
    return SiteData(
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[test],
        test_labels=labels[test],
        class_names=tuple(names),
        domain=domain,
        indices=indices,
    )


# One simulation worker builds many sites of the same split in turn (1,000 in the scale run):
# the source and its partition are read and computed once per process, read-only.
@lru_cache(maxsize=2)
def _embedded(base: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    glyphs, labels = digits_glyphs() if base == "digits-domains" else fashion_mnist_glyphs()
    glyphs.setflags(write=False)
    labels.setflags(write=False)
    return glyphs, labels, tuple(DIGIT_NAMES if base == "digits-domains" else FASHION_NAMES)


@lru_cache(maxsize=4)
def _partition(
    base: str, num_partitions: int, num_domains: int, alpha: float, seed: int
) -> tuple[np.ndarray, ...]:
    parts = partition_indices(_embedded(base)[1], num_partitions, num_domains, alpha, seed)
    for part in parts:
        part.setflags(write=False)
    return tuple(parts)
