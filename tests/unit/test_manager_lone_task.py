"""What a lone task's round trip on manager costs, in what it runs: each
check fails on a path that runs a step no task needs."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from multiprocessing import connection, reduction
from typing import Any

import pytest

from distq.transport import manager, manager_broker
from distq.transport import manager_wire as wire
from distq.transport.manager_broker import QueueBroker


@pytest.fixture
def pair() -> Iterator[tuple[wire.ClientConnection, wire.ServedConnection]]:
    worker, master = socket.socketpair()
    client = wire.ClientConnection(worker.detach())
    served = wire.ServedConnection(master.detach(), "127.0.0.1:1", "127.0.0.1")
    yield client, served
    client.close()
    served.close()


def test_a_manager_message_is_pickled_without_the_forking_pickler(
    pair: tuple[wire.ClientConnection, wire.ServedConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request and its reply are plain data: ``multiprocessing``'s ForkingPickler (a
    pickler class made, and its dispatch table copied, per message) took 2.5 µs a message
    where ``pickle.dumps`` takes 0.5, twice on a lone task's round trip."""

    def forking(obj: object, protocol: int | None = None) -> memoryview:
        raise AssertionError("pickled by ForkingPickler")

    monkeypatch.setattr(reduction.ForkingPickler, "dumps", forking)
    client, served = pair
    request: tuple[object, ...] = (
        "id",
        "settle_fetch",
        ("q", "c1", [(1, "r", b"result", None, 0.0, None)], 1, 30.0),
        {},
    )
    client.send(request)
    assert served.recv() == request
    reply = ("#RETURN", [(2, b"task", False)])
    served.send(reply)
    assert client.recv() == reply


