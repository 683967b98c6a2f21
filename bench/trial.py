"""One trial of one contestant on one broker, in a process of its own.

Run by ``bench/run.py``, which kills this process group if it outlives its timeout.
Writes one JSON object to ``--out``: ``status`` ("ok" or "failed"), and on success
``throughput`` (tasks/s), ``elapsed_seconds``, ``cpu_seconds`` (CPU seconds the master,
the workers and the broker used over the throughput round, see :mod:`cpu`),
``latency_p50_seconds``, ``latency_p99_seconds`` and, with ``--memory``, the workers'
VmRSS samples.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Contestants take free ports from tests/launch/, the project's one launcher.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

import contestants
from contestants.base import Contestant, Context, RoundTimeout
from cpu import CpuMeter

WARM_UP_TASKS = 200
WARM_UP_LATENCY = 20


def vm_rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class RssSampler(threading.Thread):
    """Samples every worker's VmRSS five times a second: first, halfway, last and peak."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        super().__init__(daemon=True)
        self.pids = pids  # the current worker PIDs
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.all: dict[int, list[int]] = {}
        self.stopping = threading.Event()

    def sample(self) -> None:
        for pid in self.pids():
            rss = vm_rss_kib(pid)
            if rss is None:
                continue
            self.first.setdefault(pid, rss)
            self.all.setdefault(pid, []).append(rss)
            self.last[pid] = rss
            self.peak[pid] = max(rss, self.peak.get(pid, 0))

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            self.sample()

    def report(self) -> list[dict[str, int]]:
        return [
            {
                "pid": pid,
                "start_kib": self.first[pid],
                "half_kib": self.all[pid][len(self.all[pid]) // 2],
                "end_kib": self.last[pid],
                "peak_kib": self.peak[pid],
            }
            for pid in self.first
        ]


def cpu_meter(contestant: Contestant, broker_pid: int | None) -> CpuMeter:
    """Master: this process (where a contestant's master runs unless it reports its own),
    without its children, the workers; workers: their process trees; broker: its tree,
    when it is a process of its own: the server run.py started, or one the contestant
    started (the raw manager's forked queue server). distq's manager queues live in its
    master, which has no broker role."""
    roles = {"master": [os.getpid()], "workers": contestant.worker_pids()}
    brokers = ([broker_pid] if broker_pid else []) + contestant.broker_pids()
    if brokers:
        roles["broker"] = brokers
    return CpuMeter(roles, own=["master"])


def _cpu_used(contestant: Contestant, meter: CpuMeter) -> dict[str, float | None]:
    """CPU seconds by role since ``meter`` started; the master's from the contestant when
    its master is a process of its own that counts its round (``distq master``)."""
    cpu: dict[str, float | None] = dict(meter.stop())
    if contestant.master_cpu_seconds is not None:
        cpu["master"] = contestant.master_cpu_seconds
    cpu.setdefault("broker", None)
    return cpu


def run_trial(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        broker=args.broker,
        url=args.url,
        queue=args.queue,
        workers=args.workers,
        workdir=workdir,
        deadline=time.monotonic() + args.timeout,
        profile_dir=Path(args.profile) if args.profile else None,
    )
    rng = random.Random(args.seed)
    tasks = [rng.randint(1, 1000) for _ in range(args.tasks)]
    warm = [rng.randint(1, 1000) for _ in range(WARM_UP_TASKS)]
    single = [rng.randint(1, 1000) for _ in range(args.latency_tasks + WARM_UP_LATENCY)]

    contestant = contestants.load(args.broker, args.contestant)(ctx)
    if contestant.task_cap is not None and not args.no_caps:
        tasks = tasks[: contestant.task_cap]
    out: dict[str, Any] = {"status": "failed", "tasks": len(tasks)}
    phase = "start_workers"
    try:
        contestant.start_workers()
        phase = "warm-up"
        contestant.throughput(warm)
        phase = "throughput"
        sampler = RssSampler(contestant.worker_pids) if args.memory else None
        if sampler:
            sampler.sample()
            sampler.start()
        meter = cpu_meter(contestant, args.broker_pid)
        meter.start()
        elapsed = contestant.throughput(tasks)
        out["cpu_seconds"] = _cpu_used(contestant, meter)
        if sampler:
            sampler.sample()
            sampler.stopping.set()
            out["worker_rss"] = sampler.report()
        # a worker that died in the round fails it, though the others (redelivery) may
        # have finished its tasks: the round was not the one of --workers workers
        contestant.workers.check_alive()
        out["elapsed_seconds"] = elapsed
        out["throughput"] = len(tasks) / elapsed
        if args.latency_tasks:
            phase = "latency"
            contestant.latency(single[:WARM_UP_LATENCY])  # not counted
            contestant.master_cpu_seconds = None  # the counted round's own, if it has one
            meter = cpu_meter(contestant, args.broker_pid)
            meter.start()
            lat = contestant.latency(single[WARM_UP_LATENCY:])
            out["latency_cpu_seconds"] = _cpu_used(contestant, meter)
            contestant.workers.check_alive()
            out["latency_p50_seconds"] = lat.p50
            out["latency_p99_seconds"] = lat.p99
            out["latency_tasks"] = lat.count
        out["status"] = "ok"
    except BaseException as exc:
        out["error"] = f"{phase}: {_named(exc, ctx.deadline)}: {exc}"
        out["traceback"] = traceback.format_exc()[-4000:]
    finally:
        try:
            contestant.stop_workers()
        except Exception as exc:
            out.setdefault("warnings", []).append(f"stop_workers: {exc}")
    return out


def _named(exc: BaseException, deadline: float) -> str:
    """``exc``'s type, as RoundTimeout when it is a library's own timeout at the trial's
    deadline (Celery's ``TimeoutError``, Dramatiq's ``ResultTimeout``, the Executor's
    ``TimeoutError``: each waits with the time the trial has left), so that the report
    says TIMEOUT for them as for the contestants that raise RoundTimeout, not FAILED."""
    name = type(exc).__name__
    timed_out = isinstance(exc, TimeoutError) or "Timeout" in name
    if timed_out and not isinstance(exc, RoundTimeout) and time.monotonic() >= deadline - 1.0:
        return f"RoundTimeout (the trial's deadline passed; {name})"
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", required=True, choices=contestants.BROKERS)
    parser.add_argument("--contestant", required=True, choices=contestants.CONTESTANTS)
    parser.add_argument("--url", default="")
    parser.add_argument("--queue", required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--latency-tasks", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--no-caps", action="store_true", help="ignore contestants' task_cap")
    parser.add_argument("--broker-pid", type=int, default=0, help="the broker's PID (0: none)")
    parser.add_argument("--profile", default="", help="py-spy flame graphs into this folder")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = run_trial(args)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
