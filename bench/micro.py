"""Per-operation CPU cost of distq's task path, in one process, no broker.

``bench/.venv/bin/python bench/micro.py`` prints, for each step a task goes through in
the master and in a worker, the CPU microseconds it takes (``time.process_time``, best
of 5 rounds, or of ``--rounds``), so that a change to one step can be measured on its
own, A/B, where the end-to-end rows of ``make bench`` move with the machine's load.
Only public APIs are used (but for a lone task's step, which runs a worker slot's own
loop), so the same file measures an older checkout too: alternate it on both, e.g.
``PYTHONPATH=<old checkout>/src bench/.venv/bin/python bench/micro.py --rounds 30``.

CPU time moves with the machine's other load; ``--instructions NAME`` counts instead,
with valgrind's callgrind, the instructions per task of the steps whose name holds
``NAME`` (``''`` for all), which do not: e.g. ``bench/micro.py --instructions signing``.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import gc
import inspect
import io
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Collection, Sequence
from typing import Any

import distq.batch
import distq.telemetry
import distq.worker
from distq import signing
from distq.codec import Codec
from distq.console import Console
from distq.ending import Endings
from distq.envelope import DeadLetter, Result, Task
from distq.logs import JsonConsole
from distq.master import JobSpec, Master
from distq.metrics import MasterMetrics, WorkerMetrics
from distq.runner import TaskRunner
from distq.slots import Slot
from distq.squares import Squares
from distq.tasks import Registry
from distq.telemetry import MasterTelemetry, WorkerTelemetry
from distq.transport.base import (
    Consumer,
    Delivery,
    Producer,
    QueueStats,
    Revive,
    Settlement,
    Transport,
)
from distq.worker import Worker, WorkerOptions

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


#: Whether the code measured hands a master's telemetry its first results and round trips.
COLLECTED_FIRSTS = "firsts" in inspect.signature(MasterTelemetry.collected).parameters
#: Whether it takes each result's task name with it (kept by the collector), not by id
NAMED = len(typing.get_args(getattr(distq.telemetry, "Received", tuple[Any, Any]))) == 3


def collected(telemetry: MasterTelemetry, results: list[Result]) -> None:
    """A master's telemetry of a batch of results, as the collector hands it over: its
    first results and their round trips where the code measured takes them so (a pair
    per result only for the JSON lines), the batch in pairs where it takes those, else a
    call per result."""
    if hasattr(telemetry, "result"):  # an older checkout: one call per result
        for r in results:
            telemetry.result(r, 0.001)
        telemetry.collected(0)
        return
    received: list[Any]
    if not COLLECTED_FIRSTS:
        received = [(r, 0.001) for r in results]
        telemetry.collected(0, received)
        return
    if telemetry.log is None:
        received = []
    elif NAMED:  # each with its task's name, as the collector keeps it with the task
        received = [(r, 0.001, "square") for r in results]
    else:
        received = [(r, 0.001) for r in results]
    telemetry.collected(0, received, results, [0.001] * len(results))


def _mac() -> Callable[[bytes], bytes]:
    """A task's MAC under one key with nothing around it: keyed BLAKE2b (DQSIG3) where
    the code measured has it, else its HMAC-SHA256 (DQSIG2)."""
    if not hasattr(signing, "_keyed"):
        return signing._Keyed(KEY).hexdigest
    state = signing._keyed(KEY, "task", "distq")

    def mac(envelope: bytes) -> bytes:
        copied = state.copy()
        copied.update(envelope)
        return copied.hexdigest().encode()

    return mac


def both_ends(codec: Codec) -> tuple[Callable[[], None], Callable[[], None]]:
    """A batch of ``BATCH`` tasks through ``codec`` at each end, per task all that signing
    touches there: the worker's (each task opened and run, the results packed and sealed
    as its settle sends them) and the master's (the tasks sealed, the results' pack
    opened and each result read). The same with and without keys: the difference is
    what signing costs a task on a broker where a task is a message of its own (Redis,
    manager), the MACs and all around them."""
    tasks = [Task("square", [n], REPLY_TO) for n in range(BATCH)]
    deliveries = [Delivery(body, body) for body in seal_tasks_of(codec, tasks)]
    endings = Endings("host-1-0", "distq", codec)
    runner = TaskRunner(Registry(), endings, Console(quiet=True, out=io.StringIO()))
    settled = endings.settlements([runner(d) for d in deliveries])
    packs = [s.result for s in settled if s.result is not None]

    def worker() -> None:
        endings.settlements([runner(d) for d in deliveries])

    def master() -> None:
        seal_tasks_of(codec, tasks)
        open_batch(codec, packs)

    return worker, master


def seal_tasks_of(codec: Codec, tasks: list[Task]) -> list[bytes]:
    """A master's batch of tasks sealed, in one call where the code measured has it."""
    if hasattr(codec, "seal_tasks"):
        return codec.seal_tasks(tasks)
    return [codec.seal_task(task) for task in tasks]


