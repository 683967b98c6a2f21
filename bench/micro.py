"""Per-operation CPU cost of distq's task path, in one process, no broker.

``bench/.venv/bin/python bench/micro.py`` prints, for each step a task goes through in
the master and in a worker, the CPU microseconds it takes (``time.process_time``, best
of 5 rounds, or of ``--rounds``), so that a change to one step can be measured on its
own, A/B, where the end-to-end rows of ``make bench`` move with the machine's load.
Only public APIs are used, so the same file measures an older checkout too: alternate
it on both, e.g.
``PYTHONPATH=<old checkout>/src bench/.venv/bin/python bench/micro.py --rounds 30``.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import time
from collections.abc import Callable

from distq.codec import Codec
from distq.console import Console
from distq.ending import Endings
from distq.envelope import Result, Task
from distq.logs import JsonConsole
from distq.metrics import MasterMetrics, WorkerMetrics
from distq.runner import TaskRunner
from distq.signing import _Keyed  # the HMAC under one key that every signature costs
from distq.tasks import Registry
from distq.telemetry import MasterTelemetry, WorkerTelemetry
from distq.transport.base import Delivery

KEY = b"0123456789abcdef0123456789abcdef"
REPLY_TO = "distq:distq:results:" + "a" * 32
BATCH = 128


def best_cost(
    step: Callable[[], object], per: int = 1, rounds: int = 5, calls: int = 2000
) -> float:
    """CPU µs of one ``step()``, divided by ``per`` (the tasks one call handles)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            step()
        best = min(best, time.process_time() - start)
    return best / calls / per * 1e6


def seal_batch(codec: Codec, results: list[Result]) -> list[bytes]:
    """A worker's results of one batch for one master, as sent: packed where the code
    measured packs them (``Codec.seal_results``), else sealed one by one."""
    if hasattr(codec, "seal_results"):
        return codec.seal_results([codec.encode_result(r) for r in results])
    return [codec.seal_result(r) for r in results]


def open_batch(codec: Codec, messages: list[bytes]) -> list[Result]:
    """The results in ``messages`` as a master reads them: packs opened where they exist."""
    if hasattr(codec, "open_results"):
        return [Result.decode(e) for m in messages for e in codec.open_results(m)]
    return [codec.open_result(m) for m in messages]


def collected(telemetry: MasterTelemetry, results: list[Result]) -> None:
    """A master's telemetry of a batch of results, as the collector hands it over: the
    batch at once where the code measured takes it so, else a call per result."""
    if hasattr(telemetry, "result"):  # an older checkout: one call per result
        for r in results:
            telemetry.result(r, 0.001)
        telemetry.collected(0)
        return
    telemetry.collected(0, [(r, 0.001) for r in results])


def measure(rounds: int = 5) -> dict[str, float]:
    cost = functools.partial(best_cost, rounds=rounds)
    plain, signed = Codec(), Codec([KEY])
    task = Task(name="square", args=[733], reply_to=REPLY_TO)
    result = Result(
        task_id=task.id, status="ok", worker="host-1-0", attempt=1,
        started_at=time.time(), duration=2.1e-06, value=537289,
    )  # fmt: skip
    task_body, result_body = plain.seal_task(task), result.encode()
    signed_task, signed_result = signed.seal_task(task), signed.seal(result.encode(), "result")
    bodies = [plain.seal_task(Task("square", [n], REPLY_TO)) for n in range(BATCH)]
    deliveries = [Delivery(body, body) for body in bodies]
    quiet = Console(quiet=True, out=io.StringIO())
    runner = TaskRunner(Registry(), Endings("host-1-0", "distq", plain), quiet)
    endings = [runner(d) for d in deliveries]
    results = [result] * BATCH
    sealed = {
        name: seal_batch(codec, results) for name, codec in (("plain", plain), ("signed", signed))
    }
    tasks = [Task("square", [n], REPLY_TO) for n in range(BATCH)]
    out = io.StringIO()

    def worker_batch() -> None:
        for delivery in deliveries:
            runner(delivery)

    # not quiet, as a worker with JSON logs runs: its text lines are dropped
    json_runner = TaskRunner(
        Registry(), Endings("host-1-0", "distq", plain), JsonConsole("worker", out=io.StringIO())
    )

    def json_worker_batch() -> None:
        for delivery in deliveries:
            json_runner(delivery)

    def json_worker() -> None:
        WorkerTelemetry(None, JsonConsole("worker", out=out, worker="w")).settled(endings)
        out.seek(0)
        out.truncate()

    master_log = MasterTelemetry(None, JsonConsole("master", out=out))

    def json_master() -> None:
        master_log.submitted(tasks, BATCH)
        collected(master_log, results)
        out.seek(0)
        out.truncate()

    worker_metrics = WorkerTelemetry(WorkerMetrics("redis", "distq"))
    master_metrics = MasterTelemetry(MasterMetrics("redis", "distq"))

    def metrics_master() -> None:
        master_metrics.submitted(tasks, BATCH)
        collected(master_metrics, results)

    return {
        "master: make a task": cost(lambda: Task(name="square", args=[733], reply_to=REPLY_TO)),
        "master: seal a task": cost(lambda: plain.seal_task(task)),
        "master: open a result": cost(lambda: plain.open_result(result_body)),
        "worker: open a task": cost(lambda: plain.open_task(task_body)),
        "worker: run a task, its result sealed (batch of 128)": cost(
            worker_batch, per=BATCH, calls=20
        ),
        "worker: seal a batch's results (128), per task": cost(
            lambda: seal_batch(plain, results), per=BATCH, calls=50
        ),
        "master: open a batch's results (128), per task": cost(
            lambda: open_batch(plain, sealed["plain"]), per=BATCH, calls=50
        ),
        "signing: seal a task": cost(lambda: signed.seal_task(task)),
        "signing: open a task": cost(lambda: signed.open_task(signed_task)),
        "signing: open a result": cost(lambda: signed.open_result(signed_result)),
        "signing: seal a result": cost(lambda: signed.seal_result(result)),
        "signing: seal a batch's results (128), per task": cost(
            lambda: seal_batch(signed, results), per=BATCH, calls=50
        ),
        "signing: open a batch's results (128), per task": cost(
            lambda: open_batch(signed, sealed["signed"]), per=BATCH, calls=50
        ),
        "signing floor: one HMAC-SHA256 of a task (two per task)": cost(
            functools.partial(_Keyed(KEY).hexdigest, task_body)
        ),
        "metrics: worker, per task": cost(
            lambda: worker_metrics.settled(endings), per=BATCH, calls=50
        ),
        "metrics: master, per task": cost(metrics_master, per=BATCH, calls=50),
        "JSON logs: worker, per task": cost(json_worker, per=BATCH, calls=50),
        "JSON logs: worker, run a task (batch of 128)": cost(
            json_worker_batch, per=BATCH, calls=20
        ),
        "JSON logs: master, per task": cost(json_master, per=BATCH, calls=50),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--rounds", type=int, default=5, help="best of this many rounds per step (A/B: 30)"
    )
    args = parser.parse_args()
    costs = measure(args.rounds)
    if args.json:
        print(json.dumps(costs))
        return
    width = max(map(len, costs))
    for name, micros in costs.items():
        print(f"{name:<{width}}  {micros:7.2f} µs")


if __name__ == "__main__":
    main()
