"""The tutorial's raw ``multiprocessing.managers`` round, without its weaknesses' cost.

As in the tutorial, the master (this trial process) starts a ``BaseManager`` serving
a task queue and a result queue (``get_task_queue``, ``get_result_queue``); each worker
connects, ``get``s a task and ``put``s its result, one proxy round trip each.
``BaseManager.start()`` forks a server process that holds both queues and serves every
proxy call, the master's puts and gets as well as the workers': the bench counts that
process as this row's broker (distq's manager master serves its queues in its own
process instead, so they are in its master figure). Changes
from the tutorial: a random authkey instead of ``b"abc"``, a free port, no sleep, and
results carry the task index so the master verifies each one. Every item is pickled
(the tutorial's wire format).
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import time
from collections.abc import Sequence
from multiprocessing.managers import BaseManager
from typing import Any

from contestants.base import Collector, RawContestant, python
from launch import free_port
from processes import die_with_parent

_task_queue: queue.Queue[Any] = queue.Queue()
_result_queue: queue.Queue[Any] = queue.Queue()


def get_task_queue() -> queue.Queue[Any]:
    return _task_queue


def get_result_queue() -> queue.Queue[Any]:
    return _result_queue


class QueueManager(BaseManager):
    pass


class RawManager(RawContestant):
    name = "raw"

    def start_workers(self) -> None:
        QueueManager.register("get_task_queue", callable=get_task_queue)
        QueueManager.register("get_result_queue", callable=get_result_queue)
        self.authkey = os.urandom(16)
        self.address = ("127.0.0.1", free_port())
        self.manager = QueueManager(address=self.address, authkey=self.authkey)
        # the server dies with this process, as the workers do: forked, it holds every
        # descriptor this process had (a pytest-xdist worker's pipes to its controller,
        # whose wait for them then outlived a crash of that worker for good)
        self.manager.start(initializer=die_with_parent)
        self.task_queue: Any = self.manager.get_task_queue()  # type: ignore[attr-defined]
        self.result_queue: Any = self.manager.get_result_queue()  # type: ignore[attr-defined]
        env = {"BENCH_MANAGER_AUTHKEY": self.authkey.hex()}
        for _ in range(self.ctx.workers):
            self.workers.start(
                [python(), "-m", "contestants.raw_manager", f"{self.address[1]}"], env=env
            )
        self.workers.wait_ready("ready", limit=min(30.0, self.ctx.remaining()))

    def collect(self, collector: Collector, want: int) -> None:
        while collector.count < want:
            self.ctx.check_deadline("raw manager results")
            try:
                index, value = self.result_queue.get(timeout=1)
            except queue.Empty:
                self.workers.check_alive()
                continue
            collector.add(index, value)

    def throughput(self, tasks: Sequence[int]) -> float:
        collector = Collector(tasks)
        start = time.perf_counter()
        for i, n in enumerate(tasks):
            self.task_queue.put((i, n))
        self.collect(collector, len(tasks))
        return time.perf_counter() - start

    def send(self, index: int, n: int) -> None:
        self.task_queue.put((index, n))

    def broker_pids(self) -> list[int]:
        """The queue server ``BaseManager.start()`` forked (the manager keeps its
        ``multiprocessing.Process`` in ``_process``; there is no public accessor)."""
        process = getattr(getattr(self, "manager", None), "_process", None)
        return [process.pid] if process is not None and process.pid else []

    def stop_workers(self) -> None:
        super().stop_workers()
        self.manager.shutdown()


def worker(port: int) -> None:
    """Square tasks until SIGTERM, as the tutorial's worker.py (without its sleep)."""
    QueueManager.register("get_task_queue")
    QueueManager.register("get_result_queue")
    authkey = bytes.fromhex(os.environ["BENCH_MANAGER_AUTHKEY"])
    manager = QueueManager(address=("127.0.0.1", port), authkey=authkey)
    manager.connect()
    tasks: Any = manager.get_task_queue()  # type: ignore[attr-defined]
    results: Any = manager.get_result_queue()  # type: ignore[attr-defined]
    print("ready", flush=True)
    while True:
        try:
            index, n = tasks.get(timeout=1)
        except queue.Empty:
            continue
        results.put((index, n * n))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: BENCH_MANAGER_AUTHKEY=HEX python -m contestants.raw_manager PORT")
    with contextlib.suppress(KeyboardInterrupt, EOFError, ConnectionError):
        worker(int(sys.argv[1]))
