"""A real Flower federation on 127.0.0.1, started and stopped from Python.

One implementation shared by the deployment tests, ``benchmarks/deploy.py`` and the simulation
test. It starts a real ``flower-superlink`` on free loopback ports with a private ``FLWR_HOME``
(``$FLWR_HOME/config.toml`` holds one named connection to it), optionally with TLS and SuperNode
authentication or in simulation mode; starts ``flower-supernode`` processes with their node
config; registers their keys; submits ``flwr run`` and waits for the run to finish; and stops
everything by PID, SuperNodes first.

Every process runs in its own process group with Flower's telemetry, update check and runtime
dependency installation switched off, its output in a log file under the federation's work
folder, and a marker in its environment. The marker is inherited by whatever Flower starts in turn
(``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``; the SuperLink starts its SuperExec
in a new session, so killing process groups alone would miss it), which lets :meth:`stop` find
and account for every descendant.

Example::

    with LocalFederation(tls_dir=creds, supernode_auth=True) as fed:
        fed.add_supernode("site-a", node_config={"site-config": "/abs/site-a.yaml"},
                          auth_key=creds / "site-a" / "auth.key")
        result = fed.run(app_dir, run_config={"num-server-rounds": 2}, timeout=300)
        assert result.ok, result.describe()
    assert not fed.leftovers

Only 127.0.0.1 is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
MARKER_VAR = "SECFPP_LOCAL_FEDERATION"
# Flower's phone-home, update check and per-run `uv sync`, Ray's usage stats, and the hubs.
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
FLOWER_PROCESS_NAMES = ("flower-superexec", "flwr-serverapp", "flwr-clientapp")


class FederationError(RuntimeError):
    """Something in the local federation failed; the message carries the relevant logs."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def toml_value(value: Any) -> str:
    """Format a Python value as a TOML scalar (for ``--node-config`` / ``--run-config``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | os.PathLike):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    raise TypeError(f"cannot write {value!r} as a TOML scalar")


def toml_pairs(config: Mapping[str, Any] | str | None) -> str:
    """``{'a': 1, 'b': 'x'}`` -> ``a=1 b="x"`` (a string is passed through)."""
    if config is None:
        return ""
    if isinstance(config, str):
        return config
    return " ".join(f"{key}={toml_value(value)}" for key, value in config.items())


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file (or a note that it is missing)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"<{path} unreadable>"
    return "\n".join(text.splitlines()[-lines:])


def marked_processes(marker: str) -> list[tuple[int, str]]:
    """Live processes (pid, command line) whose environment carries ``MARKER_VAR=marker``.

    Zombies have an empty environment and are not listed (their parent reaps or loses them).
    """
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append((int(entry.name), cmd.strip()))
    return found


@dataclass
class ManagedProcess:
    """One process we started, in its own process group, with its log file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        """Process id (also the process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def log(self, lines: int = 60) -> str:
        """The end of the process log."""
        return tail(self.log_path, lines)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL it; return the code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        # Members of the group that outlived the leader (e.g. a ClientApp mid-message).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return self.popen.returncode


@dataclass
class SuperNode:
    """A started SuperNode."""

    name: str
    process: ManagedProcess
    port: int
    node_config: str
    auth_key: Path | None
    node_id: int | None = None


@dataclass
class RunResult:
    """The outcome of one ``flwr run``."""

    run_id: int
    status: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    log: str = ""

    @property
    def ok(self) -> bool:
        """Whether the run finished as completed."""
        return self.status == "finished:completed"

    def describe(self) -> str:
        """Status plus the end of the run's log, for assertion messages."""
        return f"run {self.run_id}: {self.status} after {self.seconds:.1f}s\n{self.log[-6000:]}"


