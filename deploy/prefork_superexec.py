"""A site's SuperExec that forks each ClientApp from a warm process instead of starting one.

Flower 1.42 runs every message a SuperNode receives in a new ``flwr-clientapp`` process, started
by the SuperExec beside the SuperNode. Before that process handles anything it starts Python and
imports Flower's ClientApp runtime: 2.8-3.3 s of CPU on the project's 2-core machine (``python -X
importtime -c "import flwr.supernode.runtime.run_clientapp"``), per message and per site, where
the app's own import then takes 0.01 s. That import is most of a deployed exchange's cost.

This SuperExec is Flower's own (:func:`flwr.supercore.superexec.run_superexec.run_superexec`:
the same polling of the SuperNode's Runtime API, the same task tokens, the same exit handling)
with one change, the executor: it imports Flower's ClientApp runtime and the app's third-party
dependencies once, and for each ClientApp task it forks. The child runs Flower's
:func:`~flwr.supernode.runtime.run_clientapp.run_clientapp` with the task's token, exactly what
``flwr-clientapp --token`` runs, so:

- every message still runs in its own process (a crash, a leak or ``sys.exit`` in the app ends
  the child, not the SuperExec), and the SuperNode sees the same Runtime API calls;
- the app is still loaded from the FAB the SuperNode received: only third-party packages
  (``--preload``) are imported ahead, never the app's own modules (Flower reuses a module that
  is already imported, which would run the site's installed copy instead of the FAB);
- tasks of other types (none reach a SuperNode today) start as Flower starts them.

Use it with ``flower-supernode --isolation process`` (the SuperNode then starts no SuperExec of its
own)::

    flower-supernode --isolation process --port 9094 ...
    python -m deploy.prefork_superexec --runtime-api-address 127.0.0.1:9094 --insecure

with ``--parent-pid`` the SuperNode's PID, so that it exits with the SuperNode.

``deploy/run-supernode.sh`` starts both; without this process the SuperNode's default
``subprocess`` isolation works as before, slower.

Caveats: ``fork`` copies the parent's memory lazily, so the children share the preloaded
modules' pages; the parent holds no lock or thread while forking other than Flower's parent
monitor. POSIX only (``os.fork``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult

log = logging.getLogger("secfpp.prefork")

#: Third-party packages the ClientApp's handlers import, loaded once in the parent.
DEFAULT_PRELOAD = ("numpy", "yaml", "cryptography.hazmat.primitives.ciphers.aead")

#: How often the SuperExec asks the SuperNode for a task (Flower's default is 1 s; a loopback
#: poll costs about a millisecond, and every exchange of a round waits for it).
DEFAULT_POLL_INTERVAL = 0.2

_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


class PreforkExecutor:
    """Flower ``Executor`` that forks ClientApp tasks from this (warm) process.

    Implements the methods :func:`~flwr.supercore.superexec.run_superexec.run_superexec` calls;
    every task type other than ``flwr-clientapp`` goes to Flower's ``SubprocessExecutor``.
    """

    def __init__(self) -> None:
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

        self._fallback = SubprocessExecutor()
        self.children: dict[int, int] = {}  # pid -> task id
        self.exit_codes: dict[int, int] = {}  # task id -> exit status, for the last 1,000

    def get_eligible_capacity(
        self, supported_task_types: set[TaskType], **kwargs: object
    ) -> tuple[set[TaskType], set[str]]:
        """Every task type can start now (as Flower's subprocess executor)."""
        return self._fallback.get_eligible_capacity(supported_task_types, **kwargs)

    def wait_for_capacity(self, task_type: TaskType | None = None, **kwargs: object) -> None:
        """No capacity gate."""
        self._fallback.wait_for_capacity(task_type, **kwargs)

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork a child that runs the ClientApp task of ``spec``; other tasks as Flower does.

        Parameters
        ----------
        spec : flwr.supercore.superexec.executor.ExecutionSpec
            The task's token, Runtime API address and TLS settings.

        Returns
        -------
        flwr.supercore.superexec.executor.LaunchResult
            Accepted once the child exists; failed if ``fork`` failed.
        """
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return self._fallback.launch(spec)
        try:
            pid = os.fork()
        except OSError as exc:
            return LaunchResult.failed(f"fork failed: {exc}")
        if pid == 0:  # pragma: no cover - the child ends in os._exit, coverage never sees it
            os._exit(_run_child(spec))
        self.children[pid] = spec.task_id
        log.info("task %d: forked ClientApp pid %d", spec.task_id, pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished children (called by the SuperExec loop before every poll)."""
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            task_id = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            self.exit_codes[task_id] = code
            if len(self.exit_codes) > 1_000:
                self.exit_codes.pop(next(iter(self.exit_codes)))
            if code != 0:
                log.warning("ClientApp task %d (pid %d) exited with status %d", task_id, pid, code)

    def close(self) -> None:
        """Leave running children to finish: each stops with the SuperExec's parent monitor."""
        self._fallback.close()


def _run_child(spec: ExecutionSpec) -> int:
    """The child's whole life: Flower's ``run_clientapp`` for one token, then its exit status."""
    try:
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(
                spec.root_certificates_path, spec.insecure
            ),
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
        code = 0
    except SystemExit as exc:  # run_clientapp always ends in flwr_exit -> sys.exit(code)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - anything else must end this child, not return
        log.exception("ClientApp task failed")
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - a closed stream must not block the exit
            pass
    return code


def preload(modules: Iterable[str]) -> list[str]:
    """Import Flower's ClientApp runtime and ``modules``; return those that could not be found.

    Parameters
    ----------
    modules : iterable of str
        Dotted module names. A missing one is reported, not fatal: the child imports it itself.
    """
    importlib.import_module("flwr.supernode.runtime.run_clientapp")
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (those of ``flower-superexec`` a site needs, and ``--preload``)."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.prefork_superexec", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--runtime-api-address",
        required=True,
        help="the SuperNode's Runtime API, HOST:PORT (its --host and --port)",
    )
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true", help="plain HTTP on loopback")
    tls.add_argument("--root-certificates", help="CA of the Runtime API's TLS certificate")
    parser.add_argument(
        "--superexec-auth-secret-file",
        default=None,
        help="the same secret file as the SuperNode's --superexec-auth-secret-file, if set",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process (the SuperNode) exits",
    )
    parser.add_argument(
        "--preload",
        default=",".join(DEFAULT_PRELOAD),
        help="comma list of third-party modules to import once (never the app's own modules)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help=f"seconds between task polls (default: ${_POLL_ENV} if set, "
        f"else {DEFAULT_POLL_INTERVAL})",
    )
    args = parser.parse_args(argv)
    if args.poll_interval is not None and not 0.01 <= args.poll_interval <= 60:
        parser.error(f"--poll-interval: expected seconds in [0.01, 60], got {args.poll_interval}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Preload, then run Flower's SuperExec loop with :class:`PreforkExecutor`."""
    args = parse_args(argv)
    # Our own lines only: Flower's logger has its own handler (a root handler would repeat it).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s prefork: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    if args.poll_interval is not None or _POLL_ENV not in os.environ:
        os.environ[_POLL_ENV] = str(args.poll_interval or DEFAULT_POLL_INTERVAL)
    start = time.perf_counter()
    missing = preload(m.strip() for m in args.preload.split(",") if m.strip())
    if missing:
        log.warning("--preload: not installed here, left to each task: %s", ", ".join(missing))
    log.info(
        "preloaded Flower's ClientApp runtime in %.1f s; forking ClientApps for %s",
        time.perf_counter() - start,
        args.runtime_api_address,
    )

    from flwr.supercore.auth import load_superexec_auth_secret
    from flwr.supercore.superexec import run_superexec as superexec

    secret = load_superexec_auth_secret(secret_file=args.superexec_auth_secret_file)  # None: off
    executor = PreforkExecutor()
    # run_superexec builds its executor through this module-level factory; the loop, the
    # plugin, the authentication and the exit handling stay Flower's.
    superexec.get_executor = lambda *_args, **_kwargs: executor
    superexec.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        superexec_auth_secret=secret,
        parent_pid=args.parent_pid,
    )


if __name__ == "__main__":
    main()
