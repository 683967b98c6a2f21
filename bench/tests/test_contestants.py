"""How a trial judges a round: ``distq master``'s exit and report, and dead workers.

A stand-in ``distq`` (a script that writes the report and log a master writes) and a
stand-in contestant (``sleep`` processes as workers): no broker needed.
"""

from __future__ import annotations

import argparse
import http.server
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import contestants
import run
import trial
from contestants import distq_cli
from contestants.base import (
    Contestant,
    Context,
    Latency,
    RoundTimeout,
    VerifyError,
    worker_env,
)

FAKE_DISTQ = """\
import os, sys
argv = sys.argv
report = os.environ["FAKE_REPORT"]
if report:
    open(argv[argv.index("--report") + 1], "w").write(report)
sys.stdout.write(os.environ["FAKE_LOG"])
sys.stdout.write(" ".join(sorted(k for k in os.environ if k.startswith("DISTQ_"))))
sys.exit(int(os.environ["FAKE_CODE"]))
"""


def _report(**fields: Any) -> str:
    report = {"transport": "redis", "tasks": 200, "ok": 200, "failed": 0, "incorrect": 0,
              "duplicates": 0, "missing": 0, "elapsed_seconds": 0.01, "cpu_seconds": 0.01,
              "latency_p50_seconds": 0.001, "latency_p99_seconds": 0.002, "problems": [],
              "started": True}  # fmt: skip
    return json.dumps({**report, **fields})


@pytest.fixture
def master(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> distq_cli.DistqCli:
    """A DistqCli whose ``distq`` writes $FAKE_REPORT, logs $FAKE_LOG, exits $FAKE_CODE."""
    fake = tmp_path / "distq"
    fake.write_text(f"#!{sys.executable}\n{FAKE_DISTQ}")
    fake.chmod(0o755)
    monkeypatch.setattr(distq_cli, "venv_bin", lambda name: str(fake))
    ctx = Context("redis", "redis://127.0.0.1:1/0", "q", 2, tmp_path, time.monotonic() + 60)
    contestant = distq_cli.DistqCli(ctx)
    contestant.runs, contestant.env = 0, {}
    return contestant


def _fake(monkeypatch: pytest.MonkeyPatch, report: str, log: str, code: int) -> None:
    monkeypatch.setenv("FAKE_REPORT", report)
    monkeypatch.setenv("FAKE_LOG", log)
    monkeypatch.setenv("FAKE_CODE", str(code))


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0]


