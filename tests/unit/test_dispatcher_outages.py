"""The executor's thread through a broker that keeps failing: backoff across recoveries,
and an end once close() or the exit gave up on it."""

from __future__ import annotations

import time
from typing import Any

import pytest

import distq.dispatcher as dispatching
from distq import executor_threads
from distq.backoff import Backoff
from distq.codec import Codec
from distq.dispatcher import Dispatcher, Stop, Submit
from distq.errors import BrokenExecutor, TransportError
from distq.futures import Callbacks
from seam import DispatcherTransport, square_entry


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

    def withdraw(self, bodies: Any, redelivered: bool = True) -> list[bool]:
        return [False] * len(bodies)

    def close(self) -> None:
        pass


class RefusesEachSendLater(RefusesEachSend):
    """The same broker, its refusal coming a result read later: pika reads the nack of a
    publish with a later call, not always the first one after it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def _sent(self) -> list[bytes]:
        self.reads = 0
        return super()._sent()

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        self.reads += 1
        if self.refused and self.reads < 2:
            time.sleep(min(timeout, 0.01))
            return []  # a turn goes through before the nack is read
        return super().results(max_count, timeout)


@pytest.mark.parametrize(
    "broker",
    [RefusesEachSend, RefusesEachSendLater],
    ids=["refused-at-once", "refused-a-read-later"],
)
def test_a_broker_that_keeps_refusing_the_tasks_is_retried_with_growing_backoff(
    monkeypatch: pytest.MonkeyPatch, broker: type[RefusesEachSend]
) -> None:
    """Each reconcile that went through ended the recovery, and the next refusal began a
    new one with a new Backoff, its first attempt at once: the executor sent its task
    again as fast as the calls failed, for as long as the broker refused it. The
    outage's backoff grows now until the thread's calls go through again.

    With the nack read one result read later, the backoff was reset by any turn that went
    through after a reconnect: each recovery began again at no delay, and the executor
    sent its task again about 100 times a second (290 in 3 s) for as long as the broker
    refused it. It is reset once the calls have gone through for longer
    than the longest delay."""
    monkeypatch.setattr(dispatching, "Backoff", lambda: Backoff(rng=lambda: 1.0))
    callbacks = Callbacks()
    producer = broker()
    dispatcher = Dispatcher(DispatcherTransport(), producer, Codec(), callbacks)  # type: ignore[arg-type]
    entry = square_entry(dispatcher, callbacks)
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


class HangsThenFails:
    """A broker that does not answer: each call waits ``hang`` s, then fails."""

    lapsed = False
    reply_to = "r"
    takes_back = True  # a Redis's: it withdraws

    def __init__(self, hang: float) -> None:
        self.hang = hang
        self.calls = 0

    def _hang(self) -> Any:
        self.calls += 1
        time.sleep(self.hang)
        raise TransportError("Redis at 127.0.0.1:1: Timeout reading from socket")

    def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
        return []

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        return self._hang()  # type: ignore[no-any-return]

    def reconcile(self) -> int:
        return self._hang()  # type: ignore[no-any-return]

    def withdraw(self, bodies: Any, redelivered: bool = True) -> list[bool]:
        return self._hang()  # type: ignore[no-any-return]

    def close(self) -> None:
        pass


def test_the_thread_ends_once_its_call_fails_after_close_gave_up_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """close() with the thread in a call to a hung broker fails the futures after
    CLOSE_WAIT_SECONDS and takes the thread's Stop with them (fail_stuck): the thread, its
    call failed, went on reconnecting until OUTAGE_SECONDS (30 s), its connection open.
    It ends once its call returns now."""
    monkeypatch.setattr(dispatching, "OUTAGE_SECONDS", 8.0)
    monkeypatch.setattr(dispatching, "Backoff", lambda: Backoff(rng=lambda: 0.0))
    callbacks = Callbacks()
    producer = HangsThenFails(hang=0.5)
    dispatcher = Dispatcher(DispatcherTransport(), producer, Codec(), callbacks)  # type: ignore[arg-type]
    entry = square_entry(dispatcher, callbacks)
    dispatcher.start()
    assert dispatcher.put(Submit([entry]))
    time.sleep(0.7)  # in its read, or reconnecting: always in a call
    why = "the executor was closed"
    dispatcher.put(Stop(False, abandon=why))
    # as close() does, with a shorter wait: the thread is in a 0.5 s call
    [failed] = executor_threads.join_or_fail([dispatcher], time.monotonic() + 0.05, why)
    assert failed == 1
    assert isinstance(entry.future.exception(0), BrokenExecutor)
    dispatcher.join(3.0)  # its call returns within 0.5 s
    alive = dispatcher.is_alive()
    assert not alive, f"still reconnecting after close() gave up: {producer.calls} calls"
