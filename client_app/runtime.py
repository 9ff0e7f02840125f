"""Everything a site needs to train, built once per process and reused across messages.

In simulation one worker process serves many sites and in deployment each message starts a
fresh process, so the backbone and a site's cached features are kept in module-level caches
keyed by what determines them.
"""

from __future__ import annotations

import logging
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
from .site_config import SiteConfig, SiteConfigError, load_site_config, simulated_site_config

log = logging.getLogger("secfpp.client")


@dataclass(frozen=True)
class ClientSettings:
    """Federation-wide settings a site reads from the run config.

    Attributes
    ----------
    backbone : str
        ``two-tower`` (offline default) or ``clip:<checkpoint or path>``.
    prompt : PromptConfig
        Context length and initialisation.
    run_name : str
        Name under which private prompt parts are stored (stable across a resume).
    dataset : str
        Embedded data source of simulated sites.
    num_domains : int
        Visual domains of simulated sites.
    dirichlet_alpha : float
        Label skew of simulated sites.
    sim_state_root : str
        Parent folder of simulated sites' state directories.
    sim_device : str
        Device of simulated sites.
    seed : int
        Federation seed.
    """

    backbone: str
    prompt: PromptConfig
    run_name: str
    dataset: str
    num_domains: int
    dirichlet_alpha: float
    sim_state_root: str
    sim_device: str
    seed: int

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> ClientSettings:
        """Read the keys a site needs, with the defaults of ``pyproject.toml``."""

        def get(key: str, default: Any) -> Any:
            value = run_config.get(key, default)
            if type(value) is not type(default) and not (
                isinstance(default, float) and isinstance(value, int)
            ):
                raise ValueError(
                    f"run config '{key}': expected {type(default).__name__}, got {value!r}"
                )
            return value

        seed = get("seed", 0)
        return cls(
            backbone=get("backbone", "two-tower"),
            prompt=PromptConfig(
                n_ctx=get("n-ctx", 4), ctx_init=get("ctx-init", "a photo of a"), seed=seed
            ),
            run_name=get("run-name", "secfpp"),
            dataset=get("dataset", "digits-domains"),
            num_domains=get("num-domains", 4),
            dirichlet_alpha=float(get("dirichlet-alpha", 0.5)),
            sim_state_root=get("sim-state-root", "~/.cache/secfpp/sim"),
            sim_device=get("device", "auto"),
            seed=seed,
        )


def site_config_from_context(node_config: dict[str, Any], settings: ClientSettings) -> SiteConfig:
    """The site's configuration: its YAML file in deployment, generated in simulation.

    Parameters
    ----------
    node_config : dict
        The SuperNode's node config: ``site-config`` (path to the YAML) in deployment, or the
        simulation engine's ``partition-id`` and ``num-partitions``.
    settings : ClientSettings
        Federation-wide settings (used for simulated sites).

    Raises
    ------
    SiteConfigError
        If neither form is present, or the file is invalid.
    """
    if "site-config" in node_config:
        return load_site_config(str(node_config["site-config"]))
    if "partition-id" in node_config and "num-partitions" in node_config:
        return simulated_site_config(
            partition_id=int(node_config["partition-id"]),
            num_partitions=int(node_config["num-partitions"]),
            state_root=settings.sim_state_root,
            source=settings.dataset,
            seed=settings.seed,
            device=settings.sim_device,
            num_domains=min(settings.num_domains, int(node_config["num-partitions"])),
            dirichlet_alpha=settings.dirichlet_alpha,
        )
    raise SiteConfigError(
        "<node-config>",
        "site-config",
        "a path to the site's YAML file (flower-supernode --node-config "
        "'site-config=\"/abs/site.yaml\"')",
    )


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


_RUNTIMES: dict[tuple, SiteRuntime] = {}


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
    key = (config, settings.backbone, settings.prompt)
    if key in _RUNTIMES:
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
        text_inputs=backbone.tokenize(list(data.class_names), settings.prompt.n_ctx).to(device),
        train_features=train_features.to(device),
        test_features=test_features.to(device),
        train_labels=torch.from_numpy(data.train_labels).to(device),
        test_labels=torch.from_numpy(data.test_labels).to(device),
        global_init=initial_global_context(backbone, settings.prompt),
    )
    _RUNTIMES[key] = runtime
    return runtime
