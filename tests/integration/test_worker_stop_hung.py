"""A worker stopped while its broker hangs, one slot in a task that outlasts the drain and
the others idle in a fetch: it exits 0 within the README's grace period, the drain plus
10 s."""

from __future__ import annotations

import contextlib
import secrets
import signal
import time
from pathlib import Path

import pytest

from conftest import Target
from distq.config import Settings
from launch import LocalRedis, every_thread_stopped, free_port
from procs import Distq

pytestmark = pytest.mark.integration

DRAIN = 2.0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["redis", "manager"])
def test_a_worker_stopped_while_its_broker_hangs_exits_within_the_drain_plus_10_s(
    kind: str, tmp_path: Path
) -> None:
    """README: keep DISTQ_DRAIN_SECONDS at least 10 s under the grace period, which
    covers the drain and the hand-back while the broker hangs too. With a task past the
    drain and idle slots in a fetch, the cold stop waited 2 s for the idle slots' locks,
    then up to 5 s for the busy slot's close, then up to 5 s more for the idle slots'
    threads: 12.9 s after SIGTERM on a paused Redis (drain 2 s)."""
    env = {"DISTQ_QUEUE": f"t{secrets.token_hex(4)}", "DISTQ_DRAIN_SECONDS": f"{DRAIN:g}"}
    with contextlib.ExitStack() as stack:
        server: LocalRedis | None = None
        if kind == "redis":
            server = stack.enter_context(LocalRedis(tmp_path / "redis")).start()
            env.update(DISTQ_TRANSPORT="redis", DISTQ_REDIS_URL=server.url)
        else:
            env.update(
                DISTQ_TRANSPORT="manager",
                DISTQ_AUTHKEY=secrets.token_hex(16),
                DISTQ_MANAGER_ADDRESS=f"127.0.0.1:{free_port()}",
            )
        env = Target(kind, Settings(), env).process_env()
        master = Distq(["master", "--tasks", "1", "--task-delay", "120", "--timeout", "170"], env)
        stack.callback(master.stop, grace=0)
        master.wait_for(r"^master .* transport")
        worker = Distq(["worker", "--concurrency", "4", "--connect-timeout", "30"], env)
        stack.callback(worker.stop, grace=0)
        worker.wait_for(r"Get task \d+ from task_queue", timeout=60)
        time.sleep(1.5)  # the idle slots in a fetch
        frozen = server.pid if server is not None else master.proc.pid
        assert frozen is not None
        if server is not None:
            server.pause()
            stack.callback(server.resume)
        else:
            master.signal(signal.SIGSTOP)
            stack.callback(master.signal, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while not every_thread_stopped(frozen):
            assert time.monotonic() < deadline, "the broker did not stop within 10 s"
            time.sleep(0.01)
        worker.signal(signal.SIGTERM)
        started = time.monotonic()
        code = worker.wait(120)
        took = time.monotonic() - started
        out = worker.output()
    assert code == 0, out
    assert "1 task still runs: handing back what is in hand" in out, out
    assert took < DRAIN + 10, f"{took:.1f} s:\n{out}"
