"""End to end on RabbitMQ quorum queues: ``distq master`` and ``distq worker`` processes on
a node of this module's own, a worker stopped with SIGTERM mid-job (what it holds goes
back: published again on a quorum queue, not nacked) and one SIGKILLed (the broker
requeues what it held). Every task's result reaches the master once, none is lost and
nothing is dead-lettered; also under a ``delivery-limit`` policy of 2 on the task queue,
where each requeue counts as a delivery and a message past the limit is dead-lettered.
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from launch import LocalRabbitMQ
from procs import Distq

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

RESULT_LINE = re.compile(r"^Get result (\d+) \* (\d+) = (\d+) from result_queue\.$", re.M)
TASKS = 40


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbitMQ]:
    with LocalRabbitMQ(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server.start(120)


def _env(node: LocalRabbitMQ, queue: str) -> dict[str, str]:
    src = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    env.update(
        DISTQ_TRANSPORT="rabbitmq",
        DISTQ_AMQP_URL=node.url,
        DISTQ_QUEUE=queue,
        DISTQ_RABBITMQ_QUEUE_TYPE="quorum",
        DISTQ_LEASE_SECONDS="2",
        PYTHONPATH=os.pathsep.join([str(src / "tests"), str(src / "src")]),
        PYTHONUNBUFFERED="1",
    )
    return env


def _dead(node: LocalRabbitMQ, queue: str) -> int:
    with node.connect() as connection:
        return int(
            connection.channel().queue_declare(f"{queue}.dead", passive=True).method.message_count
        )


@pytest.mark.parametrize("limit", [None, 2], ids=["no-limit", "delivery-limit-2"])
def test_stopped_and_killed_workers_lose_and_double_nothing_on_quorum(
    node: LocalRabbitMQ, tmp_path: Path, limit: int | None
) -> None:
    queue = f"q-{uuid.uuid4().hex[:10]}"
    env = _env(node, queue)
    if limit is not None:
        definition = json.dumps({"delivery-limit": limit})
        node.ctl("set_policy", f"limit-{queue}", f"^{queue}$", definition, "--apply-to", "queues")
    report = tmp_path / "report.json"
    started: list[Distq] = []

    def spawn(*args: str) -> Distq:
        proc = Distq(list(args), env)
        started.append(proc)
        return proc

    try:
        master = spawn(
            "master", "--tasks", str(TASKS), "--task-delay", "0.3", "--timeout", "150",
            "--report", str(report),
        )  # fmt: skip
        master.wait_for(r"^master .* transport", timeout=60)
        stopped = spawn("worker", "--worker-id", "stopped", "-c", "2", "--prefetch", "8")
        killed = spawn("worker", "--worker-id", "killed", "-c", "2", "--prefetch", "8")
        stopped.wait_for(r"Get task \d+ from task_queue", timeout=60)
        killed.wait_for(r"Get task \d+ from task_queue", timeout=60)
        stopped.signal(signal.SIGTERM)
        killed.signal(signal.SIGKILL)
        assert killed.wait(20) == -signal.SIGKILL
        assert stopped.wait(60) == 0, stopped.output()
        # a third worker stopped cold (twice SIGTERM): the tasks in hand go back too
        again = spawn("worker", "--worker-id", "again", "-c", "2", "--prefetch", "8")
        again.wait_for(r"Get task \d+ from task_queue", timeout=60)
        again.signal(signal.SIGTERM)
        again.wait_for(r"SIGTERM: finishing")
        again.signal(signal.SIGTERM)
        assert again.wait(60) == 0, again.output()
        assert "handing back every task in hand" in again.output()
        last = spawn("worker", "--worker-id", "last", "-c", "4", "--exit-when-idle", "4")
        assert master.wait(180) == 0, master.output() + last.output()
        data = json.loads(report.read_text())
        assert (data["ok"], data["missing"], data["failed"]) == (TASKS, 0, 0), data
        assert len(RESULT_LINE.findall(master.output())) == TASKS  # each once
        assert last.wait(60) == 0, last.output()
        assert _dead(node, queue) == 0
    finally:
        for proc in started:
            proc.stop(grace=3.0)
        if limit is not None:
            node.ctl("clear_policy", f"limit-{queue}")
