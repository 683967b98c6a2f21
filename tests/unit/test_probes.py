"""Liveness and readiness: the state health.py keeps, and the HTTP endpoint that serves it."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

import distq.http as distq_http
import distq.probe as distq_probe
from conftest import REPO
from distq.config import Settings
from distq.console import Console
from distq.errors import ConfigError, TransportError
from distq.health import HANG_SECONDS, Liveness, ProcessHealth, Readiness, WorkerHealth
from distq.http import Endpoint
from distq.observe import BROKER_LINK, MasterObservability, WorkerObservability
from distq.probe import MAX_ANSWER_BYTES
from endpoints import link_local_or_skip
from launch import free_port
from procs import checkout_env, run_distq, run_python


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of GET http://127.0.0.1:port/path."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


# -- liveness ---------------------------------------------------------------------------


def test_a_loop_that_stops_iterating_is_stalled() -> None:
    clock = Clock()
    liveness = Liveness(stall_seconds=10, clock=clock)
    assert liveness.check().ok  # no loop yet: starting is not stalled
    liveness.beat("main")
    liveness.beat("leases")
    clock.now += 9
    liveness.beat("main")
    assert liveness.check().ok
    clock.now += 2  # leases: 11 s without an iteration
    verdict = liveness.check()
    assert not verdict.ok
    assert verdict.body["status"] == "stalled" and verdict.body["stalled"] == ["leases"]
    liveness.beat("leases")
    assert liveness.check().ok


def test_time_spent_waiting_on_the_broker_is_not_a_stall() -> None:
    clock = Clock()
    liveness = Liveness(stall_seconds=10, clock=clock)
    liveness.beat("leases")
    with liveness.waiting("leases"):
        clock.now += 60  # a heartbeat blocked on a silent broker: readiness's business
        assert liveness.check().ok
    assert liveness.check().ok  # leaving the call counts as an iteration
    clock.now += 11
    assert not liveness.check().ok


# -- readiness --------------------------------------------------------------------------


def test_a_link_is_ready_after_a_successful_call_and_not_after_a_failed_one() -> None:
    clock = Clock()
    readiness = Readiness(clock)
    assert readiness.check().body["reason"] == "process: starting"
    link = readiness.link("broker")
    assert readiness.check().body["reason"] == "broker: connecting"
    with link.call():
        pass
    assert readiness.check().ok
    with pytest.raises(TransportError), link.call():
        raise TransportError("Redis at 127.0.0.1:6379: Connection refused")
    verdict = readiness.check()
    assert not verdict.ok
    assert verdict.body == {
        "status": "not ready",
        "reason": "broker: Redis at 127.0.0.1:6379: Connection refused",
        "links": {"broker": "Redis at 127.0.0.1:6379: Connection refused"},
    }
    with link.call():
        pass
    assert readiness.check().ok


def test_a_call_that_does_not_answer_makes_the_link_not_ready_while_it_hangs() -> None:
    clock = Clock()
    readiness = Readiness(clock)
    link = readiness.link("producer")
    link.up()
    with link.call(timeout=5):
        clock.now += 5 + HANG_SECONDS - 0.1  # still within the call's own timeout and grace
        assert readiness.check().ok
        clock.now += 0.2
        verdict = readiness.check()
        assert not verdict.ok
        assert "no answer from the broker for 7.1 s" in verdict.body["reason"]
    assert readiness.check().ok  # it answered after all


def test_a_stopping_process_is_not_ready() -> None:
    health = ProcessHealth("master")
    health.readiness.link("broker").up()
    assert health.ready().ok
    health.readiness.stopping()
    assert health.ready().body["reason"] == "process: stopping"


def test_a_worker_is_ready_only_while_every_slot_is_connected() -> None:
    health = WorkerHealth(slots=2)
    health.readiness.link("broker").up()
    health.connected(True, "w-0")
    verdict = health.ready()
    assert not verdict.ok and verdict.body["reason"] == "slots: 1 of 2 connected"
    health.connected(True, "w-1")
    assert health.ready().ok
    assert health.ready().body["links"] == {"broker": "up", "slot w-0": "up", "slot w-1": "up"}
    health.connected(False, "w-1", "the master at 127.0.0.1:9000 closed the connection")
    verdict = health.ready()
    assert not verdict.ok
    assert verdict.body["reason"] == "slot w-1: the master at 127.0.0.1:9000 closed the connection"
    health.connected(True, "w-1")
    assert health.ready().ok


def test_a_worker_is_not_idle_while_a_retry_it_published_waits_out_its_delay() -> None:
    """``--exit-when-idle`` counts from the later of the last task taken or finished and
    the moment the latest retry this worker published falls due."""
    clock = Clock()
    health = WorkerHealth(clock=clock)
    health.took(3)
    assert health.idle_for() == 0.0  # tasks in hand
    clock.now += 1.0
    health.finished(ok=1, retried=1, retry_in=2.0)  # due 2 s from now
    clock.now += 0.5
    health.finished(retried=1, retry_in=0.5)  # due sooner: the later one still counts
    clock.now += 0.5
    assert health.in_hand == 0
    assert health.idle_for() == 0.0  # 0.5 s after the last finish, the first retry not due
    clock.now += 1.0
    assert health.idle_for() == 0.0  # the first retry falls due now
    clock.now += 0.25
    assert health.idle_for() == pytest.approx(0.25)  # counted from when it fell due
    health.took(1)
    health.finished(ok=1)  # a task without a retry moves only the last activity
    clock.now += 0.1
    assert health.idle_for() == pytest.approx(0.1)


def test_a_settle_that_waited_for_tasks_counts_idle_from_when_the_wait_began() -> None:
    """Redis settles and waits for the next task in one round trip: the idle time of
    --exit-when-idle counted from the end of that wait, so a Redis worker exited about
    a wait later than the others (diff12). Never earlier than the last activity."""
    clock = Clock()
    health = WorkerHealth(clock=clock)
    health.took(1)
    clock.now += 2.0
    health.finished(ok=1, since=clock.now - 1.0)  # its last second was a wait for tasks
    assert health.idle_for() == pytest.approx(1.0)
    health.took(1)
    health.finished(ok=1, since=clock.now - 5.0)  # before the last activity: that counts
    assert health.idle_for() == pytest.approx(0.0)


# -- the HTTP endpoint ------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[Endpoint, ProcessHealth]]:
    registry = CollectorRegistry()
    Counter("distq_example_total", "An example.", registry=registry).inc(3)
    health = ProcessHealth("worker", stall_seconds=0.3)
    endpoint = Endpoint("127.0.0.1", 0, registry, health).start()
    yield endpoint, health
    endpoint.close()


def test_probes_answer_json_and_metrics_answer_the_exposition(
    served: tuple[Endpoint, ProcessHealth],
) -> None:
    endpoint, health = served
    status, kind, body = get(endpoint.port, "/readyz")
    assert (status, kind) == (503, "application/json")
    assert json.loads(body) == {
        "status": "not ready",
        "reason": "process: starting",
        "links": {},
        "role": "worker",
    }
    health.readiness.link("broker").up()
    status, _, body = get(endpoint.port, "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"

    status, kind, body = get(endpoint.port, "/healthz")
    assert (status, kind) == (200, "application/json")
    assert json.loads(body)["status"] == "ok"

    status, kind, body = get(endpoint.port, "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    assert "distq_example_total 3.0" in body

    for path in ("/", "/metrics/x", "/health", "/readyz/"):
        status, _, body = get(endpoint.port, path)
        assert status == 404, path
        assert "distq_example" not in body


#: prometheus-client 0.20 to 0.22 read no version in an Accept header, and answer
#: OpenMetrics 1.0.0 to any that names it; from 0.23 on, a version they cannot compare
#: raises TypeError, which distq answers in the text format.
_READS_NO_VERSION = tuple(
    int(part) for part in importlib.metadata.version("prometheus-client").split(".")[:2]
) < (0, 23)


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text; version=zz",
        "application/openmetrics-text; version=1.x",
    ],
)
def test_metrics_answer_an_accept_header_they_cannot_read(
    served: tuple[Endpoint, ProcessHealth], accept: str
) -> None:
    """prometheus-client's choice of format raised TypeError on a version it could not
    compare, and /metrics answered 500: a scrape still gets its metrics, in the text
    format (prometheus-client from 0.23 on) or in OpenMetrics 1.0.0 (0.20 to 0.22 read no
    version and answer what the header names)."""
    endpoint, _ = served
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        f"http://127.0.0.1:{endpoint.port}/metrics", headers={"Accept": accept}
    )
    try:
        with opener.open(request, timeout=5) as response:
            status, kind, body = response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        status, kind, body = exc.code, exc.headers["Content-Type"], exc.read()
    assert status == 200, body
    answers = "application/openmetrics-text" if _READS_NO_VERSION else "text/plain"
    assert kind.split(";")[0] == answers, kind
    assert b"distq_example_total 3.0" in body


def ready_samples(port: int) -> list[tuple[dict[str, str], float]]:
    """The ``distq_ready`` samples on the endpoint's /metrics."""
    status, _, text = get(port, "/metrics")
    assert status == 200, text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "distq_ready"
    ]


