"""The RabbitMQ management API client: the request it sends and the errors it names.

A stub HTTP server stands in for the plugin here; tests/integration/test_prometheus.py
reads a real RabbitMQ's.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import pytest

from distq.management import ManagementApi, ManagementError
from launch import free_port


class Stub:
    def __init__(self) -> None:
        self.status = 200
        self.body: Any = {"messages_ready": 4, "messages_unacknowledged": 7, "consumers": 3}
        self.records: Any = {"items": [{"name": "jobs.held.w1.a", "messages": 2}], "page": 1}
        self.seen: list[tuple[str, str | None]] = []


@pytest.fixture
def stub() -> Iterator[tuple[Stub, int]]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps(state.records if "?" in self.path else state.body).encode()
            self.send_response(state.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

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
        (500, {}, "answered HTTP 500"),
        (200, ["not", "a", "queue"], "answered an unexpected document"),
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


def test_no_answer_is_an_error_too() -> None:
    api = ManagementApi(f"http://u:s3cret@127.0.0.1:{free_port()}", "amqp://h/%2F", "jobs")
    with pytest.raises(ManagementError) as caught:
        api.read()
    assert "cannot reach the RabbitMQ management API" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_records_page_that_is_not_one_is_an_error(stub: tuple[Stub, int]) -> None:
    state, port = stub
    state.records = {"no": "items"}
    api = ManagementApi(f"http://admin:s3cret@127.0.0.1:{port}", "amqp://h/%2F", "jobs")
    with pytest.raises(ManagementError, match="unexpected page of queues"):
        api.read()
