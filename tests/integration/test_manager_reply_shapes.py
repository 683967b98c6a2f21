"""A fake master holding DISTQ_AUTHKEY that answers with well-formed plain data of the
wrong shape (an exception of its choosing, an error that is not one, a kind of reply
the protocol has not, something that is not a ``(kind, result)`` pair) is refused as a
reply that does not load: one clear :class:`TransportError` line, never the builtin
exception a worker died of with a traceback."""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest

from distq.config import Settings
from distq.errors import ConnectionFailed, TransportError
from distq.transport import open_transport
from distq.transport.base import Delivery, Producer, Settlement
from distq.transport.manager import ManagerConsumer
from fake_master import fake_master, fake_settings, fetch_refused

pytestmark = pytest.mark.integration

#: replies a key holder may send that load, and that no distq master sends
WRONG_SHAPES: dict[str, Any] = {
    "an error it chose": ("#ERROR", KeyError()),
    "an error of text": ("#ERROR", "text"),
    "an unknown kind": ("#WHAT", None),
    "a traceback not text": ("#TRACEBACK", 5),
    "a proxy": ("#PROXY", ("x", "y")),
    "not a pair": "text",
    "nothing": None,
}


def _settings() -> Settings:
    return fake_settings("mgrfix32", lease_seconds=3.0)


def _fake_master(
    settings: Settings, odd_on: str, reply: Any, stall_on: str | None = None
) -> contextlib.AbstractContextManager[None]:
    """:func:`fake_master` answering ``odd_on`` with a pickle of ``reply``."""
    return fake_master(settings, odd_on, pickle.dumps(reply, protocol=4), stall_on)


def _create_refused(reply: Any) -> None:
    """A worker's first consumer, whose ``create`` the fake master answers with a pickle
    of ``reply``: asserts the worker refuses it as a connection refused."""
    settings = _settings()
    with _fake_master(settings, "create", reply):
        remote = open_transport(settings, "worker")
        try:
            with pytest.raises(ConnectionFailed, match=r"refused the reply of the master"):
                remote.consumer("c1")
        finally:
            remote.close()


@pytest.mark.parametrize("what", WRONG_SHAPES)
def test_a_wrong_shaped_reply_as_a_worker_connects_is_a_refused_connection(what: str) -> None:
    settings = _settings()
    refused = pytest.raises(ConnectionFailed, match=r"refused the reply of the master")
    with _fake_master(settings, "dummy", WRONG_SHAPES[what]), refused:
        open_transport(settings, "worker").close()


@pytest.mark.parametrize("what", WRONG_SHAPES)
def test_a_wrong_shaped_reply_to_create_is_a_refused_connection(what: str) -> None:
    _create_refused(WRONG_SHAPES[what])


@pytest.mark.parametrize("what", WRONG_SHAPES)
def test_a_wrong_shaped_reply_to_a_call_is_a_refused_reply(what: str) -> None:
    fetch_refused(_settings(), pickle.dumps(WRONG_SHAPES[what], protocol=4))


@pytest.mark.parametrize("what", WRONG_SHAPES)
def test_a_wrong_shaped_reply_as_a_consumer_closes_is_no_error(what: str) -> None:
    settings = _settings()
    with _fake_master(settings, "disconnect", WRONG_SHAPES[what]):
        remote = open_transport(settings, "worker")
        try:
            remote.consumer("c1").close()  # what it held goes back as its lease runs out
        finally:
            remote.close()


@pytest.mark.timeout(60)
def test_the_keepers_new_proxy_waits_for_the_master_within_its_bound() -> None:
    # the keeper's renewals wait a third of the lease (1 s here) for the master; the
    # proxy it makes first (after a failure, or its first) was made outside that
    # bound: a master that answered the handshake, then not `create`, held it 30 s
    settings = _settings()
    with _fake_master(settings, "", None, stall_on="create"):
        remote = open_transport(settings, "worker")
        try:
            consumer: Any = ManagerConsumer.__new__(ManagerConsumer)  # one the keeper renews
            consumer._id = "c1.abc"
            started = time.monotonic()
            with pytest.raises(TransportError, match=r"did not answer within 1 s"):
                remote.heartbeat([consumer])
            took = time.monotonic() - started
            assert took < 15, f"the keeper waited {took:.1f} s for a proxy"
        finally:
            remote.close()