@pytest.mark.parametrize("role", ["master", "worker"])
def test_metrics_carry_the_readiness_verdict_as_distq_ready(role: str) -> None:
    """/readyz's verdict, read at each scrape: a process that cannot reach its broker still
    answers /metrics, where Prometheus (and an alert) can now see it is not ready."""
    port = free_port()
    settings = Settings.load(
        {
            "DISTQ_AUTHKEY": "secret",
            "DISTQ_QUEUE": "jobs",
            "DISTQ_METRICS_PORT": str(port),
            "DISTQ_METRICS_HOST": "127.0.0.1",
        }
    )
    console = Console(quiet=True, out=io.StringIO())
    observe = (
        MasterObservability(settings, console)
        if role == "master"
        else WorkerObservability(settings, console, slots=1, task_names=["square"])
    )
    labels = {"transport": "manager", "queue": "jobs"}

    def agree(ready: float) -> None:
        assert ready_samples(port) == [(labels, ready)]
        assert get(port, "/readyz")[0] == (200 if ready else 503)

    try:
        agree(0.0)  # starting
        broker = observe.health.readiness.link(BROKER_LINK)
        broker.up()
        if isinstance(observe, WorkerObservability):
            agree(0.0)  # its slot has not connected yet
            observe.health.connected(True, "w-0")
        agree(1.0)
        broker.down("Manager at 127.0.0.1:50000: Connection refused")
        agree(0.0)
        broker.up()
        agree(1.0)
        observe.health.readiness.stopping()
        agree(0.0)
    finally:
        observe.close()


