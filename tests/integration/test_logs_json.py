"""DISTQ_LOG_FORMAT=json on a real job: every line is one JSON object, and each task can be
followed from the master's submit to the worker's settle and back; no password anywhere."""

from __future__ import annotations

import json
import re
import signal
from typing import Any
from urllib.parse import urlsplit

import pytest

import distq
import jobs
from conftest import Target
from procs import Distq

pytestmark = pytest.mark.integration

TASKS = 20


def records(process: Distq) -> list[dict[str, Any]]:
    lines = [line for line in process.output().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # raises on any line that is not JSON


def test_one_task_can_be_followed_through_the_json_lines(target: Target) -> None:
    env = target.process_env(DISTQ_LOG_FORMAT="json")
    # No --exit-when-idle: idle for 3 s while the master was held up 4 s (a loaded
    # machine), the worker left, and the master waited 60 s for a slot (exit 1)
    worker = Distq(["worker", "--worker-id", "w-json"], env)
    master = Distq(["master", "--tasks", str(TASKS), "--timeout", "60", "--wait-workers", "1"], env)
    try:
        assert master.wait(90) == 0, master.output()
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.output()
        ours, theirs = records(master), records(worker)
        text = master.output() + worker.output()
    finally:
        master.stop()
        worker.stop()
    for record in ours + theirs:
        assert record["timestamp"].endswith("Z") and record["level"] in ("info", "error")
    assert {r["role"] for r in ours} == {"master"}
    assert {(r["role"], r["worker"]) for r in theirs} == {("worker", "w-json")}

    submitted = {r["task_id"]: r for r in ours if r.get("event") == "task submitted"}
    settled = {r["task_id"]: r for r in theirs if r.get("event") == "task settled"}
    received = {r["task_id"]: r for r in ours if r.get("event") == "result received"}
    assert len(submitted) == TASKS
    assert set(settled) == set(received) == set(submitted)
    for task_id, result in received.items():
        run = settled[task_id]
        assert (run["task"], run["attempt"], run["outcome"]) == ("square", 1, "ok")
        assert result["worker"] == "w-json" and result["duration"] == run["duration"]
        assert result["task"] == "square"  # all three events name the task
        assert result["round_trip"] >= run["queue_wait"]

    url = urlsplit(target.env.get("DISTQ_REDIS_URL") or target.env.get("DISTQ_AMQP_URL") or "")
    if url.password:
        assert url.password not in text


def test_a_tasks_own_lines_stay_whole_between_the_json_lines(target: Target) -> None:
    """print() writes its text and its line end in two calls: another slot's JSON line
    between them was glued to the text, one in five with four slots (tasks10)."""
    env = target.process_env(DISTQ_LOG_FORMAT="json")
    worker = Distq(
        ["worker", "--tasks", "jobs", "--concurrency", "4", "--connect-timeout", "30"], env
    )
    try:
        with distq.Executor(target.settings) as ex:
            assert list(ex.map(jobs.chatter, [200] * 60)) == [200] * 60
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
        out = worker.output()
    finally:
        worker.stop()
    lines = [line for line in out.splitlines() if line]
    own = [line for line in lines if re.fullmatch(r"(out|err) line \d+", line)]
    assert len(own) == 2 * 200 * 60
    logged = [json.loads(line) for line in lines if line.startswith("{")]  # each whole
    assert sum(r.get("event") == "task settled" for r in logged) == 60
    assert len(own) + len(logged) == len(lines), [
        line for line in lines if line not in own and not line.startswith("{")
    ][:5]
