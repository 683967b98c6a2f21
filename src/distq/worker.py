"""The worker: lease tasks, run them, settle them, until told to stop.

Lifecycle (read :meth:`Worker.run` top to bottom): install signal handlers, start a
lease keeper and one thread per slot, wait until the slots end (a signal, or
``exit_when_idle``), restore the handlers and say what was done. Each slot loops with
its own consumer: connect, fetch a batch (:class:`~distq.batch.BatchSizer` sizes it),
run it on the slot's thread (:func:`~distq.batch.run_batch`, each task by the
:class:`~distq.runner.TaskRunner`), settle it in one call and hand back what did not
run. The lease keeper renews the lease of any batch that runs longer than a heartbeat
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
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from distq.batch import BatchSizer, run_batch
from distq.codec import Codec
from distq.config import CONCURRENCY, DEFAULTS, Settings
from distq.console import Console
from distq.ending import Ending, Endings
from distq.errors import Shutdown, TransportError
from distq.health import WorkerHealth
from distq.runner import TaskRunner
from distq.tasks import Registry
from distq.telemetry import WorkerTelemetry
from distq.transport.base import Consumer, Delivery, Transport


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs; :meth:`from_settings` takes the shared settings' part."""

    concurrency: int = CONCURRENCY
    prefetch: int = DEFAULTS.prefetch
    heartbeat_interval: float = DEFAULTS.heartbeat_interval
    exit_when_idle: float | None = None
    worker_id: str = ""
    queue: str = DEFAULTS.queue

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        concurrency: int = CONCURRENCY,
        exit_when_idle: float | None = None,
        worker_id: str = "",
    ) -> WorkerOptions:
        return cls(
            concurrency=concurrency,
            prefetch=settings.prefetch,
            heartbeat_interval=settings.heartbeat_interval,
            exit_when_idle=exit_when_idle,
            worker_id=worker_id,
            queue=settings.queue,
        )


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
        self.thread: threading.Thread | None = None


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
        codec: Codec | None = None,
    ) -> None:
        self.transport, self.options, self.console = transport, options, console
        self.health = health or WorkerHealth()
        self.telemetry = telemetry or WorkerTelemetry()
        self.id = options.worker_id or default_worker_id()
        self.runner = TaskRunner(registry, Endings(self.id, options.queue, codec), console)
        self._stopping = threading.Event()  # warm: finish what runs, take nothing new
        self._abort = threading.Event()  # cold: hand back everything now
        self._signals = 0
        self._outage = False  # shared by slots: an outage is reported once, not per slot

    # -- lifecycle -------------------------------------------------------------
    def run(self) -> int:
        """Work until a signal or ``exit_when_idle``; return the exit code (0)."""
        started = time.monotonic()
        slots = [_Slot(i) for i in range(self.options.concurrency)]
        done = threading.Event()
        previous = self._install_signal_handlers()
        try:
            self._start(slots, done)
            self._wait(slots)
        except Shutdown:
            self._stop_cold(slots)
        finally:
            done.set()  # the lease keeper ends
            self._restore_signal_handlers(previous)
        snap = self.health.snapshot()
        self.console.info(
            f"worker exit. {snap.tasks_ok} ok, {snap.tasks_failed} failed for good, "
            f"{snap.tasks_retried} retried, {snap.dead_lettered} dead-lettered "
            f"in {time.monotonic() - started:.1f} s"
        )
        return 0

    def _start(self, slots: list[_Slot], done: threading.Event) -> None:
        keeper = threading.Thread(
            target=self._keep_leases, args=(slots, done), name="distq-leases", daemon=True
        )
        keeper.start()
        for slot in slots:
            slot.thread = threading.Thread(
                target=self._work, args=(slot,), name=f"distq-slot-{slot.index}", daemon=True
            )
            slot.thread.start()

    def _wait(self, slots: list[_Slot]) -> None:
        """Until every slot has ended; a warm stop when idle for ``exit_when_idle``."""
        threads = [slot.thread for slot in slots if slot.thread is not None]
        idle = self.options.exit_when_idle
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(0.2)
                self.health.beat("main")  # per join: C slots take C x 0.2 s a round
            if idle is not None and not self._stopping.is_set() and self.health.idle_for() >= idle:
                self.console.info("task_queue is empty")
                self._stopping.set()

    def _stop_cold(self, slots: list[_Slot]) -> None:
        """Second signal: close the consumer under every running batch; its tasks go back."""
        self._abort.set()
        self._stopping.set()
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
        for slot in slots:
            if slot.thread is not None and not slot.handed_back:  # else it is inside its task
                slot.thread.join(5)

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
    def _work(self, slot: _Slot) -> None:
        """A slot's loop: connect, fetch a batch, run it, settle it; reconnect on errors."""
        sizer = BatchSizer(self.options.prefetch)
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
                        deliveries = slot.consumer.fetch(sizer.size, poll)
                        slot.renewed = time.monotonic()
                    if not deliveries:
                        continue
                    self.health.took(len(deliveries))
                    self.telemetry.fetched(deliveries)
                    started = time.perf_counter()
                    endings = self._run(slot, deliveries)
                    sizer.ran(len(endings), time.perf_counter() - started)
                    with slot.lock:
                        if slot.handed_back or slot.consumer is None:
                            break  # a cold stop handed the whole batch back already
                        self._settle(slot.consumer, deliveries, endings)
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

    def _run(self, slot: _Slot, deliveries: Sequence[Delivery]) -> list[Ending]:
        slot.running = True
        try:
            return run_batch(deliveries, self.runner, self._stopping, self._abort)
        finally:
            slot.running = False

    def _settle(
        self, consumer: Consumer, deliveries: Sequence[Delivery], endings: list[Ending]
    ) -> None:
        """Settle what ran in one call, hand back what did not, and count both."""
        unstarted = deliveries[len(endings) :]
        if endings:
            consumer.settle([ending.settlement for ending in endings])
        if unstarted:
            consumer.release(unstarted)
        counts: dict[str, int] = {"ok": 0, "failed": 0, "retried": 0, "malformed": 0}
        for ending in endings:
            counts[ending.outcome] += 1
        self.health.finished(released=len(unstarted), **counts)
        self.telemetry.settled(endings, len(unstarted))
