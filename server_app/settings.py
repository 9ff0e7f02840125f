"""The server's view of the run config: every key it reads, typed and validated."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from strategies.base import LocalTraining


@dataclass(frozen=True)
class ServerSettings:
    """Federation-wide settings the ServerApp reads from ``[tool.flwr.app.config]``.

    Attributes
    ----------
    strategy : str
        Which strategy runs (see :mod:`strategies.registry`).
    num_server_rounds : int
        Training rounds (``zeroshot`` always runs one evaluation round).
    local_epochs, learning_rate, batch_size
        Local training hyperparameters sent to the sites.
    min_sites : int
        Sites that must be connected before a round starts.
    fraction_train : float
        Share of connected sites sampled for training each round.
    round_timeout : float
        Seconds the server waits for replies in one exchange.
    seed : int
        Federation seed (sampling on the server; data split and initialisation on sites).
    run_name : str
        Name of the run: results go to ``<output-dir>/<run-name>/``.
    output_dir : str
        Folder that receives one sub-folder of results per run.
    resume : bool
        Continue from the checkpoint of ``run-name`` (``secfpp`` and ``clustered``).
    secure_k, secure_t : int
        LCC data slices and colluding parties tolerated.
    update_scale_bits, update_bound : int, float
        Quantization of the ``P_G`` update.
    z_dim, z_scale_bits, z_bound : int, int, float
        Dimension and quantization of the reduced personalized prompt.
    max_clusters, min_cluster_size : int
        Bounds of the adaptive clustering.
    split_ratio, merge_ratio : float
        Split and merge thresholds of the adaptive clustering.
    site_identities : str
        ``site-identities.yaml`` of the federation (empty: trust on first use, simulation only).
    cluster_rule, cluster_score_threshold : str, float
        SecPC's clustering rule (``verified`` or ``lloyd``) and the verified rule's acceptance
        score.
    cluster_oracle : bool
        Simulation only: use the true domains as clusters (a yardstick, not a method).
    descriptor_prompt_weight : float
        Weight of the prompt block in the site descriptor (0: image statistics only).
    num_domains : int
        Simulation only: domains of the simulated sites (for the oracle).
    committee_size : int
        SecFPP's committee (the sites that receive shares and answer); 0 chooses automatically.
    site_wait_timeout : float
        Seconds the server waits for enough connected sites before round 1 fails, or a later
        round is skipped.
    dp, dp_epsilon, dp_delta, dp_clip : str, float, float, float
        Differential privacy: ``none``, ``distributed`` (noise on the secure cluster sums) or
        ``dp-sgd`` (per-example clipping and noise on each site); the target budget for the
        whole run and the clipping norm.
    """

    strategy: str = "secfpp"
    num_server_rounds: int = 5
    local_epochs: int = 2
    learning_rate: float = 0.01
    batch_size: int = 32
    min_sites: int = 2
    fraction_train: float = 1.0
    round_timeout: float = 3600.0
    seed: int = 0
    run_name: str = "secfpp"
    output_dir: str = "outputs"
    resume: bool = False
    secure_k: int = 1
    secure_t: int = 2
    update_scale_bits: int = 24
    update_bound: float = 1.0
    z_dim: int = 32
    z_scale_bits: int = 12
    z_bound: float = 8.0
    max_clusters: int = 4
    min_cluster_size: int = 3
    split_ratio: float = 2.0
    merge_ratio: float = 0.5
    site_identities: str = ""
    site_wait_timeout: float = 300.0
    committee_size: int = 0
    cluster_rule: str = "verified"
    cluster_score_threshold: float = 0.35
    cluster_oracle: bool = False
    descriptor_prompt_weight: float = 0.0
    num_domains: int = 4
    dp: str = "none"
    dp_epsilon: float = 8.0
    dp_delta: float = 1e-5
    dp_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.num_server_rounds < 1:
            raise ValueError(
                "run config 'num-server-rounds': expected an integer >= 1, "
                f"got {self.num_server_rounds}"
            )
        if self.min_sites < 1:
            raise ValueError(
                f"run config 'min-sites': expected an integer >= 1, got {self.min_sites}"
            )
        if not 0.0 < self.fraction_train <= 1.0:
            raise ValueError(
                "run config 'fraction-train': expected a number in (0, 1], "
                f"got {self.fraction_train}"
            )
        if not self.round_timeout > 0:
            raise ValueError(
                f"run config 'round-timeout': expected seconds > 0, got {self.round_timeout}"
            )
        if not self.run_name or "/" in self.run_name or self.run_name in (".", ".."):
            raise ValueError(
                f"run config 'run-name': expected a plain folder name, got {self.run_name!r}"
            )
        LocalTraining(self.local_epochs, self.learning_rate, self.batch_size)

    @property
    def training(self) -> LocalTraining:
        """The hyperparameters sent to sites."""
        return LocalTraining(self.local_epochs, self.learning_rate, self.batch_size)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> ServerSettings:
        """Pick this class's keys out of a run config, checking each value's type.

        Keys the server does not read (the sites' keys) are ignored here.
        """
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in run_config:
                continue
            value, default = run_config[key], f.default
            if (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            if type(value) is not type(default):
                raise ValueError(
                    f"run config '{key}': expected {type(default).__name__}, got {value!r}"
                )
            kwargs[f.name] = value
        return cls(**kwargs)
