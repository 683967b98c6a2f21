"""The worker: lease tasks, run them, settle them, until told to stop.

Lifecycle (read :meth:`Worker.run` top to bottom): one thread per slot, each with its
own consumer, loops: fetch a batch, run it on that same thread, settle it in one call.
A batch is sized to about ``TARGET_BATCH_SECONDS`` of work; one that runs past
``HAND_BACK_AFTER_SECONDS`` hands back the tasks it has not started, for idle workers.
A lease keeper thread renews the lease of any batch that runs longer than a heartbeat
interval; short tasks never leave their thread, which keeps round trips short.
Whatever is still in hand goes back to the queue on the way out.

Shutdown, sized for Kubernetes' ``terminationGracePeriodSeconds`` (default 30 s):
the first SIGTERM/SIGINT is warm (stop fetching, finish the task running in each
slot, hand back the rest of its batch); the second is cold (hand back everything in
hand at once, including running tasks, which another worker will run again).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

from distq.console import Console
from distq.envelope import DeadLetter, Result, Task
from distq.errors import EnvelopeError, Shutdown, TransportError, UnknownTask
from distq.health import WorkerHealth
from distq.tasks import Registry
from distq.telemetry import WorkerTelemetry
from distq.transport.base import Consumer, Delivery, Settlement, Transport

Outcome = Literal["ok", "failed", "retried", "malformed"]
TARGET_BATCH_SECONDS = 0.005  # fetch about this much work at once: throughput without hoarding
# A batch still running after this long holds tasks slower than it was sized for: the
# ones not started yet go back to the queue, for idle workers, instead of waiting here.
HAND_BACK_AFTER_SECONDS = 10 * TARGET_BATCH_SECONDS


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def retry_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff before attempt ``attempt + 1``: 0.5 s, 1 s, 2 s, ... capped."""
    return float(min(cap, base * 2 ** (attempt - 1)))


@dataclass
class WorkerOptions:
    concurrency: int = 1
    prefetch: int = 128
    heartbeat_interval: float = 5 / 3
    exit_when_idle: float | None = None
    worker_id: str = ""


