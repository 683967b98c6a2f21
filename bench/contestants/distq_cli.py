"""distq, driven through its command line exactly as an operator would run it.

Workers: ``distq worker --quiet --exit-when-idle S`` (two processes), configured by
environment (``DISTQ_TRANSPORT``, ``DISTQ_REDIS_URL``/``DISTQ_AMQP_URL``,
``DISTQ_QUEUE``; for manager ``DISTQ_MANAGER_ADDRESS`` and a random ``DISTQ_AUTHKEY``).
Master: ``distq master --tasks N --quiet --report FILE --timeout S`` (plus
``--max-in-flight 1`` for latency); the numbers are the master's own report, which
times from its first submit to its last verified result, like the harness does for
the other contestants.

CPU: the master reports the CPU seconds of its timed job (its own process counter,
every thread: with manager that includes the queues it hosts). With a profile folder
(``bench/run.sh --profile DIR``) every worker and master runs under ``py-spy record``,
which writes one flame graph per process there.

Readiness before timing: on Redis, until the server counts one new client per worker;
on RabbitMQ, until the task queue has one consumer per worker (both at most
``READY_LIMIT`` s, then the warm-up round decides). On manager the master hosts the
queues: the workers start once, like on the other brokers, and reconnect to each new
master on the same address and key (they retry every second once one has gone).
``--wait-workers`` makes the master start the job (and its clock) only once both
workers are attached, on every broker.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from contestants.base import (
    Contestant,
    Latency,
    RoundTimeout,
    VerifyError,
    clean_env,
    venv_bin,
)
from launch import free_port

READY_LIMIT = 15.0
_PY_SPY = [venv_bin("py-spy"), "record", "--rate", "250", "--nonblocking", "--format", "flamegraph"]
IDLE_EXIT = 600  # seconds; workers are stopped by PID long before this


class DistqCli(Contestant):
    name = "distq"
    #: More settings for master and workers (a variant sets what it measures).
    extra_env: dict[str, str] = {}  # noqa: RUF012 - read-only
    #: ``--quiet``: no per-task lines (a variant that measures per-task logs drops it)
    quiet: tuple[str, ...] = ("--quiet",)

    def start_workers(self) -> None:
        self.runs = 0
        self.env: dict[str, str] = {
            "DISTQ_TRANSPORT": self.ctx.broker,
            "DISTQ_QUEUE": self.ctx.queue,
            **self.extra_env,
        }
        if self.ctx.broker == "redis":
            self.env["DISTQ_REDIS_URL"] = self.ctx.url
        elif self.ctx.broker == "rabbitmq":
            self.env["DISTQ_AMQP_URL"] = self.ctx.url
        else:
            self.env["DISTQ_MANAGER_ADDRESS"] = f"127.0.0.1:{free_port()}"
            self.env["DISTQ_AUTHKEY"] = os.urandom(16).hex()
            self._start_worker_processes()  # they wait for the first master to listen
            return
        baseline = self._connected()
        self._start_worker_processes()
        self._wait_connected(baseline)

    def _worker_argv(self) -> list[str]:
        argv = [venv_bin("distq"), "worker", *self.quiet, "--exit-when-idle", str(IDLE_EXIT)]
        if self.ctx.broker == "manager":
            argv += ["--connect-timeout", str(IDLE_EXIT)]
        return argv

    def _start_worker_processes(self) -> None:
        for _ in range(self.ctx.workers):
            self.workers.start(self._worker_argv(), env=self.env)

    def _svg(self, role: str) -> Path | None:
        folder = self.ctx.profile_dir
        if folder is None:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{self.ctx.broker}-{self.name}-{role}.svg"

    def _profiled(self, argv: list[str], role: str) -> list[str]:
        """``argv`` under ``py-spy record`` when profiling: it writes when the process ends."""
        svg = self._svg(role)
        if svg is None:
            return argv
        return [*_PY_SPY, "--output", str(svg), "--", *argv]

    def _profile_workers(self) -> list[subprocess.Popen[bytes]]:
        """When profiling: ``py-spy record --pid`` on every worker, until :func:`_stop`."""
        spies = []
        for index, pid in enumerate(self.workers.pids):
            svg = self._svg(f"worker-{index}")
            if svg is not None:
                argv = [*_PY_SPY, "--output", str(svg), "--pid", str(pid)]
                spies.append(
                    subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
                )
        return spies

    def _connected(self) -> int:
        """Redis: connected clients; RabbitMQ: consumers on the task queue; else 0."""
        try:
            if self.ctx.broker == "redis":
                import redis

                client = redis.Redis.from_url(self.ctx.url)
                try:
                    info = cast(dict[str, Any], client.info("clients"))
                    return int(info["connected_clients"]) - 1
                finally:
                    client.close()
            if self.ctx.broker == "rabbitmq":
                import pika

                with pika.BlockingConnection(pika.URLParameters(self.ctx.url)) as conn:
                    ok = conn.channel().queue_declare(self.ctx.queue, passive=True)
                    return int(ok.method.consumer_count)
        except Exception:
            return 0  # queue not declared yet, or broker busy: not ready
        return 0

    def _wait_connected(self, baseline: int) -> None:
        deadline = time.monotonic() + min(READY_LIMIT, self.ctx.remaining())
        while time.monotonic() < deadline:
            self.workers.check_alive()
            if self._connected() >= baseline + self.ctx.workers:
                return
            time.sleep(0.1)
        # Not confirmed (e.g. a topology this check does not know): the warm-up decides.

    def _master(self, count: int, extra: Sequence[str], profile: bool = False) -> dict[str, Any]:
        self.runs += 1
        report_path = self.ctx.workdir / f"master-{self.runs}.json"
        log_path = self.ctx.workdir / f"master-{self.runs}.log"
        remaining = self.ctx.remaining()
        if remaining < 1:
            raise RoundTimeout("distq master: trial deadline passed")
        argv = [
            venv_bin("distq"),
            "master",
            "--tasks",
            str(count),
            *self.quiet,
            "--report",
            str(report_path),
            "--timeout",
            f"{max(1.0, remaining - 5):.0f}",
            # the clock starts once every worker slot is attached, as for the peers
            "--wait-workers",
            str(self.ctx.workers),
            *extra,
        ]
        if profile:
            argv = self._profiled(argv, "master")
        env = clean_env()
        env.update(self.env)
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.run(
                    argv,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=remaining,
                    check=False,
                )
        except subprocess.TimeoutExpired:
            raise RoundTimeout(f"distq master did not finish in {remaining:.0f} s") from None
        if proc.returncode != 0 or not report_path.exists():
            raise _failure(proc.returncode, log_path, report_path)
        report: dict[str, Any] = json.loads(report_path.read_text())
        # a task run twice is a wrong result, as for the peers (Collector.add)
        wrong = ("failed", "incorrect", "duplicates", "missing")
        bad = {k: report.get(k) for k in wrong if report.get(k)}
        if report.get("tasks") != count or report.get("ok", count) != count or bad:
            raise VerifyError(f"distq master report: tasks={report.get('tasks')} {bad}")
        return report

    def throughput(self, tasks: Sequence[int]) -> float:
        # distq's master draws its own random numbers 1..1000 and verifies n*n itself.
        spies = self._profile_workers() if self.runs == 1 else []  # the round after warm-up
        try:
            report = self._master(len(tasks), [], profile=bool(spies))
        finally:
            _stop(spies)
        self.master_cpu_seconds = report.get("cpu_seconds")
        return float(report["elapsed_seconds"])

    def latency(self, tasks: Sequence[int]) -> Latency:
        report = self._master(len(tasks), ["--max-in-flight", "1"])
        self.master_cpu_seconds = report.get("cpu_seconds")
        return Latency(
            count=len(tasks),
            p50=float(report["latency_p50_seconds"]),
            p99=float(report["latency_p99_seconds"]),
        )


def _failure(code: int, log_path: Path, report_path: Path) -> Exception:
    """Why ``distq master`` exited ``code``, on the error's first line (the report's Failures
    note): :class:`RoundTimeout` when its job timed out (its own ``--timeout``, which
    fires before the trial's deadline), as a peer's round that runs out of time; else the
    report's problems (or the log's last error line) and the master's verdict. The log's
    tail follows."""
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    verdict = next((x for x in reversed(lines) if x.startswith("job ") and " after " in x), "")
    tail = log[-1500:]
    if verdict.startswith("job timed out"):
        return RoundTimeout(f"distq master: {verdict}\n{tail}")
    try:
        problems = [str(x) for x in json.loads(report_path.read_text())["problems"]]
    except (OSError, ValueError, KeyError, TypeError):
        problems = []  # no report, or not a whole one: the log says why
    if not problems:
        errors = [x for x in lines if x.startswith("distq: ") and not x.startswith("distq: warn")]
        problems = errors[-1:] or lines[-1:]  # e.g. a traceback's last line
    reasons = [x if len(x) <= 200 else x[:199] + "…" for x in problems[-3:]]
    if verdict:
        reasons.append(verdict)
    return RuntimeError(f"distq master exited {code}: {'; '.join(reasons)}\n{tail}")


def _stop(spies: Sequence[subprocess.Popen[bytes]]) -> None:
    """End ``py-spy record --pid`` runs with SIGINT, on which they write their graph."""
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


class DistqCliMetrics(DistqCli):
    """distq with its metrics on (``DISTQ_METRICS_PORT`` on every worker and master), each
    endpoint's ``/metrics`` and ``/readyz`` read once per ``SCRAPE_SECONDS``, on one
    kept-alive connection per endpoint: what Prometheus and a readiness probe cost, next
    to the plain ``distq`` row."""

    name = "distq-metrics"
    SCRAPE_SECONDS = 1.0

    def start_workers(self) -> None:
        self.ports: list[int] = []
        self._stop_scraping = threading.Event()
        self._scraper = threading.Thread(target=self._scrape, daemon=True)
        self._scraper.start()
        super().start_workers()

    def _start_worker_processes(self) -> None:
        for _ in range(self.ctx.workers):
            port = free_port()
            self.ports.append(port)
            env = dict(self.env, DISTQ_METRICS_HOST="127.0.0.1", DISTQ_METRICS_PORT=str(port))
            self.workers.start(self._worker_argv(), env=env)

    def _master(self, count: int, extra: Sequence[str], profile: bool = False) -> dict[str, Any]:
        port = free_port()
        saved = dict(self.env)
        self.env.update(DISTQ_METRICS_HOST="127.0.0.1", DISTQ_METRICS_PORT=str(port))
        self.ports.append(port)
        try:
            return super()._master(count, extra, profile)
        finally:
            self.ports.remove(port)
            self.env = saved

    def _scrape(self) -> None:
        # one kept-alive connection per endpoint, as Prometheus keeps its: a new one per
        # read cost a worker's endpoint twice what the read itself did (an accept, a thread)
        connections: dict[int, http.client.HTTPConnection] = {}
        try:
            while not self._stop_scraping.wait(self.SCRAPE_SECONDS):
                ports = list(self.ports)
                for port in set(connections) - set(ports):  # a master that has gone
                    connections.pop(port).close()
                for port in ports:
                    _read_endpoint(connections, port)
        finally:
            for connection in connections.values():
                connection.close()

    def stop_workers(self) -> None:
        self._stop_scraping.set()
        super().stop_workers()


def _read_endpoint(connections: dict[int, http.client.HTTPConnection], port: int) -> None:
    """GET ``/metrics`` and ``/readyz`` from 127.0.0.1:``port`` on its connection in
    ``connections`` (made if none); a connection that failed is dropped, and the next
    round connects afresh (the endpoint was not listening yet, or has gone)."""
    for path in ("/metrics", "/readyz"):
        connection = connections.get(port)
        if connection is None:
            connection = connections[port] = http.client.HTTPConnection(
                "127.0.0.1", port, timeout=2
            )
        try:
            connection.request("GET", path)
            connection.getresponse().read()
        except (OSError, http.client.HTTPException):
            connections.pop(port).close()
            return


class DistqSigned(DistqCli):
    """distq with ``DISTQ_SIGNING_KEYS`` on master and workers: what signing costs."""

    name = "distq-signed"
    extra_env = {"DISTQ_SIGNING_KEYS": os.urandom(32).hex()}  # noqa: RUF012 - read-only


class DistqJsonLogs(DistqCli):
    """distq with ``DISTQ_LOG_FORMAT=json`` and without ``--quiet``: every task's events
    (``task submitted``, ``task settled``, ``result received``) written as JSON lines to
    the processes' log files, what a log pipeline would read."""

    name = "distq-jsonlogs"
    extra_env = {"DISTQ_LOG_FORMAT": "json"}  # noqa: RUF012 - read-only
    quiet = ()


class DistqTextLogs(DistqCli):
    """distq without ``--quiet``, text logs: the per-task lines (``Get task ...``, ``put
    task ...``, ``Get result ...``) the JSON row's events replace, for comparison."""

    name = "distq-textlogs"
    quiet = ()
