"""Jobs under faults: real ``distq`` processes on a target, and the figures of a scenario.

A :class:`Scenario` starts masters and workers as subprocesses (``tests/procs.py``),
lets the test inject faults, then judges what happened from the outside, the way an
operator would: each master's ``--report`` and its ``Get result`` lines, exit codes,
and output (a traceback anywhere is a crash). Its :class:`Figures` go to a JSON file
per scenario (:func:`results_dir`), which ``render.py`` turns into the table in the README.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from conftest import REPO, Target
from procs import Distq

#: The long version: ``make faults`` sets it; ``make test`` runs the short one.
FULL = os.environ.get("DISTQ_FAULTS_FULL") == "1"
RESULT_LINE = re.compile(r"^Get result (\d+) \* (\d+) = (\d+) from result_queue\.$", re.M)


def results_dir() -> Path:
    """Where scenarios write their figures (``DISTQ_FAULTS_RESULTS``, else .build/faults)."""
    path = Path(os.environ.get("DISTQ_FAULTS_RESULTS") or REPO / ".build" / "faults")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Figures:
    """What one scenario did and what came of it; the last five must be 0 (or small)."""

    transport: str
    fault: str
    how: str  # how the fault was injected, in a few words
    faults_injected: int = 0
    tasks_submitted: int = 0
    tasks_lost: int = 0
    results_twice: int = 0  # results handed to the user twice (the collector's job)
    worker_crashes: int = 0
    bad_master_exits: int = 0
    recover_seconds: float | None = None  # from a fault's end to the next result, worst case
    longest_gap_seconds: float = 0.0  # the longest the masters went without a result
    duplicates_ignored: int = 0  # results that came twice and were dropped (at-least-once)
    seconds: float = 0.0
    full: bool = FULL

    def write(self) -> Path:
        slug = re.sub(r"[^a-z0-9]+", "-", self.fault.lower()).strip("-")
        path = results_dir() / f"{self.transport}.{slug}.json"
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


@dataclass
class Master:
    """A master process whose results the scenario watches as they come."""

    proc: Distq
    report: Path
    expect_exit: int | None = 0  # None: killed on purpose, any exit will do
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each result line

    def results(self) -> int:
        return len(RESULT_LINE.findall(self.proc.output()))


class Scenario:
    """One fault scenario on one target: processes, fault times, and the figures."""

    def __init__(self, target: Target, fault: str, how: str, tmp: Path) -> None:
        self.target, self.tmp = target, tmp
        self.figures = Figures(target.name, fault, how)
        self.masters: list[Master] = []
        self.workers: list[Distq] = []
        self.killed: set[int] = set()  # worker PIDs killed on purpose
        self.worker_exits: dict[int, int] = {}  # worker PID -> its documented exit code
        self.fault_ends: list[tuple[float, int]] = []  # (when, results so far)
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    # -- processes --------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        return self.target.process_env(**extra)

    def master(
        self, *args: str, env: dict[str, str] | None = None, expect_exit: int | None = 0
    ) -> Master:
        report = self.tmp / f"master-{len(self.masters)}.json"
        proc = Distq(["master", *args, "--report", str(report)], env or self.env())
        master = Master(proc, report, expect_exit)
        self.masters.append(master)
        proc.wait_for(r"^master .* transport")
        return master

    def worker(self, *args: str, env: dict[str, str] | None = None, expect_exit: int = 0) -> Distq:
        proc = Distq(["worker", "-q", *args], env or self.env())
        self.workers.append(proc)
        self.worker_exits[proc.proc.pid] = expect_exit
        return proc

    def kill(self, proc: Distq) -> None:
        """SIGKILL a process on purpose (it is not counted as a crash)."""
        self.killed.add(proc.proc.pid)
        proc.signal(signal.SIGKILL)
        proc.proc.wait(10)

    @contextmanager
    def fault(self) -> Iterator[None]:
        """Inject a fault in the block; its end is when recovery is timed from."""
        self.figures.faults_injected += 1
        yield
        self.fault_ends.append((time.monotonic(), sum(m.results() for m in self.masters)))

    def _watch(self) -> None:
        seen: dict[int, int] = {}
        while not self._stop.wait(0.05):
            for i, master in enumerate(list(self.masters)):
                count = master.results()
                if count > seen.get(i, 0):
                    master.arrivals.extend([time.monotonic()] * (count - seen.get(i, 0)))
                    seen[i] = count

    # -- the verdict ----------------------------------------------------------------
    def finish(self, must_complete: list[Master], timeout: float = 120.0) -> Figures:
        """Wait for the masters that must complete, stop the rest, judge, write the figures."""
        f = self.figures
        for master in must_complete:
            try:
                master.proc.proc.wait(timeout)
            except subprocess.TimeoutExpired:  # judged below: its report says what is missing
                terminate(master.proc, grace=10.0)
        time.sleep(0.1)  # the watcher's last look
        self._stop.set()
        self._watcher.join(5)
        for master in self.masters:
            if master not in must_complete and master.proc.proc.poll() is None:
                terminate(master.proc, grace=10.0)
            code = master.proc.proc.returncode
            if master.expect_exit is not None and code != master.expect_exit:
                f.bad_master_exits += 1
            if "Traceback" in master.proc.output():
                f.bad_master_exits += 1
        for master in must_complete:
            report = json.loads(master.report.read_text()) if master.report.exists() else {}
            tasks = int(report.get("tasks", 0))
            answered = int(report.get("ok", 0)) + int(report.get("failed", 0))
            f.tasks_submitted += tasks
            f.tasks_lost += int(report.get("missing", tasks))
            f.results_twice += max(0, answered - tasks) + max(0, master.results() - answered)
            f.duplicates_ignored += int(report.get("duplicates", 0))
        for worker in self.workers:
            if worker.proc.poll() is None:
                terminate(worker, grace=25.0)
            expected = self.worker_exits.get(worker.proc.pid, 0)
            killed = worker.proc.pid in self.killed
            if (
                not killed and worker.proc.returncode != expected
            ) or "Traceback" in worker.output():
                f.worker_crashes += 1
        f.recover_seconds = self._recovery(must_complete)
        arrivals = sorted(t for m in must_complete for t in m.arrivals)
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        f.longest_gap_seconds = round(max(gaps, default=0.0), 2)
        f.seconds = round(time.monotonic() - self._started, 1)
        f.write()
        return f

    def _recovery(self, masters: list[Master]) -> float | None:
        """The longest wait, over the faults, from a fault's end to the next result
        (None if results stopped for good after one)."""
        worst = 0.0
        arrivals = sorted(t for m in self.masters for t in m.arrivals)
        for end, seen in self.fault_ends:
            if len(arrivals) <= seen:
                return None
            worst = max(worst, arrivals[seen] - end)
        return round(max(worst, 0.0), 2)

    def close(self) -> None:
        """End every process still running (SIGKILL) and delete their logs."""
        self._stop.set()
        for proc in [m.proc for m in self.masters] + self.workers:
            proc.stop(grace=0)

    def outputs(self) -> str:
        """Every process's output, for an assertion message."""
        parts = [
            f"--- master {i} (exit {m.proc.proc.returncode})\n{m.proc.output()}"
            for i, m in enumerate(self.masters)
        ]
        parts += [
            f"--- worker {i} (exit {w.proc.returncode})\n{w.output()}"
            for i, w in enumerate(self.workers)
        ]
        return "\n".join(parts)


def terminate(proc: Distq, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` s; the output stays readable (unlike stop)."""
    proc.signal(signal.SIGTERM)
    try:
        proc.proc.wait(grace)
    except subprocess.TimeoutExpired:  # still running: it did not drain in time
        proc.signal(signal.SIGKILL)
        proc.proc.wait(10)


def assert_clean(figures: Figures, scenario: Scenario) -> None:
    """What every scenario must show: nothing lost, nothing twice, no crash, no bad exit."""
    bad = {
        "tasks lost": figures.tasks_lost,
        "results delivered twice": figures.results_twice,
        "worker crashes": figures.worker_crashes,
        "master exits not as documented": figures.bad_master_exits,
    }
    assert not any(bad.values()), f"{bad}\n{scenario.outputs()}"
    assert figures.tasks_submitted > 0, scenario.outputs()
