"""A Flower ``Grid`` that delivers messages to a ClientApp object in this process.

One :class:`~flwr.app.Context` per site, kept across messages like a SuperNode keeps it, and
every message (both directions) passes through Flower's own protobuf serialisation, so what
the tests inspect in :attr:`InProcessGrid.wire` is byte for byte what would cross the network.
Tests and benchmarks use this one grid; nothing else fakes the runtime.
"""

from __future__ import annotations

import itertools
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


@dataclass(frozen=True)
class WireRecord:
    """One message as it crossed the (in-process) wire.

    Attributes
    ----------
    direction : str
        ``down`` (server to site) or ``up`` (site to server).
    node_id : int
        The site's node id.
    message_type : str
        E.g. ``train``, ``evaluate``, ``query.secpc``.
    group_id : str
        The round the message belongs to.
    payload : bytes
        The serialised protobuf message.
    """

    direction: str
    node_id: int
    message_type: str
    group_id: str
    payload: bytes

    def message(self) -> Message:
        """Deserialise the payload."""
        proto = ProtoMessage()
        proto.ParseFromString(self.payload)
        return message_from_proto(proto)


#: A hook that sees each reply before the server does; it may return it, a changed
#: message, or ``None`` (the site dropped out).
ReplyHook = Callable[[int, Message], Message | None]


def _wire(message: Message) -> tuple[bytes, Message]:
    payload = message_to_proto(message).SerializeToString()
    proto = ProtoMessage()
    proto.ParseFromString(payload)
    return payload, message_from_proto(proto)


class InProcessGrid(Grid):
    """Grid over ClientApp objects in this process, one context per site.

    Parameters
    ----------
    client_app : ClientApp
        The app every site runs.
    node_configs : sequence of dict
        One node config per site (e.g. ``{"site-config": path}`` or simulation's
        ``{"partition-id": i, "num-partitions": n}``).
    run_config : dict
        The run config every site sees.
    run_id : int
        Run id placed in every message.
    reply_hook : callable, optional
        See :data:`ReplyHook`: used by tests to drop sites or tamper with replies.
    record_wire : bool
        Keep every serialised message in :attr:`wire` (costs memory on long runs).
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Sequence[dict[str, Any]],
        run_config: dict[str, Any],
        run_id: int = 1,
        reply_hook: ReplyHook | None = None,
        record_wire: bool = True,
    ) -> None:
        self.client_app = client_app
        self.reply_hook = reply_hook
        self.record_wire = record_wire
        self.wire: list[WireRecord] = []
        self._run = Run.create_empty(run_id)
        self._run.override_config = dict(run_config)
        # Node ids are random 63-bit integers in Flower; small distinct ones keep logs readable.
        self.contexts: dict[int, Context] = {
            1000 + i: Context(
                run_id=run_id,
                node_id=1000 + i,
                node_config=dict(cfg),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, cfg in enumerate(node_configs)
        }
        self.offline: set[int] = set()
        self._replies: dict[str, Message] = {}
        self._task_ids = itertools.count(1)
        # Messages built by a ServerApp read their run and source node from the task identity.
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        TaskIdentity.task_id = 1

    def set_run(self, run: Run) -> None:
        """Replace the run this grid serves."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid serves."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Build a message from the server to ``dst_node_id``."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Ids of the sites that are online."""
        return [n for n in self.contexts if n not in self.offline]

    def bytes_sent(self, direction: str, node_id: int | None = None, message_type: str = "") -> int:
        """Total serialised size of recorded messages matching the filters."""
        return sum(
            len(w.payload)
            for w in self.wire
            if w.direction == direction
            and (node_id is None or w.node_id == node_id)
            and (not message_type or w.message_type == message_type)
        )

    def _deliver(self, message: Message) -> Message | None:
        node_id = message.metadata.dst_node_id
        if node_id not in self.contexts or node_id in self.offline:
            return None
        message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        payload, received = _wire(message)
        if self.record_wire:
            self.wire.append(
                WireRecord(
                    "down",
                    node_id,
                    message.metadata.message_type,
                    message.metadata.group_id,
                    payload,
                )
            )
        try:
            reply = self.client_app(received, self.contexts[node_id])
        except Exception as exc:  # noqa: BLE001 - a crashing site is reported, like Flower does
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=received)
        if self.reply_hook is not None:
            reply = self.reply_hook(node_id, reply)
            if reply is None:
                return None
        payload, delivered = _wire(reply)
        if self.record_wire:
            self.wire.append(
                WireRecord(
                    "up", node_id, message.metadata.message_type, message.metadata.group_id, payload
                )
            )
        return delivered

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its site now; its reply waits to be pulled."""
        ids = []
        for message in messages:
            reply = self._deliver(message)
            msg_id = message.metadata.message_id or uuid.uuid4().hex
            ids.append(msg_id)
            if reply is not None:
                self._replies[msg_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Replies to the given messages (sites that dropped have none)."""
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver and collect: sites run one after another in this process."""
        return list(self.pull_messages(self.push_messages(messages)))