def _code_path() -> str:
    """``PYTHONPATH`` for the site processes this module starts (worker, prefork SuperExec).

    They run the code this process imported (the app it submits, in tests and benchmarks),
    whatever else is installed.
    """
    import client_app

    code_root = str(Path(client_app.__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (code_root, os.environ.get("PYTHONPATH", "")) if p)


class LocalFederation:
    """A SuperLink and SuperNodes on 127.0.0.1; use as a context manager.

    Parameters
    ----------
    workdir : Path, optional
        Folder for logs, ``flwr-home``, the SuperLink database and the SuperLink's working
        directory (where a ServerApp's relative ``outputs/`` lands). A temporary folder
        (removed on exit unless ``keep=True``) when not given.
    tls_dir : Path, optional
        A folder made by ``python -m deploy.credentials`` (``ca.crt``, ``superlink/server.*``).
        Without it everything runs ``--insecure``.
    supernode_auth : bool
        Start the SuperLink with ``--enable-supernode-auth``.
    simulation : bool
        Start the SuperLink with ``--simulation`` (no SuperNodes; see ``simulation_options``).
    simulation_options : mapping, optional
        Written under ``[superlink.<connection>.options]`` (e.g. ``{"num-supernodes": 12}``).
    database : bool
        Keep SuperLink state in ``workdir/superlink/state.db`` instead of memory.
    connection : str
        Name of the connection in ``$FLWR_HOME/config.toml``.
    env : mapping, optional
        Extra environment for every process (Flower's switches always win).
    keep : bool
        Keep a temporary ``workdir`` on exit.
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        tls_dir: Path | str | None = None,
        supernode_auth: bool = False,
        simulation: bool = False,
        simulation_options: Mapping[str, Any] | None = None,
        database: bool = True,
        connection: str = "local-test",
        env: Mapping[str, str] | None = None,
        keep: bool = False,
        startup_timeout: float = 60.0,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="secfpp-fed-")).resolve()
        self.tls_dir = Path(tls_dir).resolve() if tls_dir else None
        self.supernode_auth = supernode_auth
        self.simulation = simulation
        self.simulation_options = dict(simulation_options or {})
        self.database = database
        self.connection = connection
        self.keep = keep
        self.startup_timeout = startup_timeout
        self.marker = uuid.uuid4().hex
        self.flwr_home = self.workdir / "flwr-home"
        self.log_dir = self.workdir / "logs"
        self.superlink_dir = self.workdir / "superlink"
        self.port = 0
        self.superlink: ManagedProcess | None = None
        self.supernodes: list[SuperNode] = []
        # Per-site processes beside the SuperNodes: workers and prefork SuperExecs.
        self.workers: list[ManagedProcess] = []
        self.stragglers: list[tuple[int, str]] = []  # outlived their parents; killed by PID
        self.leftovers: list[tuple[int, str]] = []  # still alive after stop (should be empty)
        self._bin = Path(sys.executable).parent
        self._env = {
            **os.environ,
            **dict(env or {}),
            **FLOWER_ENV,
            "FLWR_HOME": str(self.flwr_home),
            MARKER_VAR: self.marker,
            # Make sure Flower's own console scripts of this interpreter are found first.
            "PATH": f"{self._bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        if self.tls_dir is not None:
            for path in (self.ca_cert, self.tls_dir / "superlink" / "server.crt"):
                if not path.is_file():
                    raise FederationError(f"TLS file missing: {path} (run deploy.credentials)")

    # ----------------------------------------------------------------- basics
    @property
    def address(self) -> str:
        """``127.0.0.1:<port>`` of the SuperLink (Fleet, Control and Runtime API)."""
        return f"{HOST}:{self.port}"

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (TLS only)."""
        if self.tls_dir is None:
            raise FederationError("no TLS in this federation")
        return self.tls_dir / "ca.crt"

    @property
    def env(self) -> dict[str, str]:
        """The environment every process of this federation gets."""
        return dict(self._env)

    def _exe(self, name: str) -> str:
        path = self._bin / name
        return str(path) if path.exists() else (shutil.which(name) or name)

    def spawn(
        self, name: str, argv: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        """Start ``argv`` in its own process group with this federation's environment and log.

        ``env`` adds or replaces variables (Flower's switches and the marker always stay).
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self._env, **env, **FLOWER_ENV, MARKER_VAR: self.marker}
                if env
                else self._env,
                cwd=cwd,
                start_new_session=True,
            )
        return ManagedProcess(name=name, argv=list(argv), log_path=log_path, popen=popen)

    def flwr(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run the ``flwr`` CLI against this federation's ``FLWR_HOME``; return its stdout."""
        argv = [self._exe("flwr"), *args]
        try:
            done = subprocess.run(
                argv,
                env=self._env,
                cwd=self.workdir,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise FederationError(f"`flwr {' '.join(args)}` timed out after {timeout}s") from exc
        if check and done.returncode != 0:
            raise FederationError(
                f"`flwr {' '.join(args)}` exited with {done.returncode}\n"
                f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
                + self._logs_text()
            )
        return done.stdout

    def flwr_json(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        """Run ``flwr ... --format json`` and parse its answer."""
        out = self.flwr(*args, "--format", "json", timeout=timeout, check=False)
        start = out.find("{")
        try:
            data = json.loads(out[start:]) if start >= 0 else {}
        except json.JSONDecodeError as exc:
            raise FederationError(f"`flwr {' '.join(args)}` gave no JSON:\n{out}") from exc
        if not data.get("success"):
            raise FederationError(
                f"`flwr {' '.join(args)}` failed: {data.get('error-message', out)}"
                + self._logs_text()
            )
        return data

    def _logs_text(self, lines: int = 40) -> str:
        parts = []
        procs = [n.process for n in self.supernodes] + self.workers
        if self.superlink is not None:
            procs.insert(0, self.superlink)
        for proc in procs:
            state = "running" if proc.alive() else f"exited {proc.popen.returncode}"
            parts.append(f"\n--- {proc.name} ({state}) {proc.log_path} ---\n{proc.log(lines)}")
        return "".join(parts)

    def logs(self, lines: int = 60) -> str:
        """The end of every process log, for failure messages."""
        return self._logs_text(lines)

    # --------------------------------------------------------------- superlink
    def write_flwr_config(self) -> None:
        """Write ``$FLWR_HOME/config.toml`` with one connection to this SuperLink."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = [
            "[superlink]",
            f"default = {toml_value(self.connection)}",
            "",
            f"[superlink.{self.connection}]",
            f"address = {toml_value(self.address)}",
        ]
        if self.tls_dir is not None:
            lines.append(f"root-certificates = {toml_value(self.ca_cert)}")
        else:
            lines.append("insecure = true")
        if self.simulation_options:
            lines += ["", f"[superlink.{self.connection}.options]"]
            for key, value in self.simulation_options.items():
                lines.append(f"{key} = {toml_value(value)}")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self) -> LocalFederation:
        """Start the SuperLink and wait until its API answers."""
        if self.superlink is not None:
            return self
        self.port = free_port()
        self.superlink_dir.mkdir(parents=True, exist_ok=True)
        self.write_flwr_config()
        argv = [self._exe("flower-superlink"), "--host", HOST, "--port", str(self.port)]
        if self.tls_dir is not None:
            argv += [
                "--ssl-ca-certfile",
                str(self.ca_cert),
                "--ssl-certfile",
                str(self.tls_dir / "superlink" / "server.crt"),
                "--ssl-keyfile",
                str(self.tls_dir / "superlink" / "server.key"),
            ]
        else:
            argv.append("--insecure")
        if self.supernode_auth:
            argv.append("--enable-supernode-auth")
        if self.simulation:
            argv.append("--simulation")
        if self.database:
            argv += ["--database", str(self.superlink_dir / "state.db")]
        argv.append("--disable-runtime-dependency-installation")
        self.superlink = self.spawn("superlink", argv, cwd=self.superlink_dir)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Wait until the SuperLink's port is open and its Control API answers `flwr ls`."""
        assert self.superlink is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if not self.superlink.alive():
                raise FederationError("flower-superlink exited during start" + self.logs())
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1):
                break
            if time.monotonic() > deadline:
                raise FederationError("flower-superlink did not open its port" + self.logs())
            time.sleep(0.2)
        # The port is open once uvicorn listens; one Control API call proves the whole path
        # (TLS, config.toml) works.
        while True:
            try:
                self.flwr_json("ls", self.connection, timeout=30)
                break
            except FederationError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # --------------------------------------------------------------- supernodes
    def register(self, public_key: Path | str, name: str | None = None) -> int:
        """``flwr supernode register``; return the node id."""
        args = ["supernode", "register", str(public_key), self.connection]
        if name:
            args += ["--name", name]
        return int(self.flwr_json(*args)["node-id"])

    def unregister(self, node_id: int) -> None:
        """``flwr supernode unregister``."""
        self.flwr_json("supernode", "unregister", str(node_id), self.connection)

    def list_nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode ls`` as a list of dicts."""
        data = self.flwr_json("supernode", "ls", self.connection)
        return list(data.get("nodes", []))

    def add_supernode(
        self,
        name: str,
        node_config: Mapping[str, Any] | str | None = None,
        *,
        auth_key: Path | str | None = None,
        register: bool = True,
        wait_online: bool = True,
        max_wait_time: float | None = None,
        cwd: Path | str | None = None,
        prefork: bool = False,
    ) -> SuperNode:
        """Start a ``flower-supernode``; register its key first when ``register``.

        Parameters
        ----------
        name : str
            Name of the node (log file, registration name).
        node_config : mapping or str, optional
            ``--node-config``; a mapping is written as TOML pairs.
        auth_key : Path, optional
            ``--auth-supernode-private-key``; its ``.pub`` sibling is registered.
        register : bool
            Register ``auth_key``'s public key before starting (with node auth only).
        wait_online : bool
            Wait until the SuperLink lists one more online node.
        max_wait_time : float, optional
            ``--max-wait-time`` of the SuperNode (how long it retries a refused connection).
        cwd : Path, optional
            Working directory of the SuperNode (default: its own folder in ``workdir``).
        prefork : bool
            Start the SuperNode with ``--isolation process`` and the site's prefork SuperExec
            (``python -m deploy.prefork_superexec``) beside it, as ``deploy/run-supernode.sh``
            does; otherwise Flower's own SuperExec starts one process per message.
        """
        if self.superlink is None:
            self.start()
        if self.simulation:
            raise FederationError("a simulation SuperLink takes no SuperNodes")
        node_id = None
        key = Path(auth_key).resolve() if auth_key else None
        if key is not None and register and self.supernode_auth:
            node_id = self.register(key.with_suffix(".pub"), name=name)
        port = free_port()
        argv = [
            self._exe("flower-supernode"),
            "--superlink",
            self.address,
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        if self.tls_dir is not None:
            argv += ["--root-certificates", str(self.ca_cert)]
        else:
            argv.append("--insecure")
        if key is not None:
            argv += ["--auth-supernode-private-key", str(key)]
        config = toml_pairs(node_config)
        if config:
            argv += ["--node-config", config]
        if max_wait_time is not None:
            argv += ["--max-wait-time", str(max_wait_time)]
        if prefork:
            argv += ["--isolation", "process"]
        node_dir = Path(cwd) if cwd else self.workdir / "supernodes" / name
        node_dir.mkdir(parents=True, exist_ok=True)
        before = self._online_ids() if wait_online else set()
        proc = self.spawn(f"supernode-{name}", argv, cwd=node_dir)
        node = SuperNode(name, proc, port, config, key, node_id)
        self.supernodes.append(node)
        if prefork:
            self.workers.append(
                self.spawn(
                    f"superexec-{name}",
                    [
                        sys.executable,
                        "-m",
                        "deploy.prefork_superexec",
                        "--runtime-api-address",
                        f"{HOST}:{port}",
                        "--insecure",
                        "--parent-pid",
                        str(proc.pid),
                    ],
                    cwd=node_dir,
                    env={"PYTHONPATH": _code_path()},
                )
            )
        if wait_online:
            deadline = time.monotonic() + self.startup_timeout
            while True:
                online = self._online_ids() - before
                if node_id is not None and node_id in online or node_id is None and online:
                    node.node_id = node_id if node_id is not None else min(online)
                    break
                if not proc.alive():
                    raise FederationError(f"flower-supernode {name} exited" + self.logs())
                if time.monotonic() > deadline:
                    raise FederationError(f"supernode {name} did not come online" + self.logs())
                time.sleep(0.5)
        return node

    def add_site(
        self,
        site_id: str,
        data: Mapping[str, Any],
        *,
        credentials: Path | str | None = None,
        device: str = "cpu",
        seed: int = 0,
        register: bool = True,
        site_identities: bool = False,
        worker: bool = False,
        prefork: bool = False,
    ) -> SuperNode:
        """Write a site YAML under ``workdir/sites/<site_id>`` and start its SuperNode.

        The site's state directory is ``workdir/sites/<site_id>/state``; with ``credentials``
        (a ``deploy.credentials`` folder) the site uses ``<credentials>/<site_id>/identity.key``
        as identity and ``auth.key`` for SuperNode authentication, and with ``site_identities``
        also ``<credentials>/site-identities.yaml`` (site YAML key ``site-identities``). With
        ``worker`` the site's worker (``python -m client_app.worker``, see
        :meth:`add_worker`) runs beside the SuperNode, as ``deploy/run-supernode.sh`` starts it;
        with ``prefork`` so does the prefork SuperExec (see :meth:`add_supernode`).
        """
        site_dir = self.workdir / "sites" / site_id
        creds = Path(credentials).resolve() if credentials else None
        yaml_path = write_site_yaml(
            site_dir / "site.yaml",
            site_id,
            state_dir=site_dir / "state",
            identity_key=creds / site_id / "identity.key" if creds else None,
            site_identities=creds / "site-identities.yaml" if creds and site_identities else None,
            data=data,
            device=device,
            seed=seed,
        )
        node = self.add_supernode(
            site_id,
            {"site-config": str(yaml_path)},
            auth_key=creds / site_id / "auth.key" if creds and self.supernode_auth else None,
            register=register,
            cwd=site_dir,
            prefork=prefork,
        )
        if worker:
            self.add_worker(site_id, yaml_path, parent=node)
        return node

    def add_worker(
        self, name: str, site_yaml: Path | str, *, parent: SuperNode | None = None
    ) -> ManagedProcess:
        """Start a site's worker and wait until its socket exists (it warms up after that).

        Parameters
        ----------
        name : str
            Site name (log file ``worker-<name>.log``).
        site_yaml : Path
            The site YAML, the same path as the SuperNode's ``site-config``.
        parent : SuperNode, optional
            The worker exits when this SuperNode's process does.
        """
        from client_app.site_config import load_site_config
        from client_app.worker_link import socket_path

        sock = socket_path(load_site_config(str(site_yaml)).state_path)
        argv = [sys.executable, "-m", "client_app.worker", "--site-config", str(site_yaml)]
        if parent is not None:
            argv += ["--parent-pid", str(parent.process.pid)]
        proc = self.spawn(
            f"worker-{name}", argv, cwd=Path(site_yaml).parent, env={"PYTHONPATH": _code_path()}
        )
        self.workers.append(proc)
        deadline = time.monotonic() + self.startup_timeout
        while not sock.exists():
            if not proc.alive():
                raise FederationError(f"the worker of {name} exited" + self.logs())
            if time.monotonic() > deadline:
                raise FederationError(f"the worker of {name} did not listen" + self.logs())
            time.sleep(0.2)
        return proc

    def _online_ids(self) -> set[int]:
        return {int(n["node-id"]) for n in self.list_nodes() if str(n.get("status")) == "online"}

    # --------------------------------------------------------------------- runs
    def submit(
        self,
        app_dir: Path | str,
        run_config: Mapping[str, Any] | str | None = None,
        federation_config: Mapping[str, Any] | str | None = None,
    ) -> int:
        """``flwr run APP CONNECTION``; return the run id without waiting."""
        if self.superlink is None:
            self.start()
        args = ["run", str(Path(app_dir).resolve()), self.connection]
        if run_config:
            args += ["--run-config", toml_pairs(run_config)]
        if federation_config:
            args += ["--federation-config", toml_pairs(federation_config)]
        return int(self.flwr_json(*args, timeout=120)["run-id"])

    def run_status(self, run_id: int) -> dict[str, Any]:
        """``flwr ls --run-id`` for one run."""
        runs = self.flwr_json("ls", self.connection, "--run-id", str(run_id))["runs"]
        return dict(runs[0]) if runs else {}

    def run_log(self, run_id: int) -> str:
        """The ServerApp log of a run (``flwr log --show``)."""
        return self.flwr("log", str(run_id), self.connection, "--show", check=False)

    def wait(self, run_id: int, timeout: float, poll: float = 1.0) -> RunResult:
        """Poll until the run finishes; stop it and raise after ``timeout`` seconds."""
        start = time.monotonic()
        while True:
            status = self.run_status(run_id)
            state = str(status.get("status", ""))
            if state.startswith("finished"):
                return RunResult(
                    run_id, state, time.monotonic() - start, status, self.run_log(run_id)
                )
            if self.superlink is not None and not self.superlink.alive():
                raise FederationError(f"SuperLink died during run {run_id}" + self.logs())
            if time.monotonic() - start > timeout:
                log = self.run_log(run_id)
                self.flwr("stop", str(run_id), self.connection, check=False)
                raise FederationError(
                    f"run {run_id} not finished after {timeout:.0f}s (status {state!r}); "
                    f"stopped it.\n--- run log ---\n{log[-6000:]}" + self.logs()
                )
            time.sleep(poll)

    def run(
        self,
        app_dir: Path | str,
        run_config: Mapping[str, Any] | str | None = None,
        *,
        timeout: float = 300.0,
        federation_config: Mapping[str, Any] | str | None = None,
    ) -> RunResult:
        """Submit a run and wait for it (see :meth:`submit` and :meth:`wait`)."""
        start = time.monotonic()
        run_id = self.submit(app_dir, run_config, federation_config)
        result = self.wait(run_id, timeout=timeout)
        result.seconds = time.monotonic() - start
        return result

    # --------------------------------------------------------------------- stop
    def stop_supernode(self, node: SuperNode, grace: float = 10.0) -> None:
        """Stop one SuperNode (process group) and wait for what it started."""
        node.process.stop(grace)

    def stop(self, grace: float = 10.0, settle: float = 15.0) -> None:
        """Stop SuperNodes (newest first), site workers, the SuperLink, then stragglers by PID.

        Flower's SuperExec watches its parent's PID and exits on its own; processes still
        alive ``settle`` seconds after their parents are recorded in :attr:`stragglers` and
        killed by PID. Anything alive after that is recorded in :attr:`leftovers`.
        """
        for node in reversed(self.supernodes):
            node.process.stop(grace)
        for proc in reversed(self.workers):
            proc.stop(grace)
        if self.superlink is not None:
            self.superlink.stop(grace)
        deadline = time.monotonic() + settle
        remaining = marked_processes(self.marker)
        while remaining and time.monotonic() < deadline:
            time.sleep(0.25)
            remaining = marked_processes(self.marker)
        self.stragglers = remaining
        for pid, _ in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if remaining:
            time.sleep(0.5)
        self.leftovers = marked_processes(self.marker)

    def close(self) -> None:
        """Stop everything and remove a temporary work folder (unless ``keep``)."""
        try:
            self.stop()
        finally:
            if self._own_workdir and not self.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalFederation:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        failed = exc[0] is not None
        if failed:
            # Show the logs next to the failure (pytest prints captured stderr).
            print(f"LocalFederation failed; logs in {self.log_dir}" + self.logs(), file=sys.stderr)
        try:
            self.stop()
        finally:
            if self._own_workdir and not self.keep and not failed:
                shutil.rmtree(self.workdir, ignore_errors=True)


def running_flower_processes() -> list[tuple[int, str]]:
    """Every live ``flower-superexec`` / ``flwr-serverapp`` / ``flwr-clientapp`` on the machine."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(name in cmd for name in FLOWER_PROCESS_NAMES):
                out.append((int(entry.name), cmd.strip()))
    return out


@contextlib.contextmanager
def local_federation(**kwargs: Any) -> Iterator[LocalFederation]:
    """Function form of :class:`LocalFederation` (same arguments)."""
    with LocalFederation(**kwargs) as fed:
        yield fed


def write_site_yaml(
    path: Path | str,
    site_id: str,
    *,
    state_dir: Path | str,
    identity_key: Path | str | None = None,
    site_identities: Path | str | None = None,
    data: Mapping[str, Any] | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> Path:
    """Write one site's YAML file (schema: ``deploy/site.example.yaml``); return its path.

    Paths are written absolute so the file works from any working directory.
    """
    import yaml  # local: the rest of this module needs only the standard library

    doc: dict[str, Any] = {
        "site-id": site_id,
        "state-dir": str(Path(state_dir).resolve()),
        "device": device,
        "seed": seed,
    }
    if identity_key is not None:
        doc["identity-key"] = str(Path(identity_key).resolve())
    if site_identities is not None:
        doc["site-identities"] = str(Path(site_identities).resolve())
    if data:
        doc["data"] = dict(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path.resolve()
