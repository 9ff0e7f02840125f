"""A per-site worker that keeps torch, the backbone and the site's features loaded.

    python -m client_app.worker --site-config /abs/site.yaml [--parent-pid PID] [--no-warm]

Started beside the SuperNode (``deploy/run-supernode.sh``, which restarts it if it dies). It
listens on ``<state-dir>/worker.sock`` (mode 0600) and authenticates every connection with the
key in ``<state-dir>/worker.key`` (32 random bytes, created 0600 on first start), using
``multiprocessing.connection``'s HMAC challenge. The ClientApp forwards train and evaluate
messages to it (:mod:`client_app.worker_link`); it runs the same handlers
(:mod:`client_app.prompt_handlers`) on the same message and context and sends back the reply and
the context. It refuses (and the ClientApp then runs the handler itself) a message for another
site or from other handler code. One handler runs at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection, Listener
from pathlib import Path

from .site_config import load_site_config
from .worker_link import (
    PROTOCOL,
    code_fingerprint,
    context_from_bytes,
    context_to_bytes,
    key_path,
    message_from_bytes,
    message_to_bytes,
    read_key,
    recv_header,
    send_header,
    socket_path,
)

log = logging.getLogger("secfpp.worker")


def ensure_key(path: Path) -> bytes:
    """The worker key at ``path``, created (32 random bytes, mode 0600) when missing."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return read_key(path)


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse to start beside a live worker."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise SystemExit(f"client_app.worker: a worker already listens on {path}")


class SiteWorker:
    """Serve one site's train and evaluate handlers on an authenticated Unix socket.

    Parameters
    ----------
    site_config : str
        Path of the site YAML (the same path as the SuperNode's ``site-config``).
    code : str, optional
        Handler-code fingerprint to accept (default: this installation's).
    """

    def __init__(self, site_config: str, code: str | None = None) -> None:
        self.site_arg = str(site_config)
        self.site_config = str(Path(site_config).resolve())
        self.site = load_site_config(self.site_config)
        self.code = code or code_fingerprint()
        self.lock = threading.Lock()
        self.handled = 0

    def warm(self, run_config: dict | None = None) -> float:
        """Import torch and build the site's runtime for ``run_config`` (default settings)."""
        started = time.monotonic()
        with self.lock:
            from .runtime import site_runtime
            from .settings import ClientSettings, site_config_from_context

            settings = ClientSettings.from_run_config(dict(run_config or {}))
            # The path as the SuperNode's node config gives it: the runtime cache key holds it.
            config = site_config_from_context({"site-config": self.site_arg}, settings)
            site_runtime(config, settings)
        seconds = time.monotonic() - started
        log.info("%s: warm in %.1fs", self.site.site_id, seconds)
        return seconds

    def refusal(self, header: dict) -> str:
        """Why a request must not run here ('' if it may)."""
        if header.get("protocol") != PROTOCOL:
            return f"protocol {header.get('protocol')!r}, this worker speaks {PROTOCOL!r}"
        if header.get("op") not in ("train", "evaluate"):
            return f"unknown op {header.get('op')!r}"
        path = str(header.get("site-config", ""))
        if not path or str(Path(path).resolve()) != self.site_config:
            return f"site-config {path!r} is not this worker's {self.site_config!r}"
        if header.get("code") != self.code:
            return "the run's handler code differs from this worker's installation"
        return ""

    def handle(self, conn: Connection) -> None:
        """Answer one authenticated connection."""
        header = recv_header(conn)
        message_bytes = conn.recv_bytes()
        context_bytes = conn.recv_bytes()
        reason = self.refusal(header)
        if reason:
            log.warning("%s: refused a request: %s", self.site.site_id, reason)
            send_header(conn, {"status": "refused", "detail": reason})
            return
        with self.lock:
            started = time.monotonic()
            try:
                reply, context = self.run(header["op"], message_bytes, context_bytes)
            except Exception as exc:  # noqa: BLE001 - the ClientApp re-raises it
                import traceback

                log.exception("%s: %s handler raised", self.site.site_id, header["op"])
                detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
                send_header(conn, {"status": "error", "detail": detail})
                return
            seconds = time.monotonic() - started
            self.handled += 1
        send_header(conn, {"status": "ok", "seconds": round(seconds, 4)})
        conn.send_bytes(reply)
        conn.send_bytes(context)

    def run(self, op: str, message_bytes: bytes, context_bytes: bytes) -> tuple[bytes, bytes]:
        """Run handler ``op`` on serialised inputs; return the serialised reply and context."""
        from flwr.supercore.task_identity import TaskIdentity

        from . import prompt_handlers

        message = message_from_bytes(message_bytes)
        context = context_from_bytes(context_bytes)
        TaskIdentity.run_id = context.run_id
        TaskIdentity.node_id = context.node_id
        reply = getattr(prompt_handlers, op)(message, context)
        return message_to_bytes(reply), context_to_bytes(context)


def _serve_connection(worker: SiteWorker, conn: Connection) -> None:
    try:
        worker.handle(conn)
    except (EOFError, OSError, ValueError) as exc:
        log.warning("%s: a connection ended early: %r", worker.site.site_id, exc)
    finally:
        conn.close()


def _watch_parent(pid: int) -> None:
    """Exit (SIGTERM to ourselves) once the SuperNode that started us is gone."""
    while True:
        time.sleep(2.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.info("parent %d is gone; stopping", pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        except PermissionError:
            pass


def serve(worker: SiteWorker, warm: bool = True, parent_pid: int | None = None) -> None:
    """Listen on the site's socket until SIGTERM/SIGINT (or the parent exits)."""
    state = worker.site.state_path
    state.mkdir(parents=True, exist_ok=True)
    key = ensure_key(key_path(state))
    sock = socket_path(state)
    _clear_stale_socket(sock)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    old_umask = os.umask(0o077)  # the socket file is 0600: only this account may connect
    try:
        listener = Listener(str(sock), family="AF_UNIX", authkey=key)
    finally:
        os.umask(old_umask)
    if parent_pid:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if warm:
        threading.Thread(target=worker.warm, daemon=True).start()
    log.info("%s: worker listening on %s (pid %d)", worker.site.site_id, sock, os.getpid())
    try:
        while True:
            try:
                conn = listener.accept()
            except Exception as exc:  # noqa: BLE001 - a bad key or a dropped client
                log.warning("%s: refused a connection: %r", worker.site.site_id, exc)
                continue
            threading.Thread(target=_serve_connection, args=(worker, conn), daemon=True).start()
    finally:
        listener.close()
        sock.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m client_app.worker", description=__doc__)
    parser.add_argument("--site-config", required=True, help="the site YAML (absolute path)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process exits")
    parser.add_argument("--no-warm", action="store_true", help="load the backbone on demand")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(SiteWorker(args.site_config), warm=not args.no_warm, parent_pid=args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
