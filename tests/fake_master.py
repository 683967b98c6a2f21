"""A fake manager master for tests of what a worker does with a peer's odd replies: it
holds DISTQ_AUTHKEY and answers one method as the test says, the rest like a real one."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from multiprocessing import connection
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

import distq
from distq.config import Settings
from distq.errors import TransportError
from distq.transport import manager_wire, open_transport
from launch import free_port


def fake_settings(queue: str = "distq", **more: object) -> Settings:
    """Settings of a manager master on a free local port, with a fresh DISTQ_AUTHKEY, and
    of its workers and clients: a master this process hosts, or a :func:`fake_master`."""
    return Settings(
        transport="manager",
        authkey=secrets.token_hex(16).encode(),
        manager_address=("127.0.0.1", free_port()),
        queue=queue,
        **more,  # type: ignore[arg-type]
    )


def manager_env(settings: Settings) -> dict[str, str]:
    """The environment of a distq subprocess on ``settings``' master: no other DISTQ_*
    variable, this checkout's sources first."""
    assert settings.authkey is not None
    host, port = settings.manager_address
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    env.update(
        DISTQ_TRANSPORT="manager",
        DISTQ_AUTHKEY=settings.authkey.decode(),
        DISTQ_MANAGER_ADDRESS=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        DISTQ_QUEUE=settings.queue,
        PYTHONPATH=str(Path(distq.__file__).resolve().parents[1]),
    )
    return env


@contextlib.contextmanager
def accepting(
    address: tuple[str, int], handle: Callable[[socket.socket], object]
) -> Iterator[threading.Event]:
    """A TCP server on ``address`` that hands each connection to ``handle`` (in its
    accepting thread) until the block ends; yields the event set then."""
    server = socket.create_server(address)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                handle(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


@contextlib.contextmanager
def fake_master(
    settings: Settings,
    odd_on: str,
    reply: bytes,
    stall_on: str | None = None,
    *,
    framed: bool = True,
) -> Iterator[None]:
    """A master holding DISTQ_AUTHKEY that answers ``odd_on`` (a method) with the bytes
    ``reply`` (a pickle, or not; not ``framed``: written as they are, a length of its
    choosing first), never answers ``stall_on``, and answers the rest like a real one."""
    assert settings.authkey is not None
    authkey = settings.authkey
    stop = threading.Event()

    def serve(conn: Connection) -> None:
        with conn, contextlib.suppress(EOFError, OSError):
            connection.deliver_challenge(conn, authkey)
            connection.answer_challenge(conn, authkey)
            while not stop.is_set():
                _, method, _, _ = conn.recv()
                if method == stall_on:
                    stop.wait(60)
                    return
                if method == odd_on:
                    if framed:
                        conn.send_bytes(reply)
                    else:
                        os.write(conn.fileno(), reply)
                    continue
                answer = {"create": ("1", manager_wire.EXPOSED), "fetch": []}.get(method)
                conn.send(("#RETURN", answer))

    def start(sock: socket.socket) -> None:
        sock.setblocking(True)
        threading.Thread(target=serve, args=(Connection(sock.detach()),), daemon=True).start()

    try:
        with accepting(settings.manager_address, start):
            yield
    finally:
        stop.set()


def fetch_refused(settings: Settings, reply: bytes) -> None:
    """A worker's fetch from a :func:`fake_master` that answers it with ``reply``: asserts
    the worker refuses the reply (a :class:`TransportError`), then closes its consumer."""
    with fake_master(settings, "fetch", reply):
        remote = open_transport(settings, "worker")
        try:
            consumer = remote.consumer("c1")
            with pytest.raises(TransportError, match=r"refused a reply of the master"):
                consumer.fetch(5, 0.1)
            consumer.close()
        finally:
            remote.close()
