"""End to end: ``distq master`` and ``distq worker`` as real processes on every transport."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import Target
from distq.envelope import Result, Task
from distq.transport import Transport
from launch import LocalRedis, free_port
from procs import Distq, Spawn
from seam import results_of

pytestmark = pytest.mark.integration

RESULT_LINE = re.compile(r"^Get result (\d+) \* (\d+) = (\d+) from result_queue\.$", re.M)


def start_master(spawn: Spawn, *args: str) -> Distq:
    master = spawn("master", *args)
    master.wait_for(r"^master .* transport")  # for manager: the queues are hosted from here on
    return master


def test_job_completes_with_every_result_once(spawn: Spawn, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    # 20 ms per task: long enough for both workers to join before the job ends
    master = start_master(
        spawn, "--tasks", "200", "--task-delay", "0.02", "--timeout", "60", "--report", str(report)
    )
    # stopped once the master is done: --exit-when-idle 3 had each test wait out 3 s
    workers = [spawn("worker", "-q") for _ in range(2)]
    assert master.wait(90) == 0, master.output()
    out = master.output()
    lines = RESULT_LINE.findall(out)
    assert len(lines) == 200
    assert all(a == b and int(a) ** 2 == int(c) for a, b, c in lines)
    assert len(re.findall(r"^put task \d+ into task_queue \.\.\.\.$", out, re.M)) == 200
    assert "all 200 results in and correct" in out and out.rstrip().endswith("master exit")
    data = json.loads(report.read_text())
    assert (data["ok"], data["failed"], data["missing"], data["duplicates"]) == (200, 0, 0, 0)
    for worker in workers:
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
    done = [re.search(r"worker exit\. (\d+) ok", w.output()) for w in workers]
    assert sum(int(m.group(1)) for m in done if m) >= 200


def test_sigkill_mid_task_loses_nothing(spawn: Spawn, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    master = start_master(
        spawn, "--tasks", "10", "--task-delay", "0.5", "--timeout", "90", "--report", str(report)
    )
    victim = spawn("worker", "--worker-id", "victim")
    victim.wait_for(r"Get task \d+ from task_queue")  # a task is in hand, mid-sleep
    victim.signal(signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL
    taken_by_victim = set(re.findall(r"Get task (\d+) from", victim.output()))
    survivor = spawn("worker", "--worker-id", "survivor", "--exit-when-idle", "3")
    assert master.wait(90) == 0, master.output() + survivor.output()
    data = json.loads(report.read_text())
    assert (data["ok"], data["missing"], data["failed"]) == (10, 0, 0)
    assert len(RESULT_LINE.findall(master.output())) == 10  # each result exactly once
    redone = set(re.findall(r"Get task (\d+) from", survivor.output()))
    assert taken_by_victim & redone, "the killed worker's task ran again on the survivor"


def test_a_task_longer_than_its_lease_runs_once(
    target: Target, spawn: Spawn, tmp_path: Path
) -> None:
    """Tasks run on the slot's thread; the lease keeper renews the lease meanwhile."""
    # renewed every 0.67 s: a worker held up for over 0.67 s (a loaded machine) let a 1 s
    # lease lapse, and the idle worker ran its task a second time
    env = target.process_env(DISTQ_LEASE_SECONDS="2")
    report = tmp_path / "report.json"
    master = spawn(
        "master",
        "--tasks",
        "2",
        "--task-delay",
        "4",
        "--timeout",
        "60",
        "--report",
        str(report),
        env=env,
    )
    master.wait_for(r"^master .* transport")
    # a third worker, idle, takes any task whose lease lapses while it runs: with two,
    # a keeper renewing every 3.3 s against a 1 s lease went unnoticed (both were busy
    # until the job ended). No --exit-when-idle: idle for 2 s, it left before a lease
    # could lapse (2 s after the claim), and each test waited out those 2 s at its end
    workers = [spawn("worker", env=env) for _ in range(3)]
    assert master.wait(60) == 0, master.output()
    data = json.loads(report.read_text())
    assert (data["ok"], data["missing"], data["duplicates"]) == (2, 0, 0)
    for worker in workers:
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
    runs = [re.findall(r"Get task (\d+) from", w.output()) for w in workers]
    # two leases long each, yet no lease lapsed: no task was handed to a second worker
    assert sum(len(r) for r in runs) == 2, runs


