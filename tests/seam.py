"""Helpers for tests that drive a transport through the seam directly."""

from __future__ import annotations

import concurrent.futures
import io
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from distq.codec import Codec
from distq.console import Console
from distq.dispatcher import Dispatcher, Entry
from distq.ending import Ending, Endings
from distq.envelope import DeadLetter, Result, Task, new_id
from distq.futures import Callbacks, DistqFuture
from distq.master import JobReport, JobSpec, Master
from distq.squares import Squares
from distq.tasks import Registry
from distq.transport import (
    Consumer,
    Delivery,
    Producer,
    Settlement,
    Transport,
    open_transport,
)
from distq.worker import Worker, WorkerOptions


def ok_result(task: Task, value: object) -> bytes:
    """``task``'s result, ok with ``value``, as a worker "w" sends it."""
    return _result(task, "w", status="ok", value=value)


def error_result(task: Task, error_type: str, message: str, worker: str = "w") -> bytes:
    """``task``'s result, failed for good with ``error_type``: ``message``, as ``worker``
    sends it."""
    return _result(task, worker, status="error", error_type=error_type, error_message=message)


def _result(task: Task, worker: str, **outcome: Any) -> bytes:
    """``task``'s result of its first attempt as ``worker`` sends it: ``outcome`` its
    status, and its value or error."""
    return Result(
        task_id=task.id, worker=worker, attempt=1, started_at=0.0, duration=0.0, **outcome
    ).encode()


