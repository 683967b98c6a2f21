"""The executor's thread on its own: what it does when the broker fails under it."""

from __future__ import annotations

import re
import secrets
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import distq.dispatcher as dispatching
from distq import executor_threads
from distq import overdue as overdue_module
from distq.chunks import CHUNK_TASK
from distq.codec import Codec
from distq.config import RECONCILE_SECONDS, Settings
from distq.dispatcher import Dispatcher, Entry, Stop, Submit
from distq.envelope import Task
from distq.errors import (
    BrokenExecutor,
    ConfigError,
    EnvelopeError,
    TaskTimeout,
    TransportError,
)
from distq.executor import Executor
from distq.futures import Callbacks, DistqFuture
from distq.overdue import DEADLINES_KEPT
from distq.transport import Settlement, open_transport
from launch import free_port
from seam import (
    DispatcherTransport,
    answered_as_the_wait_ends,
    fetch_n,
    ok_result,
    square_entry,
)


class BrokerGoneAtWithdraw:
    """A producer whose broker answers nothing, then fails when a task is taken back."""

    lapsed = False  # what its reconcile found: no lapse
    takes_back = True  # a Redis's or a manager's: it withdraws

    def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
        return []

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        time.sleep(timeout)
        return []

    def withdraw(self, bodies: Any, redelivered: bool = True) -> list[bool]:
        raise TransportError("Redis at 127.0.0.1:1 went away")

    def reconcile(self) -> int:
        raise TransportError("Redis at 127.0.0.1:1 went away")

    def close(self) -> None:
        pass

    def abandon(self) -> None:  # after a failed call: closed with no call
        self.close()


def test_a_task_timing_out_as_the_broker_fails_is_failed_not_left_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sent, then past its task_timeout as the broker goes: the withdraw fails, and the
    future fails with TaskTimeout at its deadline (not 30 s later with BrokenExecutor:
    the executor handles deadlines while it waits the outage out); the broker staying
    away past OUTAGE_SECONDS then ends the thread."""
    monkeypatch.setattr(dispatching, "OUTAGE_SECONDS", 1.0)  # the broker stays away
    # the thread's failed withdraw says why, not the watchdog of overdue tasks: with its
    # 0.5 s, a stall of this process at the deadline let it fail the task first, saying
    # "could not withdraw it in time"
    monkeypatch.setattr(overdue_module, "OVERDUE_GRACE", 3.0)
    callbacks = Callbacks()
    dispatcher = Dispatcher(DispatcherTransport(), BrokerGoneAtWithdraw(), Codec(), callbacks)  # type: ignore[arg-type]
    task = Task(name="square", args=[3], reply_to="r")
    future = DistqFuture[Any](dispatcher.cancel, task.id, "square", callbacks)
    entry = Entry(task, task.encode(), future, deadline=time.monotonic() + 0.2)
    started = time.monotonic()
    dispatcher.start()
    assert dispatcher.put(Submit([entry]))
    error = future.exception(timeout=10)
    assert isinstance(error, TaskTimeout), error
    assert "the broker is unreachable, so it was not withdrawn" in str(error)
    # at its deadline; the outage's end fails it with BrokenExecutor (the type says which)
    assert time.monotonic() - started < 5
    dispatcher.join(10)
    # 1 s or more: the last attempt falls due at 1 s, and this process may stall in it
    away = re.search(r"went away; still unreachable after (\d+) s", str(dispatcher.broken))
    assert away is not None and int(away.group(1)) >= 1, dispatcher.broken
    assert not dispatcher.is_alive() and not dispatcher.put(Stop(False))


def test_cancel_and_task_timeout_work_while_an_outage_is_waited_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, the thread waited the outage out without handling commands: cancel()
    blocked for the whole 30 s, and task_timeout fired only with BrokenExecutor."""
    monkeypatch.setattr(dispatching, "OUTAGE_SECONDS", 5.0)
    callbacks = Callbacks()
    producer = BrokerAway()
    dispatcher = Dispatcher(DispatcherTransport(), producer, Codec(), callbacks)  # type: ignore[arg-type]

    def entry(deadline: float | None) -> Entry:
        task = Task(name="square", args=[3], reply_to="r")
        return Entry(
            task,
            task.encode(),
            DistqFuture[Any](dispatcher.cancel, task.id, "square", callbacks),
            deadline,
        )

    dispatcher.start()
    sent = entry(None)
    assert dispatcher.put(Submit([sent]))  # its send fails: the outage starts
    _until(lambda: producer.calls >= 2)  # the send and the reconcile failed: offline
    late, waiting = entry(time.monotonic() + 0.3), entry(None)
    assert dispatcher.put(Submit([late, waiting]))  # not sent during the outage
    started = time.monotonic()
    assert dispatcher.cancel([waiting.future]) == [True]  # never sent: cancelled at once
    assert dispatcher.cancel([sent.future]) == [False]  # sent, the broker away: no withdraw
    assert time.monotonic() - started < 3.0  # not the outage's 5 s (a stall may add some)
    error = late.future.exception(timeout=2)
    assert isinstance(error, TaskTimeout)
    # the reason is the outage, not a backlog of earlier tasks (there was none; exec16)
    assert "never sent: the broker is unreachable" in str(error), error
    assert dispatcher.put(Stop(False, abandon="closed"))
    dispatcher.join(10)
    assert not dispatcher.is_alive() and isinstance(sent.future.exception(0), BrokenExecutor)