def test_a_wedged_main_loop_turns_healthz_503() -> None:
    # a stall limit of 2 s: 0.3 s, a loop starved a few tenths of a second on a loaded
    # host already read as wedged
    health = ProcessHealth("worker", stall_seconds=2.0)
    endpoint = Endpoint("127.0.0.1", 0, CollectorRegistry(), health).start()
    try:
        _wedge(endpoint, health)
    finally:
        endpoint.close()


def _wedge(endpoint: Endpoint, health: ProcessHealth) -> None:
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.05):
            health.beat("main")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        assert get(endpoint.port, "/healthz")[0] == 200
    finally:
        stop.set()  # the loop wedges: no more iterations
        thread.join()
    deadline = time.monotonic() + 10
    while (status := get(endpoint.port, "/healthz"))[0] != 503:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    body = json.loads(status[2])
    assert body["status"] == "stalled" and body["stalled"] == ["main"]
    assert body["stall_seconds"] == 2.0


def test_a_busy_port_is_a_configuration_error_naming_it() -> None:
    registry = CollectorRegistry()
    endpoint = Endpoint("127.0.0.1", 0, registry, ProcessHealth("master")).start()
    try:
        with pytest.raises(ConfigError) as caught:
            Endpoint("127.0.0.1", endpoint.port, registry, ProcessHealth("master"))
    finally:
        endpoint.close()
    assert f"DISTQ_METRICS_PORT {endpoint.port}: cannot listen on 127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_a_busy_port_on_an_ipv6_host_names_it_in_brackets(host: str) -> None:
    """The line said "cannot listen on ::1:PORT", a host and port no reader can split."""
    registry = CollectorRegistry()
    endpoint = Endpoint(host, 0, registry, ProcessHealth("master")).start()
    try:
        with pytest.raises(ConfigError) as caught:
            Endpoint(host, endpoint.port, registry, ProcessHealth("master"))
    finally:
        endpoint.close()
    assert f"cannot listen on [::1]:{endpoint.port} (DISTQ_METRICS_HOST)" in str(caught.value)


