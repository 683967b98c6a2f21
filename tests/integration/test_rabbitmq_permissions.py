"""A RabbitMQ user with only the permissions the README's Security section gives it runs
every role, and a permission it lacks is a setting (exit 2, naming the grant), not an
outage retried in silence. A private broker (tests/launch.py): these tests add users and
close their connections, which the shared broker must never see.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import quote

import pika.exceptions
import pytest

from conftest import REPO
from distq.config import Settings
from distq.transport.rabbitmq import RabbitMQTransport
from launch import LocalRabbitMQ
from procs import Distq

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

GRANT = "rabbitmqctl set_permissions -p /"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbitMQ]:
    with LocalRabbitMQ(tmp_path_factory.mktemp("rabbitmq")).start(timeout=120) as started:
        yield started


def _user(server: LocalRabbitMQ, queue: str, write_default: bool = True) -> str:
    """A new user with the README's permissions on ``queue`` (without write on
    amq.default if not ``write_default``); its AMQP URL."""
    name, password = f"u{secrets.token_hex(4)}", secrets.token_hex(8)
    server.ctl("add_user", name, password)
    mine = f"^{queue}(\\..*)?$"
    write = f"^({queue}(\\..*)?|amq\\.default)$" if write_default else mine
    server.ctl("set_permissions", "-p", "/", name, mine, write, mine)
    host = server.url.rpartition("@")[2]
    return f"amqp://{quote(name)}:{quote(password)}@{host}"


def _env(url: str, queue: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    env.update(
        PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}",
        DISTQ_TRANSPORT="rabbitmq",
        DISTQ_AMQP_URL=url,
        DISTQ_QUEUE=queue,
    )
    return env


def _distq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_the_readmes_permissions_run_every_role(server: LocalRabbitMQ) -> None:
    queue = f"t{secrets.token_hex(4)}"
    env = _env(_user(server, queue), queue)
    # No --exit-when-idle: a command that took 3.5 s to start (a loaded machine) found
    # the worker gone, idle for 3 s, and `submit --wait` waited its 30 s for no one
    worker = Distq(["worker", "--tasks", "jobs"], env)
    try:
        job = _distq(env, "master", "--tasks", "20", "--timeout", "60", "--quiet")
        assert job.returncode == 0, job.stdout + job.stderr
        failed = _distq(
            env,
            "submit",
            "--wait",
            "--timeout",
            "30",
            "--max-attempts",
            "2",
            "jobs:fail_with",
            '"x"',
        )  # a retry, then a dead letter
        assert failed.returncode == 1 and "failed 2 of 2 attempts" in failed.stderr, failed
        for args in (["status"], ["dead-letters"], ["requeue-dead"]):
            done = _distq(env, *args)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.output()
    finally:
        worker.stop()


def test_a_permission_missing_at_start_exits_2_naming_the_grant(server: LocalRabbitMQ) -> None:
    """Before: exit 3 ("cannot be reached") with pika's tuple, the credentials accepted."""
    queue = f"t{secrets.token_hex(4)}"
    env = _env(_user(server, queue, write_default=False), queue)
    done = _distq(env, "submit", "jobs:add", "1", "2")
    assert done.returncode == 2, done.stderr
    assert "ACCESS_REFUSED - access to exchange 'amq.default'" in done.stderr, done.stderr
    assert f"{GRANT} " in done.stderr and "amq\\.default)$'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_permissions_taken_away_mid_job_stop_the_master_and_worker_exit_2(
    server: LocalRabbitMQ,
) -> None:
    """Before: both retried for ever without a word (the master until its --timeout,
    exit 1, naming no reason). Then the worker's one slot, in its 30 s task, left the
    refusal to its keeper, which said it 16 times as "a bug in distq" and went on: the
    worker exited 2 only once the task had ended, its 2 s drain of no use."""
    queue = f"t{secrets.token_hex(4)}"
    url = _user(server, queue)
    env = _env(url, queue)
    user = url.split("//")[1].split(":")[0]
    worker = Distq(["worker", "--tasks", "jobs"], {**env, "DISTQ_DRAIN_SECONDS": "2"})
    master = Distq(["master", "--tasks", "3", "--task-delay", "30", "--timeout", "150"], env)
    try:
        worker.wait_for("^Get task", timeout=60)
        server.ctl("set_permissions", "-p", "/", user, "^$", "^$", "^$")
        server.ctl("close_all_connections", "permissions taken away")
        # the task has 25 s and more to run: the drain's 2 s, then the keeper's next tick
        assert worker.wait(15) == 2, worker.output()
        assert "bug in distq" not in worker.output(), worker.output()
        assert worker.output().count(f"refused user '{user}'") == 1, worker.output()
        for proc in (master, worker):
            assert proc.wait(90) == 2, proc.output()
            assert f"refused user '{user}'" in proc.output(), proc.output()
            assert GRANT in proc.output(), proc.output()
    finally:
        master.stop()
        worker.stop()


def test_a_vhost_queue_limit_is_named_as_it_is_not_as_a_queue_declared_otherwise(
    server: LocalRabbitMQ,
) -> None:
    """RabbitMQ refuses a declare past a vhost's max-queues with a 406 too: it was said
    to be a queue 'already declared with other arguments', to delete (diff12a)."""
    vhost = f"v{secrets.token_hex(4)}"
    server.ctl("add_vhost", vhost)
    try:
        server.ctl("set_permissions", "-p", vhost, server.user, ".*", ".*", ".*")
        server.ctl("set_vhost_limits", "-p", vhost, '{"max-queues": 1}')
        url = server.url.rsplit("/", 1)[0] + f"/{vhost}"
        done = _distq(_env(url, "q"), "submit", "jobs:add", "1", "2")
        assert done.returncode == 2, done.stderr
        assert "queue limit in vhost" in done.stderr, done.stderr
        assert f"list_vhost_limits -p {vhost}" in done.stderr, done.stderr
        assert "other arguments" not in done.stderr
    finally:
        server.ctl("delete_vhost", vhost)


def test_a_master_that_may_not_declare_the_retry_queues_still_counts_them(
    server: LocalRabbitMQ,
) -> None:
    """A master's sample declares the retry queues it counts (no 404 a queue not there):
    a user with configure on the task and dead-letter queues only is refused (403) and
    asks them passively, each sample, its count the same."""
    queue = f"t{secrets.token_hex(4)}"
    name, password = f"u{secrets.token_hex(4)}", secrets.token_hex(8)
    server.ctl("add_user", name, password)
    mine = f"^{queue}(\\..*)?$"
    write = f"^({queue}(\\..*)?|amq\\.default)$"
    server.ctl("set_permissions", "-p", "/", name, f"^{queue}(\\.dead)?$", write, mine)
    url = f"amqp://{name}:{password}@{server.url.rpartition('@')[2]}"
    transport = RabbitMQTransport(
        Settings(transport="rabbitmq", amqp_url=url, queue=queue), "master"
    )
    with server.connect() as admin:
        channel = admin.channel()
        waiting = f"{queue}.retry.4000"
        channel.queue_declare(
            waiting, durable=True, arguments=transport.retry_queue_arguments(4000)
        )
        channel.basic_publish("", waiting, b"t")
        try:
            assert transport.stats().ready == 1
            assert transport.stats().ready == 1
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
                admin.channel().queue_declare(f"{queue}.retry.500", passive=True)
        finally:
            transport.close()
            channel.queue_delete(waiting)
