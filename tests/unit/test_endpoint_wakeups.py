"""What the metrics endpoint costs a process between scrapes, and per scrape.

Counted, not timed: a thread's wake-ups (``voluntary_ctxt_switches``) and the reads a
client needs for one answer, which do not move with the machine's other load.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from distq.health import ProcessHealth
from distq.http import Endpoint


def wakeups(thread: threading.Thread) -> int:
    """How often ``thread`` has gone to sleep and been woken, from its /proc status."""
    status = Path(f"/proc/self/task/{thread.native_id}/status")
    for line in status.read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in {status}")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_an_idle_endpoint_sleeps_until_a_client_comes() -> None:
    """The serving thread polled its socket every 0.1 s (socketserver's serve_forever),
    10 wake-ups a second in every process with metrics on, each taking the GIL from the
    task loop: about 0.9 ms of CPU a second measured in an idle worker. It now sleeps
    until a connection or close() wakes it, and answers as before."""
    endpoint = Endpoint("127.0.0.1", 0, CollectorRegistry(), ProcessHealth("worker")).start()
    try:
        serving = next(t for t in threading.enumerate() if t.name == "distq-http")
        time.sleep(0.2)  # settled into its wait
        before = wakeups(serving)
        time.sleep(1.0)
        assert wakeups(serving) - before <= 1
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(4096).startswith(b"HTTP/1.1 200 OK")
    finally:
        started = time.monotonic()
        endpoint.close()
    assert time.monotonic() - started < 5  # close() wakes it: no poll to wait out
    assert not serving.is_alive()


def test_a_kept_alive_scrape_gets_its_answer_in_one_piece() -> None:
    """The answer's headers and body went out in two writes: on a kept-alive connection
    (Prometheus's) the body then waited for the client's delayed ACK (Nagle), up to
    40 ms a request, and each answer took two sends. One write now carries both."""
    endpoint = Endpoint("127.0.0.1", 0, CollectorRegistry(), ProcessHealth("worker")).start()
    pieces: list[bytes] = []
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as client:
            for _ in range(20):
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                first = client.recv(65536)
                pieces.append(first)
                head, _, body = first.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                )
                while len(body) < length:  # read the rest, so the next answer starts clean
                    body += client.recv(65536)
    finally:
        endpoint.close()
    whole = [p for p in pieces if p.endswith(b"}\n")]
    assert len(whole) == len(pieces), [p[-40:] for p in pieces]