# -- distq probe ------------------------------------------------------------------------


def probe(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_distq(["probe", *args], checkout_env(**env), timeout=60)


def test_a_stdout_that_cannot_be_written_is_said_and_the_output_goes_to_stderr(
    served: tuple[Endpoint, ProcessHealth],
) -> None:
    """A full disk under a command's stdout ended it in a traceback and exit 1, after it
    had acted (`submit` queued its task, `requeue-dead` moved the letters): a script that
    saw exit 1 submitted again. Its output goes to stderr instead; the exit is the
    command's own (here the probe's: 0, the process is healthy)."""
    endpoint, health = served
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.05):
            health.beat("main")

    beating = threading.Thread(target=beat)
    beating.start()  # the process stays healthy: a stall limit of 0.3 s
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    with open("/dev/full", "w") as full, contextlib.ExitStack() as stack:
        stack.callback(beating.join)
        stack.callback(stop.set)
        done = subprocess.run(
            [sys.executable, "-m", "distq", "probe", "healthz", "--port", str(endpoint.port)],
            env={**clean, "PYTHONPATH": str(REPO / "src")},
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    said = done.stderr.splitlines()
    assert (
        said[0]
        == "distq: stdout cannot be written (No space left on device); the output goes to stderr"
    )
    assert json.loads(said[1])["status"] == "ok" and "Traceback" not in done.stderr


def test_distq_probe_exits_0_on_200_and_1_otherwise(
    served: tuple[Endpoint, ProcessHealth],
) -> None:
    endpoint, health = served
    port = str(endpoint.port)
    done = probe("readyz", DISTQ_METRICS_PORT=port)
    assert done.returncode == 1
    assert json.loads(done.stdout)["reason"] == "process: starting"
    health.readiness.link("broker").up()
    done = probe("readyz", "--port", port, "--host", "127.0.0.1")
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "ready"
    done = probe("healthz", DISTQ_METRICS_PORT=port, DISTQ_METRICS_HOST="0.0.0.0")
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "ok"


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
@pytest.mark.parametrize("v6only", [1, 0])
def test_distq_probe_reaches_an_endpoint_on_every_ipv6_interface(
    monkeypatch: pytest.MonkeyPatch, v6only: int
) -> None:
    """DISTQ_METRICS_HOST=:: listens on IPv6 only where the machine's bindv6only is 1 (as
    if every socket had IPV6_V6ONLY), and distq probe asked 127.0.0.1 for any wildcard:
    "no answer", exit 1, from a healthy process. Where :: takes IPv4 too
    (bindv6only 0, or a container without an IPv6 loopback) 127.0.0.1 still answers."""
    bind = distq_http._Server6.server_bind

    def server_bind(server: Any) -> None:
        server.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        bind(server)

    monkeypatch.setattr(distq_http._Server6, "server_bind", server_bind)
    try:
        endpoint = Endpoint("::", 0, CollectorRegistry(), ProcessHealth("worker")).start()
    except ConfigError as exc:  # pragma: no cover - a machine without an IPv6 stack
        pytest.skip(f"cannot listen on ::: {exc}")
    try:
        for host in ("::", "[::]"):
            done = probe("healthz", "--port", str(endpoint.port), "--host", host)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["status"] == "ok"
        done = probe("healthz", DISTQ_METRICS_PORT=str(endpoint.port), DISTQ_METRICS_HOST="::")
        assert done.returncode == 0, done.stderr
    finally:
        endpoint.close()


def test_distq_probe_without_an_endpoint() -> None:
    done = probe("healthz", "--port", str(free_port()), "--timeout", "2")
    assert done.returncode == 1
    assert "no answer from http://127.0.0.1:" in done.stderr and "Traceback" not in done.stderr
    done = probe("readyz")
    assert done.returncode == 2
    assert "DISTQ_METRICS_PORT is not set" in done.stderr


#: What a probe has no use for: the other commands, the brokers' clients, the metrics.
PROBE_NEVER_IMPORTS = (
    "distq.cli",
    "distq.commands",
    "distq.executor",
    "distq.master",
    "distq.worker",
    "distq.metrics",
    "pika",
    "redis",
    "prometheus_client",
    "http.server",
)


@pytest.mark.parametrize("given", ["as main's argv", "on the command line"])
def test_distq_probe_imports_only_what_a_probe_uses(given: str) -> None:
    """A compose healthcheck runs `distq probe readyz` in each distq container every 5 s:
    it imported all of distq (0.25 s of CPU each, a fifth of a core for a master and
    three workers), where a probe needs its flags, an HTTP client and its console. The
    console script and `python -m distq` call ``main()``, which reads ``sys.argv``."""
    args = ["probe", "healthz", "--port", str(free_port()), "--timeout", "2"]
    call = f"main({args!r})" if given == "as main's argv" else "main()"
    program = (
        "import sys\n"
        f"sys.argv[1:] = {args!r}\n"
        "from distq.startup import main\n"
        f"code = {call}\n"
        f"print(code, [m for m in {PROBE_NEVER_IMPORTS!r} if m in sys.modules])\n"
    )
    done = run_python(program)
    assert done.stdout == "1 []\n", done.stdout + done.stderr
    assert "no answer from http://127.0.0.1:" in done.stderr


def _parsed_by(entry: str, args: list[str]) -> tuple[int, str, str]:
    """``main(args)`` of ``entry`` (``distq.startup``: the command's own; ``distq.cli``:
    the full parser) in a process of its own: its exit code, stdout and stderr."""
    program = f"import sys\nfrom {entry} import main\nsys.exit(main({args!r}))\n"
    done = run_python(program)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["probe", "healthz", "extra"],
        ["probe", "healthz", "--bogus"],
        ["probe", "healthz", "--version"],
        ["probe"],
        ["probe", "healthz", "--port", "x"],
        ["probe", "--help"],
    ],
)
def test_distq_probe_on_its_own_parses_as_the_full_command_did(args: list[str]) -> None:
    """The entry point sends `distq probe` to a parser of its own: an argument it does
    not take (a typo in a healthcheck) printed `usage: distq [-h] {probe} ...`, where
    the command's usage names --version and every command."""
    assert _parsed_by("distq.startup", args) == _parsed_by("distq.cli", args)