class AnswersAtOnce:
    """A producer whose worker answers every task in the same round trip."""

    lapsed = False  # what its reconcile found: no lapse
    takes_back = True  # a Redis's or a manager's: it withdraws

    def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
        return [answer(body) for body in bodies]

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        time.sleep(timeout)
        return []

    def reconcile(self) -> int:
        return 0  # it holds nothing: every task answered as it was sent

    def close(self) -> None:
        pass

    close_answered = close  # every future answered: the same here


def answer(body: bytes) -> bytes:
    task = Task.decode(body)
    return ok_result(task, task.args[0])


def test_answered_tasks_leave_no_deadline_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a task_timeout, the deadlines of answered tasks do not pile up until they
    pass: the heap stays bounded by the open tasks, not by the last hour's. A reconcile
    at every turn, as a loaded machine makes them (the rounds took over 2 s in a run of
    `make test` with 5 processes on 2 cores, and the fake, without a reconcile, ended
    the dispatcher's thread)."""
    monkeypatch.setattr(dispatching, "RECONCILE_SECONDS", 0.0)
    callbacks = Callbacks()
    dispatcher = Dispatcher(DispatcherTransport(), AnswersAtOnce(), Codec(), callbacks)  # type: ignore[arg-type]
    dispatcher.start()
    futures = []
    for round_ in range(3):
        entries = []
        for n in range(2000):
            task = Task(name="ident", args=[n], reply_to="r")
            future = DistqFuture[Any](dispatcher.cancel, task.id, "ident", callbacks)
            entries.append(Entry(task, task.encode(), future, deadline=time.monotonic() + 3600))
            futures.append(future)
        assert dispatcher.put(Submit(entries))
        assert [f.result(timeout=10) for f in futures[-2000:]] == list(range(2000)), round_
    time.sleep(0.1)  # the thread's turn after the last results
    assert len(dispatcher._deadlines) <= DEADLINES_KEPT
    assert dispatcher.put(Stop(False))
    dispatcher.join(10)


class DroppedWhileIdle:
    """A producer whose connection was closed while the executor was idle (a broker's
    idle timeout, missed RabbitMQ heartbeats, a restart): its next call fails once;
    reconnected, the broker holds none of what was sent (``reconcile`` says 0)."""

    lapsed = False  # what its reconcile found: no lapse
    takes_back = True  # a Redis's or a manager's: it withdraws

    reply_to = "r"

    def __init__(self) -> None:
        self.dropped = False
        self.held: list[bytes] = []  # what the broker holds, in order
        self.reconciles = 0

    def _call(self) -> None:
        if self.dropped:
            self.dropped = False
            raise TransportError("Redis at 127.0.0.1:6379: Connection closed by server.")

    def submit(self, bodies: Any) -> None:
        self._call()
        self.held.extend(bodies)

    def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
        self._call()  # fails before the broker got them
        self.held.extend(bodies)
        return self.results(max_count, 0.0)

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        self._call()
        answered, self.held = self.held, []
        return [answer(body) for body in answered]

    def reconcile(self) -> int:
        self._call()
        self.reconciles += 1
        return 0

    def close(self) -> None:
        pass

    close_answered = close  # every future answered: the same here


def test_an_idle_executor_reconnects_when_its_connection_was_dropped() -> None:
    """Before, the first call after the drop ended the executor's thread for good:
    that future and every later submit failed with BrokenExecutor, broker up or not."""
    callbacks = Callbacks()
    producer = DroppedWhileIdle()
    dispatcher = Dispatcher(DispatcherTransport(), producer, Codec(), callbacks)  # type: ignore[arg-type]
    dispatcher.start()

    def submit(n: int) -> DistqFuture[Any]:
        task = Task(name="ident", args=[n], reply_to="r")
        future = DistqFuture[Any](dispatcher.cancel, task.id, "ident", callbacks)
        assert dispatcher.put(Submit([Entry(task, task.encode(), future, deadline=None)]))
        return future

    assert submit(1).result(timeout=10) == 1
    producer.dropped = True  # while idle
    assert submit(2).result(timeout=10) == 2  # the send fails, reconnects, sends it again
    assert submit(3).result(timeout=10) == 3
    assert dispatcher.broken is None
    assert dispatcher.put(Stop(False))
    dispatcher.join(10)


def test_an_idle_executor_asks_the_broker_every_reconcile_period() -> None:
    """Idle, it still reconciles every RECONCILE_SECONDS: RabbitMQ's heartbeats are
    answered and the reply queue renewed, and a dropped connection is found (and
    reconnected) before the next submit needs it."""
    callbacks = Callbacks()
    producer = DroppedWhileIdle()
    dispatcher = Dispatcher(DispatcherTransport(), producer, Codec(), callbacks)  # type: ignore[arg-type]
    dispatcher.start()
    time.sleep(2 * RECONCILE_SECONDS + 1.5)
    assert producer.reconciles >= 2
    assert dispatcher.put(Stop(False))
    dispatcher.join(10)


def _until(done: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until the dispatcher's thread got there: a sleep in its place was too short
    for a loaded host, and two submits went as one."""
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, "the dispatcher's thread never got there"
        time.sleep(0.01)


class BrokerAway:
    """A producer whose broker never answers again."""

    lapsed = False  # what its reconcile found: no lapse
    takes_back = True  # a Redis's or a manager's: it withdraws

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self) -> Any:
        self.calls += 1
        raise TransportError("Redis at 127.0.0.1:1: Connection refused.")

    def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
        return self._fail()  # type: ignore[no-any-return]

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        return self._fail()  # type: ignore[no-any-return]

    def reconcile(self) -> int:
        return self._fail()  # type: ignore[no-any-return]

    def close(self) -> None:
        pass

    def abandon(self) -> None:  # after a failed call: closed with no call
        self.close()


def test_a_collected_executors_stop_during_an_outage_waits_it_out_without_spinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Stop a collected executor sends is not close(): the outage is still waited out
    with backoff (a handful of attempts), not retried as fast as the calls fail."""
    monkeypatch.setattr(dispatching, "OUTAGE_SECONDS", 1.5)
    callbacks = Callbacks()
    producer = BrokerAway()
    dispatcher = Dispatcher(DispatcherTransport(), producer, Codec(), callbacks)  # type: ignore[arg-type]
    task = Task(name="square", args=[3], reply_to="r")
    future = DistqFuture[Any](dispatcher.cancel, task.id, "square", callbacks)
    dispatcher.start()
    assert dispatcher.put(Submit([Entry(task, task.encode(), future, deadline=None)]))
    assert dispatcher.put(Stop(False, wait_at_exit=False))
    error = future.exception(timeout=10)
    assert isinstance(error, BrokenExecutor) and "still unreachable after" in str(error)
    assert producer.calls < 30, producer.calls  # backoff: before, a busy loop
    dispatcher.join(10)


@pytest.mark.parametrize("answered", [True, False])
def test_an_executor_with_every_future_answered_closes_its_producer_as_answered(
    answered: bool,
) -> None:
    """Every future answered, the executor closes its producer with close_answered (on
    RabbitMQ its reply queue left to expire: a copy of a task still queued runs, not
    dead-lettered "its master is gone"); with a future unanswered, with close."""
    closed: list[str] = []

    class Closing(AnswersAtOnce):
        def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
            return super().submit_then_results(bodies, max_count, timeout) if answered else []

        def withdraw(self, bodies: Any, redelivered: bool = True) -> list[bool]:
            return [True] * len(bodies)

        def close(self) -> None:
            closed.append("close")

        def close_answered(self) -> None:
            closed.append("answered")

    callbacks = Callbacks()
    dispatcher = Dispatcher(DispatcherTransport(), Closing(), Codec(), callbacks)  # type: ignore[arg-type]
    dispatcher.start()
    task = Task(name="ident", args=[7], reply_to="r")
    future = DistqFuture[Any](dispatcher.cancel, task.id, "ident", callbacks)
    assert dispatcher.put(Submit([Entry(task, task.encode(), future, deadline=None)]))
    if answered:
        assert future.result(timeout=10) == 7
    assert dispatcher.put(Stop(False))
    dispatcher.join(10)
    assert closed == ["answered" if answered else "close"]


def test_a_flood_of_submits_does_not_hold_up_the_first_sends() -> None:
    """The thread handles at most COMMANDS_PER_TURN commands before it sends and reads:
    before, a thread submitting without pause kept it taking commands, with nothing sent,
    no result read and no reconcile (its Redis registration then lapsed)."""
    callbacks = Callbacks()
    dispatcher: Dispatcher
    waiting_at_first_send: list[int] = []

    class Recording(AnswersAtOnce):
        def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
            if not waiting_at_first_send:
                waiting_at_first_send.append(dispatcher._commands.qsize())
            return super().submit_then_results(bodies, max_count, timeout)

    dispatcher = Dispatcher(DispatcherTransport(), Recording(), Codec(), callbacks)  # type: ignore[arg-type]
    futures = []
    for n in range(3 * dispatching.COMMANDS_PER_TURN):  # queued before the thread starts
        task = Task(name="ident", args=[n], reply_to="r")
        future = DistqFuture[Any](dispatcher.cancel, task.id, "ident", callbacks)
        assert dispatcher.put(Submit([Entry(task, task.encode(), future, deadline=None)]))
        futures.append(future)
    dispatcher.start()
    assert [f.result(timeout=20) for f in futures] == list(range(len(futures)))
    assert waiting_at_first_send[0] >= dispatching.COMMANDS_PER_TURN
    assert dispatcher.put(Stop(False))
    dispatcher.join(10)


class Hangs:
    """A producer whose broker never answers a results read until ``release`` is set."""

    lapsed = False  # what its reconcile found: no lapse
    takes_back = True  # a Redis's or a manager's: it withdraws

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.submitted: list[list[bytes]] = []

    def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
        self.submitted.append(list(bodies))
        return []

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        self.release.wait(30)
        raise TransportError("Redis at 127.0.0.1:1: Timeout reading")

    def withdraw(self, bodies: Any, redelivered: bool = True) -> list[bool]:
        return [False for _ in bodies]

    def reconcile(self) -> int:
        return 0  # it lost them all: a thread still running would send them again

    def close(self) -> None:
        pass


def test_a_cancel_resolving_a_future_as_the_thread_fails_it_leaves_none_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel() on its caller's thread may resolve a future between _fail_all's look
    and its set_exception: the thread died there with InvalidStateError, and every
    later future stayed pending for ever (diff12b). One is cancelled at that very
    moment here; the others still fail, and the callbacks' thread ends."""
    callbacks = Callbacks()
    dispatcher = Dispatcher(DispatcherTransport(), BrokerGoneAtWithdraw(), Codec(), callbacks)  # type: ignore[arg-type]
    entries = [square_entry(dispatcher, callbacks) for _ in range(3)]
    real = BrokenExecutor

    class CancelledMeanwhile(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any) -> None:
            if not entries[0].future.done():
                dispatching._cancelled(entries[0].future)  # as a caller's cancel() would
            super().__init__(*args)

    monkeypatch.setattr(dispatching, "BrokenExecutor", CancelledMeanwhile)
    assert dispatcher.put(Submit(entries))
    assert dispatcher.put(Stop(False, abandon="closed"))
    dispatcher.start()
    dispatcher.join(10)
    assert not dispatcher.is_alive()
    assert entries[0].future.cancelled()
    for entry in entries[1:]:
        assert isinstance(entry.future.exception(0), real)


def test_at_exit_a_thread_stuck_on_a_hung_broker_fails_its_futures_and_sends_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exit fails the futures from its own thread; the thread, back from its wait,
    reconnected and sent those tasks again, and the exit waited 5 s more for a callback
    thread nobody had told to end (diff12b)."""
    callbacks = Callbacks()
    producer = Hangs()
    dispatcher = Dispatcher(DispatcherTransport(), producer, Codec(), callbacks)  # type: ignore[arg-type]
    monkeypatch.setattr(executor_threads, "running", {dispatcher})
    entry = square_entry(dispatcher, callbacks)
    seen: list[BaseException | None] = []
    entry.future.add_done_callback(lambda f: seen.append(f.exception()))
    dispatcher.start()
    assert dispatcher.put(Submit([entry]))
    time.sleep(0.3)  # sent; the thread waits in a read that does not return
    started = time.monotonic()
    executor_threads._stop_at_exit()
    assert time.monotonic() - started < 7  # 5 s for the thread, not 5 more for callbacks
    assert len(seen) == 1 and isinstance(seen[0], BrokenExecutor), seen
    producer.release.set()  # the broker answers again: the thread must not send again
    dispatcher.join(10)
    assert not dispatcher.is_alive()
    assert producer.submitted == [[entry.body]], producer.submitted


def test_task_timeout_fails_at_its_deadline_while_the_thread_waits_on_a_hung_broker() -> None:
    """A broker that does not answer (stopped) held the thread in a call for a socket
    timeout, several in a row while it reconnected: a 4 s task_timeout fired after 13 s
    (exec16). Failed from the side within OVERDUE_GRACE now: a task sent, as not
    withdrawn; one not sent yet, taken back so that the thread never sends it."""
    callbacks = Callbacks()
    producer = Hangs()
    dispatcher = Dispatcher(DispatcherTransport(), producer, Codec(), callbacks)  # type: ignore[arg-type]

    def entry(deadline: float) -> Entry:
        task = Task(name="square", args=[3], reply_to="r")
        future = DistqFuture[Any](dispatcher.cancel, task.id, "square", callbacks)
        return Entry(task, task.encode(), future, deadline)

    dispatcher.start()
    try:
        started = time.monotonic()
        sent = entry(started + 0.3)
        assert dispatcher.put(Submit([sent]))
        _until(lambda: bool(producer.submitted))  # the thread waits in a read that hangs
        second = time.monotonic()
        unsent = entry(second + 0.3)
        assert dispatcher.put(Submit([unsent]))
        error = sent.future.exception(timeout=5)
        assert isinstance(error, TaskTimeout), error
        assert "could not withdraw it in time (a broker that does not answer" in str(error)
        # within the grace, not after the hang (a stall of this process may add a second)
        assert time.monotonic() - started < 0.3 + overdue_module.OVERDUE_GRACE + 1.5
        error = unsent.future.exception(timeout=5)
        assert isinstance(error, TaskTimeout), error
        assert "never sent: the executor was still sending earlier tasks, or" in str(error)
        assert time.monotonic() - second < 0.3 + overdue_module.OVERDUE_GRACE + 1.5
    finally:
        producer.release.set()  # the broker answers again (a read that fails, then none)
        assert dispatcher.put(Stop(False, abandon="closed"))
        dispatcher.join(10)
    assert producer.submitted == [[sent.body]], producer.submitted  # never the other


def _not_cancelled(futures: list[DistqFuture[Any]], wait: bool = True) -> list[bool]:
    """An executor's cancel that cancels nothing."""
    return [False for _ in futures]


def test_the_deadline_thread_keeps_no_answered_future_the_caller_dropped() -> None:
    """It held each entry, its future's result with it, until the deadline: 1.5 GB for
    3,000 results of 1 MB under a task_timeout of 600 s (diff16)."""
    import gc
    import threading

    lock = threading.Lock()  # the executor's: watch and end are called holding it
    overdue = overdue_module.Overdue(lock, set())
    task = Task(name="square", args=[3], reply_to="r")
    future = DistqFuture[Any](_not_cancelled, task.id, "square", Callbacks())
    seen = weakref.ref(future)
    with lock:
        overdue.watch(Entry(task, task.encode(), future, time.monotonic() + 600))
    future.set_result("x" * 1000)
    del future
    gc.collect()
    assert seen() is None
    with lock:
        overdue.end()


@pytest.mark.parametrize("value", [[4], [1, 4, 9], 5])
def test_a_chunk_result_that_is_not_a_list_of_its_size_fails_the_map(value: Any) -> None:
    """map(chunksize=2) took a chunk's result as it came: a worker of another version,
    or a forged result with signing off, that answered a chunk of 2 with ``[4]`` made
    map() yield a short list without an error (mutant X5 of mut14a)."""
    settings = Settings(authkey=secrets.token_bytes(8), manager_address=("127.0.0.1", free_port()))
    with Executor(settings, task_timeout=20) as executor:
        worker = open_transport(settings, "worker")
        try:
            results = executor.map("square", [1, 2], chunksize=2)
            consumer = worker.consumer("wrong-worker")
            [delivery] = fetch_n(consumer, 1)
            chunk = Task.decode(delivery.body)
            assert chunk.name == CHUNK_TASK
            consumer.settle([Settlement(delivery, chunk.reply_to, ok_result(chunk, value))])
            with pytest.raises(EnvelopeError, match=r"not a list of 2 results"):
                list(results)
        finally:
            worker.close()


def test_a_deadline_days_away_does_not_end_the_deadline_thread() -> None:
    """A deadline past threading.TIMEOUT_MAX (task_timeout=1e10) overflowed the thread's
    wait: it died with a traceback, and no later deadline was kept (input17)."""
    import threading

    lock = threading.Lock()
    overdue = overdue_module.Overdue(lock, set())
    far = Task(name="square", args=[3], reply_to="r")
    far_future = DistqFuture[Any](_not_cancelled, far.id, "square", Callbacks())
    with lock:
        overdue.watch(Entry(far, far.encode(), far_future, time.monotonic() + 1e10))
    time.sleep(0.2)  # the thread waits on the far deadline
    near = Task(name="square", args=[4], reply_to="r")
    near_future = DistqFuture[Any](_not_cancelled, near.id, "square", Callbacks())
    with lock:
        overdue.watch(Entry(near, near.encode(), near_future, time.monotonic() + 0.1))
    try:
        assert isinstance(near_future.exception(timeout=5), TaskTimeout)
        assert not far_future.done()
    finally:
        with lock:
            overdue.end()


def test_an_infinite_task_timeout_is_none() -> None:
    settings = Settings(authkey=secrets.token_bytes(8), manager_address=("127.0.0.1", free_port()))
    with Executor(settings, task_timeout=float("inf")) as executor:
        assert executor.task_timeout is None


def _watched(deadline: float) -> Entry:
    task = Task(name="square", args=[3], reply_to="r")
    future = DistqFuture[Any](_not_cancelled, task.id, "square", Callbacks())
    return Entry(task, task.encode(), future, deadline)


def test_a_sooner_deadline_watched_later_still_fires_on_time() -> None:
    """The thread waits for the first deadline (600 s away); one watched after it, 0.2 s
    away, fails about 0.7 s later, not in 600 s (mut17: killed only under load before)."""
    import threading

    lock = threading.Lock()
    overdue = overdue_module.Overdue(lock, set())
    late, soon = _watched(time.monotonic() + 600), _watched(time.monotonic() + 0.2)
    with lock:
        overdue.watch(late)
    time.sleep(0.2)  # the thread is in its wait for the 600 s deadline
    with lock:
        overdue.watch(soon)
    try:
        assert isinstance(soon.future.exception(timeout=5), TaskTimeout)
        assert not late.future.done()
    finally:
        with lock:
            overdue.end()


def test_a_task_timed_out_before_it_was_sent_is_taken_back() -> None:
    """A future failed as "never sent" leaves the not-sent set under the lock, so the
    executor's thread does not send it after all (mut17)."""
    import threading

    lock = threading.Lock()
    not_sent: set[str] = set()
    overdue = overdue_module.Overdue(lock, not_sent)
    entry = _watched(time.monotonic() + 0.05)
    with lock:
        not_sent.add(entry.task.id)
        overdue.watch(entry)
    try:
        error = entry.future.exception(timeout=5)
        assert isinstance(error, TaskTimeout) and "never sent" in str(error)
        with lock:
            assert entry.task.id not in not_sent
    finally:
        with lock:
            overdue.end()


def test_deadlines_of_pending_tasks_survive_the_heap_being_pruned() -> None:
    """Past 2 * DEADLINES_KEPT deadlines the heap drops those of answered tasks; a
    pending task's stays and fires (mut17: dropping it too passed every test)."""
    import threading

    lock = threading.Lock()
    overdue = overdue_module.Overdue(lock, set())
    pending = _watched(time.monotonic() + 0.3)
    answered = [_watched(time.monotonic() + 600) for _ in range(2 * DEADLINES_KEPT + 1)]
    with lock:
        overdue.watch(pending)
    for entry in answered:
        entry.future.set_result(1)
    with lock:
        for entry in answered:
            overdue.watch(entry)
    try:
        assert isinstance(pending.future.exception(timeout=5), TaskTimeout)
    finally:
        with lock:
            overdue.end()


class RefusedWithResultsWaiting:
    """A producer whose broker holds the results of what was sent, unread, when a
    reconcile finds a setting refused (on Redis, the queue's key made another type once
    no task is leased: the last results come with the last lease's end)."""

    lapsed = False  # what its reconcile found: no lapse
    takes_back = True  # a Redis's or a manager's: it withdraws

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.refused = False

    def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
        self.sent.extend(bodies)
        return []

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        if not self.refused:  # none read before the refusal: all wait in the queue
            time.sleep(min(timeout, 0.05))
            return []
        answered, self.sent = self.sent, []
        return [ok_result(Task.decode(body), Task.decode(body).args[0]) for body in answered]

    def reconcile(self) -> int:
        if not self.sent:
            return 0
        self.refused = True
        raise ConfigError("the queue's key holds a string")

    def close(self) -> None:
        pass

    close_answered = close  # every future answered: the same here


def test_a_setting_refused_still_answers_the_futures_whose_results_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The refusal stopped the thread at once: futures whose results were in the reply
    queue failed with the rest (as a master stopped with 1 of 2 results in)."""
    monkeypatch.setattr(dispatching, "RECONCILE_SECONDS", 0.05)
    callbacks = Callbacks()
    producer = RefusedWithResultsWaiting()
    dispatcher = Dispatcher(DispatcherTransport(), producer, Codec(), callbacks)  # type: ignore[arg-type]
    dispatcher.start()
    task = Task(name="ident", args=[7], reply_to="r")
    future = DistqFuture[Any](dispatcher.cancel, task.id, "ident", callbacks)
    assert dispatcher.put(Submit([Entry(task, task.encode(), future, deadline=None)]))
    assert future.result(timeout=10) == 7
    dispatcher.join(10)
    assert isinstance(dispatcher.broken_by, ConfigError)


class FailsOnceAtWithdraw:
    """A producer whose broker holds what it was sent and answers nothing; the first
    withdraw fails (the connection dropped just then), and it answers again after."""

    lapsed = False  # what its reconcile found: no lapse
    takes_back = True  # a Redis's or a manager's: it withdraws

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.failed = False

    def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
        self.sent.extend(bodies)
        return []

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        time.sleep(timeout)
        return []

    def withdraw(self, bodies: Any, redelivered: bool = True) -> list[bool]:
        if not self.failed:
            self.failed = True
            raise TransportError("Redis at 127.0.0.1:1: Connection closed by server.")
        return [False for _ in bodies]

    def reconcile(self) -> int:
        return len(self.sent)  # it holds them all: nothing to send again

    def close(self) -> None:
        pass

    def abandon(self) -> None:  # after a failed call: closed with no call
        self.close()


def test_close_stops_at_once_when_the_broker_fails_as_it_takes_the_tasks_back() -> None:
    """close() cancels what it can, then stops. A withdraw that failed ended the Stop's
    handling before its abandon: the thread reconnected and went on waiting for every
    result as shutdown() does, and close() returned only once they came (never, with no
    worker); with a broker gone for good, only after the 30 s outage."""
    callbacks = Callbacks()
    producer = FailsOnceAtWithdraw()
    dispatcher = Dispatcher(DispatcherTransport(), producer, Codec(), callbacks)  # type: ignore[arg-type]
    entry = square_entry(dispatcher, callbacks)
    dispatcher.start()
    try:
        assert dispatcher.put(Submit([entry]))
        _until(lambda: bool(producer.sent))  # sent: close() has to withdraw it
        assert dispatcher.put(Stop(True, abandon="the executor was closed"))  # close()
        dispatcher.join(10)
        assert not dispatcher.is_alive(), "close() still waiting for the results"
        error = entry.future.exception(0)
        assert isinstance(error, BrokenExecutor), error
        assert "the executor was closed" in str(error)
    finally:
        dispatcher.put(Stop(False, abandon="the test is over"))
        dispatcher.join(10)


class FailsAtTheRetries(FailsOnceAtWithdraw):
    """A producer whose first withdraw takes back the first of the tasks sent, the
    second not queued (it failed once: its retry waits out its delay), and whose next
    withdraw, of that retry, fails (the connection dropped just then)."""

    def withdraw(self, bodies: Any, redelivered: bool = True) -> list[bool]:
        if self.failed:
            raise TransportError("Redis at 127.0.0.1:1: Connection closed by server.")
        self.failed = True
        return [body == self.sent[0] for body in bodies]


def test_a_cancel_whose_look_for_the_retries_fails_cancels_the_tasks_taken_back_before() -> None:
    """cancel() of two tasks sent: the first taken back off the queue, then the look for
    the second's retry fails. Neither future was cancelled: the first waited for a
    result that never comes, its task gone, until an outage's reconcile sent it again."""
    callbacks = Callbacks()
    producer = FailsAtTheRetries()
    dispatcher = Dispatcher(DispatcherTransport(), producer, Codec(), callbacks)  # type: ignore[arg-type]
    queued, retrying = square_entry(dispatcher, callbacks), square_entry(dispatcher, callbacks)
    dispatcher.start()
    try:
        assert dispatcher.put(Submit([queued, retrying]))
        _until(lambda: len(producer.sent) == 2)  # sent: cancel() has to withdraw them
        answers = dispatcher.cancel([queued.future, retrying.future])
        assert answers == [True, False]
        assert queued.future.cancelled() and not retrying.future.done()
    finally:
        dispatcher.put(Stop(False, abandon="the test is over"))
        dispatcher.join(10)


def test_a_shutdown_with_nothing_to_wait_for_does_not_wait_out_an_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every result in, the broker gone (an idle reconcile found it): shutdown() has no
    future to wait for. It waited out the whole outage all the same (30 s), then logged
    that the executor stopped, the broker still unreachable."""
    monkeypatch.setattr(dispatching, "RECONCILE_SECONDS", 0.05)  # idle, it finds it soon
    monkeypatch.setattr(dispatching, "OUTAGE_SECONDS", 20.0)
    callbacks = Callbacks()
    producer = BrokerAway()
    dispatcher = Dispatcher(DispatcherTransport(), producer, Codec(), callbacks)  # type: ignore[arg-type]
    dispatcher.start()
    try:
        _until(lambda: producer.calls >= 2)  # the reconcile failed, and its retry: offline
        started = time.monotonic()
        assert dispatcher.put(Stop(False))  # shutdown(), nothing unanswered
        dispatcher.join(5)
        assert not dispatcher.is_alive(), "shutdown() waiting out the outage"
        assert time.monotonic() - started < 5
        assert dispatcher.broken is None, dispatcher.broken
    finally:
        dispatcher.put(Stop(False, abandon="the test is over"))
        dispatcher.join(10)


def test_a_map_iterator_collected_in_a_thread_holding_the_lock_does_not_hang_the_executor() -> None:
    """The garbage collector runs finalizers in whatever thread allocates, inside the
    executor's lock too (a submit() in put()). A map() iterator left in a reference
    cycle and collected there cancelled its calls under that same lock: that thread
    waited for itself for good, and the executor's thread and every submit() with it (a
    loop of submits beside a loop dropping such iterators hung within seconds)."""
    import threading

    settings = Settings(authkey=secrets.token_bytes(8), manager_address=("127.0.0.1", free_port()))
    executor = Executor(settings)
    worker = open_transport(settings, "worker")
    lock = executor._dispatcher._lock
    try:
        results = executor.map("square", [1, 2, 3])
        consumer = worker.consumer("w")
        [first] = fetch_n(consumer, 1)
        task = Task.decode(first.body)
        consumer.settle([Settlement(first, task.reply_to, ok_result(task, task.args[0] ** 2))])
        assert next(results) == 1  # suspended, two calls unanswered

        def collected_here() -> None:
            nonlocal results
            with lock:  # as put() holds it when an allocation there runs the collector
                del results  # its last reference: the iterator is finalized here

        helper = threading.Thread(target=collected_here, daemon=True)
        helper.start()
        helper.join(10)
        if helper.is_alive():
            lock.release()  # lets it go (and the executor's thread), to close the executor
            pytest.fail("the iterator's cancel waited for the lock its own thread held")
        _until(lambda: executor.stats().ready == 0)  # its two calls left are taken back
    finally:
        executor.close()
        worker.close()


def test_an_executor_collected_in_a_thread_holding_its_lock_does_not_hang() -> None:
    """An executor dropped without shutdown() stops once its futures are answered: a
    finalizer, which the garbage collector runs in whatever thread allocates, one inside
    the executor thread's lock too (a future.cancel() of it, its deadline watchdog). It
    took that lock to hand the thread its stop: that thread waited for itself for good,
    and the executor's thread and its futures with it."""
    import gc
    import threading

    settings = Settings(authkey=secrets.token_bytes(8), manager_address=("127.0.0.1", free_port()))
    executor: Executor | None = Executor(settings)
    assert executor is not None
    dispatcher = executor._dispatcher
    lock = dispatcher._lock

    def collected_here() -> None:
        nonlocal executor
        with lock:  # as cancel() holds it when an allocation there runs the collector
            executor = None  # its last reference: the executor is finalized here
            gc.collect()

    helper = threading.Thread(target=collected_here, daemon=True)
    helper.start()
    helper.join(10)
    if helper.is_alive():
        lock.release()  # lets it go, so that the executor's thread can stop
        pytest.fail("the executor's finalizer waited for the lock its own thread held")
    dispatcher.join(10)
    assert not dispatcher.is_alive()  # stopped: nothing to answer


def test_close_after_a_ctrl_c_in_shutdown_resolves_every_future_before_it_returns() -> None:
    """Ctrl-C in ``shutdown(wait=True)`` (the end of a ``with`` block, no worker) lands
    in the wait for the executor's thread. Python's ``Thread.join`` interrupted there
    marks a thread still running as stopped (it releases the lock that thread holds):
    ``is_alive()`` said False from then on, so a close() after it returned at once with
    every future still pending (cancelled later, behind the caller's back), and the exit
    took the thread for ended."""
    import _thread
    import threading

    settings = Settings(authkey=secrets.token_bytes(16), manager_address=("127.0.0.1", free_port()))
    executor = Executor(settings)
    try:
        futures = [executor.submit("square", n) for n in range(3)]
        threading.Timer(0.3, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt):
            executor.shutdown(wait=True)  # no worker: it waits until the Ctrl-C
        executor.close()
        assert [future._state for future in futures] == ["CANCELLED_AND_NOTIFIED"] * 3
        assert not executor._dispatcher.is_alive()
    finally:
        executor.close()


def test_a_child_forked_while_an_ended_executors_callback_runs_does_not_wait_for_it() -> None:
    """An executor whose thread has ended (shut down without waiting) still runs a
    done-callback when the process forks: in the child that thread does not exist. Its
    close() there waited for the callbacks on an event only that thread sets, for good
    (``Thread.join`` returned at once: fork marks the parent's threads stopped)."""
    import os
    import threading

    settings = Settings(authkey=secrets.token_bytes(16), manager_address=("127.0.0.1", free_port()))
    executor = Executor(settings)
    running, release = threading.Event(), threading.Event()
    try:

        def slow(_future: Any) -> None:
            running.set()
            release.wait(30)

        future = executor.submit("square", 2)
        future.add_done_callback(slow)
        executor.shutdown(wait=False, cancel_futures=True)  # no worker: cancelled at once
        assert running.wait(10)
        executor._dispatcher.join(10)
        assert not executor._dispatcher.is_alive()  # ended: its callback still runs
        pid = os.fork()
        if pid == 0:  # the child: close() returns, or it is reported stuck
            closing = threading.Thread(target=executor.close, daemon=True)
            closing.start()
            closing.join(5)
            os._exit(1 if closing.is_alive() else 0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "close() in the child never returned"
    finally:
        release.set()
        executor.close()


def test_a_child_forked_as_an_executors_thread_ends_takes_it_for_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fork just after the executor's thread left the running ones (the fork handler
    makes those of the child ended) but before it set its "ended" event: in the child,
    where that thread does not exist, nothing sets it. is_alive() said True there, so
    stats() used the closed connection (a bare AssertionError from the manager) and
    shutdown() waited 3 s for the thread to end."""
    import os
    import threading

    settings = Settings(authkey=secrets.token_bytes(16), manager_address=("127.0.0.1", free_port()))
    executor = Executor(settings)
    ending, forked = threading.Event(), threading.Event()
    plain = executor_threads.ended

    def ended_then_held(dispatcher: Dispatcher) -> None:  # the thread, held there
        plain(dispatcher)
        ending.set()
        forked.wait(10)

    monkeypatch.setattr(executor_threads, "ended", ended_then_held)
    try:
        executor.shutdown(wait=False)  # nothing to answer: its thread ends
        assert ending.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: exit 0 when it takes the thread for ended
            try:
                with pytest.raises(RuntimeError, match="make a new Executor"):
                    executor.stats()
                os._exit(1 if executor._dispatcher.is_alive() else 0)
            except BaseException:
                os._exit(1)
        forked.set()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child took the thread for running"
    finally:
        forked.set()
        executor.close()


@pytest.mark.parametrize("chunksize", [1, 2])
def test_a_map_of_nothing_after_shutdown_is_empty_and_one_of_calls_is_refused(
    chunksize: int,
) -> None:
    """As concurrent.futures' map(), which submits nothing for an empty iterable: after
    shutdown() it returns an empty iterator (ours raised RuntimeError), and one with
    calls still raises RuntimeError at the call, not at its first next()."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pass
    assert list(pool.map(abs, [])) == []
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.map(abs, [1])

    settings = Settings(authkey=secrets.token_bytes(16), manager_address=("127.0.0.1", free_port()))
    executor = Executor(settings)
    try:
        executor.shutdown()
        assert list(executor.map("square", [], chunksize=chunksize)) == []
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.map("square", [1], chunksize=chunksize)
    finally:
        executor.close()


def test_a_map_deadline_met_by_a_result_says_map_as_its_other_deadline_errors() -> None:
    """A result in at the moment map()'s deadline ended the wait: the TimeoutError
    lacked the "map(): " its other deadline errors carry (it was the standard
    library's bare one, naming nothing)."""
    settings = Settings(authkey=secrets.token_bytes(16), manager_address=("127.0.0.1", free_port()))
    executor = Executor(settings)
    try:
        results = executor.map("square", [3], timeout=0.05)  # no worker
        with answered_as_the_wait_ends(9), pytest.raises(TimeoutError) as raised:
            next(results)
        assert str(raised.value).startswith("map(): no result for task square ["), raised.value
    finally:
        executor.close()


def test_a_map_with_a_deadline_raises_a_tasks_own_task_timeout_as_it_is() -> None:
    """A task failed by its task_timeout within map()'s deadline: its iterator raises
    that TaskTimeout (a TimeoutError too), not the "map(): no result" of the map's own
    deadline. 44d7928 changed which TimeoutError map() takes for the task's own, and no
    test failed with map() raising its own error for both."""
    settings = Settings(authkey=secrets.token_bytes(16), manager_address=("127.0.0.1", free_port()))
    executor = Executor(settings, task_timeout=0.05)
    try:
        results = executor.map("square", [3], timeout=60)  # no worker
        with pytest.raises(TaskTimeout) as raised:
            next(results)
        assert not str(raised.value).startswith("map(): "), raised.value
    finally:
        executor.close()


class LosesTheFirstSend(DroppedWhileIdle):
    """A producer whose broker lost what was sent first (reconcile counts it not held),
    and answers what is sent again."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False

    def submit(self, bodies: Any) -> None:
        if not self.lost:
            self.lost = True
            return
        super().submit(bodies)

    def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
        self.submit(bodies)
        return []

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        time.sleep(min(timeout, 0.05))
        return super().results(max_count, timeout)

    def reconcile(self) -> int:
        self.reconciles += 1
        return 0 if self.lost and not self.held else len(self.held)


@pytest.mark.parametrize(
    ("count", "said"),
    [
        (
            1,
            "the broker does not hold 1 task the executor waits for (lost, or refused when "
            "sent): sending it again",
        ),
        (
            1000,
            "the broker does not hold 1,000 tasks the executor waits for (lost, or refused "
            "when sent): sending them again",
        ),
    ],
)
def test_tasks_the_broker_lost_are_counted_as_a_line_says_counts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, count: int, said: str
) -> None:
    """It said "the broker does not hold 1 tasks the executor waits for ...: sending
    them again", and "1000 tasks" where the master says "1,000"."""
    monkeypatch.setattr(dispatching, "RECONCILE_SECONDS", 0.2)
    callbacks = Callbacks()
    dispatcher = Dispatcher(DispatcherTransport(), LosesTheFirstSend(), Codec(), callbacks)  # type: ignore[arg-type]
    dispatcher.start()
    tasks = [Task(name="ident", args=[n], reply_to="r") for n in range(count)]
    futures = [DistqFuture[Any](dispatcher.cancel, t.id, "ident", callbacks) for t in tasks]
    entries = [Entry(t, t.encode(), f, deadline=None) for t, f in zip(tasks, futures, strict=True)]
    with caplog.at_level("WARNING", logger="distq.executor"):
        assert dispatcher.put(Submit(entries))  # sent again once a reconcile found them lost
        assert [f.result(timeout=10) for f in futures] == list(range(count))
    found = [r.getMessage() for r in caplog.records if "does not hold" in r.getMessage()]
    assert found == [said], found
    assert dispatcher.put(Stop(False))
    dispatcher.join(10)


def test_a_chunk_of_one_answered_with_a_list_of_another_size_says_1_result() -> None:
    """It said "not a list of 1 results"."""
    settings = Settings(authkey=secrets.token_bytes(8), manager_address=("127.0.0.1", free_port()))
    with Executor(settings, task_timeout=20) as executor:
        worker = open_transport(settings, "worker")
        try:
            results = executor.map("square", [1], chunksize=2)
            consumer = worker.consumer("wrong-worker")
            [delivery] = fetch_n(consumer, 1)
            chunk = Task.decode(delivery.body)
            assert chunk.name == CHUNK_TASK
            consumer.settle([Settlement(delivery, chunk.reply_to, ok_result(chunk, [1, 4]))])
            with pytest.raises(EnvelopeError, match=r"not a list of 1 result$"):
                list(results)
        finally:
            worker.close()