def fetch_n(consumer: Consumer, count: int, within: float = 10.0) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived or ``within`` seconds passed."""
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        got += consumer.fetch(count - len(got), 0.2)
    return got


def results_n(producer: Producer, count: int, within: float = 10.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        got += producer.results(count - len(got), 0.2)
    return got


def results_of(
    producer: Producer, count: int, within: float = 10.0, codec: Codec | None = None
) -> list[Result]:
    """A worker's results, until ``count`` arrived or ``within`` seconds passed: read as a
    master reads them, packs opened (a worker packs a batch's results for one master)."""
    codec = codec or Codec()
    got: list[Result] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        for body in producer.results(count - len(got), 0.2):
            got += map(Result.decode, codec.open_results(body))
    return got


def dead_letter(
    hosted: Transport, remote: Transport, letters: list[tuple[bytes, str, str]]
) -> None:
    """Each ``(body, reason, queue)`` submitted, then dead-lettered by a worker's consumer
    with that reason and queue, in this order; waits until the broker counts them."""
    producer = hosted.producer(hosted.reply_queue(new_id()))
    producer.submit([body for body, _, _ in letters])
    consumer = remote.consumer("dies")
    for delivery, (body, reason, of) in zip(fetch_n(consumer, len(letters)), letters, strict=True):
        assert delivery.body == body
        letter = DeadLetter(body=body, reason=reason, queue=of, worker="w")
        consumer.settle([Settlement(delivery, dead_letter=letter.encode())])
    deadline = time.monotonic() + 5
    while hosted.stats().dead < len(letters) and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.close()
    producer.close()


def dead_letter_reason(ending: Ending) -> str:
    """The reason of the dead letter ``ending`` settles its task with (it must make one)."""
    assert ending.settlement.dead_letter is not None, ending
    return DeadLetter.decode(ending.settlement.dead_letter).reason


def retried(
    endings: Endings, taken: Sequence[Delivery], delays: Sequence[float]
) -> list[Settlement]:
    """Each delivery failed once, retryably, as a worker's ``endings`` settle it: its
    retry, queued after its delay in ``delays``."""
    settlements = []
    for delivery, delay in zip(taken, delays, strict=True):
        task = endings.codec.open_task(delivery.body)
        failed = endings.failed(delivery, task, ValueError("no"), 0.0, 0.0, retryable=True)
        assert failed.outcome == "retried" and failed.settlement.retry is not None
        settlements.append(Settlement(delivery, retry=failed.settlement.retry, retry_delay=delay))
    return settlements


@contextmanager
def held_until_stopped(
    consumer: Consumer, stop: threading.Event, run: threading.Thread
) -> Iterator[Consumer]:
    """A worker's ``consumer`` for the block, holding what it took until the master's job
    in ``run`` is over: after the block, however it ended, ``stop`` set, ``run`` joined
    (30 s at most), and only then ``consumer`` closed."""
    try:
        yield consumer
    finally:
        stop.set()
        run.join(30)
        consumer.close()


class DispatcherTransport:
    """An executor's transport as its dispatcher uses it (no orphans, nothing to close),
    for a dispatcher driven with a producer of the test's own."""

    def close(self) -> None:
        pass

    def forget_orphans(self, reply_to: str) -> int:
        return 0


def square_entry(dispatcher: Dispatcher, callbacks: Callbacks) -> Entry:
    """An executor's entry for ``dispatcher``: a task ``square(3)``, its future, no deadline."""
    task = Task(name="square", args=[3], reply_to="r")
    future = DistqFuture[Any](dispatcher.cancel, task.id, "square", callbacks)
    return Entry(task, task.encode(), future, deadline=None)


@contextmanager
def answered_as_the_wait_ends(value: object) -> Iterator[None]:
    """A future's wait that times out (``result()``'s or ``exception()``'s) finds it
    answered with ``value`` a moment later, as when its result comes in at the deadline:
    what ``result()`` or ``exception()`` looks at next."""
    plain_result = concurrent.futures.Future.result
    plain_exception = concurrent.futures.Future.exception

    def answered(wait: Callable[[concurrent.futures.Future[Any], float | None], Any]) -> Any:
        def waiting(self: concurrent.futures.Future[Any], timeout: float | None = None) -> Any:
            try:
                return wait(self, timeout)
            except TimeoutError:
                if not self.done():
                    self.set_result(value)
                raise

        return waiting

    concurrent.futures.Future.result = answered(plain_result)  # type: ignore[method-assign]
    concurrent.futures.Future.exception = answered(plain_exception)  # type: ignore[method-assign]
    try:
        yield
    finally:
        concurrent.futures.Future.result = plain_result  # type: ignore[method-assign]
        concurrent.futures.Future.exception = plain_exception  # type: ignore[method-assign]


def run_remote_worker(
    transport: Transport, registry: Registry, options: WorkerOptions
) -> tuple[Worker, str]:
    """A worker of ``options`` over a transport of its own to ``transport``'s broker (a
    manager master's: a peer over the wire, not this process's queues), run to its end,
    which must be exit 0; the worker and all it said."""
    out = io.StringIO()
    remote = open_transport(transport._settings, "worker")  # type: ignore[attr-defined]
    worker = Worker(remote, registry, options, Console(out=out, err=out))
    try:
        assert worker.run() == 0, out.getvalue()
    finally:
        remote.close()
    return worker, out.getvalue()


def job_a_worker_left(
    master_side: Transport,
    worker_side: Transport,
    take: int,
    dead_letter: bool,
    timeout: float = 2.0,
) -> tuple[str, int]:
    """A squares job of 2 tasks run on ``master_side`` to its ``timeout``, while a consumer
    on ``worker_side`` takes ``take`` of them, dead-letters them (else hands them back
    unsettled) and leaves, with no worker slot after it: what the master said (its
    report missing both), and how many tasks the consumer took."""
    out = io.StringIO()
    reports: list[JobReport] = []
    master = Master(master_side, Console(out=out, err=out))
    spec = JobSpec(tasks=2, timeout=timeout)
    job = threading.Thread(target=lambda: reports.append(master.run(spec, Squares(seed=1))))
    job.start()
    consumer = worker_side.consumer("leaves")
    try:
        taken = fetch_n(consumer, take)
        if dead_letter:
            consumer.settle([Settlement(d, dead_letter=b"dead") for d in taken])
    finally:
        consumer.close()
        job.join(30)
    assert reports and reports[0].missing == 2, out.getvalue()
    return out.getvalue(), len(taken)
