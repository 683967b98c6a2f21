"""The harness's own checks: result verification, summaries, the report, brokers.

Part of ``make test`` (``.venv/bin/pytest bench/tests`` alone; no peers needed, the
broker test needs ``redis-server`` and is skipped without it).
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

import pytest

import run
from contestants import REGISTRY, load
from contestants.base import Collector, Latency, VerifyError, expect_squares
from report import write_markdown


def test_collector_rejects_wrong_duplicate_and_unknown_results() -> None:
    collector = Collector([2, 3])
    collector.add(0, 4)
    with pytest.raises(VerifyError, match="duplicate"):
        collector.add(0, 4)
    with pytest.raises(VerifyError, match="expected 9"):
        collector.add(1, 10)
    with pytest.raises(VerifyError, match="unknown"):
        collector.add(5, 1)
    assert not collector.done
    collector.add(1, 9)
    assert collector.done


def test_expect_squares_names_the_first_wrong_result() -> None:
    expect_squares([1, 2], [1, 4])
    with pytest.raises(VerifyError, match="task 1"):
        expect_squares([1, 2], [1, 5])
    with pytest.raises(VerifyError, match="expected 2 results"):
        expect_squares([1, 2], [1])


def test_latency_percentiles() -> None:
    lat = Latency.from_samples([i / 1000 for i in range(1, 101)])
    assert lat.count == 100
    assert lat.p50 == pytest.approx(0.0505)
    assert 0.099 <= lat.p99 <= 0.1


def _trial(status: str, throughput: float = 0.0, **extra: Any) -> dict[str, Any]:
    if status != "ok":
        return {"status": status, "error": "phase: Boom: it broke", **extra}
    return {
        "status": "ok",
        "tasks": 100,
        "throughput": throughput,
        "latency_p50_seconds": 0.001,
        "latency_p99_seconds": 0.002,
        **extra,
    }


def test_summary_and_markdown_show_ranges_ratios_and_failures() -> None:
    distq = run.summarize([_trial("ok", 200.0), _trial("ok", 100.0), _trial("ok", 300.0)])
    assert distq["throughput"] == {"median": 200.0, "min": 100.0, "max": 300.0}
    peer = run.summarize([_trial("ok", 50.0), _trial("timeout")])
    assert peer["ok"] == 1 and peer["statuses"] == ["ok", "timeout"]
    broken = run.summarize([_trial("failed")])
    report = {
        "date": "d",
        "finished": "f",
        "command": "bench/run.sh",
        "interrupted": None,
        "machine": {
            "nproc": 2,
            "cpu": "cpu",
            "ram_gib": 1.0,
            "os": "os",
            "kernel": "k",
            "python": "3.11",
            "packages": {"distq": "0"},
            "distq_commit": "abc",
        },
        "settings": {
            "tasks": 100,
            "repeat": 3,
            "latency_tasks": 10,
            "workers": 2,
            "timeout": 300.0,
            "memory_tasks": None,
        },
        "brokers": {"redis": {"version": "7"}},
        "load_average_start": (1.0, 1.0, 1.0),
        "load_average_end": (1.0, 1.0, 1.0),
        "rows": [
            {"broker": "redis", "contestant": "celery", **peer},
            {"broker": "redis", "contestant": "rq", **broken},
            {"broker": "redis", "contestant": "distq", **distq},
        ],
        "memory": [],
        "logs": "/tmp/x",
    }
    text = write_markdown(report)
    assert "| redis | distq | 100 | 200 (100-300) |" in text
    assert "| 4.00x |" in text  # distq 200 / celery 50
    assert "1/2 ok (timeout)" in text
    assert "| FAILED |" in text
    assert "- redis / rq: phase: Boom: it broke" in text


def test_every_registered_contestant_loads() -> None:
    pytest.importorskip("celery")
    pytest.importorskip("dramatiq")
    pytest.importorskip("rq")
    for broker, name in REGISTRY:
        assert load(broker, name).name == name


def test_options_are_checked() -> None:
    args = run.parse_args(["--only", "redis,manager", "--contestants", "raw,distq"])
    assert args.only == ["redis", "manager"]
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "kafka"])
    with pytest.raises(SystemExit):
        run.parse_args(["--repeat", "0"])


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_broker_starts_on_loopback_and_stops_by_pid() -> None:
    import servers

    broker = servers.start_redis()
    try:
        port = int(broker.url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(16) == b"+PONG\r\n"
        pid = broker.server.pid
        assert pid is not None
    finally:
        broker.stop()
    assert broker.server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not broker.workdir.exists()