def test_distq_probe_writes_its_errors_as_json_lines_when_asked() -> None:
    """Every other command did; the probe's errors stayed text (docs12)."""
    for args, env in (
        (["readyz"], {}),
        (["healthz", "--port", str(free_port()), "--timeout", "2"], {}),
        (["healthz"], {"DISTQ_METRICS_PORT": "9100", "DISTQ_METRICS_HOST": "no host"}),
    ):
        done = probe(*args, DISTQ_LOG_FORMAT="json", **env)
        (line,) = done.stderr.splitlines()
        event = json.loads(line)
        assert (event["level"], event["role"]) == ("error", "probe"), line
        assert event["message"].startswith(("DISTQ_METRICS_", "no answer from")), line


@pytest.mark.parametrize("answer", ["garbage", "trickle"])
def test_distq_probe_of_a_peer_that_is_no_distq_endpoint_says_no_answer_in_time(
    answer: str,
) -> None:
    """A port answering something not HTTP was a BadStatusLine traceback; one answering
    a byte a second held the probe ~60 s past --timeout 2 (the timeout bounded each read)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            hello = b"HELLO \x1b[2J THERE\r\n\r\n"  # an escape: printed raw, it cleared the screen
            text = hello if answer == "garbage" else b"HTTP/1.0 200 OK\r\n" * 60
            for byte in text if answer == "trickle" else [text]:
                if stop.wait(1.0 if answer == "trickle" else 0):
                    return
                conn.sendall(bytes([byte]) if isinstance(byte, int) else byte)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        done = probe("healthz", "--port", str(port), "--timeout", "2")
    finally:
        stop.set()
        listener.close()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"no answer from http://127.0.0.1:{port}/healthz" in done.stderr
    assert "\x1b" not in done.stderr and "\r" not in done.stderr, repr(done.stderr)
    assert time.monotonic() - started < 10


def test_distq_probe_names_the_ipv6_loopback_when_it_answered_with_no_http() -> None:
    """Was: asked for ::, 127.0.0.1 refused and ::1 answered garbage; the line said
    "no answer from http://127.0.0.1:PORT", an address that never answered."""
    ipv6_loopback_or_skip()
    listener = socket.socket(socket.AF_INET6)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    listener.bind(("::1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HELLO THERE\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        done = probe("healthz", "--port", str(port), "--host", "::", "--timeout", "5")
    finally:
        listener.close()
        thread.join(10)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"no answer from http://[::1]:{port}/healthz: " in done.stderr, done.stderr


def test_a_scraper_hanging_up_mid_answer_prints_no_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Prometheus scrape cut off by a timeout or a partition is not news on the console;
    any other failure of a request still prints its traceback."""
    endpoint = Endpoint("127.0.0.1", 0, CollectorRegistry(), ProcessHealth("worker"))
    server = endpoint._server
    try:
        for gone in (ConnectionResetError(104, "reset"), BrokenPipeError(32, "broken pipe")):
            try:
                raise gone
            except ConnectionError:
                server.handle_error(None, ("127.0.0.1", 40000))
        assert capsys.readouterr().err == ""
        try:
            raise ValueError("a real bug")
        except ValueError:
            server.handle_error(None, ("127.0.0.1", 40000))
        assert "ValueError: a real bug" in capsys.readouterr().err
    finally:
        server.server_close()