def test_a_distq_job_that_times_out_is_a_timeout_with_its_reason(
    master: distq_cli.DistqCli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    verdict = "job timed out after 4.0 s: 710 of 1500 results in, 710 ok, 0 failed, 790 missing"
    report = _report(tasks=1500, ok=710, missing=790, problems=["790 of 1500 never submitted"])
    _fake(monkeypatch, report, f"waiting for 2 worker slots to attach ...\n{verdict}\n", 1)
    with pytest.raises(RoundTimeout) as caught:
        master.throughput([1] * 1500)
    assert verdict in _first_line(caught.value)
    # run.py reads the trial's error (trial.py: "phase: Type: message") as a timeout
    out = tmp_path / "result.json"
    error = f"throughput: {type(caught.value).__name__}: {caught.value}"
    out.write_text(json.dumps({"status": "failed", "error": error}))
    assert run._read_result(out, tmp_path, 0)["status"] == "timeout"


def test_distq_processes_get_the_bench_s_settings_not_the_caller_s(
    master: distq_cli.DistqCli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A DISTQ_SIGNING_KEYS exported where ``make bench`` ran signed the plain distq row
    (and failed the Executor's); DISTQ_CONCURRENCY gave "concurrency 1" workers more."""
    monkeypatch.setenv("DISTQ_SIGNING_KEYS", "k" * 32)
    monkeypatch.setenv("DISTQ_CONCURRENCY", "4")
    assert not [key for key in worker_env() if key.startswith("DISTQ_")]
    master.env = {"DISTQ_QUEUE": "q"}
    _fake(monkeypatch, _report(tasks=20, ok=20), "", 0)
    master.latency([1] * 20)
    assert (tmp_path / "master-1.log").read_text() == "DISTQ_QUEUE"


@pytest.mark.parametrize(
    ("error", "late", "status"),
    [
        (TimeoutError("map(): no result for task square"), True, "timeout"),  # the Executor
        (type("ResultTimeout", (Exception,), {})("timed out"), True, "timeout"),  # Dramatiq
        (TimeoutError("a wait of its own"), False, "failed"),  # before the deadline
        (ValueError("wrong"), True, "failed"),  # not a timeout
    ],
)
def test_a_library_s_own_timeout_at_the_deadline_is_a_timeout(
    error: Exception, late: bool, status: str, tmp_path: Path
) -> None:
    """Celery, Dramatiq and the Executor wait with the time the trial has left and raise
    their own timeouts: those rows read FAILED where the others read TIMEOUT."""
    deadline = time.monotonic() + (0 if late else 60)
    out = tmp_path / "result.json"
    text = f"throughput: {trial._named(error, deadline)}: {error}"
    out.write_text(json.dumps({"status": "failed", "error": text}))
    assert run._read_result(out, tmp_path, 0)["status"] == status


@pytest.mark.parametrize(
    ("report", "log", "reason"),
    [
        (  # its workers never attached: the report's problem, then the verdict
            _report(
                tasks=20,
                ok=0,
                missing=20,
                started=False,
                problems=["only 1 of 2 worker slots attached in time"],
            ),
            "job never started after 89.0 s: 0 of 20 results in\n"
            "distq: only 1 of 2 worker slots attached in time\nmaster exit\n",
            "only 1 of 2 worker slots attached in time; job never started after 89.0 s",
        ),
        (  # no report: the log's last error line
            "",
            "distq: warning: something minor\ndistq: cannot reach redis://127.0.0.1:1/0\n",
            "cannot reach redis://127.0.0.1:1/0",
        ),
        (  # a crash: a traceback's last line
            "",
            "Traceback (most recent call last):\n  File x\nConnectionError: boom\n",
            "ConnectionError: boom",
        ),
    ],
    ids=["never-started", "no-report", "crash"],
)
def test_a_failed_distq_master_says_why_on_the_first_line(
    master: distq_cli.DistqCli,
    monkeypatch: pytest.MonkeyPatch,
    report: str,
    log: str,
    reason: str,
) -> None:
    """RESULTS.md's Failures note is the error's first line: not just 'exited 1:'."""
    _fake(monkeypatch, report, log, 1)
    with pytest.raises(RuntimeError) as caught:
        master.latency([1] * 20)
    assert not isinstance(caught.value, RoundTimeout)
    first = _first_line(caught.value)
    assert first.startswith("distq master exited 1: ") and reason in first


def test_a_distq_report_with_duplicate_results_fails_verification(
    master: distq_cli.DistqCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer fails on one duplicate result (Collector.add); so does a distq row."""
    _fake(monkeypatch, _report(), "", 0)
    assert master.throughput([1] * 200) == 0.01  # a clean report passes
    _fake(monkeypatch, _report(duplicates=37), "", 0)
    with pytest.raises(VerifyError, match="duplicates"):
        master.throughput([1] * 200)


class _Dies(Contestant):
    """``sleep`` processes as workers; worker 0 is killed in the counted ``round``."""

    name = "dies"
    round = "throughput"

    def start_workers(self) -> None:
        for _ in range(self.ctx.workers):
            self.workers.start(["sleep", "60"])
        self.calls = {"throughput": 0, "latency": 0}

    def _round(self, kind: str) -> None:
        self.calls[kind] += 1
        if kind == self.round and self.calls[kind] == 2:  # the one after the warm-up
            self.workers.procs[0].send_signal(signal.SIGKILL)
            self.workers.procs[0].wait()

    def throughput(self, tasks: Sequence[int]) -> float:
        self._round("throughput")
        return 0.01

    def latency(self, tasks: Sequence[int]) -> Latency:
        self._round("latency")
        return Latency(count=len(tasks), p50=0.001, p99=0.002)


@pytest.mark.parametrize(("round_", "latency_tasks"), [("throughput", 0), ("latency", 10)])
def test_a_worker_that_dies_in_a_counted_round_fails_the_trial(
    round_: str, latency_tasks: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a latency round (the scaling and memory stages) the trial was ok; with one,
    a distq trial hung until its master's --timeout. Now the round's check names the
    worker and its exit code."""
    monkeypatch.setattr(_Dies, "round", round_)
    monkeypatch.setattr(contestants, "load", lambda broker, name: _Dies)
    args = argparse.Namespace(
        workdir=str(tmp_path), broker="redis", url="", queue="q", workers=2, timeout=30.0,
        profile="", seed=1, tasks=100, latency_tasks=latency_tasks, contestant="dies",
        no_caps=False, memory=latency_tasks == 0, broker_pid=0,
    )  # fmt: skip
    out = trial.run_trial(args)
    assert out["status"] == "failed", out
    assert out["error"].startswith(f"{round_}: RuntimeError: worker 0 exited with code -9")


class _Counted(http.server.BaseHTTPRequestHandler):
    """An endpoint that answers every GET on a kept-alive connection and counts both."""

    protocol_version = "HTTP/1.1"
    connections = 0
    requests = 0

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def do_GET(self) -> None:
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""


def test_the_metrics_row_reads_each_endpoint_on_one_kept_alive_connection(
    tmp_path: Path,
) -> None:
    # Prometheus keeps its connections: a new one per read cost a worker's endpoint twice
    # the CPU of the read itself (a thread, an accept), more than what the row measures
    handler: type[_Counted] = type("Handler", (_Counted,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ctx = Context("manager", "", "q", 2, tmp_path, time.monotonic() + 60)
    contestant = distq_cli.DistqCliMetrics(ctx)
    contestant.SCRAPE_SECONDS = 0.01
    contestant.ports = [server.server_address[1]]
    contestant._stop_scraping = threading.Event()
    scraper = threading.Thread(target=contestant._scrape, daemon=True)
    scraper.start()
    try:
        deadline = time.monotonic() + 10
        while handler.requests < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        contestant._stop_scraping.set()
        scraper.join(5)
        server.shutdown()
        server.server_close()
    assert handler.requests >= 6  # three reads of /metrics and /readyz, at least
    assert handler.connections == 1
