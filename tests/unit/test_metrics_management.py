"""The RabbitMQ management API client: the request it sends and the errors it names.

A stub HTTP server stands in for the plugin here; tests/integration/test_prometheus.py
reads a real RabbitMQ's.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from certs import CertificateAuthority
from distq.commands import _in_flight
from distq.config import Settings
from distq.management import ManagementApi, ManagementError
from distq.transport.base import QueueStats
from launch import free_port


class Stub:
    def __init__(self) -> None:
        self.status = 200
        self.body: Any = {"messages_ready": 4, "messages_unacknowledged": 7, "consumers": 3}
        self.records: Any = {"items": [{"name": "jobs.held.w1.a", "messages": 2}], "page": 1}
        self.seen: list[tuple[str, str | None]] = []


def _send_json(handler: BaseHTTPRequestHandler, status: int, document: Any) -> None:
    """Answer a stand-in API's request with ``document`` as JSON."""
    body = json.dumps(document).encode()
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def stub() -> Iterator[tuple[Stub, int]]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.seen.append((self.path, self.headers.get("Authorization")))
            _send_json(self, state.status, state.records if "?" in self.path else state.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    yield state, int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_reads_the_queue_of_the_amqp_urls_vhost_with_basic_auth(stub: tuple[Stub, int]) -> None:
    state, port = stub
    api = ManagementApi(f"http://admin:p%40ss@127.0.0.1:{port}/", "amqp://u:x@h:5672/%2F", "jobs")
    queue = api.read()
    assert (queue.ready, queue.unacknowledged, queue.consumers) == (4, 7, 3)
    assert (queue.held, queue.in_flight) == (2, 9)  # tasks past a lease count as in flight
    (path, auth), (records, _) = state.seen[-2:]
    assert path == "/api/queues/%2F/jobs"
    assert auth == "Basic " + base64.b64encode(b"admin:p@ss").decode()
    assert records.startswith("/api/queues/%2F?page=1&page_size=500&use_regex=true")
    assert "&name=%5Ejobs%5C.held%5C.&" in records
    ManagementApi(f"http://a:b@127.0.0.1:{port}/rabbit", "amqp://h/prod", "jobs").read()
    assert state.seen[-2][0] == "/rabbit/api/queues/prod/jobs"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {}, "refused the user (HTTP 401); check the user and password"),
        (404, {}, "has no queue 'jobs' in vhost '/'"),
        (500, {}, "answered HTTP 500; is that the management API's address, and does the API run?"),
        (
            200,
            ["not", "a", "queue"],
            "answered an unexpected document; is that the management API's address",
        ),
        (200, {"messages_ready": 1e400}, "answered an unexpected document"),  # OverflowError
        (200, {"consumers": -5}, "answered an unexpected document"),
    ],
)
def test_errors_name_the_setting_and_never_the_password(
    stub: tuple[Stub, int], status: int, body: Any, expected: str
) -> None:
    state, port = stub
    state.status, state.body = status, body
    api = ManagementApi(f"http://admin:s3cret@127.0.0.1:{port}", "amqp://h/%2F", "jobs")
    with pytest.raises(ManagementError) as caught:
        api.read()
    message = str(caught.value)
    assert expected in message and "DISTQ_RABBITMQ_MANAGEMENT_URL" in message
    assert "s3cret" not in message and "admin:***@" in message


def test_another_queues_records_of_another_case_are_not_counted(stub: tuple[Stub, int]) -> None:
    """The API's name filter ignores case: queue jobs counted JOBS's held tasks as its own."""
    state, port = stub
    state.records = {
        "items": [{"name": "jobs.held.w1", "messages": 2}, {"name": "JOBS.held.w9", "messages": 3}]
    }
    api = ManagementApi(f"http://a:b@127.0.0.1:{port}", "amqp://h/%2F", "jobs")
    assert api.read().held == 2