def _settled(consumer: Any) -> None:
    consumer.settle([Settlement(Delivery(body=b"b", tag=1), reply_to="r", result=b"x")])


def _settled_late(consumer: Any) -> None:
    retry = Settlement(Delivery(body=b"b", tag=1), retry=b"again")
    consumer.settle_then_fetch([retry], 5)


#: (the method answered, its answer, what calls it): a result of the wrong shape (a body
#: of any kind is the caller's to read: it reads one that is not bytes as malformed)
MISSHAPEN_RESULTS: dict[str, tuple[str, Any, Callable[[Any, Any, Any], object]]] = {
    "fetch: a tag not a token": ("fetch", [("x", b"b", False)], lambda t, c, p: c.fetch(5, 0)),
    "fetch: no list": ("fetch", 5, lambda t, c, p: c.fetch(5, 0)),
    "fetch: no triple": ("fetch", [(1, b"b")], lambda t, c, p: c.fetch(5, 0)),
    "gone: no list": ("gone", 5, lambda t, c, p: c.gone(["r"])),
    "gone: a list in it": ("gone", [["r"]], lambda t, c, p: c.gone(["r"])),
    "settle: no list": ("settle", 5, lambda t, c, p: _settled(c)),
    "settle_fetch_late: no pair": ("settle_fetch_late", 5, lambda t, c, p: _settled_late(c)),
    "stats: no four counts": ("stats", "abc", lambda t, c, p: t.stats()),
    "forget_orphans: no count": ("forget_orphans", "x", lambda t, c, p: t.forget_orphans("r")),
    "peek: no list": ("peek", 5, lambda t, c, p: t.dead_letters()),
    "get: no list": ("get", 5, lambda t, c, p: p.results(5, 0)),
    "withdraw: no list": ("withdraw", 5, lambda t, c, p: p.withdraw([b"x"])),
}


@pytest.mark.parametrize("what", MISSHAPEN_RESULTS)
def test_a_result_of_the_wrong_shape_is_a_refused_reply(what: str) -> None:
    # a transport's caller catches TransportError (distq.errors: driver exceptions are
    # translated at the transport boundary); a worker's `gone` escaped, its slot stopped
    method, result, call = MISSHAPEN_RESULTS[what]
    settings = _settings()
    with _fake_master(settings, method, ("#RETURN", result)):
        remote = open_transport(settings, "worker")
        try:
            consumer = remote.consumer("c1")
            producer = remote.producer("r")
            with pytest.raises(TransportError, match=r"refused a reply of the master"):
                call(remote, consumer, producer)
        finally:
            remote.close()


@contextlib.contextmanager
def _master_gone(settings: Settings) -> Iterator[Producer]:
    """A worker's producer whose master closed: its call since failed (the master is
    gone, its connection with it), and its next connects afresh."""
    first = open_transport(settings, "master")
    remote = open_transport(settings, "worker")
    try:
        producer = remote.producer("r")
        first.close()
        with pytest.raises(TransportError):  # the master is gone: its connection with it
            producer.results(5, 0)
        yield producer
    finally:
        remote.close()
        first.close()


@pytest.mark.timeout(60)
def test_a_call_that_connects_afresh_to_a_master_of_another_key_is_refused_in_one_line() -> None:
    # a proxy whose connection failed connects afresh at its next call (an executor's
    # producer, the keeper's hand-backs through a slot's consumer): a master started
    # since with another DISTQ_AUTHKEY failed that handshake with multiprocessing's
    # AuthenticationError, which _call let through (the keeper: "a bug in distq")
    settings = _settings()
    with _master_gone(settings) as producer:
        other = dataclasses.replace(settings, authkey=secrets.token_hex(16).encode())
        second = open_transport(other, "master")
        try:
            with pytest.raises(TransportError, match=r"rejected DISTQ_AUTHKEY"):
                producer.results(5, 0)
        finally:
            second.close()


