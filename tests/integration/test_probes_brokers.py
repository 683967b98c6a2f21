"""Readiness follows the broker for real: 503 while it is paused or stopped, 200 once it is
back, and liveness stays 200 all along. Also RabbitMQ's in-flight count from its
management API. Each broker here is private (tests/launch.py): these tests pause, stop
and restart it, which the shared brokers must never see.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO
from endpoints import get, promtool_check, wait_for
from launch import LocalRabbitMQ, LocalRedis, free_port
from procs import Distq

pytestmark = pytest.mark.integration

DETECT = 20.0  # seconds: generous for a loaded machine; the README promises a few
RECOVER = 60.0  # a restarted RabbitMQ takes a while; workers retry every second


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path_factory.mktemp("redis"), password=secrets.token_hex(8))
    with server.start():
        yield server


@pytest.fixture(scope="module")
def rabbitmq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbitMQ]:
    server = LocalRabbitMQ(tmp_path_factory.mktemp("rabbitmq"), plugins=["rabbitmq_management"])
    with server.start(timeout=120):
        yield server


def environment(transport: str, url: str = "", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    env.update(
        PYTHONPATH=str(REPO / "src"),
        PYTHONUNBUFFERED="1",
        DISTQ_TRANSPORT=transport,
        DISTQ_QUEUE=f"t{secrets.token_hex(4)}",
        DISTQ_METRICS_HOST="127.0.0.1",
        DISTQ_STATS_SECONDS="0.5",
    )
    if transport == "redis":
        env["DISTQ_REDIS_URL"] = url
    elif transport == "rabbitmq":
        env["DISTQ_AMQP_URL"] = url
    else:
        env["DISTQ_MANAGER_ADDRESS"] = f"127.0.0.1:{free_port()}"
        env["DISTQ_AUTHKEY"] = secrets.token_hex(16)
    env.update(extra)
    return env


def worker(env: dict[str, str], port: int, *args: str, lease: str = "1") -> Distq:
    worker_env = dict(env, DISTQ_METRICS_PORT=str(port), DISTQ_LEASE_SECONDS=lease)
    argv = ["worker", "--exit-when-idle", "600", "--connect-timeout", "60", *args]
    return Distq(argv, worker_env)


def master(env: dict[str, str], port: int) -> Distq:
    """A slow, endless job: the master keeps its producer busy until stopped. A long lease
    gives its Redis calls a socket timeout (lease/3 + 5 s, at most 10 s) that outlasts the
    pauses here: a master does not survive a broker call that fails (yet)."""
    master_env = dict(env, DISTQ_METRICS_PORT=str(port), DISTQ_LEASE_SECONDS="30")
    return Distq(["master", "--rate", "20", "--quiet"], master_env)


def stop(*processes: Distq) -> None:
    for process in processes:
        process.stop()


def readiness_gauges(ports: list[int]) -> dict[int, float | None]:
    """Each port's ``distq_ready`` from its /metrics (None: not exported)."""
    found: dict[int, float | None] = {}
    for port in ports:
        status, text = get(port, "/metrics")
        assert status == 200, text
        samples = [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "distq_ready"
        ]
        assert len(samples) <= 1, samples
        found[port] = samples[0] if samples else None
    return found


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_readiness_is_503_while_the_broker_is_paused_and_200_once_it_resumes(
    kind: str, request: pytest.FixtureRequest
) -> None:
    server: LocalRedis | LocalRabbitMQ = request.getfixturevalue(f"{kind}_server")
    env = environment(kind, server.url)
    ports = [free_port(), free_port()]
    processes = [worker(env, ports[0], "--concurrency", "2"), master(env, ports[1])]
    try:
        wait_for(ports, "/readyz", 200, timeout=60)
        server.pause()
        try:
            seen = wait_for(ports, "/readyz", 503, timeout=DETECT, alive=ports)
        finally:
            server.resume()
        for body in seen.values():  # found by a call that hangs, not by a later timeout
            assert "no answer from the broker" in body["reason"], seen
        wait_for(ports, "/readyz", 200, timeout=RECOVER, alive=ports)
        assert processes[1].proc.poll() is None, processes[1].output()
    finally:
        stop(*processes)


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_a_workers_readiness_is_503_while_the_broker_is_stopped(
    kind: str, request: pytest.FixtureRequest
) -> None:
    server: LocalRedis | LocalRabbitMQ = request.getfixturevalue(f"{kind}_server")
    port = free_port()
    process = worker(environment(kind, server.url), port)
    try:
        wait_for([port], "/readyz", 200, timeout=60)
        server.stop()
        try:
            seen = wait_for([port], "/readyz", 503, timeout=DETECT, alive=[port])
            assert seen[port]["status"] == "not ready" and seen[port]["reason"]
            assert readiness_gauges([port]) == {port: 0.0}  # /metrics still answers, and says so
        finally:
            server.restart(timeout=120)
        wait_for([port], "/readyz", 200, timeout=RECOVER, alive=[port])
    finally:
        stop(process)


