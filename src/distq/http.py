"""The process's HTTP endpoint on ``DISTQ_METRICS_HOST:DISTQ_METRICS_PORT``.

============  ==========================================================================
``/metrics``  the process's Prometheus registry (prometheus-client's own exposition)
``/healthz``  liveness: 200 ``{"status": "ok"}``; 503 ``{"status": "stalled"}`` when a
              loop has not iterated for ``DISTQ_STALL_SECONDS``. Never asks the broker.
``/readyz``   readiness: 200 ``{"status": "ready"}`` while the connections to the broker
              work; 503 ``{"status": "not ready", "reason": ...}`` otherwise
anything else 404
============  ==========================================================================

A request only reads state the process keeps (:mod:`distq.health`): no broker call,
so probes cost the task path nothing. ``distq probe`` is its client (:mod:`distq.probe`,
which imports none of this module: a healthcheck's start stays short).

Clients that are slow or never finish cannot pile up: a connection has
``REQUEST_TIMEOUT`` seconds from accept to send its whole request (request line and
headers), however it trickles them, and a kept-alive one as long again from each answer
for its next request; past that it is closed. At most ``MAX_CONNECTIONS`` are served at
once (one more is closed at once, unanswered). An IPv6 ``DISTQ_METRICS_HOST`` (``::``,
``::1``) listens on IPv6; ``::`` takes IPv4 too where the system allows dual stack.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import json
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from distq.addresses import host_port, ipv6_listen_address
from distq.errors import ConfigError
from distq.health import ProcessHealth, Verdict

JSON = "application/json"
#: Seconds a connection has for its whole request (line and headers), counted from
#: accept, or for a kept-alive one from its last answer; then it is closed. Also the
#: bound on writing one answer.
REQUEST_TIMEOUT = 10.0
#: Connections served at once; one more is closed unanswered.
MAX_CONNECTIONS = 32


class _Server(ThreadingHTTPServer):
    timeout = 0  # handle_request() after the serving loop saw a connection: take it, no wait

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # too many at once: refused, not queued
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that hung up mid-answer (a timeout, a partition) is not an error
        worth a traceback on the console; anything else still prints one."""
        if isinstance(sys.exc_info()[1], ConnectionError):  # reset, broken pipe, aborted
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


def _ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).version == 6
    except ValueError:
        return False  # a name, or IPv4: as before


class Endpoint:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, health: ProcessHealth
    ) -> None:
        self.registry, self.health = registry, health
        handler = type("_Handler", (_Handler,), {"endpoint": self})
        try:
            if _ipv6(host):
                self._server: _Server = _Server6(
                    ipv6_listen_address(host.strip("[]"), port), handler
                )
            else:
                self._server = _Server((host, port), handler)
        except OSError as exc:
            fix = (
                "pick a free port"
                if exc.errno == errno.EADDRINUSE
                else "check DISTQ_METRICS_HOST: an address of this machine, 0.0.0.0 or ::"
            )
            raise ConfigError(
                f"DISTQ_METRICS_PORT {port}: cannot listen on {host_port(host.strip('[]'), port)} "
                f"(DISTQ_METRICS_HOST): {exc.strerror or exc}; {fix}"
            ) from None
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        # close() wakes the serving thread through this pair: it never polls meanwhile
        self._wake, self._waker = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="distq-http", daemon=True)

    def start(self) -> Endpoint:
        self._thread.start()
        return self

    def _serve(self) -> None:
        """Accept connections until :meth:`close`, asleep in between: socketserver's
        ``serve_forever`` woke every poll interval (0.1 s) to look for a shutdown, ten
        times a second in every process, each time taking the GIL from the task loop."""
        server = self._server
        with selectors.DefaultSelector() as selector:
            selector.register(server, selectors.EVENT_READ)
            selector.register(self._wake, selectors.EVENT_READ)
            while True:
                ready = [key.fileobj for key, _ in selector.select()]
                if self._wake in ready:
                    return
                server.handle_request()  # the one waiting (timeout 0: it does not wait)

    def close(self) -> None:
        if self._thread.is_alive():
            self._waker.send(b"x")
            self._thread.join()
        self._server.server_close()
        self._wake.close()
        self._waker.close()

    def routes(self) -> dict[str, Callable[[str], tuple[int, str, bytes]]]:
        return {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz}

    def _metrics(self, accept: str) -> tuple[int, str, bytes]:
        try:
            encoder, content_type = choose_encoder(accept)
        except (TypeError, ValueError):  # a version it cannot compare ("version=zz"): a 500
            encoder, content_type = choose_encoder("")  # the text format, as with no Accept
        return 200, content_type, encoder(self.registry)

    def _healthz(self, accept: str) -> tuple[int, str, bytes]:
        return _json(self.health.live())

    def _readyz(self, accept: str) -> tuple[int, str, bytes]:
        return _json(self.health.ready())


def _json(verdict: Verdict) -> tuple[int, str, bytes]:
    return (200 if verdict.ok else 503), JSON, json.dumps(verdict.body).encode() + b"\n"


class _DeadlineReader(socket.SocketIO):
    """The request's reads, each with the socket timeout set to what is left of the
    handler's deadline: a client that trickles a byte every few seconds, which a
    per-read timeout never stops, is cut at the deadline all the same."""

    def __init__(self, handler: _Handler) -> None:
        super().__init__(handler.connection, "rb")
        self._handler = handler

    def readinto(self, b: Any) -> int | None:
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete request within {self._handler.timeout:g} s")
        self._handler.connection.settimeout(left)
        return super().readinto(b)


class _Handler(BaseHTTPRequestHandler):
    endpoint: Endpoint
    protocol_version = "HTTP/1.1"  # keep-alive for Prometheus's scrapes
    # headers and body in one write (the stream is flushed after each request): written
    # apart, a kept-alive client's body waited for its delayed ACK, up to 40 ms; and no
    # Nagle wait for an answer larger than the buffer either
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    #: seconds for a whole request, from accept (or from the last answer, kept alive)
    timeout = REQUEST_TIMEOUT
    deadline = 0.0

    def setup(self) -> None:
        self.deadline = time.monotonic() + self.timeout
        super().setup()
        self.rfile.close()  # the stdlib's reader: reads with a per-read timeout only
        self.rfile = io.BufferedReader(_DeadlineReader(self))

    def handle_one_request(self) -> None:
        super().handle_one_request()  # a timeout ends the connection (close_connection)
        self.deadline = time.monotonic() + self.timeout  # kept alive: the next request's

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        route = self.endpoint.routes().get(self.path.partition("?")[0])
        if route is None:
            status, content_type, body = 404, JSON, b'{"status": "not found"}\n'
        else:
            try:
                status, content_type, body = route(self.headers.get("Accept", ""))
            except Exception as exc:  # a probe must answer, even about its own failure
                status, content_type = 500, JSON
                body = json.dumps({"status": "error", "reason": repr(exc)}).encode() + b"\n"
        self.connection.settimeout(self.timeout)  # the answer: written within as long
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a scrape every few seconds is not news."""
