"""Find or stop the local simulation SuperLink that ``flwr run .`` started, and nothing else.

``flwr run .`` (connection ``local``, address ``:local:``) starts a detached
``flower-superlink --simulation`` on ``127.0.0.1:39091`` (``$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``)
with its database and log under ``$FLWR_HOME/local-superlink/``, and reuses it for later runs.
Flower writes no PID file, and ``pkill -f flower-superlink`` would also stop a deployed
SuperLink on the same host. This command picks the process by what only that SuperLink has:
``--simulation``, the local port, and its log file under this ``$FLWR_HOME``::

    python -m deploy.local_superlink status    # prints the PID, exit 1 if none runs
    python -m deploy.local_superlink stop      # SIGTERM, then SIGKILL after --grace seconds

Linux only (reads ``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path


def flwr_home() -> Path:
    """``$FLWR_HOME``, or Flower's default ``~/.flwr``."""
    return Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser()


def local_port() -> str:
    """The port Flower gives the local SuperLink (``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``)."""
    return os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091")


def _cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    return []


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None


def find_local_superlinks(home: Path | None = None, port: str | None = None) -> list[int]:
    """PIDs of the simulation SuperLinks ``flwr run`` started for this ``FLWR_HOME`` and port.

    Parameters
    ----------
    home : Path, optional
        The ``FLWR_HOME`` (default: the environment's).
    port : str, optional
        The local SuperLink port (default: the environment's, else 39091).
    """
    log_file = str((home or flwr_home()) / "local-superlink" / "superlink.log")
    port = port or local_port()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = _cmdline(int(entry.name))
        if not argv or not any(Path(a).name == "flower-superlink" for a in argv[:2]):
            continue
        if (
            "--simulation" in argv
            and _option(argv, "--port") == port
            and _option(argv, "--log-file") == log_file
        ):
            found.append(int(entry.name))
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; only its parent's wait is missing.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def stop(pids: list[int], grace: float = 10.0) -> list[int]:
    """SIGTERM ``pids``, SIGKILL what is left after ``grace`` seconds; return what survived."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def main(argv: list[str] | None = None) -> int:
    """``status`` or ``stop`` the local simulation SuperLink; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local_superlink",
        description="Find or stop only the local simulation SuperLink `flwr run .` started.",
    )
    parser.add_argument("action", choices=("status", "stop"))
    parser.add_argument("--grace", type=float, default=10.0, help="seconds before SIGKILL")
    args = parser.parse_args(argv)
    pids = find_local_superlinks()
    where = f"127.0.0.1:{local_port()}, FLWR_HOME={flwr_home()}"
    if not pids:
        print(f"no local simulation SuperLink ({where})")
        return 1 if args.action == "status" else 0
    if args.action == "status":
        print(f"local simulation SuperLink running: PID {' '.join(map(str, pids))} ({where})")
        return 0
    left = stop(pids, args.grace)
    if left:
        print(f"could not stop PID {' '.join(map(str, left))}", file=sys.stderr)
        return 1
    # Its SuperExec watches the SuperLink's PID and exits with it.
    print(f"stopped the local simulation SuperLink, PID {' '.join(map(str, pids))} ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
