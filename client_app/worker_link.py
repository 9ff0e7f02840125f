"""The ClientApp's side of the per-site worker: find it, authenticate, forward one message.

In deployment Flower starts a fresh ``flwr-clientapp`` process for every message, and a train
or evaluate handler run there pays torch's import and the backbone, data and feature loading
each time. A per-site worker (:mod:`client_app.worker`, started beside the SuperNode) keeps
those loaded; the ClientApp forwards the message and the context to it and takes back the reply
and the updated context state. Without a reachable worker the handler runs in-process (slower,
same answers).

Torch-free on purpose: this runs in every ``flwr-clientapp`` process.

Wire format (``multiprocessing.connection`` frames, bytes only, never pickle): the request is a
JSON header (``op``, ``code``, ``site-config``), the message and the context serialised with
Flower's own protobuf serde; the answer is a JSON header (``status`` ``ok``, ``refused`` or
``error``, ``detail``, ``seconds``) followed, when ``ok``, by the reply message and the context.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from multiprocessing.connection import Client, Connection
from pathlib import Path

from flwr.app import Context, Message

log = logging.getLogger("secfpp.client")

PROTOCOL = "secfpp-worker/1"
SOCKET_NAME = "worker.sock"
KEY_NAME = "worker.key"
#: Packages whose code decides a handler's answer: the worker must run the same code as the FAB.
CODE_PACKAGES = ("client_app", "prompts", "secpc")
#: ``SECFPP_WORKER=off`` makes every ClientApp run its handlers in-process.
ENV_SWITCH = "SECFPP_WORKER"


class WorkerUnavailableError(RuntimeError):
    """No usable worker (none running, wrong key, other code, other site): run in-process."""


class WorkerError(RuntimeError):
    """The worker ran the handler and it raised; the text is the worker's traceback."""


def socket_path(state_dir: str | Path) -> Path:
    """Where a site's worker listens: ``<state-dir>/worker.sock``."""
    return Path(state_dir).expanduser() / SOCKET_NAME


def key_path(state_dir: str | Path) -> Path:
    """The worker's authentication key: ``<state-dir>/worker.key`` (mode 0600)."""
    return Path(state_dir).expanduser() / KEY_NAME


def read_key(path: Path) -> bytes:
    """Read an authentication key, refusing one other accounts can read.

    Raises
    ------
    WorkerUnavailableError
        If the file is missing, empty, or readable by group or others.
    """
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise WorkerUnavailableError(f"no worker key ({exc.strerror}: {path})") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WorkerUnavailableError(f"worker key {path} is readable by others (chmod 600 it)")
    if len(data) < 16:
        raise WorkerUnavailableError(f"worker key {path} is too short")
    return data


def code_fingerprint(root: Path | None = None) -> str:
    """SHA-256 over the handler code (:data:`CODE_PACKAGES`, ``*.py``), paths included.

    The ClientApp computes it over the FAB Flower installed for the run, the worker over its
    own installation; a worker answers only when they are equal.
    """
    root = root or Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def message_to_bytes(message: Message) -> bytes:
    """A message (metadata and content) as Flower's protobuf bytes."""
    from flwr.common.serde import message_to_proto

    return message_to_proto(message).SerializeToString()


def message_from_bytes(payload: bytes) -> Message:
    """Inverse of :func:`message_to_bytes`."""
    from flwr.common.serde import message_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage

    proto = ProtoMessage()
    proto.ParseFromString(payload)
    return message_from_proto(proto)


def context_to_bytes(context: Context) -> bytes:
    """A context (node and run config, state) as Flower's protobuf bytes."""
    from flwr.common.serde import context_to_proto

    return context_to_proto(context).SerializeToString()


def context_from_bytes(payload: bytes) -> Context:
    """Inverse of :func:`context_to_bytes`."""
    from flwr.common.serde import context_from_proto
    from flwr.proto.message_pb2 import Context as ProtoContext

    proto = ProtoContext()
    proto.ParseFromString(payload)
    return context_from_proto(proto)


def send_header(conn: Connection, header: dict) -> None:
    """Send one JSON frame."""
    conn.send_bytes(json.dumps(header).encode())