class LoneTasks(Consumer):
    """A consumer that hands a slot its tasks one at a time, as a job of lone tasks
    does (``--max-in-flight 1``): each settle brings the next task, and the last one's
    settle none, which stops the worker's slot loop. No broker: what is counted is the
    worker's own Python from a task in hand to its settle's call, and the bookkeeping
    around it, not the transport's."""

    def __init__(self, worker: Worker, bodies: list[bytes]) -> None:
        self.worker, self.bodies, self.next = worker, bodies, 0

    def fetch(self, max_count: int, timeout: float) -> list[Delivery]:
        return self._next()

    def settle_then_fetch(
        self, settlements: Sequence[Settlement], max_count: int, timeout: float = 0.0
    ) -> list[Delivery]:
        return self._next()

    def _next(self) -> list[Delivery]:
        if self.next == len(self.bodies):
            self.worker._stopping.set()  # the slot loop ends after this settle
            return []
        body = self.bodies[self.next]
        self.next += 1
        return [Delivery(body, body)]

    def heartbeat(self) -> None:
        pass

    def gone(self, reply_to: Collection[str]) -> set[str]:
        return set()

    def settle(self, settlements: Sequence[Settlement]) -> None:
        pass

    def release(self, deliveries: Sequence[Delivery]) -> int:
        return len(deliveries)

    def close(self) -> None:
        pass


def slot_worker(codec: Codec | None = None) -> Worker:
    """A worker with no transport, for a slot loop whose consumer is a stand-in
    (:class:`LoneTasks`, :class:`SlotBatch`): the loop asks its consumer only."""
    return Worker(
        None,  # type: ignore[arg-type]
        Registry(),
        WorkerOptions(worker_id="host-1-0"),
        Console(quiet=True, out=io.StringIO()),
        codec=codec,
    )


def lone_tasks(bodies: list[bytes]) -> Callable[[], None]:
    """A worker's slot loop over ``bodies``, each fetched alone (:class:`LoneTasks`)."""
    worker = slot_worker()

    def step() -> None:
        worker._stopping.clear()
        slot = Slot(0)
        slot.consumer = LoneTasks(worker, bodies)
        worker._work_on(slot, 0)

    return step


class SlotBatch(LoneTasks):
    """A consumer that hands a slot all its tasks in one fetch, as a batch of fast tasks
    comes, and none at that batch's settle, which stops the worker's slot loop: the
    worker's own Python from a batch in hand to its settle's call, no broker."""

    def _next(self) -> list[Delivery]:
        if self.next == len(self.bodies):
            self.worker._stopping.set()
            return []
        self.next = len(self.bodies)
        return [Delivery(body, body) for body in self.bodies]


def slot_batch(codec: Codec) -> Callable[[], None]:
    """A worker's slot loop over one batch of ``BATCH`` tasks sealed by ``codec``
    (:class:`SlotBatch`), its master known alive: where a worker opens a batch's tasks."""
    bodies = seal_tasks_of(codec, [Task("square", [n], REPLY_TO) for n in range(BATCH)])
    worker = slot_worker(codec)

    # the whole batch run, as a batch of fast tasks runs outside valgrind: under it, 50
    # times as long, it ran past the 50 ms after which a worker hands back the rest
    # (HAND_BACK_AFTER_SECONDS), and how many tasks a count ran followed the clock
    run_batch = distq.batch.run_batch
    whole = functools.partial(run_batch, budget=float("inf"))

    def step() -> None:
        worker._stopping.clear()
        worker.masters.learn([REPLY_TO], set())  # as a running worker knows it alive
        slot = Slot(0)
        slot.consumer = SlotBatch(worker, bodies)
        distq.worker.run_batch = whole  # type: ignore[attr-defined]
        try:
            worker._work_on(slot, 0)
        finally:
            distq.worker.run_batch = run_batch  # type: ignore[attr-defined]

    return step