def test_poison_messages_are_dead_lettered_and_the_worker_goes_on(
    target: Target, hosted: Transport, spawn: Spawn
) -> None:
    producer = hosted.producer(f"{target.settings.queue}.results.poison")
    reply = producer.reply_to
    unknown = Task(name="nowhere:nothing", args=[1], reply_to=reply)
    failing = Task(name="jobs:always_fail", args=[3], reply_to=reply, max_attempts=2)
    good = Task(name="square", args=[4], reply_to=reply)
    # each of these once sent a worker into a loop or ended its slot (exit 0, task back)
    exits = Task(name="jobs:exits", args=[0], reply_to=reply, max_attempts=2)
    unprintable = Task(name="jobs:raises_unprintable", args=[], reply_to=reply, max_attempts=2)
    # an unpaired surrogate escape: json reads it, no text can hold it (was: a loop)
    surrogate = good.encode().replace(b'"square"', b'"sq\\ud800"')
    bodies = [b"{not json", unknown.encode(), failing.encode(), surrogate, exits.encode()]
    producer.submit([*bodies, unprintable.encode(), good.encode()])
    tasks = ("jobs:always_fail", "jobs:exits", "jobs:raises_unprintable")
    worker = spawn("worker", *[arg for name in tasks for arg in ("--task", name)])
    results: dict[str, Result] = {}
    for _ in range(100):
        for result in results_of(producer, 1, within=0.2):
            results[result.task_id] = result
        if len(results) == 5:
            break
    assert results[good.id].status == "ok" and results[good.id].value == 16
    assert results[unknown.id].status == "error"
    assert results[unknown.id].error_type == "UnknownTask"
    assert results[failing.id].status == "error"
    assert results[failing.id].attempt == 2
    assert (results[exits.id].status, results[exits.id].error_type) == ("error", "SystemExit")
    assert results[unprintable.id].status == "error" and results[unprintable.id].attempt == 2
    letters = hosted.dead_letters()
    reasons = sorted(letter.reason for letter in letters)
    assert len(letters) == 6, reasons
    assert any(r.startswith("malformed message") for r in reasons)
    assert any("unpaired UTF-16 surrogate" in r for r in reasons)
    assert any("no task named 'nowhere:nothing'" in r for r in reasons)
    assert any("failed 2 of 2 attempts" in r and "RuntimeError" in r for r in reasons)
    assert any("failed 2 of 2 attempts; last error: SystemExit: 0" in r for r in reasons)
    assert any("_Unprintable: <exception str() failed>" in r for r in reasons)
    assert b"{not json" in {letter.body for letter in letters}
    assert worker.output().count("reconnecting") == 0, worker.output()
    assert worker.proc.poll() is None, "the worker keeps going"
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.output()
    producer.close()


def test_slow_tasks_queued_behind_fast_ones_spread_over_both_workers(
    target: Target, hosted: Transport, spawn: Spawn
) -> None:
    """A batch sized for fast tasks hands back the slow ones it has not started."""
    producer = hosted.producer(f"{target.settings.queue}.results.spread")
    reply = producer.reply_to
    for name in ("a", "b"):
        spawn("worker", "--worker-id", name, "-q")
    deadline = time.monotonic() + 30
    while hosted.stats().consumers < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    fast = [Task(name="square", args=[i], reply_to=reply) for i in range(400)]
    slow = [Task(name="square", args=[i], kwargs={"delay": 0.4}, reply_to=reply) for i in range(6)]
    producer.submit([t.encode() for t in fast + slow])
    results = {r.task_id: r for r in results_of(producer, 406, within=30)}
    assert len(results) == 406
    ran = Counter(results[t.id].worker for t in slow)
    # without the hand-back, the one batch holding all six runs them one after another
    assert ran["a"] >= 2 and ran["b"] >= 2, ran
    producer.close()


def test_a_second_sigterm_hands_the_running_task_back_at_once(target: Target, spawn: Spawn) -> None:
    env = target.process_env(DISTQ_LEASE_SECONDS="20")  # no lease runs out in this test
    master = spawn("master", "--tasks", "1", "--task-delay", "30", "--timeout", "90", env=env)
    master.wait_for(r"^master .* transport")
    first = spawn("worker", "--worker-id", "first", env=env)
    first.wait_for(r"Get task \d+ from task_queue")  # 30 s to go
    first.signal(signal.SIGTERM)
    first.wait_for(r"SIGTERM: finishing")
    first.signal(signal.SIGTERM)
    assert first.wait(4) == 0, first.output()  # did not sit out the task
    assert "SIGTERM again: handing back" in first.output()
    second = spawn("worker", "--worker-id", "second", "--exit-when-idle", "2", env=env)
    # handed back at once, not when its 20 s lease ran out (a worker starting on a loaded
    # machine may take seconds: 3 s was not always enough)
    second.wait_for(r"Get task \d+ from task_queue", timeout=15)
    assert master.proc.poll() is None
    master.signal(signal.SIGKILL)  # no need to sit out the 30 s task, or a drain
    second.signal(signal.SIGTERM)
    second.signal(signal.SIGTERM)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_finishes_the_task_in_hand(spawn: Spawn, stop: signal.Signals) -> None:
    """SIGHUP (the worker's terminal closed) is a stop too: unhandled, it ended the worker
    at once and its task came back only when its lease lapsed."""
    master = start_master(spawn, "--tasks", "1", "--task-delay", "1.5", "--timeout", "60")
    worker = spawn("worker")
    worker.wait_for(r"Get task \d+ from task_queue")
    worker.signal(stop)
    assert worker.wait(20) == 0, worker.output()
    assert f"{stop.name}: finishing" in worker.output()
    assert master.wait(30) == 0, master.output()
    assert len(RESULT_LINE.findall(master.output())) == 1


