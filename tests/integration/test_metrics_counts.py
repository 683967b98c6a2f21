"""A worker's and a master's /metrics counters against what a small job really did, on
every transport: tasks done, retried, failed for good, and redelivered after a worker was
SIGKILLed mid-task."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import distq
import jobs
from conftest import Target
from endpoints import get, wait_for
from launch import free_port
from procs import Distq

pytestmark = pytest.mark.integration


def samples(port: int, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of ``name`` on the endpoint at ``port``, by its labels."""
    status, body = get(port, "/metrics")
    assert status == 200, body
    return parsed(body, name)


def in_body(body: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples in ``body`` that carry ``labels``."""
    wanted = set(labels.items())
    return sum(v for k, v in parsed(body, name).items() if wanted <= k)


def parsed(body: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of ``name`` in the exposition ``body``, by its labels."""
    found: dict[frozenset[tuple[str, str]], float] = {}
    for line in body.splitlines():
        matched = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if matched:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', matched.group(1)))
            found[labels] = float(matched.group(2))
    return found


def value(port: int, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels``."""
    wanted = set(labels.items())
    return sum(v for k, v in samples(port, name).items() if wanted <= k)


def eventually_equal(
    what: str,
    read: Callable[[], float],
    expected: float,
    timeout: float = 30,
    extra: Callable[[], object] = str,
) -> None:
    """Poll ``read`` until it gives ``expected``; fail with the last value and ``extra()``."""
    deadline = time.monotonic() + timeout
    while True:
        got = read()
        if got == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {got} != {expected} within {timeout} s {extra()}")
        time.sleep(0.2)


def test_worker_counters_count_what_the_job_did(target: Target, tmp_path: Path) -> None:
    port = free_port()
    env = target.process_env(
        DISTQ_METRICS_HOST="127.0.0.1",
        DISTQ_METRICS_PORT=str(port),
        DISTQ_TEST_FLAKY_DIR=str(tmp_path),
    )
    argv = ["worker", "--quiet", "--tasks", "jobs", "--task", "jobs:flaky"]
    argv += ["--task", "jobs:always_fail", "--connect-timeout", "30"]
    with distq.Executor(target.settings, max_attempts=2) as ex:
        worker = Distq(argv, env)
        try:
            wait_for([port], "/readyz", 200, timeout=30)
            oks = [ex.submit(jobs.add, n, 1) for n in range(5)]
            flakies = [ex.submit("jobs:flaky", n) for n in range(3)]
            fails = [ex.submit("jobs:always_fail", n) for n in range(2)]
            assert [f.result(60) for f in oks] == [n + 1 for n in range(5)]
            assert [f.result(60) for f in flakies] == [n * n for n in range(3)]
            for future in fails:
                with pytest.raises(Exception, match="fails on purpose"):
                    future.result(60)
            name = "distq_worker_tasks_total"
            expected = {
                ("jobs:add", "ok"): 5,
                ("jobs:flaky", "ok"): 3,
                ("jobs:flaky", "retried"): 3,
                ("jobs:always_fail", "retried"): 2,
                ("jobs:always_fail", "failed"): 2,
            }

            def counted() -> dict[tuple[str, str], float]:
                return {key: value(port, name, task=key[0], outcome=key[1]) for key in expected}

            deadline = time.monotonic() + 30
            while counted() != expected and time.monotonic() < deadline:
                time.sleep(0.2)
            assert counted() == expected, samples(port, name)
            total = value(port, name)
            assert total == sum(expected.values()), samples(port, name)
            redelivered = value(port, "distq_worker_redeliveries_total")
            # nothing handed back: a RabbitMQ worker resizing its prefetch window keeps
            # what the broker pushed meanwhile (pika's reject sent it back)
            assert redelivered == 0, redelivered
            runs = value(port, "distq_worker_task_duration_seconds_count")
            assert runs == sum(expected.values())
            waits = value(port, "distq_worker_queue_wait_seconds_count")
            assert waits == sum(expected.values())
        finally:
            worker.stop()


@pytest.mark.parametrize("held", [1, 3])
def test_tasks_redelivered_after_a_sigkilled_worker_are_counted_once(
    target: Target, held: int
) -> None:
    port = free_port()
    env = target.process_env(DISTQ_METRICS_HOST="127.0.0.1", DISTQ_METRICS_PORT=str(port))
    argv = ["worker", "--tasks", "jobs", "--prefetch", "1", "--connect-timeout", "30"]
    with distq.Executor(target.settings) as ex:
        doomed = Distq([*argv, "--concurrency", str(held)], target.process_env())
        survivor: Distq | None = None
        try:
            futures = [ex.submit(jobs.sleep_then, 3.0, n) for n in range(held)]
            deadline = time.monotonic() + 30
            while doomed.output().count("sleep_then[") < held and time.monotonic() < deadline:
                time.sleep(0.05)
            assert doomed.output().count("sleep_then[") == held, doomed.output()
            time.sleep(0.5)
            doomed.signal(signal.SIGKILL)
            doomed.wait(10)
            survivor = Distq([*argv, "--concurrency", str(held)], env)
            assert [f.result(60) for f in futures] == list(range(held))
            eventually_equal(
                "ok", lambda: value(port, "distq_worker_tasks_total", outcome="ok"), held
            )
            assert value(port, "distq_worker_redeliveries_total") == held
            assert value(port, "distq_worker_tasks_total") == held
        finally:
            doomed.stop()
            if survivor is not None:
                survivor.stop()


def test_a_masters_counters_add_up_during_its_job(target: Target) -> None:
    port = free_port()
    env = target.process_env(
        DISTQ_METRICS_HOST="127.0.0.1", DISTQ_METRICS_PORT=str(port), DISTQ_STATS_SECONDS="0.2"
    )
    master = Distq(["master", "--tasks", "20", "--task-delay", "0.1", "--timeout", "60"], env)
    worker = Distq(
        ["worker", "--connect-timeout", "30", "--exit-when-idle", "5"], target.process_env()
    )
    seen: list[tuple[float, float, float, float]] = []
    try:
        deadline = time.monotonic() + 60
        while master.proc.poll() is None and time.monotonic() < deadline:
            status, body = get(port, "/metrics")
            if status == 200:
                submitted = in_body(body, "distq_master_tasks_submitted_total")
                ok = in_body(body, "distq_master_results_total", status="ok")
                outstanding = in_body(body, "distq_master_tasks_outstanding")
                trips = in_body(body, "distq_master_task_round_trip_seconds_count")
                seen.append((submitted, ok, outstanding, trips))
            time.sleep(0.1)
        assert master.wait(30) == 0, master.output()
    finally:
        master.stop()
        worker.stop()
    assert seen and max(s[1] for s in seen) > 0, seen
    # A scrape reads the master's counters and its outstanding gauge in one hold of
    # their lock: each scrape adds up, none falls between a batch's counters
    adds_up = [s - ok == out and ok == trips for s, ok, out, trips in seen]
    assert all(adds_up), [s for s, fine in zip(seen, adds_up, strict=True) if not fine]


def test_a_malformed_message_is_counted_once_as_malformed(target: Target) -> None:
    from distq.transport import open_transport

    port = free_port()
    env = target.process_env(DISTQ_METRICS_HOST="127.0.0.1", DISTQ_METRICS_PORT=str(port))
    hosted = open_transport(target.settings, "master")
    worker: Distq | None = None
    try:
        producer = hosted.producer(hosted.reply_queue("m" + "0" * 31))
        producer.submit([b"not json at all\n\xff"])
        worker = Distq(["worker", "--quiet", "--connect-timeout", "30"], env)
        wait_for([port], "/readyz", 200, timeout=30)
        eventually_equal(
            "malformed",
            lambda: value(port, "distq_worker_tasks_total", outcome="malformed"),
            1,
            extra=lambda: samples(port, "distq_worker_tasks_total"),
        )
        time.sleep(1)
        assert value(port, "distq_worker_tasks_total") == 1
        assert hosted.stats().dead == 1
    finally:
        if worker is not None:
            worker.stop()
        hosted.close()