class ManagerLoneTask:
    """A lone task on manager, both ends in this process: the master's transport hosted
    here, a worker's connected to it over 127.0.0.1. Each call submits one task, settles
    the one before with its result in the same call that fetches this one
    (``settle_then_fetch``, as a worker's slot does) and reads that result back: the
    worker's transport and the master's served side of one request, no slot, no run.
    Opened at the first call, so that both counts of ``--instructions`` pay it once."""

    def __init__(self) -> None:
        self.pending: Settlement | None = None

    def _open(self) -> None:
        from distq.config import Settings
        from distq.transport import open_transport

        with socket.socket() as probe:  # a free port on 127.0.0.1
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        settings = Settings(
            transport="manager", authkey=KEY, manager_address=("127.0.0.1", port), lease_seconds=60
        )
        master = open_transport(settings, "master")
        worker = open_transport(settings, "worker")
        atexit.register(master.close)
        atexit.register(worker.close)
        self.reply_to = master.reply_queue("0" * 32)
        self.producer = master.producer(self.reply_to)
        self.consumer = worker.consumer("host-1-0")
        self.body = Codec().seal_task(Task("square", [733], self.reply_to))
        self.result = Result(
            task_id="0" * 32, status="ok", worker="host-1-0", attempt=1,
            started_at=time.time(), duration=2.1e-06, value=537289,
        ).encode()  # fmt: skip

    def __call__(self) -> None:
        if self.pending is None:
            self._open()
            self.producer.submit([self.body])
            got = self.consumer.fetch(1, 5.0)
        else:
            self.producer.submit([self.body])
            got = self.consumer.settle_then_fetch([self.pending], 1, 5.0)
            if len(self.producer.results(1, 5.0)) != 1:
                raise RuntimeError("the lone task's result did not come back")
        if len(got) != 1:
            raise RuntimeError(f"a lone task fetched {len(got)} tasks, not 1")
        self.pending = Settlement(got[0], self.reply_to, self.result)


#: A step: what one call does, how many tasks one call handles, and how many calls a round makes.
Step = tuple[Callable[[], object], int, int]

#: Tasks of one lone-task job (``--max-in-flight 1``) a call of that step runs: its start
#: and end (the master's, the report's) weigh about 1 % of its figure
LONE_TASKS = 500


class _Echo(Producer):
    """A broker that answers each task at once with its right result, sealed as a worker
    seals it: what is left of a lone task's round trip is the master's own Python."""

    takes_back = True

    def __init__(self, reply_to: str) -> None:
        self.reply_to, self.held = reply_to, 0
        made = Result(
            task_id="X" * 32, status="ok", worker="host-1-0", attempt=1,
            started_at=time.time(), duration=2.1e-06, value=0,
        ).encode()  # fmt: skip
        head, _, tail = made.partition(b"X" * 32)
        self._head, (self._value, self._tail) = head, tail.split(b'"value":0')

    def submit(self, bodies: Sequence[bytes]) -> None:
        self.held += len(bodies)

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        return []

    def submit_then_results(
        self, bodies: Sequence[bytes], max_count: int, timeout: float
    ) -> list[bytes]:
        self.submit(bodies)
        return [self._answer(body) for body in bodies]

    def _answer(self, body: bytes) -> bytes:
        """The result of the task ``body``, read from its bytes where the master writes
        its id and its one argument (a parse would cost about what a master's accept does)."""
        at = body.index(b'"id":"') + 6
        args = body.index(b'"args":[') + 8
        value = str(int(body[args : body.index(b"]", args)]) ** 2).encode()
        return self._head + body[at : at + 32] + self._value + b'"value":' + value + self._tail

    def reconcile(self) -> int:
        return self.held

    def close(self) -> None:
        pass


