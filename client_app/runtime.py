"""Everything a site needs to train, built once per process and reused across messages.

In simulation one worker process serves many sites and in deployment each message starts a
fresh process, so the backbone and a site's cached features are kept in module-level caches
keyed by what determines them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from prompts.backbones import load_backbone
from prompts.device import resolve_device
from prompts.features import cached_image_features
from prompts.learner import HierarchicalPrompt, PromptConfig, initial_global_context

from .data import SiteData, load_site_data
from .settings import ClientSettings
from .site_config import SiteConfig

log = logging.getLogger("secfpp.client")


@lru_cache(maxsize=4)
def _backbone(name: str, device: str):
    return load_backbone(name, device=device)


@dataclass
class SiteRuntime:
    """A site's frozen model, data, cached features and initial prompt.

    Attributes
    ----------
    config : SiteConfig
        The site's configuration.
    device : torch.device
        Where training runs.
    backbone : PromptableBackbone
        Frozen two-tower model.
    data : SiteData
        The site's images (for sizes and class names).
    text_inputs : TextInputs
        Class names tokenized once.
    train_features, test_features : torch.Tensor
        Cached image features on ``device``.
    train_labels, test_labels : torch.Tensor
        Labels on ``device``.
    global_init : torch.Tensor
        The ``P_G`` every site starts from.
    """

    config: SiteConfig
    device: torch.device
    backbone: Any
    data: SiteData
    text_inputs: Any
    train_features: torch.Tensor
    test_features: torch.Tensor
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    global_init: torch.Tensor

    def new_prompt(self) -> HierarchicalPrompt:
        """A fresh prompt at the federation's initial ``P_G`` and zero ``P_L``."""
        return HierarchicalPrompt(self.global_init, len(self.data.class_names)).to(self.device)


#: Runtimes kept per process, least recently used dropped first: a deployed site's process
#: holds one, but a simulation worker serves every simulated site in turn (1,000 in the scale
#: run) and must not keep all their images; a dropped site reloads its features from disk.
MAX_RUNTIMES = 32
_RUNTIMES: OrderedDict[tuple, SiteRuntime] = OrderedDict()


def site_runtime(config: SiteConfig, settings: ClientSettings) -> SiteRuntime:
    """Build (or reuse) the runtime of one site.

    Parameters
    ----------
    config : SiteConfig
        The site's configuration.
    settings : ClientSettings
        Federation-wide settings (backbone and prompt shape).

    Returns
    -------
    SiteRuntime
        Cached per process, keyed by the site configuration and the settings.
    """
    prompt_config = PromptConfig(
        n_ctx=settings.n_ctx, ctx_init=settings.ctx_init, seed=settings.seed
    )
    key = (config, settings.backbone, prompt_config)
    if key in _RUNTIMES:
        _RUNTIMES.move_to_end(key)
        return _RUNTIMES[key]
    device = resolve_device(config.device)
    backbone = _backbone(settings.backbone, str(device))
    data = load_site_data(config)
    cache = Path(config.state_path) / "features"

    def progress(line: str) -> None:
        log.info("%s: %s", config.site_id, line)

    train_features = cached_image_features(backbone, data.train_images, cache, device, log=progress)
    test_features = cached_image_features(backbone, data.test_images, cache, device, log=progress)
    runtime = SiteRuntime(
        config=config,
        device=device,
        backbone=backbone,
        data=data,
        text_inputs=backbone.tokenize(list(data.class_names), settings.n_ctx).to(device),
        train_features=train_features.to(device),
        test_features=test_features.to(device),
        train_labels=torch.from_numpy(data.train_labels).to(device),
        test_labels=torch.from_numpy(data.test_labels).to(device),
        global_init=initial_global_context(backbone, prompt_config),
    )
    _RUNTIMES[key] = runtime
    while len(_RUNTIMES) > MAX_RUNTIMES:
        _RUNTIMES.popitem(last=False)
    return runtime
