"""A manager master's replies that are malformed plain data (a dict keyed by a list, a
set of lists, an int that is not digits) are refused by the worker like a reply naming a
global: a lost connection, said in one line, never a traceback out of the worker."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Iterator
from multiprocessing import connection
from multiprocessing.connection import Connection

import pytest

from distq.config import Settings
from distq.errors import ConnectionFailed, TransportError
from distq.transport import manager_wire, open_transport
from launch import free_port

pytestmark = pytest.mark.integration

#: protocol 4 pickles of plain data that no pickle.dumps writes
MALFORMED = {
    "a dict keyed by a list": b"\x80\x04}]K\x01s.",  # EMPTY_DICT EMPTY_LIST 1 SETITEM
    "a set of a list": b"\x80\x04\x8f(]\x90.",  # EMPTY_SET MARK EMPTY_LIST ADDITEMS
    "an int of letters": b"Ixyz\n.",  # INT 'xyz'
}


def _settings() -> Settings:
    return Settings(
        transport="manager",
        authkey=secrets.token_hex(16).encode(),
        manager_address=("127.0.0.1", free_port()),
        queue="sec32",
    )


@contextlib.contextmanager
def _fake_master(settings: Settings, malformed_on: str, reply: bytes) -> Iterator[None]:
    """A master holding DISTQ_AUTHKEY that answers ``malformed_on`` (a method) with
    ``reply``, and the rest like a real one."""
    assert settings.authkey is not None
    authkey = settings.authkey
    server = socket.create_server(settings.manager_address)
    stop = threading.Event()

    def serve(conn: Connection) -> None:
        with conn, contextlib.suppress(EOFError, OSError):
            connection.deliver_challenge(conn, authkey)
            connection.answer_challenge(conn, authkey)
            while not stop.is_set():
                _, method, _, _ = conn.recv()
                if method == malformed_on:
                    conn.send_bytes(reply)
                    continue
                answer = {"create": ("1", manager_wire.EXPOSED), "fetch": []}.get(method)
                conn.send(("#RETURN", answer))

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                sock = server.accept()[0]
                sock.setblocking(True)
                conn = Connection(sock.detach())
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


@pytest.mark.parametrize("what", MALFORMED)
def test_a_malformed_reply_as_a_worker_connects_is_a_refused_connection(what: str) -> None:
    settings = _settings()
    refused = pytest.raises(ConnectionFailed, match=r"refused the reply of the master")
    with _fake_master(settings, "dummy", MALFORMED[what]), refused:
        open_transport(settings, "worker").close()


@pytest.mark.parametrize("what", MALFORMED)
def test_a_malformed_reply_to_a_call_is_a_lost_connection(what: str) -> None:
    settings = _settings()
    with _fake_master(settings, "fetch", MALFORMED[what]):
        remote = open_transport(settings, "worker")
        try:
            consumer = remote.consumer("c1")
            with pytest.raises(TransportError, match=r"refused a reply of the master"):
                consumer.fetch(5, 0.1)
            consumer.close()
        finally:
            remote.close()
