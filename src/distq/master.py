"""The master: submit the squares job, collect each result once, and say how it went.

"Done" is never guessed from a quiet queue: the master knows every task id it
submitted and finishes when each has a result (ok or failed for good), or when
``timeout`` passes, naming what is missing. A redelivered duplicate counts once.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from distq.console import Console
from distq.envelope import Result, Task, new_id
from distq.errors import EnvelopeError
from distq.health import ProcessHealth
from distq.telemetry import MasterTelemetry
from distq.transport.base import Producer, Transport

SUBMIT_BATCH = 1000
RESULT_BATCH = 1000
STATUS_EVERY = 10.0  # seconds between status lines in rate mode


@dataclass(frozen=True)
class JobSpec:
    """What to run: ``tasks`` squares (None: until stopped), paced by ``rate`` per second."""

    tasks: int | None = 6
    task_delay: float = 0.0
    seed: int | None = None
    timeout: float | None = None
    rate: float | None = None
    max_in_flight: int | None = None
    max_attempts: int = 3
    wait_workers: int | None = None  # start (and start the clock) once this many slots attach
    drain_seconds: float = 5.0  # rate mode: how long to wait for in-flight results at stop


@dataclass
class JobReport:
    """The outcome of one job; ``ok`` means every task is in and correct."""

    transport: str
    tasks: int
    ok: int = 0
    failed: int = 0
    incorrect: int = 0
    duplicates: int = 0
    missing: int = 0
    elapsed_seconds: float = 0.0
    throughput: float = 0.0
    latency_p50_seconds: float | None = None
    latency_p99_seconds: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.failed == 0 and self.incorrect == 0 and self.missing == 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class _Pending:
    n: int
    submitted: float


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest-rank."""
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


class Master:
    """Runs one job over ``transport``; its results come back on a queue of its own."""

    def __init__(
        self,
        transport: Transport,
        console: Console,
        queue_name: str = "distq",
        telemetry: MasterTelemetry | None = None,
        health: ProcessHealth | None = None,
    ) -> None:
        self.transport, self.console = transport, console
        self.telemetry = telemetry or MasterTelemetry()
        self.health = health or ProcessHealth("master")
        self.job_id = new_id()
        self.reply_to = f"{queue_name}.results.{self.job_id}"

    def run(self, spec: JobSpec, stop: threading.Event | None = None) -> JobReport:
        """Submit and collect until every task is in, ``timeout`` passes, or ``stop`` is set."""
        producer = self.transport.producer(self.reply_to)
        try:
            return _Job(self, producer, spec, stop or threading.Event()).run()
        finally:
            producer.close()