def test_an_api_that_trickles_its_answer_is_given_up_on_within_the_timeout() -> None:
    """The timeout bounded each read: a byte every 1.5 s held `distq status` and a
    master's queue-depth samples for good."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            for byte in b"HTTP/1.0 200 OK\r\n\r\n{}":
                if stop.wait(0.5):
                    return
                conn.sendall(bytes([byte]))

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    api = ManagementApi(f"http://u:p@127.0.0.1:{port}", "amqp://h/%2F", "jobs", timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(ManagementError, match="did not answer within 1 s"):
            api.read()
        # within its 1 s, not the answer's 10 s (a stall of this process may add some)
        assert time.monotonic() - started < 4
        with pytest.raises(ManagementError, match="has not finished answering a request"):
            api.read()  # the late one still runs: no second thread behind it
    finally:
        stop.set()
        listener.close()


def test_no_answer_is_an_error_too() -> None:
    api = ManagementApi(f"http://u:s3cret@127.0.0.1:{free_port()}", "amqp://h/%2F", "jobs")
    with pytest.raises(ManagementError) as caught:
        api.read()
    assert "cannot reach the RabbitMQ management API" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "answer",
    [b"HELLO THERE\r\n\r\n", b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"a"'],
)
def test_a_broken_http_answer_is_an_error_not_a_crash(answer: bytes) -> None:
    """Not HTTP (another service on the port), or a body cut short: http.client's own
    exceptions went through, a traceback from `distq status` and, in a master, the end of
    its stats thread (no distq_queue_depth for the rest of its life)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    api = ManagementApi(f"http://u:s3cret@127.0.0.1:{port}", "amqp://h/%2F", "jobs")
    try:
        with pytest.raises(ManagementError, match="answered a broken HTTP response"):
            api.read()
    finally:
        listener.close()


def test_a_records_page_that_is_not_one_is_an_error(stub: tuple[Stub, int]) -> None:
    state, port = stub
    state.records = {"no": "items"}
    api = ManagementApi(f"http://admin:s3cret@127.0.0.1:{port}", "amqp://h/%2F", "jobs")
    with pytest.raises(ManagementError, match="unexpected page of queues"):
        api.read()


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    Thread(target=server.serve_forever, daemon=True).start()
    return server


def _redirecting(location: Callable[[str], str]) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 answering every GET with a 302 to ``location(path)``."""

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location(self.path))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return _serve(Redirect)


def test_a_redirect_is_an_error_and_the_password_does_not_follow_it() -> None:
    """urllib followed a 3xx to any host with the Authorization header: a misconfigured
    or hostile proxy got the monitoring user's password (in clear if sent to http://)."""
    seen: list[str | None] = []

    class Elsewhere(BaseHTTPRequestHandler):  # another host: records what it is sent
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"messages_unacknowledged": 0, "items": []}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    elsewhere = _serve(Elsewhere)
    other = f"http://localhost:{elsewhere.server_address[1]}"

    redirect = _redirecting(lambda path: other + path)
    try:
        port = redirect.server_address[1]
        api = ManagementApi(f"http://admin:s3cret@127.0.0.1:{port}", "amqp://h/%2F", "jobs")
        try:
            api.read()
            message = "read() followed the redirect"
        except ManagementError as exc:
            message = str(exc)
        # the other host was never asked, the password never sent there
        assert seen == [], f"the other host received Authorization: {seen}"
        assert f"answered a redirect (HTTP 302) to {other}/api/queues/%2F/jobs" in message
        assert "point DISTQ_RABBITMQ_MANAGEMENT_URL at the API itself" in message
        assert "s3cret" not in message and "admin:***@127.0.0.1" in message
    finally:
        for server in (redirect, elsewhere):
            server.shutdown()
            server.server_close()