class _Slot:
    """One consumer, whether its batch is running, and the lock that serialises its calls.

    Tasks run on the slot's own thread, outside the lock; meanwhile the worker's lease
    keeper may take the lock to renew the lease (pika is not thread-safe, so no two
    threads ever call one consumer at once).
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.consumer: Consumer | None = None
        self.lock = threading.Lock()
        self.running = False  # tasks are running (outside the lock)
        self.renewed = 0.0  # monotonic time of the last call that renewed the lease
        self.handed_back = False  # a cold stop closed the consumer under the running batch


class Worker:
    """Runs registered tasks from one transport with ``concurrency`` slots."""

    def __init__(
        self,
        transport: Transport,
        registry: Registry,
        options: WorkerOptions,
        console: Console,
        health: WorkerHealth | None = None,
        telemetry: WorkerTelemetry | None = None,
        queue_name: str = "distq",
    ) -> None:
        self.transport, self.registry, self.options = transport, registry, options
        self.console, self.queue_name = console, queue_name
        self.health = health or WorkerHealth()
        self.telemetry = telemetry or WorkerTelemetry()
        self.id = options.worker_id or default_worker_id()
        self._stopping = threading.Event()  # warm: finish what runs, take nothing new
        self._abort = threading.Event()  # cold: hand back everything now
        self._signals = 0
        self._outage = False  # shared by slots: an outage is reported once, not per slot

    # -- lifecycle -------------------------------------------------------------
    def run(self) -> int:
        """Work until a signal or ``exit_when_idle``; return the exit code (0)."""
        started = time.monotonic()
        slots = [_Slot(i) for i in range(self.options.concurrency)]
        threads = [
            threading.Thread(target=self._slot, args=(slot,), name=f"distq-slot-{i}", daemon=True)
            for i, slot in enumerate(slots)
        ]
        done = threading.Event()
        keeper = threading.Thread(
            target=self._keep_leases, args=(slots, done), name="distq-leases", daemon=True
        )
        previous = self._install_signal_handlers()
        try:
            keeper.start()
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(0.2)
                    self.health.beat("main")  # per join: C slots take C x 0.2 s a round
                idle = self.options.exit_when_idle
                if (
                    idle is not None
                    and not self._stopping.is_set()
                    and self.health.idle_for() >= idle
                ):
                    self.console.info("task_queue is empty")
                    self._stopping.set()
        except Shutdown:
            self._abort.set()
            self._stopping.set()
            self._hand_back(slots)
            for slot, thread in zip(slots, threads, strict=True):
                if not slot.handed_back:  # a handed-back slot is still inside its task
                    thread.join(5)
        finally:
            done.set()
            self._restore_signal_handlers(previous)
        snap = self.health.snapshot()
        self.console.info(
            f"worker exit. {snap.tasks_ok} ok, {snap.tasks_failed} failed for good, "
            f"{snap.tasks_retried} retried, {snap.dead_lettered} dead-lettered "
            f"in {time.monotonic() - started:.1f} s"
        )
        return 0

    def _hand_back(self, slots: list[_Slot]) -> None:
        """Cold stop: close the consumer under every running batch; its tasks go back."""
        for slot in slots:
            if not slot.lock.acquire(timeout=2.0):
                continue  # in a broker call; the slot closes its consumer itself
            try:
                if slot.running and slot.consumer is not None:
                    slot.handed_back = True
                    self._close(slot.consumer)
                    slot.consumer = None
            finally:
                slot.lock.release()

    def _keep_leases(self, slots: list[_Slot], done: threading.Event) -> None:
        """Renew the lease of every slot whose batch runs longer than a heartbeat interval."""
        interval = self.options.heartbeat_interval
        while not done.wait(interval / 4):
            self.health.beat("leases")
            for slot in slots:
                if not slot.running or time.monotonic() - slot.renewed < interval:
                    continue
                if not slot.lock.acquire(blocking=False):
                    continue  # the slot is in a broker call, which renews the lease too
                try:
                    if slot.running and slot.consumer is not None:
                        with self.health.liveness.waiting("leases"):  # a silent broker is no stall
                            slot.consumer.heartbeat()
                        slot.renewed = time.monotonic()
                except Exception as exc:  # the slot meets the same error when it settles
                    self.console.error(f"could not renew a lease: {exc}")
                    slot.renewed = time.monotonic()  # one line per interval, not a flood
                finally:
                    slot.lock.release()

    def _install_signal_handlers(self) -> dict[int, object]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, object] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _restore_signal_handlers(self, previous: dict[int, object]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            self.console.info(
                f"{name}: finishing the tasks that run, handing back the rest "
                f"(send {name} again to stop at once)"
            )
            self._stopping.set()
        else:
            self.console.info(f"{name} again: handing back every task in hand and exiting")
            raise Shutdown

    # -- one slot: a consumer, and its tasks run on the slot's thread -------------
    def _slot(self, slot: _Slot) -> None:
        batch_size, seconds_per_task = 1, 0.0
        poll = min(self.options.heartbeat_interval, 1.0)
        try:
            while not self._stopping.is_set():
                if slot.consumer is None:
                    consumer = self._connect(f"{self.id}-{slot.index}")
                    with slot.lock:
                        slot.consumer = consumer
                    continue
                try:
                    with slot.lock:
                        deliveries = slot.consumer.fetch(batch_size, poll)
                        slot.renewed = time.monotonic()
                    if not deliveries:
                        continue
                    self.health.took(len(deliveries))
                    self.telemetry.fetched(deliveries)
                    started = time.perf_counter()
                    settled = self._run(slot, deliveries)
                    elapsed = time.perf_counter() - started
                    ran = max(1, len(settled))
                    seconds_per_task = 0.5 * seconds_per_task + 0.5 * elapsed / ran
                    batch_size = max(
                        1,
                        min(
                            self.options.prefetch,
                            int(TARGET_BATCH_SECONDS / seconds_per_task)
                            if seconds_per_task > 0
                            else self.options.prefetch,
                        ),
                    )
                    with slot.lock:
                        if slot.handed_back or slot.consumer is None:
                            break  # a cold stop handed the whole batch back already
                        self._settle(slot.consumer, deliveries, settled)
                except Exception as exc:  # a transport bug must not kill the slot either
                    self.console.error(f"{exc}; reconnecting every second")
                    self._outage = True
                    with slot.lock:
                        self._close(slot.consumer)
                        slot.consumer = None
                    self.health.connected(False, f"{self.id}-{slot.index}", str(exc))
                    self._stopping.wait(1.0)
        finally:
            with slot.lock:
                self._close(slot.consumer)
                slot.consumer = None
            self.health.connected(False, f"{self.id}-{slot.index}", "worker stopping")

    def _connect(self, consumer_id: str) -> Consumer | None:
        try:
            consumer = self.transport.consumer(consumer_id)
        except TransportError as exc:
            self.health.connected(False, consumer_id, str(exc))
            if not self._outage:  # one line per outage, not one per attempt
                self.console.error(f"{exc}; retrying every second")
                self._outage = True
            self._stopping.wait(1.0)
            return None
        if self._outage:
            self._outage = False
            self.console.info(f"reconnected ({consumer_id})")
        self.health.connected(True, consumer_id)
        return consumer

    @staticmethod
    def _close(consumer: Consumer | None) -> None:
        if consumer is not None:
            with contextlib.suppress(TransportError):  # a dead connection's leases expire anyway
                consumer.close()

    def _settle(
        self,
        consumer: Consumer,
        deliveries: list[Delivery],
        settled: list[tuple[Settlement, Outcome]],
    ) -> None:
        unstarted = deliveries[len(settled) :]
        if settled:
            consumer.settle([s for s, _ in settled])
        if unstarted:
            consumer.release(unstarted)
        counts: dict[str, int] = {"ok": 0, "failed": 0, "retried": 0, "malformed": 0}
        for _, outcome in settled:
            counts[outcome] += 1
        self.health.finished(released=len(unstarted), **counts)
        self.telemetry.settled(len(unstarted))

    # -- running tasks --------------------------------------------------------
    def _run(self, slot: _Slot, deliveries: list[Delivery]) -> list[tuple[Settlement, Outcome]]:
        """Run a batch in order, as far as it goes; :meth:`_settle` hands back the rest.

        It stops early when a warm stop comes (after one task at most), on a cold stop
        (at once), and once it has run ``HAND_BACK_AFTER_SECONDS``: tasks slower than
        the batch was sized for must not queue behind each other in one worker.
        """
        settled: list[tuple[Settlement, Outcome]] = []
        slot.running = True
        started = time.perf_counter()
        try:
            for delivery in deliveries:
                if self._abort.is_set() or (self._stopping.is_set() and settled):
                    break
                if settled and time.perf_counter() - started > HAND_BACK_AFTER_SECONDS:
                    break
                settled.append(self.process(delivery))
        finally:
            slot.running = False
        return settled

    def process(self, delivery: Delivery) -> tuple[Settlement, Outcome]:
        """Run one delivery and decide how it ends. Never raises for bad input."""
        try:
            task = Task.decode(delivery.body)
        except EnvelopeError as exc:
            reason = f"malformed message: {exc}"
            self.console.error(f"dead-lettered a {reason}")
            self.telemetry.ran(None, "malformed", time.time(), None)
            return Settlement(delivery, dead_letter=self._dead(delivery, reason)), "malformed"
        if not self.console.quiet:
            shown = (
                task.args[0] if task.name == "square" and task.args else f"{task.name}{task.args}"
            )
            self.console.lines([f"Get task {shown} from task_queue."])
        started_at, started = time.time(), time.perf_counter()
        try:
            function = self.registry.resolve(task.name, task.args, task.kwargs)
        except (UnknownTask, TypeError) as exc:
            return self._fail(delivery, task, exc, started_at, 0.0, retryable=False)
        try:
            value = function(*task.args, **task.kwargs)
        except Exception as exc:
            duration = time.perf_counter() - started
            return self._fail(delivery, task, exc, started_at, duration, retryable=True)
        duration = time.perf_counter() - started
        try:
            body = self._result(task, started_at, duration, status="ok", value=value)
        except (TypeError, ValueError) as exc:  # the value is not JSON: no retry will change it
            return self._fail(delivery, task, exc, started_at, duration, retryable=False)
        self.telemetry.ran(task, "ok", started_at, duration)
        return Settlement(delivery, reply_to=task.reply_to, result=body), "ok"

    def _fail(
        self,
        delivery: Delivery,
        task: Task,
        exc: BaseException,
        started_at: float,
        duration: float,
        retryable: bool,
    ) -> tuple[Settlement, Outcome]:
        error = f"{type(exc).__name__}: {exc}"
        if retryable and task.attempt < task.max_attempts:
            delay = retry_delay(task.attempt)
            self.telemetry.ran(task, "retried", started_at, duration)
            self.console.error(
                f"task {task.name} {task.id} attempt {task.attempt}/{task.max_attempts} "
                f"failed ({error}); retrying in {delay:g} s"
            )
            return Settlement(delivery, retry=task.next_attempt().encode(), retry_delay=delay), (
                "retried"
            )
        reason = (
            f"failed {task.attempt} of {task.max_attempts} attempts; last error: {error}"
            if retryable
            else f"cannot run: {error}"
        )
        self.console.error(f"task {task.name} {task.id} dead-lettered: {reason}")
        self.telemetry.ran(task, "failed", started_at, duration or None)  # 0.0: never ran
        result = self._result(
            task,
            started_at,
            duration,
            status="error",
            error_type=type(exc).__name__,
            error_message=reason,
        )
        return Settlement(
            delivery,
            reply_to=task.reply_to,
            result=result,
            dead_letter=self._dead(delivery, reason),
        ), "failed"

    def _result(self, task: Task, started_at: float, duration: float, **fields: Any) -> bytes:
        return Result(
            task_id=task.id,
            worker=self.id,
            attempt=task.attempt,
            started_at=started_at,
            duration=duration,
            **fields,
        ).encode()

    def _dead(self, delivery: Delivery, reason: str) -> bytes:
        return DeadLetter(
            body=delivery.body, reason=reason, queue=self.queue_name, worker=self.id
        ).encode()
