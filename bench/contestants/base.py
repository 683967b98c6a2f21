"""The one small interface every contestant implements, and the helpers they share.

A contestant is one framework (or the raw client) on one broker. A trial, run by
``bench/trial.py`` in its own process, calls, in this order::

    start_workers()          # returns when every worker is connected and serving
    throughput(warm_up)      # a short round, not reported
    throughput(tasks)        # seconds from first submit to last verified result
    latency(tasks)           # one task at a time, round-trip seconds each
    stop_workers()           # always, in a ``finally``

The master side runs inside the trial process (except for distq, whose own ``distq
master`` command plays master); workers are separate OS processes started here.
"""

from __future__ import annotations

import abc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from processes import die_with_parent

BENCH_DIR = Path(__file__).resolve().parent.parent


class VerifyError(AssertionError):
    """A result was wrong, missing or duplicated."""


class RoundTimeout(TimeoutError):
    """A round did not finish before its deadline."""


@dataclass(frozen=True)
class Context:
    """What a contestant needs to know about its trial."""

    broker: str  # "redis", "rabbitmq" or "manager"
    url: str  # broker URL; "" for manager
    queue: str  # a name unique to this trial; prefix of every queue/key the trial uses
    workers: int  # worker processes to start
    workdir: Path  # worker logs and scratch files
    deadline: float  # time.monotonic() by which the whole trial must end
    profile_dir: Path | None = None  # py-spy flame graphs of distq's processes go here

    def remaining(self) -> float:
        """Seconds left before the trial deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def check_deadline(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise RoundTimeout(f"{what}: trial deadline passed")


@dataclass(frozen=True)
class Latency:
    """Round-trip latency of sequential single tasks, in seconds."""

    count: int
    p50: float
    p99: float

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> Latency:
        """p50 and p99 by nearest rank, with the function ``distq master`` computes its own
        report's with (the lower middle value for an even count), so every row of the
        table means the same by them. Imported here, not at the top: peers' worker
        processes import this module too, and need nothing of distq."""
        from distq.master import percentile

        if len(samples) < 2:
            raise VerifyError(f"need at least 2 latency samples, got {len(samples)}")
        ordered = sorted(samples)
        return cls(count=len(samples), p50=percentile(ordered, 0.5), p99=percentile(ordered, 0.99))


def expect_squares(tasks: Sequence[int], results: Sequence[int | None]) -> None:
    """Raise :class:`VerifyError` unless ``results[i] == tasks[i] ** 2`` for every i."""
    if len(results) != len(tasks):
        raise VerifyError(f"expected {len(tasks)} results, got {len(results)}")
    for i, (n, got) in enumerate(zip(tasks, results, strict=True)):
        if got != n * n:
            raise VerifyError(f"task {i}: square({n}) returned {got!r}, expected {n * n}")


class Collector:
    """Results keyed by task index: rejects duplicates and unknown indexes."""

    def __init__(self, tasks: Sequence[int]) -> None:
        self.tasks = tasks
        self.values: list[int | None] = [None] * len(tasks)
        self.count = 0

    def add(self, index: int, value: int) -> None:
        if not 0 <= index < len(self.tasks):
            raise VerifyError(f"result for unknown task index {index}")
        if self.values[index] is not None:
            raise VerifyError(f"duplicate result for task {index}")
        n = self.tasks[index]
        if value != n * n:
            raise VerifyError(f"task {index}: square({n}) returned {value!r}, expected {n * n}")
        self.values[index] = value
        self.count += 1

    @property
    def done(self) -> bool:
        return self.count == len(self.tasks)


@dataclass
class WorkerProcesses:
    """Worker OS processes this trial started; stopped by PID, never by name."""

    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        index = len(self.procs)
        log = open(self.logs / f"worker-{index}.log", "wb")  # noqa: SIM115 - child owns it
        full_env = worker_env()
        full_env.update(env or {})
        proc = subprocess.Popen(
            list(argv),
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=BENCH_DIR,
            preexec_fn=die_with_parent,
        )
        self.procs.append(proc)
        return proc.pid

    def log_text(self, index: int) -> str:
        path = self.logs / f"worker-{index}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, marker: str, limit: float) -> None:
        """Wait until every worker's log has a line containing ``marker``."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            self.check_alive()
            if all(marker in self.log_text(i) for i in range(len(self.procs))):
                return
            time.sleep(0.05)
        raise RoundTimeout(f"workers not ready after {limit:.0f} s")

    def check_alive(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                tail = self.log_text(i)[-1500:]
                raise RuntimeError(f"worker {i} exited with code {proc.returncode}:\n{tail}")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self, grace: float = 15.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()


def clean_env() -> dict[str, str]:
    """Our environment without any ``DISTQ_*`` variable: the bench sets distq's settings
    itself. A ``DISTQ_SIGNING_KEYS`` exported in the caller's shell signed the "plain"
    distq row (the feature table then compared signing against signing) and failed the
    Executor's, which reads only the bench's settings; ``DISTQ_CONCURRENCY`` gave the
    scaling table's "concurrency 1 each" workers four slots."""
    return {key: value for key, value in os.environ.items() if not key.startswith("DISTQ_")}


def worker_env() -> dict[str, str]:
    """The environment for worker processes: ours (:func:`clean_env`), with ``bench/`` and
    ``tests/`` (the launcher's ``free_port``) importable."""
    env = clean_env()
    paths = (str(BENCH_DIR), str(BENCH_DIR.parent / "tests"), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def python() -> str:
    """The interpreter of the bench venv (the one running us)."""
    return sys.executable


def venv_bin(name: str) -> str:
    """A console script installed next to our interpreter, e.g. ``celery``."""
    return str(Path(sys.executable).parent / name)


class Contestant(abc.ABC):
    """One framework on one broker; see the module docstring for the call order."""

    name: ClassVar[str]
    #: At most this many tasks in the throughput round (None: all); for contestants
    #: that would otherwise need many times the trial timeout.
    task_cap: ClassVar[int | None] = None

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.workers = WorkerProcesses(ctx.workdir)
        #: CPU seconds of the last throughput round's master, for a contestant whose
        #: master is a process of its own that counts them; None: the trial process is
        #: the master, and the trial measures itself.
        self.master_cpu_seconds: float | None = None

    @abc.abstractmethod
    def start_workers(self) -> None:
        """Start ``ctx.workers`` worker processes; return once all are serving."""

    @abc.abstractmethod
    def throughput(self, tasks: Sequence[int]) -> float:
        """Submit all tasks, collect and verify every result; return elapsed seconds."""

    @abc.abstractmethod
    def latency(self, tasks: Sequence[int]) -> Latency:
        """Submit one task, wait for its verified result, repeat for every task."""

    def stop_workers(self) -> None:
        """Stop the worker processes (by PID) and release master-side connections."""
        self.workers.stop()

    def worker_pids(self) -> list[int]:
        return self.workers.pids

    def broker_pids(self) -> list[int]:
        """Processes this contestant started that hold its queues (its broker role), for
        a contestant that serves them itself rather than through run.py's broker."""
        return []


class RawContestant(Contestant):
    """A raw client library as the master, its tasks ``"<index>:<n>"`` or alike: the
    latency round is one :meth:`send` and one :meth:`collect` a task, as in
    :meth:`throughput` (which each writes out, its sends inline)."""

    @abc.abstractmethod
    def send(self, index: int, n: int) -> None:
        """Put task ``n``, numbered ``index``, on the task queue with the raw client."""

    @abc.abstractmethod
    def collect(self, collector: Collector, want: int) -> None:
        """Add results to ``collector`` until it holds ``want`` of them."""

    def latency(self, tasks: Sequence[int]) -> Latency:
        return timed_sequential(tasks, self._round_trip)

    def _round_trip(self, n: int) -> int | None:
        collector = Collector([n])
        self.send(0, n)
        self.collect(collector, 1)
        return collector.values[0]


def timed_sequential(tasks: Sequence[int], one: Callable[[int], object]) -> Latency:
    """Call ``one(n) -> n*n`` for every task; time each call; verify each result."""
    samples: list[float] = []
    for n in tasks:
        start = time.perf_counter()
        got = one(n)
        samples.append(time.perf_counter() - start)
        if got != n * n:
            raise VerifyError(f"square({n}) returned {got!r}, expected {n * n}")
    return Latency.from_samples(samples)