@pytest.mark.parametrize("target", ["manager"], indirect=True)
def test_a_manager_worker_exits_when_idle_once_its_master_has_ended(spawn: Spawn) -> None:
    """The tutorial's flow: the master ends with its job, and with it the queues; the
    worker's --exit-when-idle must still end it (a lost master is not waited out as a
    broker outage is: it waited for good)."""
    master = start_master(spawn, "--tasks", "5", "--timeout", "60")
    worker = spawn("worker", "--exit-when-idle", "2")
    assert master.wait(30) == 0, master.output()
    assert worker.wait(15) == 0, worker.output()
    assert "task_queue is empty" in worker.output()


@pytest.mark.parametrize("target", ["redis", "rabbitmq"], indirect=True)
def test_two_masters_on_one_broker_get_their_own_results(spawn: Spawn, tmp_path: Path) -> None:
    # manager is absent on purpose: each manager master hosts its own queues
    one = spawn(
        "master",
        "--tasks",
        "150",
        "--seed",
        "1",
        "--timeout",
        "60",
        "--report",
        str(tmp_path / "one.json"),
    )
    two = spawn(
        "master",
        "--tasks",
        "120",
        "--seed",
        "2",
        "--timeout",
        "60",
        "--report",
        str(tmp_path / "two.json"),
    )
    # No --exit-when-idle: the workers start beside the masters, and idle for 3 s while
    # both masters were held up 4 s (a loaded machine) they left 270 tasks no one ran
    workers = [spawn("worker", "-q") for _ in range(2)]
    assert one.wait(90) == 0, one.output()
    assert two.wait(90) == 0, two.output()
    for worker in workers:
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
    assert len(RESULT_LINE.findall(one.output())) == 150
    assert len(RESULT_LINE.findall(two.output())) == 120
    for name, count in (("one", 150), ("two", 120)):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert (data["ok"], data["missing"], data["duplicates"]) == (count, 0, 0)


def test_unreachable_broker_at_start_exits_3(target: Target, spawn: Spawn) -> None:
    port = free_port()
    env = target.process_env(
        DISTQ_MANAGER_ADDRESS=f"127.0.0.1:{port}",
        DISTQ_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        DISTQ_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{port}/%2F",
    )
    worker = spawn("worker", "--connect-timeout", "0.5", env=env)
    assert worker.wait(30) == 3
    out = worker.output()
    assert "cannot reach" in out and f"127.0.0.1:{port}" in out
    assert "Traceback" not in out
    if target.name != "manager":  # a manager master listens instead of connecting
        master = spawn("master", "--tasks", "1", env=env)
        assert master.wait(30) == 3
        assert "cannot reach" in master.output() and "Traceback" not in master.output()


def test_master_and_worker_wait_for_a_broker_that_starts_after_them(
    target: Target, spawn: Spawn, tmp_path: Path
) -> None:
    """``--connect-timeout``: a broker that starts beside them (compose, Kubernetes) is
    waited for; without it the master gives up at once (exit 3). A manager master
    listens rather than connects: a port in use fails at once, whatever the flag says,
    exit 2 (a setting to change)."""
    if target.name == "manager":
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            address = f"127.0.0.1:{taken.getsockname()[1]}"
            env = target.process_env(DISTQ_MANAGER_ADDRESS=address)
            master = spawn("master", "--tasks", "1", "--connect-timeout", "60", env=env)
            assert master.wait(20) == 2, master.output()
            assert "cannot listen" in master.output()
        return
    if target.name != "redis":
        pytest.skip("the wait is the command's, not the transport's: one broker shows it")
    server = LocalRedis(tmp_path / "redis")  # its port chosen, the server not started yet
    env = target.process_env(DISTQ_REDIS_URL=server.url, DISTQ_QUEUE="late-broker")
    at_once = spawn("master", "--tasks", "1", env=env)
    assert at_once.wait(30) == 3, at_once.output()
    master = spawn("master", "--tasks", "20", "--connect-timeout", "60", "-q", env=env)
    worker = spawn("worker", "--connect-timeout", "60", "--exit-when-idle", "2", "-q", env=env)
    time.sleep(2)
    assert master.proc.poll() is None and worker.proc.poll() is None, master.output()
    with server.start():
        assert master.wait(60) == 0, master.output()
        assert worker.wait(60) == 0, worker.output()
    assert "all 20 results in and correct" in master.output(), master.output()


