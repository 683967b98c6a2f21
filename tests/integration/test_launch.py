"""tests/launch starts real servers on 127.0.0.1 that a test may crash, pause and restart."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest
import redis
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout
from pika.exceptions import AMQPConnectionError
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from certs import CertificateAuthority
from launch import LocalPrometheus, LocalRabbitMQ, LocalRedis, LocalServer, ServerError, free_port
from launch.redis_server import NO_RETRY

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def killed(server: LocalServer) -> None:
    """SIGKILL ``server``, as a crash would: its process is gone, and it knows it."""
    pid = server.pid
    assert pid is not None
    server.kill()
    assert server.pid is None
    assert_gone(pid)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --- Redis ----------------------------------------------------------------------------


def test_redis_restart_after_a_crash_keeps_only_what_was_saved(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path, password="s3cret").start()
    try:
        assert urlsplit(server.url).hostname == "127.0.0.1"
        assert server.version[0].isdigit()
        client = server.client()
        client.set("saved", "1")
        client.save()
        client.set("unsaved", "1")

        killed(server)
        with pytest.raises(redis.ConnectionError):
            client.ping()

        server.restart()
        assert client.get("saved") == b"1"  # same port, same directory: dump.rdb loaded
        assert client.get("unsaved") is None  # a crash loses the rest: it really restarted
        client.close()
    finally:
        server.stop()


def test_redis_pause_holds_requests_until_resume(tmp_path: Path) -> None:
    with LocalRedis(tmp_path).start() as server:
        client = server.client(socket_timeout=0.5)
        try:
            server.pause()
            with pytest.raises(redis.TimeoutError):
                client.ping()
            server.resume()
            assert client.ping() is True
        finally:
            client.close()


def test_stop_ends_the_server_once_and_for_all(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path).start()
    pid = server.pid
    assert pid is not None
    server.stop()
    server.stop()  # idempotent
    assert server.pid is None
    assert_gone(pid)
    assert not listening(server.port)
    with pytest.raises(ServerError, match="not running"):
        server.pause()


def test_a_server_that_cannot_start_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path, extra_args=["--no-such-directive", "1"])
    with pytest.raises(ServerError, match=r"(?s)exited with 1.*no-such-directive"):
        server.start(timeout=20)
    assert server.pid is None


def test_redis_tls_answers_over_tls_only(tmp_path: Path, ca: CertificateAuthority) -> None:
    with LocalRedis(tmp_path, password="pw", tls=ca.server()).start() as server:
        assert server.url.startswith("rediss://")
        assert urlsplit(server.url).hostname == "127.0.0.1"
        client = server.client()
        assert client.ping() is True
        client.close()

        cert, key = ca.client()
        mutual = server.client(ssl_certfile=str(cert), ssl_keyfile=str(key))
        assert mutual.ping() is True
        mutual.close()

        plain = redis.Redis(
            host="127.0.0.1", port=server.port, password="pw", socket_timeout=2, retry=NO_RETRY
        )
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            plain.ping()
        plain.close()

        stranger = CertificateAuthority(tmp_path / "other-ca")
        untrusting = redis.Redis.from_url(
            server.url, ssl_ca_certs=str(stranger.cert), retry=NO_RETRY
        )
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            untrusting.ping()
        untrusting.close()


# --- RabbitMQ -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rabbitmq(
    tmp_path_factory: pytest.TempPathFactory, ca: CertificateAuthority
) -> Iterator[LocalRabbitMQ]:
    """One private node for this module (a node takes seconds of CPU to boot)."""
    server = LocalRabbitMQ(
        tmp_path_factory.mktemp("rabbitmq"),
        plugins=["rabbitmq_management", "rabbitmq_prometheus"],
        tls=ca.server(),
    )
    server.start()
    yield server
    if server.pid is not None:
        server.kill()  # a throw-away node: no graceful shutdown (seconds with management)
    server.stop()  # and its epmd


def quick_parameters(url: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 1
    params.stack_timeout = 1.5
    return params


def test_rabbitmq_answers_over_tls_and_plain_tcp(rabbitmq: LocalRabbitMQ, tmp_path: Path) -> None:
    assert rabbitmq.url.startswith("amqps://")
    for url in (rabbitmq.url, rabbitmq.plain_url):
        assert urlsplit(url).hostname == "127.0.0.1"

    connection = rabbitmq.connect()
    try:
        channel = connection.channel()
        queue = channel.queue_declare(queue="", exclusive=True).method.queue
        channel.basic_publish("", queue, b"over tls")
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None and body == b"over tls"
    finally:
        connection.close()
    pika.BlockingConnection(quick_parameters(rabbitmq.plain_url)).close()

    stranger = CertificateAuthority(tmp_path / "other-ca")
    params = rabbitmq.parameters()
    untrusting = ssl.create_default_context(cafile=str(stranger.cert))
    params.ssl_options = pika.SSLOptions(untrusting, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        pika.BlockingConnection(params)


def get_json(url: str, path: str) -> Any:
    parts = urlsplit(url)
    request = urllib.request.Request(f"http://{parts.hostname}:{parts.port}{path}")
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_rabbitmq_plugins_answer_on_loopback(rabbitmq: LocalRabbitMQ) -> None:
    url = rabbitmq.management_url
    assert url is not None
    assert urlsplit(url).hostname == "127.0.0.1"
    assert get_json(url, "/api/overview")["node"] == rabbitmq.node
    wrong = url.replace(rabbitmq.password, "wrong")
    with pytest.raises(urllib.error.HTTPError, match="401"):
        get_json(wrong, "/api/overview")

    assert rabbitmq.prometheus_url is not None
    assert urlsplit(rabbitmq.prometheus_url).hostname == "127.0.0.1"
    with urllib.request.urlopen(rabbitmq.prometheus_url + "/metrics", timeout=10) as response:
        assert b"rabbitmq_" in response.read()


def test_rabbitmq_pause_holds_new_connections_until_resume(rabbitmq: LocalRabbitMQ) -> None:
    rabbitmq.pause()
    try:
        with pytest.raises((AMQPConnectionError, AMQPConnectorStackTimeout)):
            pika.BlockingConnection(quick_parameters(rabbitmq.plain_url))
    finally:
        rabbitmq.resume()
    rabbitmq.connect().close()


def test_rabbitmq_restart_after_a_crash_keeps_durable_queues(rabbitmq: LocalRabbitMQ) -> None:
    connection = rabbitmq.connect()
    channel = connection.channel()
    channel.confirm_delivery()  # the broker confirms a persistent message once it is on disk
    channel.queue_declare("launch-durable", durable=True)
    channel.queue_declare("launch-transient", durable=False)
    channel.basic_publish(
        "", "launch-durable", b"kept", properties=pika.BasicProperties(delivery_mode=2)
    )
    connection.close()
    assert "launch-durable" in rabbitmq.ctl("list_queues", "name")  # ctl reaches this node
    # a queue declared a moment ago is in Mnesia's log, not yet on disk: a crash can lose
    # it (RabbitMQ's window, not the launcher's). Flush the log: then a loss is ours.
    rabbitmq.ctl("eval", "mnesia:sync_log().")

    killed(rabbitmq)
    assert not listening(rabbitmq.tcp_port)

    rabbitmq.restart()
    connection = rabbitmq.connect()
    try:
        channel = connection.channel()
        kept = channel.queue_declare("launch-durable", durable=True, passive=True)
        assert kept.method.message_count == 1
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="404"):
            channel.queue_declare("launch-transient", passive=True)
    finally:
        connection.close()


# --- Prometheus -----------------------------------------------------------------------


def test_prometheus_scrapes_a_target_and_answers_queries(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    Gauge("launch_check_value", "A value for the launcher's test.", registry=registry).set(42)
    port = free_port()
    http, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    config = (
        "scrape_configs:\n"
        "  - job_name: launch-check\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']\n"
    )
    try:
        with LocalPrometheus(tmp_path, config).start() as prometheus:
            assert urlsplit(prometheus.url).hostname == "127.0.0.1"
            samples = wait_for(lambda: prometheus.query("launch_check_value"), seconds=30)
            assert samples[0]["metric"]["job"] == "launch-check"
            assert samples[0]["value"][1] == "42"
            (target,) = prometheus.targets()
            assert target["health"] == "up"
            with pytest.raises(ServerError, match="parse error"):
                prometheus.query("launch_check_value{")
    finally:
        http.shutdown()
        thread.join(5)


def wait_for(probe: Callable[[], Any], seconds: float) -> Any:
    """``probe()`` once it returns something truthy, polling; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (result := probe()):
        assert time.monotonic() < deadline, f"nothing within {seconds} s"
        time.sleep(0.2)
    return result


@pytest.mark.parametrize(
    ("kind", "taken"), [("rabbitmq", "_dist_port"), ("rabbitmq", "tcp_port"), ("redis", "port")]
)
def test_a_port_taken_before_a_servers_first_start_is_picked_again(
    tmp_path: Path, kind: str, taken: str
) -> None:
    """free_port() saw a port free; with several test runs on one host another process
    took it before the server did: "dist_port_already_used, 25665, not_erlang", and each
    of the module's tests an error (1 of 16 runs here, beside a CI run). A first start
    goes again on new ports; a restart keeps its own (its clients' URLs name them)."""
    server: LocalServer = (
        LocalRabbitMQ(tmp_path / "rabbitmq") if kind == "rabbitmq" else LocalRedis(tmp_path)
    )
    port = getattr(server, taken)
    with socket.create_server(("127.0.0.1", port)):  # another process's, meanwhile
        try:
            server.start(120)
            assert getattr(server, taken) != port
            first = server.port
            server.restart(120)
            assert server.port == first
            assert listening(server.port)
        finally:
            server.stop()
