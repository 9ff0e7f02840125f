"""The metering grid collects a SuperLink's replies every REPLY_POLL_SECONDS, not every 3 s.

A stand-in for Flower's ``HttpGrid`` (its class, without a connection) hands out replies over
several pulls; the meter must return all of them, in as many pulls, sleeping
``REPLY_POLL_SECONDS`` between pulls, and still count the exchange. Other grids keep their own
``send_and_receive``.
"""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.grid.http_grid import HttpGrid

from strategies import metering
from strategies.metering import REPLY_POLL_SECONDS, MeteredGrid


@pytest.fixture(autouse=True)
def _task_identity():
    # Flower stamps messages with the running task's identity; a test has none of its own.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1


def _message(node: int) -> Message:
    message = Message(RecordDict({"c": ConfigRecord({"x": node})}), node, "train", group_id="4")
    message.metadata.__dict__["_message_id"] = f"m{node}"
    return message


class _SlowSuperLink(HttpGrid):
    """Replies become available one pull at a time (some never, with ``lost``)."""

    def __init__(self, lost: frozenset[str] = frozenset()) -> None:  # no connection
        self.pushed: list[Message] = []
        self.pulls = 0
        self.lost = lost

    def push_messages(self, messages):
        self.pushed = list(messages)
        return [m.metadata.message_id for m in self.pushed]

    def pull_messages(self, message_ids):
        self.pulls += 1
        ready = [m for m in self.pushed[: self.pulls - 1] if m.metadata.message_id in message_ids]
        return [
            Message(RecordDict(), reply_to=m)
            for m in ready
            if m.metadata.message_id not in self.lost
        ]

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("Flower's 3 s loop must not run")


@pytest.fixture
def clock(monkeypatch):
    """A fake clock: sleeping advances it, and each sleep is recorded."""
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(metering.time, "sleep", sleep)
    monkeypatch.setattr(metering.time, "monotonic", lambda: now[0])
    return sleeps


def test_replies_from_a_superlink_are_collected_every_poll_interval(clock):
    link = _SlowSuperLink()
    meter = MeteredGrid(link)
    replies = meter.send_and_receive([_message(n) for n in (1, 2, 3)], timeout=60)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m1", "m2", "m3"]
    assert link.pulls == 4 and clock == [REPLY_POLL_SECONDS] * 3
    assert REPLY_POLL_SECONDS < 3  # faster than Flower's own loop
    cost = meter.cost(4)
    assert (cost.exchanges, cost.messages_down, cost.messages_up) == (1, 3, 3)


def test_a_reply_that_never_comes_ends_the_exchange_at_the_timeout(clock):
    link = _SlowSuperLink(lost=frozenset({"m2"}))
    replies = MeteredGrid(link).send_and_receive([_message(n) for n in (1, 2)], timeout=1.0)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m1"]
    assert sum(clock) == pytest.approx(1.0)


def test_other_grids_keep_their_own_exchange():
    class Immediate:
        def send_and_receive(self, messages, *, timeout=None):
            return [Message(RecordDict(), reply_to=m) for m in messages]

        def push_messages(self, messages):
            raise AssertionError("not used")

    replies = MeteredGrid(Immediate()).send_and_receive([_message(5)], timeout=None)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m5"]
