"""Manager calls under way when their other end goes: a fetch whose worker left while it
waited for tasks, and a put whose master stopped while it was served."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import distq
from distq.config import Settings
from distq.envelope import NO_REPLY, Task, new_id
from distq.transport import open_transport
from distq.transport.manager_broker import QueueBroker
from launch import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

_SRC = str(Path(distq.__file__).resolve().parents[1])


def _settings() -> Settings:
    return Settings(
        transport="manager",
        authkey=secrets.token_hex(16).encode(),
        manager_address=("127.0.0.1", free_port()),
        queue=f"q{secrets.token_hex(3)}",
        lease_seconds=60.0,
    )


def test_a_fetch_of_a_worker_that_left_hands_its_tasks_to_the_others_at_once() -> None:
    """A worker killed while its fetch waited for tasks: the master's thread serving it
    leased it the next task, and its reply went to a connection closed; the task waited
    out the 60 s lease while another worker fetched nothing. It goes back at once."""
    settings = _settings()
    hosted = open_transport(settings, "master")
    broker = hosted._broker  # type: ignore[attr-defined]
    assert isinstance(broker, QueueBroker)
    host, port = settings.manager_address
    script = textwrap.dedent(
        f"""
        from distq.config import Settings
        from distq.transport import open_transport
        settings = Settings(transport="manager", authkey={settings.authkey!r},
                            manager_address=({host!r}, {port}), queue={settings.queue!r},
                            lease_seconds=60.0)
        open_transport(settings, "worker").consumer("gone").fetch(1, 60)
        """
    )
    env = dict(os.environ, PYTHONPATH=_SRC)
    leaving = subprocess.Popen([sys.executable, "-c", script], env=env)
    remote = None
    try:
        deadline = time.monotonic() + 30
        while not broker._leases:  # its fetch is waiting
            assert leaving.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        leaving.kill()
        leaving.wait(10)
        time.sleep(0.5)  # its close reaches the master
        task = Task("jobs:add", [1, 2], NO_REPLY)
        hosted.producer(hosted.reply_queue(new_id())).submit([task.encode()])
        remote = open_transport(settings, "worker")
        got = remote.consumer("stays").fetch(1, 10)
        assert [d.body for d in got] == [task.encode()], broker.stats(settings.queue)
    finally:
        if leaving.poll() is None:
            leaving.kill()
            leaving.wait(10)
        if remote is not None:
            remote.close()
        hosted.close()
