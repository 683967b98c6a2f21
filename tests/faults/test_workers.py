"""Workers that crash, freeze or are cut off mid-job, on every transport.

Their tasks must run elsewhere once their lease runs out; a frozen or cut-off worker
that comes back must have its late results absorbed (the master counts each task once)
and go back to work.
"""

from __future__ import annotations

import signal
import time
from urllib.parse import urlsplit

import pytest

from conftest import Target
from faults.conftest import MakeScenario
from faults.harness import FULL, Master, Scenario, assert_clean, terminate
from faults.proxy import Partition
from procs import Distq

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(600)]

TASKS, DELAY = (600, 0.05) if FULL else (150, 0.05)
KILLS = 10 if FULL else 3
CUT_SECONDS = 4.0  # four leases


def wait_results(master: Master, count: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while master.results() < count and time.monotonic() < deadline:
        time.sleep(0.05)


def job(scenario: Scenario) -> Master:
    return scenario.master("--tasks", str(TASKS), "--task-delay", str(DELAY), "--timeout", "240")


def test_workers_killed_again_and_again(target: Target, scenario: MakeScenario) -> None:
    s = scenario(
        target, "worker SIGKILLs", f"SIGKILL of a busy worker, {KILLS} times; a new one each time"
    )
    master = job(s)
    workers = [s.worker() for _ in range(3)]
    for n in range(KILLS):
        wait_results(master, TASKS * (n + 1) // (KILLS + 2))
        victim = workers.pop(0)
        with s.fault():
            s.kill(victim)
        workers.append(s.worker())
    figures = s.finish([master])  # then the workers left are told to stop
    assert_clean(figures, s)


def back_at_work(s: Scenario, first: Master, survivor: Distq, others: list[Distq]) -> Master:
    """After ``first`` completes, a second job that only ``survivor`` can run."""
    first.proc.proc.wait(240)
    for worker in others:
        terminate(worker, grace=25.0)
    second = s.master("--tasks", "10", "--timeout", "120")
    second.proc.proc.wait(150)
    # stopped and awaited here: finish() would send a draining worker a second SIGTERM,
    # which stops it at once (and, once Python is finalizing, by the signal: exit -15)
    terminate(survivor, grace=25.0)
    return second


def test_a_worker_frozen_past_its_lease(target: Target, scenario: MakeScenario) -> None:
    s = scenario(
        target, "worker frozen", "SIGSTOP of a busy worker for 3 s (3 leases), then SIGCONT"
    )
    master = job(s)
    frozen = s.worker("--worker-id", "frozen")
    other = s.worker("--worker-id", "other")
    wait_results(master, TASKS // 4)
    with s.fault():
        frozen.signal(signal.SIGSTOP)
        time.sleep(3.0)
        frozen.signal(signal.SIGCONT)
    assert master.results() < TASKS, "the fault came before the job ended"
    second = back_at_work(s, master, frozen, [other])
    figures = s.finish([master, second])
    assert_clean(figures, s)


def _through(partition: Partition, target: Target) -> dict[str, str]:
    """The worker's environment with its broker (or master) address through ``partition``."""
    env = {}
    if target.name == "manager":
        env["DISTQ_MANAGER_ADDRESS"] = f"127.0.0.1:{partition.port}"
    else:
        var = "DISTQ_REDIS_URL" if target.name == "redis" else "DISTQ_AMQP_URL"
        env[var] = partition.through(target.env[var])
    return env


def _port(target: Target) -> int:
    if target.name == "manager":
        return target.settings.manager_address[1]
    var = "DISTQ_REDIS_URL" if target.name == "redis" else "DISTQ_AMQP_URL"
    port = urlsplit(target.env[var]).port
    assert port is not None
    return port


def test_a_worker_cut_off_by_a_partition(target: Target, scenario: MakeScenario) -> None:
    s = scenario(
        target,
        "partition",
        f"the worker's TCP traffic to the broker stopped both ways for {CUT_SECONDS:g} s "
        "(a loopback proxy), then resumed",
    )
    master = job(s)  # for manager: the master listens from here on
    with Partition(_port(target)) as partition:
        cut_off = s.worker("--worker-id", "cut-off", env=s.env(**_through(partition, target)))
        other = s.worker("--worker-id", "other")
        wait_results(master, TASKS // 4)
        with s.fault():
            partition.cut()
            time.sleep(CUT_SECONDS)
            partition.heal()
        second = back_at_work(s, master, cut_off, [other])
        figures = s.finish([master, second])
    assert_clean(figures, s)