def recv_header(conn: Connection) -> dict:
    """Receive one JSON frame (a dict)."""
    header = json.loads(conn.recv_bytes().decode())
    if not isinstance(header, dict):
        raise ValueError("worker frame is not a JSON object")
    return header


def forward(
    op: str,
    message: Message,
    context: Context,
    *,
    state_dir: str | Path,
    site_config: str,
    code: str | None = None,
) -> tuple[Message, Context, float]:
    """Have the site's worker run handler ``op`` on ``message`` and ``context``.

    Parameters
    ----------
    op : str
        ``train`` or ``evaluate``.
    message, context : Message, Context
        What Flower handed the ClientApp.
    state_dir : str or Path
        The site's state directory (socket and key live there).
    site_config : str
        The site YAML the SuperNode's node config names; the worker serves only its own.
    code : str, optional
        Fingerprint of the caller's handler code (default: computed here).

    Returns
    -------
    tuple of (Message, Context, float)
        The worker's reply, the context after the handler, and the worker's handler seconds.

    Raises
    ------
    WorkerUnavailableError
        Nothing was run: no socket, no key, refused handshake, other code or site, or the
        worker went away before answering. The caller runs the handler itself.
    WorkerError
        The handler raised in the worker.
    """
    sock = socket_path(state_dir)
    if not sock.exists():
        raise WorkerUnavailableError(f"no worker socket at {sock}")
    key = read_key(key_path(state_dir))
    try:
        conn = Client(str(sock), family="AF_UNIX", authkey=key)
    except Exception as exc:  # noqa: BLE001 - refused, stale socket, bad key: all mean "not here"
        raise WorkerUnavailableError(f"cannot reach the worker at {sock}: {exc!r}") from None
    try:
        header = {"protocol": PROTOCOL, "op": op, "site-config": site_config}
        send_header(conn, {**header, "code": code or code_fingerprint()})
        conn.send_bytes(message_to_bytes(message))
        conn.send_bytes(context_to_bytes(context))
        answer = recv_header(conn)
        status = answer.get("status")
        if status == "refused":
            raise WorkerUnavailableError(f"the worker refused: {answer.get('detail', '')}")
        if status != "ok":
            raise WorkerError(str(answer.get("detail", "unknown worker error")))
        reply = message_from_bytes(conn.recv_bytes())
        after = context_from_bytes(conn.recv_bytes())
        return reply, after, float(answer.get("seconds", 0.0))
    except (EOFError, OSError, ValueError) as exc:
        raise WorkerUnavailableError(f"the worker went away: {exc!r}") from None
    finally:
        conn.close()


def _show_info_lines() -> None:
    """Print this app's INFO lines in a ``flwr-clientapp`` process, where nothing else does.

    Flower configures only its own ``flwr`` logger; without a handler anywhere Python prints
    warnings only, and the site's log would not say whether the worker answered.
    """
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def run_handler(
    op: str,
    message: Message,
    context: Context,
    in_process: Callable[[Message, Context], Message],
) -> Message:
    """Run a train or evaluate handler in the site's worker if one answers, else here.

    Only deployed sites (node config ``site-config``) look for a worker; simulation and the
    in-process grid run handlers here. The context's state is replaced by the worker's, so
    ``context.state`` ends as if the handler had run in this process.
    """
    path = context.node_config.get("site-config")
    if path is None or os.environ.get(ENV_SWITCH, "").lower() in ("0", "off", "no", "false"):
        return in_process(message, context)
    _show_info_lines()
    from .site_config import load_site_config

    site = load_site_config(str(path))
    if not socket_path(site.state_path).exists():
        log.info("%s: running in-process (no site worker at %s)", op, socket_path(site.state_path))
        return in_process(message, context)
    started = time.monotonic()
    try:
        reply, after, seconds = forward(
            op, message, context, state_dir=site.state_path, site_config=str(path)
        )
    except WorkerUnavailableError as exc:
        log.warning("%s: running in-process (%s)", op, exc)
        return in_process(message, context)
    context.state = after.state
    log.info(
        "%s: handled by the site worker (%.2fs handler, %.2fs total)",
        op,
        seconds,
        time.monotonic() - started,
    )
    return Message(reply.content, reply_to=message)