class _Job:
    def __init__(
        self, master: Master, producer: Producer, spec: JobSpec, stop: threading.Event
    ) -> None:
        self.master, self.producer, self.spec, self.stop = master, producer, spec, stop
        self.console = master.console
        self.rng = random.Random(spec.seed)
        self.pending: dict[str, _Pending] = {}
        self.finished: set[str] = set()
        self.latencies: list[float] = []
        self.submitted = 0
        self.report = JobReport(transport=master.transport.name, tasks=0)
        self.telemetry, self.health = master.telemetry, master.health
        self.link = master.health.readiness.link("producer")
        self.link.up()  # the producer is open: it reached the broker

    def run(self) -> JobReport:
        spec, total = self.spec, self.spec.tasks
        deadline = time.perf_counter() + spec.timeout if spec.timeout is not None else None
        if spec.wait_workers and not self._await_workers(spec.wait_workers, deadline):
            self.report.tasks = total or 0
            return self._finish(0.0)
        start = time.perf_counter()
        next_status = start + STATUS_EVERY
        announced = False
        while True:
            self.health.beat("job")
            now = time.perf_counter()
            if self.stop.is_set():
                break
            allowance = self._allowance(now - start)
            if allowance > 0:
                self._submit(min(allowance, SUBMIT_BATCH))
                continue_submitting = self._allowance(now - start) > 0
            else:
                continue_submitting = False
            if total is not None and self.submitted >= total and not announced:
                announced = True
                if spec.rate is None and spec.max_in_flight is None:
                    self.console.lines(["try to get result...."], count=0)
            if total is not None and len(self.finished) >= total:
                break
            if deadline is not None and now >= deadline:
                break
            wait = 0.0 if continue_submitting else 0.5
            if spec.rate is not None and (total is None or self.submitted < total):
                wait = min(wait, max(0.0, (self.submitted + 1) / spec.rate - (now - start)))
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            self._collect(wait)
            if spec.rate is not None and now >= next_status:
                next_status = now + STATUS_EVERY
                self._status(now - start)
        if self.stop.is_set() and self.pending:
            self._drain()
        return self._finish(time.perf_counter() - start)

    def _await_workers(self, count: int, deadline: float | None) -> bool:
        """Wait (before the clock starts) until ``count`` worker slots are attached."""
        self.console.info(f"waiting for {count} worker slots to attach ...")
        seen = 0
        while not self.stop.is_set():
            seen = self.master.transport.stats().consumers
            if seen >= count:
                return True
            if deadline is not None and time.perf_counter() >= deadline:
                break
            time.sleep(0.05)  # before the job starts: a short poll costs nothing measured
        self.report.problems.append(f"only {seen} of {count} worker slots attached in time")
        return False

    def _allowance(self, elapsed: float) -> int:
        spec = self.spec
        allowed = (spec.tasks - self.submitted) if spec.tasks is not None else 1 << 30
        if spec.max_in_flight is not None:
            allowed = min(allowed, spec.max_in_flight - len(self.pending))
        if spec.rate is not None:
            allowed = min(allowed, int(elapsed * spec.rate) + 1 - self.submitted)
        return allowed

    def _submit(self, count: int) -> None:
        kwargs: dict[str, Any] = {"delay": self.spec.task_delay} if self.spec.task_delay else {}
        tasks = [
            Task(
                name="square",
                args=[self.rng.randint(1, 1000)],
                kwargs=kwargs,
                reply_to=self.master.reply_to,
                max_attempts=self.spec.max_attempts,
            )
            for _ in range(count)
        ]
        now = time.perf_counter()
        for task in tasks:
            self.pending[task.id] = _Pending(task.args[0], now)
        with self.link.call(), self.health.liveness.waiting("job"):
            self.producer.submit([task.encode() for task in tasks])
        self.submitted += count
        self.report.tasks = self.submitted
        self.telemetry.submitted(tasks, len(self.pending))
        if self.console.bar is None and self.submitted == count and self.spec.tasks:
            self.console.start_progress(self.spec.tasks)
        self.console.lines(
            (f"put task {task.args[0]} into task_queue ...." for task in tasks), count=0
        )

    def _collect(self, wait: float) -> None:
        with self.link.call(wait), self.health.liveness.waiting("job"):
            bodies = self.producer.results(RESULT_BATCH, wait)
        if not bodies:
            return
        now = time.perf_counter()
        lines: list[str] = []
        for body in bodies:
            try:
                result = Result.decode(body)
            except EnvelopeError as exc:
                self.console.error(f"ignored a malformed result: {exc}")
                continue
            pending = self.pending.pop(result.task_id, None)
            if pending is None:
                if result.task_id in self.finished:
                    self.report.duplicates += 1
                    self.telemetry.duplicate(result)
                continue
            self.finished.add(result.task_id)
            self.latencies.append(now - pending.submitted)
            self.telemetry.result(result, now - pending.submitted, "square")
            lines.append(self._judge(result, pending.n))
        self.telemetry.collected(len(self.pending))
        self.console.lines(lines)

    def _judge(self, result: Result, n: int) -> str:
        if result.status == "error":
            self.report.failed += 1
            problem = (
                f"task square({n}) [{result.task_id}] failed for good: "
                f"{result.error_type}: {result.error_message}"
            )
            self.report.problems.append(problem)
            return problem
        if result.value != n * n:
            self.report.incorrect += 1
            problem = f"wrong result for square({n}) [{result.task_id}]: {result.value!r}"
            self.report.problems.append(problem)
            return problem
        self.report.ok += 1
        return f"Get result {n} * {n} = {result.value} from result_queue."

    def _drain(self) -> None:
        """Rate mode, stopping: give in-flight tasks a short while to come back."""
        deadline = time.perf_counter() + self.spec.drain_seconds
        while self.pending and time.perf_counter() < deadline:
            self._collect(min(0.5, deadline - time.perf_counter()))
        if self.pending:
            self.console.info(f"stopping with {len(self.pending)} tasks still in flight")
            self.pending.clear()

    def _status(self, elapsed: float) -> None:
        r = self.report
        self.console.info(
            f"submitted {self.submitted}, results {r.ok + r.failed} "
            f"(ok {r.ok}, failed {r.failed}), in flight {len(self.pending)}, "
            f"{(r.ok + r.failed) / max(elapsed, 1e-9):,.1f} tasks/s"
        )

    def _finish(self, elapsed: float) -> JobReport:
        r = self.report
        r.elapsed_seconds = elapsed
        r.missing = len(self.pending) + (r.tasks - self.submitted)
        r.throughput = (r.ok + r.failed) / elapsed if elapsed > 0 else 0.0
        if self.latencies:
            ordered = sorted(self.latencies)
            r.latency_p50_seconds = percentile(ordered, 0.50)
            r.latency_p99_seconds = percentile(ordered, 0.99)
        if self.pending:
            shown = [f"square({p.n}) [{tid}]" for tid, p in list(self.pending.items())[:10]]
            more = len(self.pending) - len(shown)
            r.problems.append(
                f"missing {len(self.pending)} results: {', '.join(shown)}"
                + (f" and {more} more" if more else "")
            )
        done = r.ok + r.failed
        if r.succeeded:
            self.console.info(
                f"all {done} results in and correct in {elapsed:.2f} s "
                f"({r.throughput:,.0f} tasks/s); {r.duplicates} duplicate results ignored"
            )
        else:
            reason = "stopped" if self.stop.is_set() else "timed out"
            if r.missing == 0:
                reason = "finished with errors"
            self.console.info(
                f"job {reason} after {elapsed:.1f} s: {done} of {r.tasks} results in, "
                f"{r.ok} ok, {r.failed} failed, {r.incorrect} wrong, {r.missing} missing"
            )
            for problem in r.problems[-10:]:
                self.console.error(problem)
        return r