def test_a_workers_readiness_is_200_again_soon_after_the_broker_is_back_whatever_its_lease(
    redis_server: LocalRedis,
) -> None:
    """A worker asks the broker once a heartbeat interval (a third of the lease), and
    asked no sooner after a sample had failed: with a 2-minute lease its /readyz stayed
    503 for up to 40 s after Redis was back, its slots connected and working meanwhile
    (``distq_ready`` 0, compose's healthcheck "unhealthy"). A failed sample is now tried
    again within a second, as the slots reconnect."""
    port = free_port()
    process = worker(environment("redis", redis_server.url), port, lease="120")
    try:
        wait_for([port], "/readyz", 200, timeout=60)
        redis_server.stop()
        try:  # the broker link down: a sample failed (within a heartbeat interval, 40 s)
            deadline = time.monotonic() + 60
            while True:
                status, body = get(port, "/readyz")
                if status == 503 and json.loads(body)["links"].get("broker") != "up":
                    break
                assert time.monotonic() < deadline, body
                time.sleep(0.2)
        finally:
            redis_server.restart(timeout=120)
        wait_for([port], "/readyz", 200, timeout=15, alive=[port])  # not 40 s later
    finally:
        stop(process)


def test_metrics_say_distq_ready_0_while_the_broker_does_not_answer(
    redis_server: LocalRedis,
) -> None:
    """During a broker outage every process still answers /metrics (Prometheus' up is 1),
    the master drops its broker samples and nothing is settled: no alert could see it.
    ``distq_ready``, /readyz's verdict on /metrics, is 0 on master and worker alike."""
    env = environment("redis", redis_server.url)
    ports = [free_port(), free_port()]
    processes = [worker(env, ports[0], "--concurrency", "2"), master(env, ports[1])]
    try:
        wait_for(ports, "/readyz", 200, timeout=60)
        assert readiness_gauges(ports) == {port: 1.0 for port in ports}
        redis_server.pause()
        try:
            wait_for(ports, "/readyz", 503, timeout=DETECT, alive=ports)
            assert readiness_gauges(ports) == {port: 0.0 for port in ports}
        finally:
            redis_server.resume()
        wait_for(ports, "/readyz", 200, timeout=RECOVER, alive=ports)
        assert readiness_gauges(ports) == {port: 1.0 for port in ports}
    finally:
        stop(*processes)


def test_a_workers_readiness_follows_its_manager_master(tmp_path: Path) -> None:
    env = environment("manager")
    worker_port, master_port = free_port(), free_port()
    work = worker(env, worker_port)
    boss = master(env, master_port)
    try:
        wait_for([worker_port, master_port], "/readyz", 200, timeout=60)
        boss.signal(signal.SIGSTOP)  # the master hosts the queues: a paused broker
        try:
            seen = wait_for([worker_port], "/readyz", 503, timeout=DETECT, alive=[worker_port])
        finally:
            boss.signal(signal.SIGCONT)
        assert "broker: no answer from the broker" in seen[worker_port]["reason"]
        wait_for([worker_port, master_port], "/readyz", 200, timeout=RECOVER, alive=[worker_port])
        boss.proc.kill()  # gone for good: the worker's connections fail
        boss.proc.wait(10)
        wait_for([worker_port], "/readyz", 503, timeout=DETECT, alive=[worker_port])
        boss = master(env, master_port)  # a new master on the same address
        wait_for([worker_port, master_port], "/readyz", 200, timeout=RECOVER, alive=[worker_port])
    finally:
        stop(work, boss)


