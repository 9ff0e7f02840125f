"""Settings a site reads from the run config, and where its site configuration comes from.

Torch-free on purpose: the key-setup and SecPC handlers import this in a fresh process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .site_config import SiteConfig, SiteConfigError, load_site_config, simulated_site_config


@dataclass(frozen=True)
class ClientSettings:
    """Federation-wide settings a site reads from the run config.

    Attributes
    ----------
    backbone : str
        ``two-tower`` (offline default) or ``clip:<checkpoint or path>``.
    n_ctx : int
        Number of context vectors.
    ctx_init : str
        Phrase initialising ``P_G`` (empty: seeded random).
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
    sim_max_images : int
        At most this many images per simulated site (0: all of its partition).
    seed : int
        Federation seed.
    """

    backbone: str
    n_ctx: int
    ctx_init: str
    run_name: str
    dataset: str
    num_domains: int
    dirichlet_alpha: float
    sim_state_root: str
    sim_device: str
    seed: int
    sim_max_images: int = 0

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
        # The ServerApp checks these before any site works (server_app/config_check.py); a site
        # repeats the checks it depends on so a bad value is named here too, not deep in the
        # data split or the prompt learner.
        for key, default, ok, words in (
            ("n-ctx", 4, lambda v: v >= 1, "an integer >= 1"),
            ("num-domains", 4, lambda v: 1 <= v <= 4, "an integer in [1, 4]"),
            ("dirichlet-alpha", 0.5, lambda v: v > 0, "a number > 0"),
            ("sim-max-images", 0, lambda v: v >= 0, "an integer >= 0 (0: no cap)"),
        ):
            value = get(key, default)
            if not ok(value):
                raise ValueError(f"run config '{key}' = {value!r}: expected {words}")
        return cls(
            backbone=get("backbone", "two-tower"),
            n_ctx=get("n-ctx", 4),
            ctx_init=get("ctx-init", "a photo of a"),
            run_name=get("run-name", "secfpp"),
            dataset=get("dataset", "digits-domains"),
            num_domains=get("num-domains", 4),
            dirichlet_alpha=float(get("dirichlet-alpha", 0.5)),
            sim_state_root=get("sim-state-root", "~/.cache/secfpp/sim"),
            sim_device=get("device", "auto"),
            seed=seed,
            sim_max_images=get("sim-max-images", 0),
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
            max_images=settings.sim_max_images,
        )
    raise SiteConfigError(
        "<node-config>",
        "site-config",
        "a path to the site's YAML file (flower-supernode --node-config "
        "'site-config=\"/abs/site.yaml\"')",
    )
