"""Broker outages mid-job: crashed and restarted with or without its data, or frozen.

The job must end with every result once at the master, the master and the workers
must say once that they lost the broker and once that it is back (no traceback), and
a broker that came back without the job's tasks must get them again from the master.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from faults.conftest import MakeScenario, target_on
from faults.harness import FULL, Scenario, assert_clean
from launch import LocalRabbitMQ, LocalRedis
from procs import Distq

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(600)]

TASKS, DELAY = (600, 0.05) if FULL else (150, 0.05)
REPEATS = 3 if FULL else 1  # faults per job
FREEZE_SECONDS = 6.0  # six leases: every lease lapses meanwhile


def run_job(scenario: Scenario, inject: Callable[[], None]) -> None:
    """A job on two workers; ``inject`` a fault each time a share of it is done."""
    master = scenario.master("--tasks", str(TASKS), "--task-delay", str(DELAY), "--timeout", "240")
    for _ in range(2):
        scenario.worker()  # not --exit-when-idle: an outage leaves a worker idle too
    for n in range(1, REPEATS + 1):
        deadline = time.monotonic() + 60
        while master.results() < TASKS * n // (REPEATS + 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        with scenario.fault():
            inject()
    figures = scenario.finish([master])
    assert_clean(figures, scenario)
    landed = [seen < TASKS for _, seen in scenario.fault_ends]
    assert all(landed), f"a fault ended after the job had ({landed}): it tested nothing"
    assert figures.recover_seconds is not None, scenario.outputs()
    for proc in [master.proc, *scenario.workers]:
        out = proc.output()
        lost, back = out.count("; reconnecting\n"), len(re.findall(r"^reconnected ", out, re.M))
        # one line when the broker is lost, one when it is back; none per attempt
        assert lost <= REPEATS and back == lost, out


# -- Redis ----------------------------------------------------------------------------


def test_redis_restarts_with_the_data_it_saved(
    private_redis: LocalRedis, scenario: MakeScenario
) -> None:
    """SAVE, a second more of the job, SIGKILL, restart on the same port and dir: Redis
    comes back a second in the past (tasks run again, results come twice)."""
    s = scenario(
        target_on("redis", private_redis.url),
        "broker restart, with its data",
        "SIGKILL of redis-server 1 s after a SAVE, restart on its dump",
    )

    def crash() -> None:
        with private_redis.client() as client:
            client.save()
        time.sleep(1.0)
        private_redis.kill()
        private_redis.restart()

    run_job(s, crash)


def test_redis_restarts_empty(private_redis: LocalRedis, scenario: MakeScenario) -> None:
    """SIGKILL, dump deleted, restart: the master must submit every task again."""
    s = scenario(
        target_on("redis", private_redis.url),
        "broker restart, empty",
        "SIGKILL of redis-server, dump deleted, restart on the same port",
    )

    def crash() -> None:
        private_redis.kill()
        (private_redis.workdir / "dump.rdb").unlink(missing_ok=True)
        private_redis.restart()

    run_job(s, crash)
    assert "submitting" in s.masters[0].proc.output()  # it noticed the lost tasks


def test_redis_frozen_past_the_lease(private_redis: LocalRedis, scenario: MakeScenario) -> None:
    s = scenario(
        target_on("redis", private_redis.url),
        "broker frozen",
        f"SIGSTOP of redis-server for {FREEZE_SECONDS:g} s (6 leases), then SIGCONT",
    )

    def freeze() -> None:
        private_redis.pause()
        time.sleep(FREEZE_SECONDS)
        private_redis.resume()

    run_job(s, freeze)


# -- RabbitMQ -------------------------------------------------------------------------


def test_rabbitmq_restarts_with_its_queues(
    private_rabbitmq: LocalRabbitMQ, scenario: MakeScenario
) -> None:
    s = scenario(
        target_on("rabbitmq", private_rabbitmq.url),
        "broker restart, with its data",
        "SIGKILL of the RabbitMQ node, restart on its Mnesia (durable queues)",
    )

    def crash() -> None:
        private_rabbitmq.kill()
        private_rabbitmq.restart()

    run_job(s, crash)


def test_rabbitmq_stop_app_and_start_app(
    private_rabbitmq: LocalRabbitMQ, scenario: MakeScenario
) -> None:
    """The app stopped and started in a running node: every connection closed
    (CONNECTION_FORCED, or reset mid-write), the queues kept. From a ``rabbitmqctl
    eval`` booted before the job, so the bounce lands mid-job however slowly a busy
    machine boots the CLI."""
    s = scenario(
        target_on("rabbitmq", private_rabbitmq.url),
        "broker stop_app / start_app",
        "rabbit:stop(), 1 s, rabbit:start() in the node (what rabbitmqctl stop_app and "
        "start_app call)",
    )
    with private_rabbitmq.bounce_on_cue(REPEATS, pause=1.0) as bounce:
        run_job(s, bounce)
    for proc in [s.masters[0].proc, *s.workers]:  # the broker closed every connection
        assert "; reconnecting\n" in proc.output(), proc.output()  # CONNECTION_FORCED, or reset


def test_rabbitmq_restarts_empty(private_rabbitmq: LocalRabbitMQ, scenario: MakeScenario) -> None:
    """A new node: no queues, no messages. The master declares its reply queue again and
    submits every task again; workers declare the task queue again."""
    s = scenario(
        target_on("rabbitmq", private_rabbitmq.url),
        "broker restart, empty",
        "SIGKILL of the RabbitMQ node, Mnesia deleted, restart (a new node)",
    )

    def crash() -> None:
        private_rabbitmq.kill()
        shutil.rmtree(private_rabbitmq.workdir / "mnesia")
        private_rabbitmq.restart()

    run_job(s, crash)
    assert "submitting" in s.masters[0].proc.output()


def test_rabbitmq_frozen_past_the_lease(
    private_rabbitmq: LocalRabbitMQ, scenario: MakeScenario
) -> None:
    s = scenario(
        target_on("rabbitmq", private_rabbitmq.url),
        "broker frozen",
        f"SIGSTOP of the RabbitMQ node for {FREEZE_SECONDS:g} s (6 leases), then SIGCONT",
    )

    def freeze() -> None:
        private_rabbitmq.pause()
        time.sleep(FREEZE_SECONDS)
        private_rabbitmq.resume()

    run_job(s, freeze)


def test_a_worker_says_reconnected_only_once_the_broker_answers(
    private_redis: LocalRedis, scenario: MakeScenario
) -> None:
    """Opening a consumer is not reconnecting: the broker must answer first."""
    target = target_on("redis", private_redis.url)
    worker = scenario(target, "broker down, no job", "SIGKILL of redis-server").worker()
    worker.wait_for(r"^Connect to redis")
    private_redis.kill()
    worker.wait_for(r"; reconnecting$", timeout=15)
    time.sleep(3.0)  # thirty backoff ceilings' worth of attempts
    assert "reconnected" not in worker.output(), worker.output()
    private_redis.restart()
    worker.wait_for(r"^reconnected to redis at ", timeout=15)
    assert worker.output().count("; reconnecting") == 1  # one line for the whole outage


IDLE_SECONDS, PAUSE_SECONDS = 4.0, 6.0  # a pause that outlasts a worker's --exit-when-idle


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_a_paused_broker_is_no_idle_time_for_exit_when_idle(
    kind: str, request: pytest.FixtureRequest, scenario: MakeScenario
) -> None:
    """A worker with --exit-when-idle took a paused broker for an empty queue: it said
    "task_queue is empty" during the pause and exited as the broker came back, leaving
    the job submitted then unrun (docs23 M1; on RabbitMQ, whose wait for deliveries asks
    the broker nothing, until the heartbeats time out). Its idle time counts from the
    broker's answer: the job a master submits as the broker comes back runs.

    The broker comes back once the master waits on it: a master still starting then
    (6-7 s on a loaded machine, 2.5 s of it in the pause) came past the worker's idle
    time, which rightly ran out first (flaky61). JSON lines: each says when."""
    broker: LocalRedis | LocalRabbitMQ = request.getfixturevalue(f"private_{kind}")
    s = scenario(
        target_on(kind, broker.url),
        "broker paused, the worker idle",
        f"SIGSTOP for {PAUSE_SECONDS:g} s, a worker with --exit-when-idle {IDLE_SECONDS:g}",
    )
    env = s.env(DISTQ_LOG_FORMAT="json")
    worker = s.worker("--exit-when-idle", f"{IDLE_SECONDS:g}", env=env)
    worker.wait_for(r"Connect to ")
    time.sleep(0.5)  # its slots connected: idle from here on
    broker.pause()
    said = [f"paused at {_utc()}"]
    try:
        time.sleep(PAUSE_SECONDS - 2.5)
        # it connects as the broker comes back (pika waits 15 s, redis-py 5 s for an answer)
        master = Distq(["master", "--tasks", "20", "--timeout", "30"], env)
        time.sleep(2.5)
        deadline = time.monotonic() + 60
        while not (door := master.connected_to(broker.port)) and time.monotonic() < deadline:
            time.sleep(0.05)
        said.append(f"the master {'at' if door else 'NOT at'} the broker's door at {_utc()}")
    finally:
        broker.resume()
        said.append(f"resumed at {_utc()}")
    try:

        def told() -> str:
            return f"{said}\n--- master\n{master.output()}\n{s.outputs()}"

        assert master.wait(60) == 0, told()
        assert "all 20 results in and correct" in master.output(), told()
        assert worker.wait(30) == 0, told()
        assert worker.output().count("task_queue is empty") == 1, told()
    finally:
        master.stop()


def _utc() -> str:
    """Now as the JSON lines' timestamps say it, to read beside them."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@pytest.mark.parametrize("signals", [1, 2], ids=["warm", "cold"])