def test_a_long_redirect_target_is_shown_by_its_start_and_length() -> None:
    """A Location of 1,000 characters was cut at 300 with no word of it (mask_url, which
    now cuts a URL past 300 and says its length, then cut again, its length dropped):
    the refusal says the target's start and its length, as of every long URL."""
    target = "http://elsewhere.invalid/" + "a" * 1000

    redirect = _redirecting(lambda path: target)
    try:
        port = redirect.server_address[1]
        api = ManagementApi(f"http://admin:s3cret@127.0.0.1:{port}", "amqp://h/%2F", "jobs")
        with pytest.raises(ManagementError) as caught:
            api.read()
        message = str(caught.value)
        shown = f"{target[:300]}... ({len(target):,} characters), which is not followed"
        assert f"answered a redirect (HTTP 302) to {shown}" in message, message
    finally:
        redirect.shutdown()
        redirect.server_close()


def test_an_https_api_is_checked_with_the_tls_files_of_the_settings(tmp_path: Path) -> None:
    """A management listener with a certificate of the broker's private CA was refused
    (system CAs only): DISTQ_TLS_CA_FILE was not used, nor the client certificate, so
    ``in_flight`` stayed unknown. This one requires a client certificate too."""
    ca = CertificateAuthority(tmp_path / "ca")
    files = ca.server()
    client_cert, client_key = ca.client()

    class Api(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            document: dict[str, Any] = (
                {"items": []} if "?" in self.path else {"messages_unacknowledged": 7}
            )
            _send_json(self, 200, document)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
    server.socket = context.wrap_socket(server.socket, server_side=True)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        stats = QueueStats(ready=0, in_flight=0, dead=0, consumers=0, in_flight_known=False)
        settings = Settings(
            transport="rabbitmq",
            amqp_url="amqps://u:p@localhost:5671/%2F",
            rabbitmq_management_url=f"https://admin:s3cret@localhost:{server.server_address[1]}",
            tls_ca_file=str(ca.cert),
            tls_cert_file=str(client_cert),
            tls_key_file=str(client_key),
        )
        assert _in_flight(stats, settings) == (7, "")  # distq status; the master's sampler too
        stranger = CertificateAuthority(tmp_path / "stranger", name="stranger CA")
        other = dataclasses.replace(settings, tls_ca_file=str(stranger.cert))
        in_flight, why = _in_flight(stats, other)
        assert in_flight is None
        assert "the server's certificate was refused" in why and "DISTQ_TLS_CA_FILE" in why
        assert "s3cret" not in why
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_without_a_user_asks_with_the_amqp_urls_user_and_password(
    stub: tuple[Stub, int], tmp_path: Path
) -> None:
    """The compose stack names no user in its management URL: the one RabbitMQ knows is
    DISTQ_AMQP_URL's, its password from DISTQ_AMQP_PASSWORD_FILE, so no URL of any
    container holds the password. A URL naming a user of its own keeps its credentials."""
    state, port = stub
    password = tmp_path / "amqp-password"
    password.write_text("p@ss:word\n")
    settings = Settings.load(
        {
            "DISTQ_TRANSPORT": "rabbitmq",
            "DISTQ_AMQP_URL": "amqp://distq@127.0.0.1:5672/%2F",
            "DISTQ_AMQP_PASSWORD_FILE": str(password),
            "DISTQ_RABBITMQ_MANAGEMENT_URL": f"http://127.0.0.1:{port}",
        }
    )
    api = ManagementApi.from_settings(settings)
    assert api is not None
    api.read()
    assert state.seen[-2][1] == "Basic " + base64.b64encode(b"distq:p@ss:word").decode()
    ManagementApi(f"http://monitor@127.0.0.1:{port}", "amqp://distq:pw@h/%2F", "jobs").read()
    assert state.seen[-2][1] == "Basic " + base64.b64encode(b"monitor:").decode()
    # the AMQP user named without a password: its password; no user anywhere: guest, as
    # pika logs in (it sent empty credentials, refused while AMQP worked)
    ManagementApi(f"http://distq@127.0.0.1:{port}", "amqp://distq:p%40w@h/%2F", "jobs").read()
    assert state.seen[-2][1] == "Basic " + base64.b64encode(b"distq:p@w").decode()
    ManagementApi(f"http://127.0.0.1:{port}", "amqp://h/%2F", "jobs").read()
    assert state.seen[-2][1] == "Basic " + base64.b64encode(b"guest:guest").decode()