def test_slow_clients_cannot_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half-sent requests are closed after the request timeout, and past the connection
    cap a new one is closed at once: before, each held a thread and a descriptor for as
    long as the client liked, until the process ran out of them and its probes failed."""
    monkeypatch.setattr(distq_http, "MAX_CONNECTIONS", 3, raising=False)
    monkeypatch.setattr(distq_http._Handler, "timeout", 0.5)
    endpoint = Endpoint("127.0.0.1", 0, CollectorRegistry(), ProcessHealth("worker")).start()
    slow = [socket.create_connection(("127.0.0.1", endpoint.port)) for _ in range(3)]
    try:
        for client in slow:
            client.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", endpoint.port))
        extra.settimeout(5)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert extra.recv(100) == b""  # closed, unanswered: three are being served
        extra.close()
        for client in slow:
            client.settimeout(5)
            assert client.recv(100) == b""  # closed by the server after 0.5 s
        status, _, _ = get(endpoint.port, "/healthz")
        assert status == 200  # room again
    finally:
        for client in slow:
            client.close()
        endpoint.close()


def test_trickling_clients_are_cut_at_the_request_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """32 clients that each send a byte of their headers every 0.25 s hold every slot: a
    per-read timeout (1 s here, 10 s in use) never ends them, and every probe and scrape
    was closed unanswered for as long as they liked. The deadline is for the whole request,
    so they are cut after 1 s and the probe is answered. Bounded: 33 connections, 4 s."""
    monkeypatch.setattr(distq_http._Handler, "timeout", 1.0)
    endpoint = Endpoint("127.0.0.1", 0, CollectorRegistry(), ProcessHealth("worker")).start()
    header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000  # never ends
    trickling: list[socket.socket] = []
    probes: list[bytes] = []
    try:
        for _ in range(32):  # one at a time: the listen backlog is 5, and all must be served
            trickling.append(socket.create_connection(("127.0.0.1", endpoint.port), timeout=5))
            trickling[-1].sendall(header[:1])
            time.sleep(0.02)
        start = time.monotonic()
        sent = 1
        while time.monotonic() - start < 4.0:
            for client in trickling:
                with contextlib.suppress(OSError):  # cut by the server: the fix
                    client.sendall(header[sent : sent + 1])
            sent += 1
            if time.monotonic() - start > 1.2:  # past every deadline, still trickling
                with socket.create_connection(("127.0.0.1", endpoint.port), timeout=2) as probe:
                    probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    answer = b""
                    with contextlib.suppress(OSError):  # reset: unanswered too
                        answer = probe.recv(100)
                    probes.append(answer)
                if probes[-1].startswith(b"HTTP/1.1 200"):
                    break
            time.sleep(0.25)
        assert probes and probes[-1].startswith(b"HTTP/1.1 200"), (
            f"every probe closed unanswered while 32 clients trickled: {probes}"
        )
        for client in trickling:  # the server closed them: no answer, just the end
            client.settimeout(2)
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(100) == b""
    finally:
        for client in trickling:
            client.close()
        endpoint.close()


def test_a_kept_alive_connection_has_the_same_deadline_for_its_next_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After an answer, a kept-alive connection has the request timeout again for its next
    request, not for each byte of it. Bounded: one connection, 3 s."""
    monkeypatch.setattr(distq_http._Handler, "timeout", 0.6)
    endpoint = Endpoint("127.0.0.1", 0, CollectorRegistry(), ProcessHealth("worker")).start()
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=2) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 200")  # kept alive (HTTP/1.1)
            client.setblocking(False)
            start, closed = time.monotonic(), False
            while not closed and time.monotonic() - start < 3.0:
                try:
                    client.sendall(b"G")  # the next request, a byte every 0.2 s
                    time.sleep(0.2)
                    closed = client.recv(100) == b""
                except BlockingIOError:
                    pass  # nothing to read: still open
                except OSError:
                    closed = True  # reset: cut
            assert closed, "a trickled next request held its connection for 3 s"
            assert time.monotonic() - start < 2.5  # 0.6 s and a step; a loaded host more
    finally:
        endpoint.close()