def test_a_manager_message_is_read_without_the_stdlib_s_buffers(
    pair: tuple[wire.ClientConnection, wire.ServedConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Connection.recv_bytes`` read a message's length and body each into a
    ``BytesIO`` of its own, through three calls: 4 µs of a served request's 9. The
    message is read as it framed it, a frame over the limit still refused unread, and
    a close before a message still the peer's ``EOFError``."""

    def buffered(self: object, size: int) -> object:
        raise AssertionError("read through Connection._recv")

    monkeypatch.setattr(connection.Connection, "_recv", buffered)
    client, served = pair
    for body in (b"", b"x" * 70_000):
        client.send_bytes(body)
        assert served.message() == body
    served.frame_limit = 10
    client.send_bytes(b"y" * 11)
    with pytest.raises(wire.FrameTooLarge, match="a message of 11 bytes"):
        served.message()
    other, theirs = socket.socketpair()
    with wire.ServedConnection(other.detach(), "127.0.0.1:2") as read:
        theirs.close()
        with pytest.raises(EOFError):
            read.message()


class _NoAlias(list):  # type: ignore[type-arg]
    """``list`` in :mod:`manager_broker`, whose generic alias fails the test."""

    def __class_getitem__(cls, item: object) -> Any:
        raise AssertionError(f"list[{item}] made on the broker's path")


def test_a_settle_makes_its_lists_without_a_generic_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    """``list[int]()`` calls a generic alias, which sets ``__orig_class__`` on the new
    list, fails and clears an ``AttributeError`` in C: 0.4 µs each, two a settle, on the
    served thread before the result's waiter is woken."""
    broker = QueueBroker()
    broker.hold("r")
    broker.put("q", [b"task"])
    ((token, _, _),) = broker.fetch("q", "c1", 1, 0.0, 30.0)
    monkeypatch.setattr(manager_broker, "list", _NoAlias, raising=False)
    assert broker.settle("q", "c1", [(token, "r", b"result", None, 0.0, None)]) == []
    assert broker.get("r", 1, 0.0) == [b"result"]


def test_a_small_manager_message_is_read_in_one_read_call(
    pair: tuple[wire.ClientConnection, wire.ServedConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its length, then its body, were two ``read()`` calls: a lone task's request and
    reply cost four where two do. Whatever a read takes past a message is the next
    one's; a large message is still read whole, one over the limit still refused."""
    client, served = pair
    reads: list[int] = []
    read = os.read

    def counted(handle: int, size: int) -> bytes:
        reads.append(size)
        return read(handle, size)

    monkeypatch.setattr(os, "read", counted)
    request: tuple[object, ...] = (
        "id",
        "settle_fetch",
        ("q", "c1", [(1, "r", b"result", None, 0.0, None)], 1),
        {},
    )
    client.send(request)
    assert served.recv() == request
    assert len(reads) == 1, reads
    large = b"z" * 90_000  # over one read
    for body in (b"a", large, b"", b"b" * 20_000):  # sent at once: read as they were framed
        client.send_bytes(body)
    assert [served.message() for _ in range(4)] == [b"a", large, b"", b"b" * 20_000]
    served.frame_limit = 10
    client.send_bytes(b"y" * 11)
    with pytest.raises(wire.FrameTooLarge, match="a message of 11 bytes"):
        served.message()


def test_a_settle_wait_counted_notifies_only_a_stop_that_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each lone task's served settle-then-fetch is counted in and out (``_SettleWaits``):
    its end notified a condition on an ``RLock`` that only a stopping master waits on:
    4,800 instructions a task on the served thread. A stopping master still hears the last
    one end."""
    waits = manager._SettleWaits()

    def notified(self: threading.Condition, n: int = 1) -> None:
        raise AssertionError("notified with no one waiting")

    with monkeypatch.context() as patched:
        patched.setattr(threading.Condition, "notify_all", notified)
        patched.setattr(threading.Condition, "notify", notified)
        waits.begin()
        waits.end()
    waits.begin()
    answered: list[bool] = []
    stop = threading.Thread(target=lambda: answered.append(waits.answered(30)))
    stop.start()
    deadline = time.monotonic() + 10
    while not waits._asked:  # the stop waits
        assert time.monotonic() < deadline
        time.sleep(0.01)
    waits.end()
    stop.join(30)
    assert answered == [True]
    assert waits.answered(0)


def test_a_manager_message_is_written_without_the_stdlib_s_calls(
    pair: tuple[wire.ClientConnection, wire.ServedConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Connection.send_bytes`` checked, framed and wrote a message through five calls
    of Python (``_check_closed``, ``_check_writable``, ``_send_bytes``, ``_send``), each
    message of a lone task's two. Its framing kept: the stdlib's reader reads it."""

    def stdlib(self: object, buf: object) -> None:
        raise AssertionError("written through Connection._send_bytes")

    monkeypatch.setattr(connection.Connection, "_send_bytes", stdlib)
    client, served = pair
    for reply in (("#RETURN", [(2, b"task", False)]), ("#RETURN", [(3, b"t" * 70_000, True)])):
        served.send(reply)
        assert connection.Connection.recv(client) == reply  # the stdlib's framing, read
    served.close()
    with pytest.raises(OSError, match="handle is closed"):
        served.send(("#RETURN", None))


def test_a_message_kept_past_the_last_is_not_read_once_its_connection_is_closed(
    pair: tuple[wire.ClientConnection, wire.ServedConnection],
) -> None:
    """Two requests in one segment: the first read takes both, the second kept for the
    next call. Once the connection was closed, that call read the kept one as if it were
    open, where ``recv_bytes`` (and this one, with none kept) says the handle is closed."""
    client, served = pair
    os.write(client.fileno(), b"".join(len(b).to_bytes(4, "big") + b for b in (b"a", b"b")))
    assert served.message() == b"a"
    served.close()
    with pytest.raises(OSError, match="handle is closed"):
        served.message()


def test_a_stop_just_after_a_settle_wait_is_read_waits_for_its_answer(
    pair: tuple[wire.ClientConnection, wire.ServedConnection],
) -> None:
    """A settle-then-fetch that may wait was counted (``_SettleWaits.begin``) only after
    the master's stop flag was read unset: a stop between the two found none to wait
    for and let the master exit before that call's reply, its settles run; its worker,
    seeing the close, counted the batch handed back. Counted first, it is waited for."""
    client, served = pair
    waits = manager._SettleWaits()
    answered: list[bool] = []

    class StopsAfterItsCheck(threading.Event):
        def is_set(self) -> bool:
            was = super().is_set()
            if not answered:  # the master stops as this request's check returns
                self.set()
                answered.append(waits.answered(0.05))
            return was

    until = manager._ServedUntil(StopsAfterItsCheck(), served, None, "127.0.0.1:1", waits)
    request: tuple[object, ...] = ("id", "settle_fetch", ("q", "c1", [], 1), {"wait": 1.0})
    client.send(request)
    assert until.recv() == request
    assert answered == [False]  # the stop waited for it
    until.send(("#RETURN", []))
    assert client.recv() == ("#RETURN", [])
    assert waits.answered(0)
    client.send(request)  # once the master stopped: not served, and not waited for
    with pytest.raises(EOFError, match="the master stopped"):
        until.recv()
    assert waits.answered(0)
