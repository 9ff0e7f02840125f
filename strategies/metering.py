"""One clock for every strategy: exchanges, bytes both ways and seconds, counted per round.

:class:`MeteredGrid` wraps whatever ``Grid`` the ServerApp gets (a SuperLink, or the in-process
grid of the tests) and counts every ``send_and_receive`` as one exchange, with the serialised
size of each message in both directions, under the round named by the messages' ``group_id``.
Strategies add the seconds they spend on crypto (server) and the seconds sites report (train,
crypto) through :meth:`MeteredGrid.add_seconds`. Every strategy's round records take their
costs from here (``RoundRecord.cost``), so baselines and SecFPP are on the same clock.

In deployment it also collects the replies itself (:data:`REPLY_POLL_SECONDS`), since every
exchange of every strategy goes through it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from flwr.app import Message, RecordDict
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid

#: Seconds between the ServerApp's requests for replies in deployment. Flower 1.42's
#: ``HttpGrid.send_and_receive`` sleeps 3 s between them, so every exchange waited on average
#: 1.5 s after its last reply had arrived; a request is one small call to the SuperLink.
REPLY_POLL_SECONDS = 0.2


def message_size(message: Message) -> int:
    """Serialised size in bytes of a message as it crosses the wire."""
    return message_to_proto(message).ByteSize()


@dataclass
class RoundCost:
    """What one round cost, summed over sites.

    Attributes
    ----------
    exchanges : int
        ``send_and_receive`` calls (key setup, train, SecPC query, evaluation all count).
    messages_down, messages_up : int
        Messages sent to sites, and replies received.
    bytes_down, bytes_up : int
        Serialised bytes sent to sites (including relayed ciphertexts and the key
        directory), and received from them.
    sites : int
        Distinct sites (node ids) that were sent a message.
    seconds_crypto_server : float
        Server seconds spent decoding and checking answers.
    seconds_crypto_site : float
        Seconds sites reported for sharing, sealing, opening and answering (summed).
    seconds_train_site : float
        Seconds sites reported for local training (summed).
    """

    exchanges: int = 0
    messages_down: int = 0
    messages_up: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    sites: int = 0
    seconds_crypto_server: float = 0.0
    seconds_crypto_site: float = 0.0
    seconds_train_site: float = 0.0
    nodes: set[int] = field(default_factory=set, repr=False)

    def to_json(self) -> dict:
        """JSON-ready figures (the node set is reduced to its size)."""
        out = asdict(self)
        out.pop("nodes")
        out["sites"] = len(self.nodes)
        return out


class MeteredGrid(Grid):
    """A ``Grid`` that counts what crosses it, per round, and otherwise delegates.

    Parameters
    ----------
    grid : Grid
        The grid to wrap.
    """

    def __init__(self, grid: Grid) -> None:
        self.inner = grid
        self.rounds: dict[int, RoundCost] = {}
        #: The strategy this meter serves (set by the ServerApp), so an in-process harness can
        #: read what the server learned (``SecFPP.views``) after the run.
        self.strategy = None
        #: Serialised size of each reply of the last exchange, by ``id()`` of the reply object.
        self.reply_sizes: dict[int, int] = {}

    # -- accounting -------------------------------------------------------------------------
    def cost(self, server_round: int) -> RoundCost:
        """The (live) cost record of ``server_round``."""
        return self.rounds.setdefault(server_round, RoundCost())

    def add_seconds(self, server_round: int, kind: str, seconds: float) -> None:
        """Add ``seconds`` to ``crypto_server``, ``crypto_site`` or ``train_site``."""
        cost = self.cost(server_round)
        name = f"seconds_{kind}"
        setattr(cost, name, getattr(cost, name) + float(seconds))

    def totals(self) -> RoundCost:
        """Sum over all rounds."""
        total = RoundCost()
        for cost in self.rounds.values():
            for name in asdict(total):
                if name != "nodes":
                    setattr(total, name, getattr(total, name) + getattr(cost, name))
            total.nodes |= cost.nodes
        return total

    @staticmethod
    def _round_of(messages: list[Message]) -> int:
        for message in messages:
            group = message.metadata.group_id
            if group and group.isdigit():
                return int(group)
        return 0

    # -- Grid -------------------------------------------------------------------------------
    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send, receive and count one exchange."""
        messages = list(messages)
        if not messages:
            return []
        cost = self.cost(self._round_of(messages))
        cost.exchanges += 1
        for message in messages:
            cost.messages_down += 1
            cost.bytes_down += message_size(message)
            cost.nodes.add(message.metadata.dst_node_id)
        replies = self._exchange(messages, timeout)
        self.reply_sizes = {}
        for reply in replies:
            size = message_size(reply)
            self.reply_sizes[id(reply)] = size
            cost.messages_up += 1
            cost.bytes_up += size
        return replies

    def _exchange(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """The inner grid's ``send_and_receive``; against a SuperLink, its loop polled faster.

        Flower's ``HttpGrid`` loop (push, then pull until every reply is in or ``timeout``
        passed; ``None`` waits for ever) with :data:`REPLY_POLL_SECONDS` between pulls. Other
        grids (the simulation's, the in-process one) keep their own.
        """
        from flwr.superlink.grid.http_grid import HttpGrid

        if not isinstance(self.inner, HttpGrid):
            return list(self.inner.send_and_receive(messages, timeout=timeout))
        pending = set(self.inner.push_messages(messages))
        end = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        while timeout is None or time.monotonic() < end:
            pulled = list(self.inner.pull_messages(pending))
            replies.extend(pulled)
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not pending:
                break
            time.sleep(REPLY_POLL_SECONDS)
        return replies

    @property
    def run(self):
        """The wrapped grid's run."""
        return self.inner.run

    def set_run(self, run) -> None:
        """Delegate."""
        self.inner.set_run(run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Delegate."""
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Delegate."""
        return self.inner.get_node_ids()

    def get_nodes(self):
        """Delegate."""
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate (uncounted: every strategy here exchanges through ``send_and_receive``)."""
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate."""
        return self.inner.pull_messages(message_ids)

    def __getattr__(self, name: str):
        # The in-process grid's extras (wire log, contexts, offline set) stay reachable.
        return getattr(self.inner, name)