def ipv6_loopback_or_skip() -> None:
    """Skip the test on a machine without ::1 (IPv6 off in its kernel)."""
    try:
        with socket.socket(socket.AF_INET6) as plain:
            plain.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")


def test_an_ipv6_host_listens_on_ipv6() -> None:
    ipv6_loopback_or_skip()
    endpoint = Endpoint("::1", 0, CollectorRegistry(), ProcessHealth("worker")).start()
    try:
        with socket.create_connection(("::1", endpoint.port), timeout=5) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        endpoint.close()


def test_the_metrics_line_shows_an_ipv6_host_in_brackets() -> None:
    """``http://::1:9100`` is not a URL one can paste; ``http://[::1]:9100`` is."""
    ipv6_loopback_or_skip()
    port = free_port()
    settings = Settings.load(
        {"DISTQ_AUTHKEY": "secret", "DISTQ_METRICS_PORT": str(port), "DISTQ_METRICS_HOST": "::1"}
    )
    out = io.StringIO()
    observe = WorkerObservability(settings, Console(out=out), slots=1, task_names=["square"])
    observe.close()
    assert f"metrics, /healthz and /readyz on http://[::1]:{port}\n" in out.getvalue()


def test_a_probe_whose_reader_leaves_early_exits_with_the_answer_not_a_traceback() -> None:
    """``distq probe healthz | grep -q ok``: a reader that stops reading ended a probe
    of a healthy process in a BrokenPipeError traceback and exit 1."""
    body = b"ok\n" + b"x" * 300_000  # past a pipe's buffer: the write meets the gone reader
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    try:
        done = subprocess.run(
            f"{sys.executable} -m distq probe healthz --port {port} | head -c 3 >/dev/null;"
            " exit ${PIPESTATUS[0]}",
            shell=True,
            executable="/bin/bash",
            env={**clean, "PYTHONPATH": str(REPO / "src")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        listener.close()
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("how", ["--host", "DISTQ_METRICS_HOST"])
def test_distq_probe_names_an_ipv6_host_in_brackets_when_it_gets_no_answer(how: str) -> None:
    """``no answer from http://::1:9100/healthz``: not a URL one can paste, nor read (is
    the port 9100 or 1?); the metrics line names the same endpoint ``http://[::1]:9100``."""
    port = str(free_port())
    args = ["--host", "::1"] if how == "--host" else []
    env = {"DISTQ_METRICS_HOST": "::1"} if how != "--host" else {}
    done = probe("healthz", "--port", port, "--timeout", "2", *args, **env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"distq: no answer from http://[::1]:{port}/healthz: "), (
        done.stderr
    )


def test_a_scoped_ipv6_host_listens_and_its_metrics_line_is_a_url_that_works() -> None:
    """DISTQ_METRICS_HOST=fe80::1%eth0 (the setting takes a scoped address) failed at
    start: "cannot listen on [fe80::1%eth0]:PORT ... Invalid argument", the scope not
    given to bind(). The metrics line writes the scope as RFC 6874 does: %25."""
    address, interface = link_local_or_skip()
    port = free_port()
    settings = Settings.load(
        {
            "DISTQ_AUTHKEY": "secret",
            "DISTQ_METRICS_PORT": str(port),
            "DISTQ_METRICS_HOST": f"{address}%{interface}",
        }
    )
    out = io.StringIO()
    observe = WorkerObservability(settings, Console(out=out), slots=1, task_names=["square"])
    try:
        url = f"http://[{address}%25{interface}]:{port}"
        assert f"metrics, /healthz and /readyz on {url}\n" in out.getvalue()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{url}/healthz", timeout=5) as response:
            assert json.loads(response.read())["status"] == "ok"
        for host in (f"{address}%{interface}", f"[{address}%{interface}]"):
            done = probe("healthz", "--port", str(port), "--host", host)
            assert done.returncode == 0, done.stderr
    finally:
        observe.close()


def test_distq_probe_names_a_scoped_host_as_a_url_does_when_it_gets_no_answer() -> None:
    """``http://[fe80::1%lo]:PORT``: RFC 6874 writes a URL's zone as ``%25lo``, as the
    metrics line does."""
    port = str(free_port())
    done = probe("healthz", "--port", port, "--timeout", "2", "--host", "fe80::1%lo")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"distq: no answer from http://[fe80::1%25lo]:{port}/healthz"), (
        done.stderr
    )


@contextlib.contextmanager
def _answering(size: int) -> Iterator[int]:
    """A real HTTP server on 127.0.0.1 (its port) that answers any GET with 200 and
    ``size`` bytes in 64 KiB writes, with no Content-Length (to its close, as a stream
    or a file served so is read); then stops by itself, or when its client hangs up."""

    class Streaming(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            left = size
            with contextlib.suppress(OSError):  # the probe hung up past its limit
                while left > 0:
                    self.wfile.write(b"x" * min(left, 64 << 10))
                    left -= 64 << 10

        def log_message(self, *args: object) -> None:
            """Silent."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Streaming)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_distq_probe_of_an_endpoint_answering_past_its_limit_exits_1_saying_so() -> None:
    """The probe read an answer whole, however long: pointed at the wrong port (a stream
    without end, a multi-GB file) it held all of it in memory, and printed it. Here 16
    MiB (bounded) was printed, exit 0. Now it reads 1 MiB and one byte, no further."""
    with _answering(16 << 20) as port:
        started = time.monotonic()
        done = probe("healthz", "--port", str(port), "--timeout", "20")
    url = f"http://127.0.0.1:{port}/healthz"
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-500:]
    assert done.stdout == "", len(done.stdout)
    assert done.stderr == (
        f"distq: {url} answered more than {MAX_ANSWER_BYTES:,} bytes (1 MiB), read no "
        f"further: is {url} a distq endpoint? one answers with a line of JSON; pass "
        "--port (or set DISTQ_METRICS_PORT to) the port the process serves /healthz and "
        "/readyz on\n"
    )
    assert time.monotonic() - started < 15


def test_a_probes_answer_of_the_most_bytes_is_read_whole() -> None:
    """The limit is far above distq's own answers: one of 1 MiB is still read."""
    with _answering(MAX_ANSWER_BYTES) as port:
        status, body = distq_probe.probe("/healthz", "127.0.0.1", port, 20)
    assert (status, len(body)) == (200, MAX_ANSWER_BYTES)
    with _answering(MAX_ANSWER_BYTES + 1) as port, pytest.raises(distq_probe.AnswerTooLarge):
        distq_probe.probe("/healthz", "127.0.0.1", port, 20)