@pytest.mark.timeout(60)
def test_a_call_that_connects_afresh_to_another_service_is_refused_in_one_line() -> None:
    settings = _settings()
    with (
        _master_gone(settings) as producer,
        socket.create_server(settings.manager_address) as server,
    ):

        def greet() -> None:  # a service that speaks multiprocessing's framing, not distq
            with contextlib.suppress(OSError):
                sock = server.accept()[0]
                with Connection(sock.detach()) as conn:
                    conn.send_bytes(b"hello")
                    conn.poll(5)

        thread = threading.Thread(target=greet, daemon=True)
        thread.start()
        with pytest.raises(TransportError, match=r"other than a distq master's handshake"):
            producer.results(5, 0)
        thread.join(10)


@pytest.mark.parametrize("result", [5, None, ("1",), "ab"], ids=["a number", "none", "one", "text"])
def test_a_create_result_of_the_wrong_shape_is_a_refused_connection(result: Any) -> None:
    _create_refused(("#RETURN", result))


@pytest.mark.timeout(60)
def test_closing_in_another_thread_against_a_master_of_another_key_raises_nothing() -> None:
    # a close made in a thread of its own (a worker's distq-close threads, an
    # executor's shutdown) connects afresh: a master started since with another key
    # failed that handshake, and its AuthenticationError escaped close()
    settings = _settings()
    first = open_transport(settings, "master")
    remote = open_transport(settings, "worker")
    second: Any = None
    try:
        producer, consumer = remote.producer("r"), remote.consumer("c1")
        first.close()
        second = open_transport(
            dataclasses.replace(settings, authkey=secrets.token_hex(16).encode()), "master"
        )
        failed: list[BaseException] = []

        def close(what: Any) -> None:
            try:
                what.close()
            except BaseException as exc:  # what the test looks for
                failed.append(exc)

        for what in (producer, consumer):
            thread = threading.Thread(target=close, args=(what,))
            thread.start()
            thread.join(30)
        assert not failed
    finally:
        remote.close()
        first.close()
        if second is not None:
            second.close()


@pytest.mark.parametrize("kind", ["#TRACEBACK", "#UNSERIALIZABLE"])
def test_a_masters_traceback_is_said_in_one_short_line(kind: str) -> None:
    # the worker says a failed call in one line ("...; reconnecting"): the master's
    # traceback text, which a key holder chooses, made it several (a forged line among
    # them) or a megabyte
    forged = "Traceback (most recent call last):\n  x\nValueError: boom\nreconnected to master"
    for text in (forged, "y" * 1_000_000):
        settings = _settings()
        with _fake_master(settings, "fetch", (kind, text)):
            remote = open_transport(settings, "worker")
            try:
                consumer = remote.consumer("c1")
                with pytest.raises(TransportError, match=r"failed a request") as caught:
                    consumer.fetch(5, 0.1)
                message = str(caught.value)
                assert "\n" not in message and len(message) < 400, message[:400]
            finally:
                remote.close()


@pytest.mark.timeout(60)
def test_the_keepers_lone_settle_then_fetch_waits_for_the_master_within_its_bound() -> None:
    # a lone settle goes straight to its call, with no context for a slot's (unbounded as
    # before: REPLY_TIMEOUT); the keeper's stays within a third of the lease (1 s here)
    settings = _settings()
    with _fake_master(settings, "", None, stall_on="settle_fetch"):
        remote = open_transport(settings, "worker")
        try:
            remote.heartbeat([])  # this thread is the worker's keeper
            consumer = remote.consumer("c1")
            lone = Settlement(Delivery(body=b"b", tag=1), reply_to="r", result=b"x")
            started = time.monotonic()
            with pytest.raises(TransportError, match=r"did not answer within 1 s"):
                consumer.settle_then_fetch([lone], 1, 0.5)
            took = time.monotonic() - started
            assert took < 15, f"the keeper waited {took:.1f} s for a settle"
        finally:
            remote.close()