def test_unknown_paths_are_404_and_the_metrics_pass_promtool(
    rabbitmq_server: LocalRabbitMQ,
) -> None:
    """A master with DISTQ_RABBITMQ_MANAGEMENT_URL reports RabbitMQ's unacknowledged count
    as in_flight (tasks shorter than the worker's lease: none moves into a lease record,
    whose counts the management API samples too late for this test; unit-tested)."""
    assert rabbitmq_server.management_url is not None
    env = environment(
        "rabbitmq",
        rabbitmq_server.url,
        DISTQ_RABBITMQ_MANAGEMENT_URL=rabbitmq_server.management_url,
        DISTQ_PREFETCH="1",
    )
    worker_port, master_port = free_port(), free_port()
    # each of 2 slots holds one 5 s task at a time: in_flight is 2 for a while
    work = worker(env, worker_port, "--concurrency", "2", lease="30")
    boss = Distq(
        # 20 tasks: the job outlasts the wait below (stopped at the end, not awaited)
        ["master", "--tasks", "20", "--task-delay", "5", "--quiet", "--timeout", "120"],
        dict(env, DISTQ_METRICS_PORT=str(master_port)),
    )
    try:
        wait_for([worker_port, master_port], "/readyz", 200, timeout=60)
        deadline = time.monotonic() + 30  # the management plugin refreshes every 5 s
        while True:
            text = get(master_port, "/metrics")[1]
            found = re.search(r'^distq_queue_depth\{.*state="in_flight".*\} (\S+)$', text, re.M)
            if found and float(found.group(1)) == 2:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.5)
        assert re.search(r"^distq_workers\{.*\} 2\.0$", text, re.M), text
        promtool_check(text)
        promtool_check(get(worker_port, "/metrics")[1])
        for port in (worker_port, master_port):
            for path in ("/", "/metrics/", "/healthz/x", "/ready"):
                assert get(port, path)[0] == 404
        assert rabbitmq_server.password not in boss.output() + work.output()
    finally:
        stop(work, boss)


def test_a_long_lease_does_not_make_an_idle_worker_look_stalled(
    redis_server: LocalRedis,
) -> None:
    """The keeper beats liveness once per tick; the tick was lease/12 whatever the stall
    limit: with a 30 s lease and DISTQ_STALL_SECONDS=2, /healthz said 503 ("leases")
    2 s after each tick (with the defaults, from leases above 720 s)."""
    port = free_port()
    env = environment("redis", redis_server.url, DISTQ_STALL_SECONDS="2")
    process = worker(env, port, lease="30")
    try:
        wait_for([port], "/readyz", 200, timeout=60)
        deadline = time.monotonic() + 6  # three stall limits
        while time.monotonic() < deadline:
            status, body = get(port, "/healthz")
            assert status == 200, body
            time.sleep(0.2)
    finally:
        stop(process)


def test_a_short_stall_limit_does_not_make_an_idle_worker_flap(redis_server: LocalRedis) -> None:
    """The main loop beat liveness every 0.2 s whatever the limit: with
    DISTQ_STALL_SECONDS=0.12 (0.1 is allowed) an idle worker's /healthz answered 503 on
    about every other request. Now it beats at least three times per limit; a few 503s
    are left to a loaded machine's scheduling (a thread paused past 0.12 s)."""
    port = free_port()
    process = worker(environment("redis", redis_server.url, DISTQ_STALL_SECONDS="0.12"), port)
    try:
        wait_for([port], "/readyz", 200, timeout=60)
        answers = []
        for _ in range(40):  # two seconds of polling
            answers.append(get(port, "/healthz")[0])
            time.sleep(0.05)
        assert answers.count(503) <= 4, answers
    finally:
        stop(process)


def test_readiness_is_503_as_soon_as_a_worker_stops_even_while_its_task_runs(
    redis_server: LocalRedis,
) -> None:
    port = free_port()
    env = environment("redis", redis_server.url)
    process = worker(env, port, "--concurrency", "1")
    submit = Distq(["submit", "square", "3", "--kwargs", '{"delay": 8}'], env)
    try:
        assert submit.proc.wait(30) == 0, submit.output()
        process.wait_for(r"Get task", timeout=30)
        process.signal(signal.SIGTERM)  # a warm stop: the 8 s task finishes first
        seen = wait_for([port], "/readyz", 503, timeout=3)
        assert seen[port]["status"] != "ready"
        assert process.proc.poll() is None  # still running its task
    finally:
        stop(process)


def test_a_master_waiting_for_workers_is_not_stalled_by_a_paused_broker(
    redis_server: LocalRedis,
) -> None:
    """``--wait-workers`` asks the broker how many slots are attached outside the time
    liveness lets a loop wait on the broker: a paused broker held that call (up to the
    socket timeout on Redis; on RabbitMQ's admin link, with no heartbeats, for as long
    as the pause) and /healthz said "stalled" (job) after DISTQ_STALL_SECONDS, so a
    liveness probe restarted a master for the broker's outage."""
    port = free_port()
    env = environment("redis", redis_server.url, DISTQ_STALL_SECONDS="2")
    master_env = dict(env, DISTQ_METRICS_PORT=str(port), DISTQ_LEASE_SECONDS="30")
    process = Distq(["master", "--tasks", "1", "--wait-workers", "1", "--quiet"], master_env)
    try:
        wait_for([port], "/readyz", 200, timeout=60)
        redis_server.pause()
        try:
            answers = []
            deadline = time.monotonic() + 6  # three stall limits, inside the 10 s timeout
            while time.monotonic() < deadline:
                answers.append(get(port, "/healthz"))
                time.sleep(0.2)
        finally:
            redis_server.resume()
        stalled = [body for status, body in answers if status != 200]
        assert not stalled, stalled[0]
    finally:
        stop(process)