class _EchoTransport(Transport):
    """The transport of :class:`_Echo`: nothing else of it is asked by a job."""

    name = "echo"

    def describe(self) -> str:
        return "echo"

    def reply_queue(self, job_id: str) -> str:
        return REPLY_TO[: -len(job_id)] + job_id

    def producer(self, reply_to: str) -> Producer:
        return _Echo(reply_to)

    def consumer(self, consumer_id: str) -> Consumer:
        raise NotImplementedError

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return []

    def stats(self) -> QueueStats:
        raise NotImplementedError

    def requeue_dead(self, limit: int | None, revive: Revive | None = None) -> int:
        return 0

    def forget_orphans(self, reply_to: str) -> int:
        return 0

    def close(self) -> None:
        pass


def lone_tasks_job(telemetry: MasterTelemetry | None = None) -> None:
    """``distq master --max-in-flight 1 --quiet``'s job of :data:`LONE_TASKS` squares over
    :class:`_Echo`: each task made, sealed, recorded and sent, its result read and judged."""
    quiet = Console(quiet=True, out=io.StringIO(), err=io.StringIO())
    spec = JobSpec(tasks=LONE_TASKS, max_in_flight=1, timeout=600)
    report = Master(_EchoTransport(), quiet, telemetry).run(spec, Squares(seed=1))
    if report.ok != LONE_TASKS:
        raise RuntimeError(f"the lone-task job went wrong: {report.problems[-3:]}")


#: The batch sizes of the small-batch metrics steps: a worker's batch is 1 to 8 tasks when
#: tasks are short and its window half empty, a RabbitMQ worker's is one delivery's.
SMALL_BATCHES = (1, 2, 8, 32)


def small_batches(
    worker: WorkerTelemetry, master: MasterTelemetry, endings: list[Any], results: list[Result]
) -> dict[str, Step]:
    """The metrics of a worker's settled batch and of a master's collected batch of each
    of :data:`SMALL_BATCHES` tasks: what a batch costs whatever its size shows at 1. A
    master's is handed its first results and their round trips (the waits of
    ``endings``: 0.1 to 3 ms) as the collector hands them, with nothing around the call."""
    made: dict[str, Step] = {}
    trips = [ending.started_at - ending.task.created_at for ending in endings]
    for size in SMALL_BATCHES:
        calls = 2000 // size
        made[f"metrics: worker, a batch of {size}, per task"] = (
            functools.partial(worker.settled, endings[:size]),
            size,
            calls,
        )
        collect: Callable[[], object] = functools.partial(collected, master, results[:size])
        if COLLECTED_FIRSTS:
            collect = functools.partial(master.collected, 0, [], results[:size], trips[:size])
        made[f"metrics: master, a collection of {size}, per task"] = (collect, size, calls)
    return made