def test_a_worker_with_exit_when_idle_stops_on_a_paused_rabbitmq(
    private_rabbitmq: LocalRabbitMQ, scenario: MakeScenario, signals: int
) -> None:
    """An idle worker asks the broker for an answer after each empty fetch: on a paused
    RabbitMQ that question waited in pika's blocking call until the heartbeats timed
    out, so Ctrl-C took 16.5 s to end 8 idle slots instead of 3.5 s, and Ctrl-C twice
    closed the connections under the call: a traceback, exit 1 (idle24). The question
    waits half a second at most now; its answer may come with a later fetch."""
    s = scenario(
        target_on("rabbitmq", private_rabbitmq.url),
        "broker paused, Ctrl-C",
        f"SIGSTOP, then SIGINT x{signals} to an idle worker with --exit-when-idle",
    )
    # the default lease: heartbeats checked every 10 s (not the 6 s of the 1 s lease here)
    env = s.env(DISTQ_LEASE_SECONDS="5")
    worker = s.worker("--exit-when-idle", "60", "--concurrency", "8", env=env)
    worker.wait_for(r"^Connect to ")
    time.sleep(1.0)  # its slots connected and asking
    private_rabbitmq.pause()
    try:
        time.sleep(2.0)  # each slot's question unanswered
        for _ in range(signals):
            worker.signal(signal.SIGINT)
            time.sleep(0.5)
        # closing each connection waits 3 s for a broker that does not answer
        worker.wait_for(r"^worker exit\. ", timeout=9.0)
    finally:
        private_rabbitmq.resume()
    assert worker.wait(30) == 0, worker.output()
    assert "Traceback" not in worker.output(), worker.output()