def _healthz_while(server: LocalRedis | LocalRabbitMQ, port: int, seconds: float) -> list[str]:
    """Pause ``server`` for ``seconds``, asking ``port``'s /healthz meanwhile; the bodies
    of the answers that were not 200."""
    server.pause()
    try:
        answers = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            answers.append(get(port, "/healthz"))
            time.sleep(0.2)
    finally:
        server.resume()
    return [body for status, body in answers if status != 200]


def _healthy_through_a_pause(
    server: LocalRedis | LocalRabbitMQ, env: dict[str, str], lease: str, task: int
) -> None:
    """A worker of one slot with a ``lease`` s lease, ``server`` paused 6 s once it got
    task ``task``: asserts its /healthz answered 200 throughout."""
    port = free_port()
    process = worker(env, port, "--concurrency", "1", lease=lease)
    try:
        process.wait_for(rf"Get task {task} ", timeout=60)
        stalled = _healthz_while(server, port, 6)
        assert not stalled, stalled[0]
    finally:
        stop(process)


def test_a_keeper_handing_back_tasks_is_not_stalled_by_a_paused_broker(
    redis_server: LocalRedis,
) -> None:
    """The keeper hands back a long batch's tasks not started an interval after the fetch
    (a broker call, in the slot's lock): a paused broker held it, outside the time
    liveness lets the "leases" loop wait on the broker, and /healthz said "stalled"
    (leases) after DISTQ_STALL_SECONDS: a liveness probe restarted the worker for the
    broker's outage, against the README. (On RabbitMQ neither call waits for an answer.)"""
    server = redis_server
    env = environment("redis", server.url, DISTQ_STALL_SECONDS="2", DISTQ_PREFETCH="4")
    # queued first: a slot's first batch is one task; fast, it makes the next one of 4
    for number, delay in ((1, 0), (2, 0), (3, 8), (4, 0), (5, 0)):
        submit = Distq(["submit", "square", str(number), "--kwargs", f'{{"delay": {delay}}}'], env)
        assert submit.proc.wait(30) == 0, submit.output()
    # a 6 s lease: the hand-back comes 2 s after the fetch, with the broker paused by then
    _healthy_through_a_pause(server, env, "6", task=3)


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_a_keeper_giving_up_on_a_task_is_not_stalled_by_a_paused_broker(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """A task past its time limit: the keeper settles that attempt (a broker call, in the
    slot's lock), which a paused broker held, outside the time liveness lets the "leases"
    loop wait on the broker: /healthz said "stalled" (leases) for the broker's outage."""
    server: LocalRedis | LocalRabbitMQ = request.getfixturevalue(f"{kind}_server")
    env = environment(kind, server.url, DISTQ_STALL_SECONDS="2", DISTQ_TASK_TIME_LIMIT="2")
    submit = Distq(["submit", "square", "1", "--kwargs", '{"delay": 30}'], env)
    assert submit.proc.wait(30) == 0, submit.output()
    # a 30 s lease: no renewal before the give-up, 2 s into the task, with the broker paused
    _healthy_through_a_pause(server, env, "30", task=1)


def test_a_master_asking_for_workers_at_its_end_is_not_stalled_by_a_paused_broker(
    rabbitmq_server: LocalRabbitMQ,
) -> None:
    """A job that timed out with no result asks the broker whether any worker slot is
    attached (``_nobody_attached``), after its loop's last beat and outside the time
    liveness lets it wait on the broker: on RabbitMQ's admin link (no heartbeats) a paused
    broker held that call for the whole pause, and /healthz said "stalled" (job) after
    DISTQ_STALL_SECONDS, for the broker's outage."""
    port = free_port()
    env = environment("rabbitmq", rabbitmq_server.url, DISTQ_STALL_SECONDS="2")
    process = Distq(
        ["master", "--tasks", "1", "--timeout", "4", "--quiet"],
        dict(env, DISTQ_METRICS_PORT=str(port)),
    )
    try:
        wait_for([port], "/readyz", 200, timeout=60)  # the job's clock starts about now
        time.sleep(2.6)  # past its reconcile at 2 s; its timeout comes within the pause
        stalled = _healthz_while(rabbitmq_server, port, 6)
        assert not stalled, stalled[0]
        assert process.wait(30) == 1, process.output()
        assert "no worker slot is attached" in process.output()
    finally:
        stop(process)


class _Latency:
    """A TCP proxy on 127.0.0.1 that delivers each chunk ``delay`` s after it came, both
    ways (a broker a WAN round trip away: each call answers, each a little late)."""

    def __init__(self, port: int, delay: float) -> None:
        self.target, self.delay = port, delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client = self._listener.accept()[0]
                server = socket.create_connection(("127.0.0.1", self.target))
                self._sockets += [client, server]
                for source, sink in ((client, server), (server, client)):
                    chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()
                    threading.Thread(target=self._read, args=(source, chunks), daemon=True).start()
                    threading.Thread(target=self._write, args=(sink, chunks), daemon=True).start()

    def _read(self, source: socket.socket, chunks: queue.Queue[tuple[float, bytes]]) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                chunks.put((time.monotonic() + self.delay, data))
        chunks.put((0.0, b""))

    @staticmethod
    def _write(sink: socket.socket, chunks: queue.Queue[tuple[float, bytes]]) -> None:
        with contextlib.suppress(OSError):
            while True:
                due, data = chunks.get()
                if not data:
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


def test_a_master_on_a_far_rabbitmq_is_ready_while_each_sample_answers(
    rabbitmq_server: LocalRabbitMQ,
) -> None:
    """A master's sample of a RabbitMQ queue is a dozen round trips (a channel, the task,
    dead and retry queues' declares): with the broker 0.2 s a round trip away it took
    2.3 s, all answered, and counted as hanging after 2 s: /readyz said "no answer from
    the broker" on about one answer in ten. A sample may now take as long as the last
    one that answered before it counts as hanging."""
    proxy = _Latency(rabbitmq_server.port, 0.1)
    url = rabbitmq_server.url.replace(f":{rabbitmq_server.port}/", f":{proxy.port}/")
    env = environment("rabbitmq", url)
    port = free_port()
    process = master(env, port)
    try:
        wait_for([port], "/readyz", 200, timeout=90)
        answers = []
        deadline = time.monotonic() + 12  # a sample every 0.5 s (DISTQ_STATS_SECONDS)
        while time.monotonic() < deadline:
            answers.append(get(port, "/readyz"))
            time.sleep(0.1)
        hung = [body for status, body in answers if "no answer from the broker" in body]
        assert not hung, f"{len(hung)} of {len(answers)}: {hung[0]}"
    finally:
        stop(process)
        proxy.close()


def test_a_master_submitting_lost_tasks_again_is_ready_while_each_call_answers(
    redis_server: LocalRedis,
) -> None:
    """A reconcile that finds tasks lost submits them again, a batch per call: a large
    lost batch is many calls. They counted as one call expected to answer at once, and
    a broker 0.1 s a round trip away (each call answered) made /readyz say "no answer
    from the broker" for seconds while the master resubmitted 30,000 tasks."""
    proxy = _Latency(redis_server.port, 0.05)
    url = redis_server.url.replace(f":{redis_server.port}/", f":{proxy.port}/")
    env = environment("redis", url)
    port = free_port()
    tasks = 30_000
    process = Distq(
        ["master", "--tasks", str(tasks), "--quiet", "--timeout", "120"],
        dict(env, DISTQ_METRICS_PORT=str(port)),
    )
    client = redis_server.client()
    try:
        deadline = time.monotonic() + 60
        while client.llen(env["DISTQ_QUEUE"]) < tasks:  # all submitted
            assert time.monotonic() < deadline, process.output()
            time.sleep(0.1)
        client.flushall()  # the broker lost them (restarted empty)
        answers = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and client.llen(env["DISTQ_QUEUE"]) < tasks:
            answers.append(get(port, "/readyz"))
            time.sleep(0.05)
        assert client.llen(env["DISTQ_QUEUE"]) == tasks, process.output()  # all again
        hung = [body for status, body in answers if "no answer from the broker" in body]
        assert not hung, hung[0]
    finally:
        # SIGKILL: a SIGTERM's withdrawal of the 30,000 tasks through the proxy took 8 s,
        # which nothing here checks; the tasks it would have taken back go with flushall
        process.stop(grace=0)
        client.flushall()
        client.close()
        proxy.close()