def steps() -> dict[str, Step]:
    """Every step measured, by name, its fixtures built."""
    plain, signed = Codec(), Codec([KEY])
    task = Task(name="square", args=[733], reply_to=REPLY_TO)
    result = Result(
        task_id=task.id, status="ok", worker="host-1-0", attempt=1,
        started_at=time.time(), duration=2.1e-06, value=537289,
    )  # fmt: skip
    task_body, result_body = plain.seal_task(task), result.encode()
    signed_task = signed.seal_task(task)
    signed_result = signed.seal(result.encode(), "result")
    bodies = [plain.seal_task(Task("square", [n], REPLY_TO)) for n in range(BATCH)]
    deliveries = [Delivery(body, body) for body in bodies]
    quiet = Console(quiet=True, out=io.StringIO())
    runner = TaskRunner(Registry(), Endings("host-1-0", "distq", plain), quiet)
    # each with a run time a square takes outside valgrind (0.1 to 3 µs, in no order; a
    # worker's JSON lines say 0.0 to 3e-6) and a queue wait of 0.1 to 3 ms, both drawn
    # from one seed: under callgrind the run itself takes 50 times as long, and waits
    # read from the clock made the histograms' sorts, and so a count, differ by up to 7 %
    # from one run of the same code to the next
    drawn = random.Random(0)
    endings = [
        ending._replace(
            started_at=ending.task.created_at + drawn.uniform(1e-4, 3e-3),
            duration=drawn.uniform(1e-7, 3e-6),
        )
        for ending in map(runner, deliveries)
        if ending.task is not None
    ]
    results = [result] * BATCH
    sealed = {
        name: seal_batch(codec, results) for name, codec in (("plain", plain), ("signed", signed))
    }
    tasks = [Task("square", [n], REPLY_TO) for n in range(BATCH)]
    # as a worker's stdout (a pipe): text over a buffer over a descriptor, not a StringIO,
    # whose writes cost what no process pays (a copy into 4-byte characters)
    out = open(os.devnull, "w")  # noqa: SIM115  # open for the process's life, as stdout

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

    # one console for every call, as a running worker keeps one: a console made per call
    # charged each batch its first-use costs (its head's fields encoded, its caches)
    json_log = WorkerTelemetry(None, JsonConsole("worker", out=out, worker="w"))

    def json_worker() -> None:
        json_log.settled(endings)

    # one batch's lines as a worker writes them, bytes: what the write alone costs
    batch_out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    WorkerTelemetry(None, JsonConsole("worker", out=batch_out, worker="w")).settled(endings)
    batch_out.flush()
    batch_lines = batch_out.buffer.getvalue()
    writer = Console(out=out)
    lone_line = batch_lines[: batch_lines.index(b"\n") + 1]  # a lone task's: one a write

    # the text console's per-task line, "Get task ...", one write each
    text_runner = TaskRunner(Registry(), Endings("host-1-0", "distq", plain), Console(out=out))

    def text_worker_batch() -> None:
        for delivery in deliveries:
            text_runner(delivery)

    master_log = MasterTelemetry(None, JsonConsole("master", out=out))

    def json_master() -> None:
        master_log.submitted(tasks, BATCH)
        collected(master_log, results)

    worker_metrics = WorkerTelemetry(WorkerMetrics("redis", "distq"))
    master_metrics = MasterTelemetry(MasterMetrics("redis", "distq"))

    def metrics_master() -> None:
        master_metrics.submitted(tasks, BATCH)
        collected(master_metrics, results)

    small = small_batches(worker_metrics, master_metrics, endings, results)
    plain_ends, signed_ends = both_ends(plain), both_ends(signed)

    return {
        "master: make a task": (
            lambda: Task(name="square", args=[733], reply_to=REPLY_TO),
            1,
            2000,
        ),
        "master: seal a task": (lambda: plain.seal_task(task), 1, 2000),
        "master: open a result": (lambda: plain.open_result(result_body), 1, 2000),
        "master: a lone task (--max-in-flight 1), made to its result judged": (
            lone_tasks_job,
            LONE_TASKS,
            4,
        ),
        "JSON logs: master, a lone task (--max-in-flight 1), made to its result judged": (
            lambda: lone_tasks_job(MasterTelemetry(None, JsonConsole("master", out=out))),
            LONE_TASKS,
            4,
        ),
        "worker: open a task": (lambda: plain.open_task(task_body), 1, 2000),
        "worker: run a task, its result sealed (batch of 128)": (worker_batch, BATCH, 20),
        "worker: a lone task in a slot, fetched to settled (128 one by one)": (
            lone_tasks(bodies),
            BATCH,
            20,
        ),
        "manager: a lone task, submitted, settled with the next fetch, its result read": (
            ManagerLoneTask(),
            1,
            2000,
        ),
        "worker: seal a batch's results (128), per task": (
            lambda: seal_batch(plain, results),
            BATCH,
            50,
        ),
        "master: open a batch's results (128), per task": (
            lambda: open_batch(plain, sealed["plain"]),
            BATCH,
            50,
        ),
        "master: seal a batch's tasks (128), per task": (
            lambda: seal_tasks_of(plain, tasks),
            BATCH,
            50,
        ),
        "signing: seal a task": (lambda: signed.seal_task(task), 1, 2000),
        "signing: seal a batch's tasks (128), per task": (
            lambda: seal_tasks_of(signed, tasks),
            BATCH,
            50,
        ),
        "signing: open a task": (lambda: signed.open_task(signed_task), 1, 2000),
        "signing: open a result": (lambda: signed.open_result(signed_result), 1, 2000),
        "signing: seal a result": (lambda: signed.seal_result(result), 1, 2000),
        "signing: seal a batch's results (128), per task": (
            lambda: seal_batch(signed, results),
            BATCH,
            50,
        ),
        "signing: open a batch's results (128), per task": (
            lambda: open_batch(signed, sealed["signed"]),
            BATCH,
            50,
        ),
        "signing floor: one MAC of a task (two per task)": (
            functools.partial(_mac(), task_body),
            1,
            2000,
        ),
        "signing off: worker, 128 tasks opened, run, their results packed, per task": (
            plain_ends[0],
            BATCH,
            20,
        ),
        "signing: worker, 128 tasks opened, run, their results packed, per task": (
            signed_ends[0],
            BATCH,
            20,
        ),
        "signing off: worker, a slot's batch of 128, fetched to settled, per task": (
            slot_batch(plain),
            BATCH,
            20,
        ),
        "signing: worker, a slot's batch of 128, fetched to settled, per task": (
            slot_batch(signed),
            BATCH,
            20,
        ),
        "signing off: master, 128 tasks sealed, their results' pack opened, per task": (
            plain_ends[1],
            BATCH,
            50,
        ),
        "signing: master, 128 tasks sealed, their results' pack opened, per task": (
            signed_ends[1],
            BATCH,
            50,
        ),
        "metrics: worker, per task": (lambda: worker_metrics.settled(endings), BATCH, 50),
        "metrics: master, per task": (metrics_master, BATCH, 50),
        **small,
        "JSON logs: worker, per task": (json_worker, BATCH, 50),
        "JSON logs: worker, run a task (batch of 128)": (json_worker_batch, BATCH, 20),
        "JSON logs: master, per task": (json_master, BATCH, 50),
        "JSON logs: write a worker's batch of lines (128), per task": (
            lambda: writer.write(out, batch_lines),
            BATCH,
            500,
        ),
        "JSON logs: write a lone task's line, one a write": (
            lambda: writer.write(out, lone_line),
            1,
            2000,
        ),
        "text lines: worker, run a task (batch of 128)": (text_worker_batch, BATCH, 20),
    }