def test_wrong_credentials_exit_3_with_a_clear_line(target: Target, spawn: Spawn) -> None:
    if target.name == "manager":
        start_master(spawn, "--tasks", "1", "--timeout", "30")
    bad = target.process_env(**target.bad_credentials_env)
    worker = spawn("worker", "--connect-timeout", "1", env=bad)
    assert worker.wait(30) == 3
    out = worker.output()
    assert "Traceback" not in out
    if target.name == "manager":
        assert "authentication failed" in out
    else:
        assert "refused" in out


def test_a_broker_back_with_another_password_is_said_not_retried_in_silence(
    target: Target, spawn: Spawn, tmp_path: Path
) -> None:
    """A rotated password: the broker came back refusing the processes' credentials, and
    master and worker retried for ever with only "Connection closed by server" said (the
    reason on /readyz alone; restart14). Each says the refusal once, and keeps trying:
    back with the old password, the job ends."""
    if target.name != "redis":
        pytest.skip("the reconnect loops are the processes', not the transport's")
    with LocalRedis(tmp_path / "redis").start() as server:
        env = target.process_env(DISTQ_REDIS_URL=server.url, DISTQ_QUEUE="rotated")
        master = spawn("master", "--tasks", "40", "--task-delay", "0.1", "--timeout", "90", env=env)
        worker = spawn("worker", "--worker-id", "w", env=env)
        master.wait_for(r"Get result", timeout=30)
        client = server.client()
        client.config_set("requirepass", "a-new-password")
        client.client_kill_filter(_type="normal", skipme=True)  # as a restart drops them
        refused = r"refused the credentials .*; still reconnecting, with these credentials"
        worker.wait_for(refused, timeout=30)
        master.wait_for(refused, timeout=30)
        time.sleep(2)  # said once an outage, however many attempts
        for proc in (master, worker):
            assert len(re.findall(refused, proc.output())) == 1, proc.output()
        client.execute_command("AUTH", "a-new-password")
        client.config_set("requirepass", "")
        assert master.wait(90) == 0, master.output()
    assert "all 40 results in and correct" in master.output(), master.output()


