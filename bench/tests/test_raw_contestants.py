"""The raw contestants' rounds against real brokers (tests/brokers.py): each squares a
few tasks in its throughput round and its latency round, results verified."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from contestants.base import Context, RawContestant
from contestants.raw_manager import RawManager
from contestants.raw_rabbitmq import RawRabbitmqConfirmAck
from contestants.raw_redis import RawRedis, RawRedisPerTask

if TYPE_CHECKING:
    from brokers import Broker

pytest_plugins = ["brokers"]  # redis_broker, rabbitmq_broker


def _rounds(raw: RawContestant) -> None:
    raw.start_workers()
    try:
        assert raw.throughput(list(range(1, 41))) >= 0.0  # Collector verifies each square
        assert raw.latency([3, 4, 5]).count == 3  # timed_sequential verifies each
    finally:
        raw.stop_workers()


def _context(broker: str, url: str, tmp_path: Path) -> Context:
    deadline = time.monotonic() + 60
    return Context(broker, url, f"raw-{broker}", 2, tmp_path, deadline)


def test_raw_manager_squares_its_rounds(tmp_path: Path) -> None:
    _rounds(RawManager(_context("manager", "", tmp_path)))


#: A trial process that starts the raw manager's queue server, says its pid, and waits.
SERVING = """\
import sys, time
from pathlib import Path
from contestants.base import Context
from contestants.raw_manager import RawManager
raw = RawManager(Context("manager", "", "raw-manager", 0, Path(sys.argv[1]), time.monotonic() + 60))
raw.start_workers()
print(*raw.broker_pids(), flush=True)
time.sleep(60)
"""


def test_the_raw_manager_s_queue_server_dies_with_the_process_that_forked_it(
    tmp_path: Path,
) -> None:
    """``BaseManager.start()`` forks the server from the trial process, every descriptor
    with it: forked from a pytest-xdist worker that then died (SIGTERM), it held that
    worker's pipes, and the test session waited for them for good, at 99 %."""
    bench = Path(__file__).resolve().parent.parent
    trial = subprocess.Popen(
        [sys.executable, "-c", SERVING, str(tmp_path)],
        cwd=bench,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(bench), str(bench.parent / "tests")]),
        },
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert trial.stdout is not None
        server = int(trial.stdout.readline())
        os.kill(trial.pid, signal.SIGKILL)
        trial.wait(10)
        deadline = time.monotonic() + 10
        while _running(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(server), f"the queue server {server} outlived its trial process"
    finally:
        trial.kill()
        trial.wait(10)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs: not gone, nor a zombie nobody reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.mark.parametrize("kind", [RawRedis, RawRedisPerTask])
def test_raw_redis_squares_its_rounds(
    kind: type[RawRedis], redis_broker: Broker, tmp_path: Path
) -> None:
    _rounds(kind(_context("redis", redis_broker.url, tmp_path)))


def test_raw_rabbitmq_squares_its_rounds(rabbitmq_broker: Broker, tmp_path: Path) -> None:
    _rounds(RawRabbitmqConfirmAck(_context("rabbitmq", rabbitmq_broker.url, tmp_path)))
