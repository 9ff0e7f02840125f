"""The per-site YAML file: schema, validation and loading.

A site engineer writes one YAML file per site and starts the SuperNode with
``--node-config 'site-config="/abs/path/site.yaml"'``. In simulation no file is needed:
:func:`simulated_site_config` builds the same object from ``partition-id``.

Every key is documented in ``deploy/site.example.yaml``. A bad file stops the site with a
:class:`SiteConfigError` naming the file, the key and what was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

DATA_SOURCES = ("digits-domains", "fashion-mnist-domains", "digits-label-swap", "image-folder")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_SITE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SiteConfigError(ValueError):
    """A site file is missing, unreadable or does not match the schema.

    Parameters
    ----------
    source : str
        The file (or ``<simulation>``) the configuration came from.
    key : str
        Dotted key that is wrong, e.g. ``data.source``.
    expected : str
        What was expected, in words.
    got : Any, optional
        The offending value, when there is one.
    """

    def __init__(self, source: str, key: str, expected: str, got: Any = None) -> None:
        self.source, self.key, self.expected, self.got = source, key, expected, got
        self.line: int | None = None
        self.column: int | None = None
        got_text = "" if got is None else f", got {got!r}"
        super().__init__(f"{source}: key '{key}': expected {expected}{got_text}")

    @classmethod
    def from_yaml_error(cls, source: str, text: str, exc: yaml.YAMLError) -> SiteConfigError:
        """A syntax error, located where the mistake is rather than where YAML noticed it.

        An unclosed quote or bracket is only detected lines later (YAML's ``problem_mark``);
        the construct left open starts at its ``context_mark``, which is the line to fix.
        """
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        p_mark = getattr(exc, "problem_mark", None)
        c_mark = getattr(exc, "context_mark", None)
        context = getattr(exc, "context", None)
        mark = c_mark if c_mark is not None and context else p_mark
        err = cls(source, "<yaml>", "valid YAML")
        if mark is None:
            message = f"{source}: invalid YAML: {problem}"
        else:
            err.line, err.column = mark.line + 1, mark.column + 1
            lines = text.splitlines()
            near = lines[mark.line].strip() if mark.line < len(lines) else ""
            message = f"{source}:{err.line}:{err.column}: invalid YAML: "
            if mark is c_mark and p_mark is not None:
                message += (
                    f"{context} here is not closed ({problem} at line {p_mark.line + 1}, "
                    f"column {p_mark.column + 1})"
                )
            else:
                message += str(problem)
            if near:
                message += f"; the line reads: {near}"
        err.args = (message,)
        return err

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


@dataclass(frozen=True)
class DataConfig:
    """Where a site's images come from.

    Attributes
    ----------
    source : str
        ``digits-domains`` (embedded default), ``fashion-mnist-domains`` (Debian package
        ``dataset-fashion-mnist``) or ``image-folder`` (``root/<class>/<image>``).
    partition_id : int
        For the embedded sources: this site's index among ``num_partitions`` sites.
    num_partitions : int
        For the embedded sources: how many sites share the data set.
    num_domains : int
        For the embedded sources: how many visual domains the sites are spread over.
    dirichlet_alpha : float
        For the embedded sources: label skew within a domain (smaller is more skewed).
    root : str
        For ``image-folder``: the folder holding one sub-folder per class.
    class_names : tuple[str, ...]
        For ``image-folder``: class folder names to use (default: all, sorted).
    test_fraction : float
        Share of the site's images held out for personalized evaluation.
    max_images : int
        Upper bound on images per site (0: no bound); a random subset is taken.
    image_size : int
        Side length images are rendered at before the backbone resizes them.
    """

    source: str = "digits-domains"
    partition_id: int = 0
    num_partitions: int = 12
    num_domains: int = 4
    dirichlet_alpha: float = 0.5
    root: str = ""
    class_names: tuple[str, ...] = ()
    test_fraction: float = 0.3
    max_images: int = 0
    image_size: int = 32


@dataclass(frozen=True)
class SiteConfig:
    """One site's settings, as read from its YAML file.

    Attributes
    ----------
    site_id : str
        Stable name of the site (letters, digits, ``_.-``); used in the key directory.
    data : DataConfig
        The site's data source.
    state_dir : str
        Folder for everything the site keeps: local prompts, cached features, keys.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:<i>``.
    seed : int
        Seed of the site's data split and local training.
    identity_key : str
        Path to the site's long-term Ed25519 private key (``secfpp``). Empty: a key is made
        once and kept in the state directory (simulation; the server then trusts it on first use).
    site_identities : str
        Path to the federation's ``site-identities.yaml`` (site id to Ed25519 public key). When
        set, the site checks every peer's signed key against it instead of trusting the
        identities the server relays.
    source : str
        Where this configuration was read from (for error messages).
    """

    site_id: str
    data: DataConfig = field(default_factory=DataConfig)
    state_dir: str = ""
    device: str = "auto"
    seed: int = 0
    identity_key: str = ""
    site_identities: str = ""
    source: str = "<memory>"

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def state_path(self) -> Path:
        """The state directory as a path (created on first use by the stores)."""
        return Path(self.state_dir).expanduser()


_TOP_KEYS = {"site-id", "data", "state-dir", "device", "seed", "identity-key", "site-identities"}
_DATA_KEYS = {f.name.replace("_", "-") for f in fields(DataConfig)}


def _expect_type(src: str, key: str, value: Any, kind: type, words: str) -> Any:
    # bool is an int in Python; a YAML `true` for a number is a mistake worth naming.
    if isinstance(value, bool) and kind is not bool:
        raise SiteConfigError(src, key, words, value)
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise SiteConfigError(src, key, words, value)
    return value


def _validate(cfg: SiteConfig) -> None:
    src, d = cfg.source, cfg.data
    if not isinstance(cfg.site_id, str) or not _SITE_ID_PATTERN.match(cfg.site_id):
        raise SiteConfigError(
            src, "site-id", "1-64 letters, digits, '_', '.', '-' (starting alnum)", cfg.site_id
        )
    if not cfg.state_dir:
        raise SiteConfigError(src, "state-dir", "a folder path for the site's state")
    if not isinstance(cfg.device, str) or not _DEVICE_PATTERN.match(cfg.device):
        raise SiteConfigError(src, "device", "auto, cpu, cuda or cuda:<index>", cfg.device)
    if d.source not in DATA_SOURCES:
        raise SiteConfigError(src, "data.source", f"one of {', '.join(DATA_SOURCES)}", d.source)
    if d.source == "image-folder":
        if not d.root:
            raise SiteConfigError(src, "data.root", "a folder with one sub-folder per class")
        if not Path(d.root).expanduser().is_dir():
            raise SiteConfigError(src, "data.root", "an existing folder", d.root)
    else:
        if d.num_partitions < 1:
            raise SiteConfigError(src, "data.num-partitions", "an integer >= 1", d.num_partitions)
        if not 0 <= d.partition_id < d.num_partitions:
            raise SiteConfigError(
                src, "data.partition-id", f"an integer in [0, {d.num_partitions})", d.partition_id
            )
        if not 1 <= d.num_domains <= 4:
            raise SiteConfigError(src, "data.num-domains", "an integer in [1, 4]", d.num_domains)
        if d.num_partitions < d.num_domains:
            raise SiteConfigError(
                src,
                "data.num-partitions",
                f"at least num-domains ({d.num_domains})",
                d.num_partitions,
            )
    if not d.dirichlet_alpha > 0:
        raise SiteConfigError(src, "data.dirichlet-alpha", "a number > 0", d.dirichlet_alpha)
    if not 0.0 < d.test_fraction < 1.0:
        raise SiteConfigError(src, "data.test-fraction", "a number in (0, 1)", d.test_fraction)
    if d.max_images < 0:
        raise SiteConfigError(src, "data.max-images", "an integer >= 0", d.max_images)
    if not 8 <= d.image_size <= 512:
        raise SiteConfigError(src, "data.image-size", "an integer in [8, 512]", d.image_size)


def _parse_data(src: str, raw: Any) -> DataConfig:
    if raw is None:
        return DataConfig()
    if not isinstance(raw, dict):
        raise SiteConfigError(src, "data", "a mapping", raw)
    unknown = sorted(set(map(str, raw)) - _DATA_KEYS)
    if unknown:
        raise SiteConfigError(
            src, f"data.{unknown[0]}", f"one of the known keys {sorted(_DATA_KEYS)}"
        )
    kwargs: dict[str, Any] = {}
    for f in fields(DataConfig):
        key = f.name.replace("_", "-")
        if key not in raw:
            continue
        value = raw[key]
        dotted = f"data.{key}"
        if f.name == "class_names":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SiteConfigError(src, dotted, "a list of class-folder names", value)
            if len(set(value)) != len(value) or len(value) < 2:
                raise SiteConfigError(src, dotted, "at least two distinct names", value)
            value = tuple(value)
        elif isinstance(f.default, bool):
            value = _expect_type(src, dotted, value, bool, "true or false")
        elif isinstance(f.default, int):
            value = _expect_type(src, dotted, value, int, "an integer")
        elif isinstance(f.default, float):
            value = _expect_type(src, dotted, value, float, "a number")
        else:
            value = _expect_type(src, dotted, value, str, "a string")
        kwargs[f.name] = value
    return DataConfig(**kwargs)


def parse_site_config(
    raw: Any, source: str = "<memory>", base_dir: Path | None = None
) -> SiteConfig:
    """Validate a parsed YAML document and build a :class:`SiteConfig`.

    Parameters
    ----------
    raw : Any
        The parsed YAML document (a mapping).
    source : str
        Name used in error messages (usually the file path).
    base_dir : Path, optional
        Relative paths (``state-dir``, ``identity-key``, ``data.root``) are resolved against it.

    Returns
    -------
    SiteConfig
        The validated configuration.

    Raises
    ------
    SiteConfigError
        If a key is unknown, missing or of the wrong type or value, or ``identity-key`` /
        ``site-identities`` name a file that does not exist.
    """
    if not isinstance(raw, dict):
        raise SiteConfigError(
            source, "<top level>", "a mapping of keys to values", type(raw).__name__
        )
    unknown = sorted(set(map(str, raw)) - _TOP_KEYS)
    if unknown:
        raise SiteConfigError(source, unknown[0], f"one of the known keys {sorted(_TOP_KEYS)}")
    if "site-id" not in raw:
        raise SiteConfigError(source, "site-id", "a site name (the key is missing)")
    if "state-dir" not in raw:
        raise SiteConfigError(source, "state-dir", "a folder path (the key is missing)")

    def path_value(key: str, must_exist: bool = False) -> str:
        value = _expect_type(source, key, raw.get(key, ""), str, "a path string")
        if value and base_dir is not None and not Path(value).expanduser().is_absolute():
            value = str((base_dir / value).resolve())
        # A key file that is not there would otherwise fail only at the first SecFPP round.
        if value and must_exist and not Path(value).expanduser().is_file():
            raise SiteConfigError(
                source,
                key,
                "an existing file (made by `python -m deploy.credentials`), or no key at all",
                value,
            )
        return value

    data = _parse_data(source, raw.get("data"))
    if data.root and base_dir is not None and not Path(data.root).expanduser().is_absolute():
        data = DataConfig(**{**data.__dict__, "root": str((base_dir / data.root).resolve())})
    return SiteConfig(
        site_id=_expect_type(source, "site-id", raw["site-id"], str, "a site name string"),
        data=data,
        state_dir=path_value("state-dir"),
        device=_expect_type(source, "device", raw.get("device", "auto"), str, "a device string"),
        seed=_expect_type(source, "seed", raw.get("seed", 0), int, "an integer"),
        identity_key=path_value("identity-key", must_exist=True),
        site_identities=path_value("site-identities", must_exist=True),
        source=source,
    )


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and validate one site's YAML file.

    Parameters
    ----------
    path : str or Path
        The site file. Relative paths inside it are resolved against its folder.

    Returns
    -------
    SiteConfig
        The validated configuration.

    Raises
    ------
    SiteConfigError
        If the file is missing, is not valid YAML (the message gives the line and column of
        the mistake), does not match the schema, or names a key file that does not exist.
    """
    path = Path(path).expanduser()
    src = str(path)
    if not path.is_file():
        raise SiteConfigError(src, "<file>", "an existing, readable YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteConfigError(src, "<file>", f"a readable UTF-8 text file ({exc})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SiteConfigError.from_yaml_error(src, text, exc) from exc
    return parse_site_config(raw, source=src, base_dir=path.parent.resolve())


def simulated_site_config(
    partition_id: int,
    num_partitions: int,
    state_root: str | Path,
    source: str = "digits-domains",
    seed: int = 0,
    device: str = "auto",
    num_domains: int = 4,
    dirichlet_alpha: float = 0.5,
    max_images: int = 0,
) -> SiteConfig:
    """Build the site configuration a simulated SuperNode uses (no file needed).

    Parameters
    ----------
    partition_id, num_partitions : int
        From the simulation engine's node config.
    state_root : str or Path
        Parent folder; the site's state lives in ``<state_root>/site-<partition_id>``.
    source : str
        An embedded data source (``digits-domains`` or ``fashion-mnist-domains``).
    seed : int
        Federation seed; every simulated site must use the same one so partitions agree.
    device : str
        Device string for every simulated site.
    num_domains : int
        Number of visual domains.
    dirichlet_alpha : float
        Label skew within each domain.
    max_images : int
        At most this many of the partition's images (0: all), e.g. for 1,000 small sites.

    Returns
    -------
    SiteConfig
        A validated configuration.
    """
    return SiteConfig(
        site_id=f"site-{partition_id}",
        data=DataConfig(
            source=source,
            partition_id=partition_id,
            num_partitions=num_partitions,
            num_domains=num_domains,
            dirichlet_alpha=dirichlet_alpha,
            max_images=max_images,
        ),
        state_dir=str(Path(state_root).expanduser() / f"site-{partition_id}"),
        device=device,
        seed=seed,
        source="<simulation>",
    )