def test_rate_mode_runs_until_stopped(spawn: Spawn, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    args = ("--rate", "40", "--status-every", "0.5", "--report", str(report), "-q")
    master = start_master(spawn, *args)
    spawn("worker", "-q")
    status = r"^submitted \d+, results \d+ \(ok \d+, failed 0, wrong 0\), in flight \d+, "
    forty = status.replace(r"\d+", r"(?:[4-9]\d|\d{3,})", 2)  # 40 submitted and answered
    # two lines, the last with 40 or more: a master stopped for over a second resumes its
    # pace without a burst, and a SIGTERM at its second line left 23 to 27 tasks in all.
    # 40 answered too: the stop takes back the tasks still queued, and those count as
    # never submitted (a worker slow to start on a loaded machine had run none: 0 tasks)
    master.wait_for(status + r"(?:.*\n)+" + forty, timeout=30)
    master.signal(signal.SIGTERM)
    assert master.wait(30) == 0, master.output()
    data = json.loads(report.read_text())
    # paced: about 40 a second over the run (the stop's drain included), and not nothing
    assert 40 <= data["tasks"] <= 40 * data["elapsed_seconds"] + 1
    assert data["ok"] >= data["tasks"] - 5 and data["failed"] == 0


def test_wait_workers_holds_the_job_until_enough_slots_attach(spawn: Spawn) -> None:
    master = start_master(spawn, "--wait-workers", "2", "--tasks", "20", "--timeout", "60")
    master.wait_for(r"waiting for 2 worker slots")
    spawn("worker", "-q")
    with pytest.raises(AssertionError):
        master.wait_for(r"^put task", timeout=2)  # one slot is not enough
    spawn("worker", "-q")
    assert master.wait(60) == 0, master.output()
    assert len(RESULT_LINE.findall(master.output())) == 20


def test_wait_workers_gives_up_at_the_timeout(spawn: Spawn) -> None:
    master = start_master(spawn, "--wait-workers", "1", "--tasks", "3", "--timeout", "1")
    assert master.wait(30) == 1
    assert "only 0 of 1 worker slots attached" in master.output()
    assert "3 missing" in master.output()
    # the time since the master's start, not the job's clock, which never started ("0.0 s")
    took = re.search(r"job never started after (\d+\.\d) s", master.output())
    assert took is not None and float(took.group(1)) >= 1.0, master.output()


def test_wait_workers_giving_up_in_rate_mode_fails_the_job(spawn: Spawn) -> None:
    master = start_master(spawn, "--wait-workers", "1", "--rate", "10", "--timeout", "1")
    assert master.wait(30) == 1, master.output()  # before: "all 0 results in", exit 0
    assert "job never started" in master.output()
    assert "only 0 of 1 worker slots attached" in master.output()


def test_a_job_cut_short_counts_the_tasks_it_never_submitted_as_missing(
    spawn: Spawn, tmp_path: Path
) -> None:
    """--timeout (and a stop) before a paced job has submitted every task fails it: the
    job is its --tasks, not the tasks it got to submit."""
    report = tmp_path / "report.json"
    args = ("--tasks", "200", "--rate", "20", "--timeout", "2", "--report", str(report), "-q")
    master = start_master(spawn, *args)
    spawn("worker", "-q")
    assert master.wait(60) == 1, master.output()  # before: "all 41 results in", exit 0
    data = json.loads(report.read_text())
    assert data["tasks"] == 200 and data["ok"] + data["failed"] < 200
    assert data["missing"] == 200 - data["ok"] - data["failed"], data
    assert re.search(r"job timed out after .*: \d+ of 200 results in", master.output())
    assert re.search(r"\d+ of 200 tasks never submitted", master.output())


def _slow_first_then_fast(
    target: Target, hosted: Transport, spawn: Spawn, env: dict[str, str]
) -> None:
    """Two workers and one pack of 32 tasks on RabbitMQ whose first sleeps 8 s: the 31
    others must all come from the worker not running it, before its result."""
    producer = hosted.producer(f"{target.settings.queue}.results.first")
    reply = producer.reply_to
    for name in ("a", "b"):
        spawn("worker", "--worker-id", name, "-q", env=env)
    deadline = time.monotonic() + 30
    while hosted.stats().consumers < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    slow = Task(name="square", args=[0], kwargs={"delay": 8.0}, reply_to=reply)
    fast = [Task(name="square", args=[i], reply_to=reply) for i in range(1, 32)]
    producer.submit([t.encode() for t in [slow, *fast]])  # one pack on RabbitMQ, slow first
    results = results_of(producer, 32, within=30)
    assert len(results) == 32, [r.task_id for r in results]
    # the fast ones all came before the slow one ended, from the worker not running it
    assert results[-1].task_id == slow.id, [r.worker for r in results]
    idle = {"a": "b", "b": "a"}[results[-1].worker]
    assert Counter(r.worker for r in results[:-1]) == {idle: 31}
    producer.close()


def test_a_slow_first_tasks_neighbours_reach_an_idle_worker_within_a_heartbeat(
    target: Target, hosted: Transport, spawn: Spawn
) -> None:
    """A slot's first fetch takes one task: on RabbitMQ the rest of its pack stays with it
    (no split on a first fetch). A slow first task's neighbours go back at its
    heartbeat (a third of the lease) for the idle worker beside it, not after it ends."""
    _slow_first_then_fast(target, hosted, spawn, target.process_env(DISTQ_LEASE_SECONDS="3"))


def test_a_slot_whose_prefetch_is_under_a_pack_hands_its_first_packs_rest_on_at_once(
    target: Target, hosted: Transport, spawn: Spawn
) -> None:
    """DISTQ_PREFETCH=1: a slot takes one task at a time, never a pack of 32 whole. Its
    first fetch kept the other 31 of its pack (a first fetch splits nothing, for
    the next fetch of fast tasks to take whole, which it never can), held from the idle
    worker until the first task ended: 8 s here (the heartbeat's hand-back comes at 10 s
    of a 30 s lease). They go back at once, as a second short fetch's split does."""
    env = target.process_env(DISTQ_LEASE_SECONDS="30", DISTQ_PREFETCH="1")
    _slow_first_then_fast(target, hosted, spawn, env)
