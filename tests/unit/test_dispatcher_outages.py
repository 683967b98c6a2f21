"""The executor's thread through a broker that keeps failing: backoff across recoveries,
and an end once close() or the exit gave up on it."""

from __future__ import annotations

import time
from typing import Any

import pytest

import distq.dispatcher as dispatching
from distq.backoff import Backoff
from distq.codec import Codec
from distq.dispatcher import Dispatcher, Entry, Stop, Submit
from distq.envelope import Task
from distq.errors import TransportError
from distq.futures import Callbacks, DistqFuture


class Closed:
    """The executor's transport, as the dispatcher uses it."""

    def close(self) -> None:
        pass

    def forget_orphans(self, reply_to: str) -> int:
        return 0


class RefusesEachSend:
    """A broker that answers its reconcile (holding nothing) but refuses each task sent,
    the refusal coming with the next call (RabbitMQ: a length limit with overflow
    reject-publish, which nacks the publish after it)."""

    lapsed = False
    reply_to = "r"

    def __init__(self) -> None:
        self.sent: list[float] = []
        self.refused = False

    def _sent(self) -> list[bytes]:
        self.sent.append(time.monotonic())
        self.refused = True
        return []

    def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
        return self._sent()

    def submit(self, bodies: Any) -> None:
        self._sent()

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        if self.refused:
            self.refused = False
            raise TransportError("the broker refused 1 message(s)")
        time.sleep(min(timeout, 0.01))
        return []

    def reconcile(self) -> int:
        return 0

    def withdraw(self, bodies: Any) -> list[bool]:
        return [False] * len(bodies)

    def close(self) -> None:
        pass


def _entry(dispatcher: Dispatcher, callbacks: Callbacks) -> Entry:
    task = Task(name="square", args=[3], reply_to="r")
    future = DistqFuture[Any](dispatcher.cancel, task.id, "square", callbacks)
    return Entry(task, task.encode(), future, deadline=None)


def test_a_broker_that_keeps_refusing_the_tasks_is_retried_with_growing_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each reconcile that went through ended the recovery, and the next refusal began a
    new one with a new Backoff, its first attempt at once: the executor sent its task
    again as fast as the calls failed, for as long as the broker refused it. The
    outage's backoff grows now until the thread's calls go through again."""
    monkeypatch.setattr(dispatching, "Backoff", lambda: Backoff(rng=lambda: 1.0))
    callbacks = Callbacks()
    producer = RefusesEachSend()
    dispatcher = Dispatcher(Closed(), producer, Codec(), callbacks)  # type: ignore[arg-type]
    entry = _entry(dispatcher, callbacks)
    dispatcher.start()
    try:
        assert dispatcher.put(Submit([entry]))
        time.sleep(3.0)
        # delays of 0.1, 0.2, 0.4, 0.8, 1.6 s within the 3 s: the first send and 6 again
        assert len(producer.sent) <= 8, len(producer.sent)
    finally:
        dispatcher.put(Stop(False, abandon="the executor was closed"))
        dispatcher.join(10)
    assert not dispatcher.is_alive()