def measure(rounds: int = 5) -> dict[str, float]:
    """CPU µs per task of each step."""
    return {
        name: best_cost(step, per, rounds, calls) for name, (step, per, calls) in steps().items()
    }


def run(name: str, times: int) -> None:
    """The step ``name`` called ``times`` times, untimed: what an instruction count runs.

    The objects of start-up and fixtures are frozen first, out of the garbage collector's
    sight: a full collection over them, in one count's calls and not the other's, moved a
    batch step's figure by 18 % (metrics: worker 3,433 at 200 calls, 2,913 at 600)."""
    step, _, _ = steps()[name]
    gc.collect()
    gc.freeze()
    for _ in range(times):
        step()


def instructions(name: str, calls: int = 200) -> float:
    """Instructions per task of the step ``name``, counted by valgrind's callgrind: the
    count of a run of ``2 * calls`` calls less that of ``calls`` calls, so that start-up
    and fixtures cancel out; the same on a loaded machine as on an idle one. A step of
    one task is called ``BATCH`` times as often as a batch's: over 200 calls, where the
    garbage collector ran moved its count by 5 %."""
    per = steps()[name][1]
    calls = max(1, calls * BATCH // per)
    counts = [_counted(name, times) for times in (calls, 2 * calls)]
    return (counts[1] - counts[0]) / calls / per


def _counted(name: str, times: int) -> int:
    argv = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--run", name, "--times", str(times),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts in every run
    done = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{done.stderr[-2000:]}")
    return int(found[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--rounds", type=int, default=5, help="best of this many rounds per step (A/B: 30)"
    )
    parser.add_argument(
        "--instructions",
        metavar="NAME",
        help="instructions per task (valgrind's callgrind) of the steps whose name holds "
        "NAME ('' for all) instead of CPU time",
    )
    parser.add_argument(
        "--calls", type=int, default=200, help="calls of a batch's step per count (--instructions)"
    )
    parser.add_argument("--run", metavar="STEP", help=argparse.SUPPRESS)
    parser.add_argument("--times", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run(args.run, args.times)
        return
    if args.instructions is not None:
        names = [name for name in steps() if args.instructions in name]
        costs = {name: instructions(name, args.calls) for name in names}
        unit = "instructions"
    else:
        costs, unit = measure(args.rounds), "µs"
    if args.json:
        print(json.dumps(costs))
        return
    width = max(map(len, costs))
    for name, micros in costs.items():
        print(f"{name:<{width}}  {micros:9.2f} {unit}")


if __name__ == "__main__":
    main()
