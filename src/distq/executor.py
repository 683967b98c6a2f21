"""``distq.Executor``: :class:`concurrent.futures.Executor` over distq's workers.

Submit functions the workers registered (``"mypkg.jobs:resize"``, or the function
object, sent by its ``module:name`` path) and get :class:`~concurrent.futures.Future`
objects back; ``map`` yields results in order. It is a master like ``distq master``:
one reply queue of its own, each task's first result once (:class:`~distq.collector.
Collector`), retries and dead letters on the workers, leases on the broker.

One background thread owns the transport's producer (pika is not thread-safe):
``submit``, ``map`` and ``cancel`` hand it commands through a queue, and it resolves
the futures, so future callbacks run on that thread (never wait for another future in
one). With the manager transport the executor hosts the queues, like ``distq master``:
workers connect to its ``DISTQ_MANAGER_ADDRESS`` while it is open.

What each way of waiting does:

- ``future.result(timeout)`` raises :class:`TimeoutError` naming the task when the
  result is not in after ``timeout`` seconds; the task stays submitted.
- ``task_timeout`` (seconds from submit) fails a task's future with
  :class:`~distq.errors.TaskTimeout` when its result is late; it is withdrawn from the
  queue where the transport can (see :meth:`DistqFuture.cancel`).
- A lost broker connection fails every unanswered future with
  :class:`~distq.errors.BrokenExecutor`; so does leaving the interpreter with the
  executor still open.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import heapq
import logging
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distq.chunks import CHUNK_TASK, chunk_arguments
from distq.collector import Collector
from distq.config import MESSAGE_BATCH, Settings
from distq.envelope import MAX_ATTEMPTS, Result, Task, new_id
from distq.errors import BrokenExecutor, ConfigError, EnvelopeError, RemoteError, TaskTimeout
from distq.jsonvalue import check_arguments
from distq.tasks import task_name
from distq.transport import Producer, QueueStats, Transport, open_transport

log = logging.getLogger(__name__)

#: Longest the executor's thread waits for results before it looks at new commands.
POLL_SECONDS = 0.01
#: Longest the thread sleeps with nothing outstanding before it looks around anyway.
IDLE_SECONDS = 1.0


class DistqFuture(concurrent.futures.Future[Any]):
    """A :class:`concurrent.futures.Future` for one distq task.

    ``task_id`` and ``task_name`` name the task. The future stays pending until the
    task's result arrives (``running()`` is never true: a worker does not say when it
    starts). ``result(timeout)`` and ``exception(timeout)`` raise :class:`TimeoutError`
    with a message naming the task.
    """

    def __init__(self, dispatcher: _Dispatcher, task_id: str, name: str) -> None:
        super().__init__()
        self.task_id, self.task_name = task_id, name
        self.submitted = time.monotonic()
        self._dispatcher = dispatcher

    def cancel(self) -> bool:
        """Cancel the task if it has not started; True if the future is now cancelled.

        Manager and Redis take the task back out of the ready queue: True means it will
        never run; False means a worker has it already (or it waits out a retry delay).
        RabbitMQ cannot take a message back out of a queue, so there cancel() returns
        False unless the task was not sent yet. A task not yet sent is never sent.
        """
        if self.done():
            return self.cancelled()
        return self._dispatcher.cancel([self])[0]

    def result(self, timeout: float | None = None) -> Any:
        try:
            return super().result(timeout)
        except TimeoutError:
            if not self.done():
                raise TimeoutError(self._waiting(timeout)) from None
            raise

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except TimeoutError:
            if not self.done():
                raise TimeoutError(self._waiting(timeout)) from None
            raise

    def _waiting(self, timeout: float | None) -> str:
        age = time.monotonic() - self.submitted
        return (
            f"no result for task {self.task_name} [{self.task_id}] after waiting "
            f"{timeout or 0:g} s ({age:.1f} s since it was submitted): it is queued, running "
            "or retrying; is a worker running with it registered? (`distq status` shows "
            "ready tasks and attached workers)"
        )


@dataclass(slots=True)
class _Entry:
    """A task submitted through the executor and not answered yet."""

    task: Task
    body: bytes
    future: DistqFuture
    deadline: float | None  # time.monotonic() after which it fails with TaskTimeout


@dataclass(slots=True)
class _Submit:
    entries: list[_Entry]


@dataclass(slots=True)
class _Cancel:
    futures: list[DistqFuture]
    answers: list[bool] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(slots=True)
class _Stop:
    cancel_futures: bool
    abandon: bool = False  # stop now, failing what is unanswered (interpreter exit)


_Command = _Submit | _Cancel | _Stop


class Executor(concurrent.futures.Executor):
    """Runs registered tasks on distq workers, over the transport the settings name.

    ``settings``: a :class:`~distq.config.Settings`; by default read from the same
    ``DISTQ_*`` environment as the ``distq`` command. Keyword ``overrides`` set single
    settings by field name (``transport="redis"``, ``redis_url="redis://..."``,
    ``queue="images"``); a string is parsed like its environment variable.
    ``max_attempts`` is each task's number of attempts before it fails for good;
    ``task_timeout`` fails a task's future with :class:`~distq.errors.TaskTimeout` when
    it has no result that many seconds after submit (default: no limit).
    ``host`` (manager transport only): True hosts the queues in this process (workers
    connect to it); False connects to the master that hosts them, as ``distq submit``
    does.

    Raises :class:`~distq.errors.ConfigError` for a bad setting and
    :class:`~distq.errors.ConnectionFailed` when the broker cannot be reached.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        task_timeout: float | None = None,
        host: bool = True,
        **overrides: Any,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts is {max_attempts!r}; use a whole number >= 1")
        if task_timeout is not None and not task_timeout > 0:
            raise ValueError(f"task_timeout is {task_timeout!r}; use seconds > 0, or None")
        self.settings = load_settings(settings, overrides, os.environ)
        self.max_attempts, self.task_timeout = max_attempts, task_timeout
        self._transport = open_transport(self.settings, "master" if host else "worker")
        try:
            self.reply_to = self._transport.reply_queue(new_id())
            producer = self._transport.producer(self.reply_to)
        except BaseException:
            self._transport.close()
            raise
        self._dispatcher = _Dispatcher(self._transport, producer)
        self._lock = threading.Lock()
        self._shutdown = False
        _running.add(self._dispatcher)
        self._dispatcher.start()
        # forgotten without shutdown(): stop once the futures are answered
        weakref.finalize(self, self._dispatcher.put, _Stop(False)).atexit = False

    def describe(self) -> str:
        """The transport and where it is, as ``distq master`` names them."""
        return self._transport.describe()

    def stats(self) -> QueueStats:
        """The task queue's counts: ready, in flight, dead, attached worker slots."""
        return self._transport.stats()

    def submit(self, fn: str | Callable[..., Any], /, *args: Any, **kwargs: Any) -> DistqFuture:
        """Send one call of ``fn`` (a task name or a module-level function) to the workers.

        Raises ``TypeError`` naming the argument when one is not a JSON value, before
        anything is sent, and ``RuntimeError`` after :meth:`shutdown`.
        """
        name = task_name(fn)
        check_arguments(name, args, kwargs)
        return self._submit([(name, list(args), kwargs, name)])[0]

    def map(
        self,
        fn: str | Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``fn`` over the arguments from ``iterables``, results in order.

        Every call is checked and submitted now (``TypeError`` before anything is sent if
        an argument is not a JSON value); the iterator raises the first remote error in
        order, and ``TimeoutError`` when a result is not in ``timeout`` seconds after this
        call. ``chunksize`` > 1 sends that many calls as one task (a chunk): fewer
        messages, but a failing call fails (and retries) its whole chunk. Leaving the
        iterator early cancels the tasks not answered yet.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        end = None if timeout is None else time.monotonic() + timeout
        name = task_name(fn)
        calls = [list(args) for args in zip(*iterables, strict=False)]
        for number, call in enumerate(calls, 1):
            try:
                check_arguments(name, call, {})
            except TypeError as exc:
                raise TypeError(f"call {number} of map(): {exc}") from None
        if chunksize == 1:
            futures = self._submit([(name, call, {}, name) for call in calls])
        else:
            chunks = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
            futures = self._submit(
                [
                    (
                        CHUNK_TASK,
                        chunk_arguments(name, chunk),
                        {},
                        f"{name} (chunk of {len(chunk)})",
                    )
                    for chunk in chunks
                ]
            )
        return self._results(futures, end, chunked=chunksize > 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; once every future is resolved, close the connection.

        ``cancel_futures`` cancels every future whose task can still be cancelled (see
        :meth:`DistqFuture.cancel`); ``wait`` returns only when the rest are resolved
        (set ``task_timeout`` to bound that) and the connection is closed.
        """
        with self._lock:
            first, self._shutdown = not self._shutdown, True
        if first or cancel_futures:
            self._dispatcher.put(_Stop(cancel_futures))
        if wait and threading.current_thread() is not self._dispatcher:
            self._dispatcher.join()

    def _submit(
        self, calls: Sequence[tuple[str, list[Any], Mapping[str, Any], str]]
    ) -> list[DistqFuture]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        now = time.monotonic()
        deadline = None if self.task_timeout is None else now + self.task_timeout
        entries = []
        for name, args, kwargs, shown in calls:
            task = Task(
                name=name,
                args=args,
                kwargs=dict(kwargs),
                reply_to=self.reply_to,
                max_attempts=self.max_attempts,
            )
            future = DistqFuture(self._dispatcher, task.id, shown)
            entries.append(_Entry(task, task.encode(), future, deadline))
        if entries and not self._dispatcher.put(_Submit(entries)):
            raise BrokenExecutor(self._dispatcher.broken or "the executor has stopped")
        return [entry.future for entry in entries]

    def _results(
        self, futures: list[DistqFuture], end: float | None, chunked: bool
    ) -> Iterator[Any]:
        futures.reverse()  # pop() from the end: each future is dropped once yielded
        try:
            while futures:
                future = futures[-1]
                value = future.result() if end is None else future.result(end - time.monotonic())
                futures.pop()
                if not chunked:
                    yield value
                    continue
                if not isinstance(value, list):
                    raise EnvelopeError(f"{future.task_name} returned {value!r}, not a list")
                yield from value
        finally:
            if futures:
                self._dispatcher.cancel(futures)


def load_settings(
    settings: Settings | None, overrides: Mapping[str, Any], environ: Mapping[str, str]
) -> Settings:
    """``settings`` (or those of ``environ``) with ``overrides`` by field name applied.

    A string override is parsed like its environment variable; other values are taken
    as they are. Raises ``TypeError`` for a name that is not a setting and
    :class:`~distq.errors.ConfigError` for a bad value.
    """
    entries = {f.name: f.metadata["setting"] for f in dataclasses.fields(Settings)}
    for name in overrides:
        if name not in entries:
            raise TypeError(
                f"Executor() got an unexpected keyword argument {name!r}; "
                f"settings are: {', '.join(entries)}"
            )
    if settings is None:
        texts = {entries[n].variable: _as_text(v) for n, v in overrides.items()}
        return Settings.load(environ, texts)
    values: dict[str, Any] = {}
    for name, value in overrides.items():
        if isinstance(value, str):
            try:
                value = entries[name].parse(value.strip())
            except ValueError as exc:
                raise ConfigError(f"{name}={value!r}: {entries[name].variable} {exc}") from None
        values[name] = value
    merged = dataclasses.replace(settings, **values)
    if merged.transport == "manager" and not merged.authkey:
        raise ConfigError(
            "the manager transport needs a shared secret: set authkey (DISTQ_AUTHKEY)"
        )
    return merged


def _as_text(value: Any) -> str:
    """An override as the text of its environment variable."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]}:{value[1]}"
    if value is None:
        return ""
    return str(value)


class _Dispatcher(threading.Thread):
    """The executor's thread: owns the producer, sends tasks, resolves futures.

    Everything that touches the producer, the collector or an entry runs here; other
    threads only :meth:`put` commands (and wait for a cancel's answers).
    """

    def __init__(self, transport: Transport, producer: Producer) -> None:
        super().__init__(name="distq-executor", daemon=True)
        self.transport, self.producer = transport, producer
        self.collector: Collector[_Entry] = Collector(self._on_result, self._on_malformed)
        self.broken: str | None = None  # why the thread stopped early, if it did
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _ended against put()
        self._ended = False
        self._unsent: dict[str, _Entry] = {}  # submitted to us, not yet to the broker
        self._unsent_order: deque[_Entry] = deque()  # the same, oldest first (and cancelled)
        self._deadlines: list[tuple[float, str]] = []
        self._stopping = False

    # -- any thread ------------------------------------------------------------
    def put(self, command: _Command) -> bool:
        """Hand ``command`` to the thread; False when the thread has ended."""
        with self._lock:
            if self._ended:
                return False
            self._commands.put(command)
            return True

    def cancel(self, futures: list[DistqFuture]) -> list[bool]:
        """Cancel ``futures`` where possible (on the thread); one answer each."""
        command = _Cancel(futures)
        if threading.current_thread() is self:
            self._cancel(command)
        elif self.put(command):
            command.done.wait()
        else:
            return [f.cancelled() for f in futures]
        return command.answers

    # -- the thread ------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a lost broker, or a bug: no future may hang
            self.broken = f"the executor stopped: {exc}"
            log.error("%s", self.broken)
        finally:
            with self._lock:
                self._ended = True
            self._fail_all(self.broken or "the executor has stopped")
            try:
                self.producer.close()
            except Exception as exc:  # closing must not hide why the loop ended
                log.warning("could not close the executor's producer: %s", exc)
            self.transport.close()
            _running.discard(self)

    def _loop(self) -> None:
        while True:
            idle = not self._unsent and not self.collector.outstanding
            if idle and self._stopping:
                return
            if self._take(IDLE_SECONDS if idle else None):
                return  # abandoned
            if self._unsent:
                self._send()
                wait = 0.0
            else:
                wait = POLL_SECONDS
            if self.collector.outstanding:
                if self._deadlines:
                    wait = max(0.0, min(wait, self._deadlines[0][0] - time.monotonic()))
                self.collector.collect(self.producer, wait)
            self._expire()

    def _take(self, block: float | None) -> bool:
        """Handle every command waiting (waiting up to ``block`` s for one); True to abandon."""
        try:
            command = self._commands.get(timeout=block) if block else self._commands.get_nowait()
        except queue.Empty:
            return False
        while True:
            if isinstance(command, _Submit):
                self._unsent_order.extend(command.entries)
                for entry in command.entries:
                    self._unsent[entry.task.id] = entry
                    if entry.deadline is not None:
                        heapq.heappush(self._deadlines, (entry.deadline, entry.task.id))
            elif isinstance(command, _Cancel):
                self._cancel(command)
            else:
                self._stopping = True
                if command.abandon:
                    self.broken = "the interpreter is exiting with the executor still open"
                    return True
                if command.cancel_futures:
                    self._cancel(_Cancel(self._every_future()))
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return False

    def _send(self) -> None:
        """Submit the oldest unsent tasks, at most one batch, and start waiting for them."""
        batch: list[_Entry] = []
        while self._unsent_order and len(batch) < MESSAGE_BATCH:
            entry = self._unsent_order.popleft()
            if self._unsent.pop(entry.task.id, None) is not None:  # else cancelled or late
                batch.append(entry)
        self.collector.expect((entry.task.id, entry) for entry in batch)
        self.producer.submit([entry.body for entry in batch])

    def _every_future(self) -> list[DistqFuture]:
        sent = [entry.future for _, entry in self.collector.waiting()]
        return sent + [entry.future for entry in self._unsent.values()]

    def _cancel(self, command: _Cancel) -> None:
        """Cancel what was not sent; withdraw what was, where the transport can."""
        try:
            answers: dict[int, bool] = {}
            withdraw: list[_Entry] = []
            for future in command.futures:
                if future.done():
                    answers[id(future)] = future.cancelled()
                elif self._unsent.pop(future.task_id, None) is not None:
                    answers[id(future)] = _cancelled(future)
                elif (entry := self.collector.entry(future.task_id)) is not None:
                    withdraw.append(entry)
                else:
                    answers[id(future)] = False
            taken = self.producer.withdraw([entry.body for entry in withdraw]) if withdraw else []
            for entry, gone in zip(withdraw, taken, strict=True):
                if gone:
                    self.collector.discard(entry.task.id)
                answers[id(entry.future)] = gone and _cancelled(entry.future)
            command.answers = [answers[id(future)] for future in command.futures]
        finally:
            command.done.set()

    def _expire(self) -> None:
        """Fail the futures of tasks past their ``task_timeout``, withdrawing them first."""
        now = time.monotonic()
        unsent: list[_Entry] = []
        sent: list[_Entry] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, task_id = heapq.heappop(self._deadlines)
            entry = self._unsent.pop(task_id, None)
            if entry is not None:
                unsent.append(entry)
            elif (entry := self.collector.discard(task_id)) is not None:
                sent.append(entry)
        for entry in unsent:
            _time_out(entry, "it was never sent: the executor was still sending earlier tasks")
        if not sent:
            return
        for entry, gone in zip(sent, self.producer.withdraw([e.body for e in sent]), strict=True):
            _time_out(
                entry,
                "no worker took it; it was withdrawn from the queue and will not run"
                if gone
                else "a worker has it (running or retrying), or the transport cannot withdraw "
                "it; its result will be ignored",
            )

    def _on_result(self, result: Result, entry: _Entry, _round_trip: float) -> None:
        future = entry.future
        if future.done():
            return
        if result.status == "ok":
            future.set_result(result.value)
            return
        future.set_exception(
            RemoteError(
                future.task_name,
                result.task_id,
                result.worker,
                result.error_type or "Exception",
                result.error_message or "",
                result.error_traceback,
            )
        )

    @staticmethod
    def _on_malformed(error: EnvelopeError) -> None:
        log.warning("ignored a malformed result: %s", error)

    def _fail_all(self, reason: str) -> None:
        """Fail every unanswered future, and answer every command left (the thread ends)."""
        entries = list(self._unsent.values()) + [e for _, e in self.collector.waiting()]
        self._unsent.clear()
        self._unsent_order.clear()
        self.collector.forget()
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, _Submit):
                entries += command.entries
            elif isinstance(command, _Stop):
                pass
            elif isinstance(command, _Cancel):
                command.answers = [f.cancelled() for f in command.futures]
                command.done.set()
        for entry in entries:
            if not entry.future.done():
                entry.future.set_exception(BrokenExecutor(reason))


def _cancelled(future: DistqFuture) -> bool:
    """Cancel a pending future and tell its waiters (``concurrent.futures.wait``) so."""
    if not concurrent.futures.Future.cancel(future):
        return False
    future.set_running_or_notify_cancel()
    return True


def _time_out(entry: _Entry, why: str) -> None:
    waited = time.monotonic() - entry.future.submitted
    entry.future.set_exception(
        TaskTimeout(
            f"task {entry.future.task_name} [{entry.task.id}] had no result after "
            f"{waited:.1f} s (task_timeout): {why}"
        )
    )


#: Executors' threads still running: at interpreter exit each handles the commands it has
#: (a shutdown's cancel_futures, say), then stops without waiting for results.
_running: set[_Dispatcher] = set()


@atexit.register
def _stop_at_exit() -> None:
    for dispatcher in list(_running):
        if dispatcher.put(_Stop(cancel_futures=False, abandon=True)):
            dispatcher.join(timeout=5)
