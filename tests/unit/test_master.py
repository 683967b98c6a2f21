"""The master's bookkeeping, on the real manager transport hosted in this process."""

from __future__ import annotations

import io
import secrets
import threading
from collections.abc import Callable, Iterator

import pytest

from conftest import free_port
from distq.config import Settings
from distq.console import Console
from distq.envelope import Result, Task
from distq.master import JobSpec, Master, percentile
from distq.transport import Settlement, Transport, open_transport


@pytest.fixture
def transport() -> Iterator[Transport]:
    settings = Settings(authkey=secrets.token_bytes(8), manager_address=("127.0.0.1", free_port()))
    hosted = open_transport(settings, "master")
    yield hosted
    hosted.close()


def serve(
    transport: Transport, answer: Callable[[Task], list[bytes]], stop: threading.Event
) -> None:
    """A stand-in worker loop on the real transport: settle each task with ``answer``."""
    consumer = transport.consumer("test-worker")
    while not stop.is_set():
        for delivery in consumer.fetch(50, 0.1):
            task = Task.decode(delivery.body)
            consumer.settle(
                [Settlement(delivery, reply_to=task.reply_to, result=body) for body in answer(task)]
                or [Settlement(delivery)]
            )


def result(task: Task, value: object) -> bytes:
    return Result(
        task_id=task.id,
        status="ok",
        worker="w",
        attempt=1,
        started_at=0.0,
        duration=0.0,
        value=value,
    ).encode()


def run(
    transport: Transport, spec: JobSpec, answer: Callable[[Task], list[bytes]]
) -> tuple[Master, str, object]:
    out = io.StringIO()
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(transport, answer, stop), daemon=True)
    thread.start()
    master = Master(transport, Console(out=out, err=out), "distq")
    try:
        report = master.run(spec)
    finally:
        stop.set()
        thread.join(5)
    return master, out.getvalue(), report


def test_duplicates_count_once(transport: Transport) -> None:
    _, out, report = run(
        transport, JobSpec(tasks=5, seed=1, timeout=20), lambda t: [result(t, t.args[0] ** 2)] * 3
    )
    assert report.succeeded and report.ok == 5  # type: ignore[attr-defined]
    assert out.count("Get result") == 5


def test_wrong_values_fail_the_job(transport: Transport) -> None:
    _, out, report = run(transport, JobSpec(tasks=3, timeout=20), lambda t: [result(t, -1)])
    assert not report.succeeded and report.incorrect == 3  # type: ignore[attr-defined]
    assert "wrong result for square(" in out


def test_timeout_names_what_is_missing(transport: Transport) -> None:
    _, out, report = run(transport, JobSpec(tasks=4, timeout=0.5), lambda t: [])
    assert report.missing == 4 and not report.succeeded  # type: ignore[attr-defined]
    assert "job timed out" in out and "missing 4 results: square(" in out


def test_max_in_flight_one_measures_round_trips(transport: Transport) -> None:
    _, _, report = run(
        transport,
        JobSpec(tasks=20, max_in_flight=1, timeout=20),
        lambda t: [result(t, t.args[0] ** 2)],
    )
    assert report.ok == 20 and report.latency_p50_seconds is not None  # type: ignore[attr-defined]


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
