"""The manager transport's wire: connections over ``multiprocessing.managers``.

What a master and a worker exchange, and how each end holds a connection: the broker's
methods a worker may call (:class:`Broker`, :data:`EXPOSED`) and the worker's proxy of
them (:class:`BrokerProxy`, :class:`ClientManager`); what each end unpickles (plain
data, and nothing a pickle could run: :class:`Unpickler`); the served and client
connections and the IPv6-capable listener; the timeouts, keepalive and no-delay of each
socket; and the handshake deadlines a master holds peers to (:class:`Deadlines`).
:mod:`distq.transport.manager` serves and calls through them.

It relies on parts of ``multiprocessing`` that are not documented API: the
``managers.listener_client`` table (a serializer of distq's own is entered in it at
import), ``managers.Server.public``, ``connection.SocketListener`` and a listener's
``_socket``, ``connection.answer_challenge`` and ``deliver_challenge``, ``BaseProxy``'s
``_incref`` and its ``incref`` parameter, and ``BaseManager``'s ``_create``
and ``_serializer``. A message is read by :class:`BoundedConnection` itself, in the
stdlib's framing (a 4-byte big-endian length, or -1 and an 8-byte one), which Python
keeps across releases for wire compatibility.
:func:`check_multiprocessing` checks them when this module is imported (a listener's
``_socket`` as it is made): a Python release that changed one fails with a
:class:`~distq.errors.ConfigError` naming it, never quietly.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import pickle
import platform
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import connection, managers
from multiprocessing.connection import Connection
from multiprocessing.managers import BaseManager, BaseProxy
from typing import Any, ClassVar, Protocol, TypeVar, cast

from distq.addresses import host_port, ipv6_listen_address
from distq.config import Settings
from distq.counts import counted
from distq.errors import ConfigError
from distq.limits import DEFAULT_MAX_MESSAGE_BYTES
from distq.transport.manager_broker import QueueBroker, Wire, WireSettlement
from distq.transport.signatures import parameters_differ

_Item = TypeVar("_Item")


def changed(internal: str, found: object, expected: str) -> ConfigError:
    """The error for a part of ``multiprocessing`` that is not what this module expects."""
    version = platform.python_version()
    return ConfigError(
        f"Python {version} changed multiprocessing's {internal} (found {found}, expected "
        f"{expected}), which distq's manager transport relies on (see "
        "distq.transport.manager_wire); run distq on the Python its CI runs (3.11), or use "
        "DISTQ_TRANSPORT=redis or rabbitmq"
    )


def _parameters(internal: str, function: object, names: tuple[str, ...]) -> None:
    if problem := parameters_differ(function, names, skip=0, kind="a function"):
        raise changed(internal, *problem)


def check_multiprocessing() -> None:
    """Check the undocumented parts of ``multiprocessing`` this module relies on (see the
    module's docstring), before any is used: a Python release that moved one fails with a
    :class:`~distq.errors.ConfigError` naming it, at import, never halfway through a job."""
    table = getattr(managers, "listener_client", None)
    if not isinstance(table, dict) or "pickle" not in table:
        raise changed("managers.listener_client", type(table).__name__, "a dict with 'pickle'")
    public = getattr(managers.Server, "public", None)
    if not isinstance(public, list | tuple) or "accept_connection" not in public:
        raise changed("managers.Server.public", public, "a list with 'accept_connection'")
    listener = getattr(connection, "SocketListener", None)
    if not isinstance(listener, type):
        raise changed("connection.SocketListener", type(listener).__name__, "a class")
    _parameters("connection.SocketListener", listener, ("address", "family", "backlog"))
    for name in ("answer_challenge", "deliver_challenge"):
        _parameters(
            f"connection.{name}", getattr(connection, name, None), ("connection", "authkey")
        )
    for name in ("_incref", "_callmethod"):
        _parameters(f"BaseProxy.{name}", getattr(BaseProxy, name, None), ("self",))
    _parameters("BaseManager._create", getattr(BaseManager, "_create", None), ("self", "typeid"))
    _parameters(
        "BaseProxy.__init__",
        BaseProxy.__init__,
        ("self", "token", "serializer", "manager", "authkey", "exposed", "incref"),
    )


check_multiprocessing()


#: A worker's read or write on a manager connection fails after this long (see bounded).
REPLY_TIMEOUT = 30.0
#: A worker's connecting to the master fails after this long: the TCP connect, then the
#: HMAC handshake (a master answers it at once; a frozen one or another service never does).
CONNECT_TIMEOUT = 5.0
#: The master drops a connection whose peer has not completed the HMAC handshake and
#: sent its first request this long after it was accepted (a worker does so at once; a
#: port scanner, a load balancer's probe or a vanished host never does).
HANDSHAKE_TIMEOUT = 5.0
#: On a served connection, a reply the master cannot send for this long (a peer that
#: stopped reading) ends the connection. Reads have no timeout: a worker or an executor
#: may sit idle between calls for any time; TCP keepalive finds a peer that vanished.
SERVING_SEND_TIMEOUT = 2 * REPLY_TIMEOUT
#: TCP keepalive on served connections: probes after 60 s idle, every 15 s, 4 unanswered
#: ones drop the connection (a worker host gone without a FIN: about 2 minutes).
KEEPALIVE = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))


class Broker(Protocol):
    """What producers and consumers call: the :class:`QueueBroker` itself in the master,
    a :class:`BrokerProxy` of it in a worker. ``None`` from ``get`` or ``fetch`` is a
    stopping master's stray reply (see :func:`distq.transport.manager._call_list`)."""

    def put(self, queue: str, bodies: Sequence[bytes]) -> None: ...
    def open(self, reply_to: str) -> bool: ...
    def get(
        self, queue: str, max_count: int, timeout: float, most: int | None = None
    ) -> list[bytes] | None: ...
    def delete(self, queue: str) -> None: ...
    def gone(self, reply_to: Sequence[str]) -> list[str]: ...
    def withdraw(
        self, queue: str, bodies: Sequence[bytes], redelivered: bool = True
    ) -> list[bool]: ...
    def requeue_dead(self, queue: str, letter: bytes, body: bytes) -> bool: ...
    def forget_orphans(self, queue: str, reply_to: str) -> int: ...
    def fetch(
        self,
        queue: str,
        consumer: str,
        max_count: int,
        timeout: float,
        lease: float,
        most: int | None = None,
    ) -> list[Wire] | None: ...
    def heartbeat(self, consumer: str, lease: float) -> None: ...
    def heartbeats(self, consumers: Sequence[str], lease: float) -> None: ...
    def settle(self, queue: str, consumer: str, items: Sequence[WireSettlement]) -> list[int]: ...
    def settle_fetch(
        self,
        queue: str,
        consumer: str,
        items: Sequence[WireSettlement],
        max_count: int,
        lease: float,
        most: int | None = None,
        wait: float = 0.0,
    ) -> list[Wire] | None: ...
    def settle_fetch_late(
        self,
        queue: str,
        consumer: str,
        items: Sequence[WireSettlement],
        max_count: int,
        lease: float,
        most: int | None = None,
    ) -> tuple[list[int], list[Wire]] | None: ...
    def release(self, consumer: str, tokens: Sequence[int]) -> None: ...
    def disconnect(self, consumer: str) -> None: ...
    def peek(self, queue: str, limit: int) -> list[bytes]: ...
    def stats(self, queue: str) -> tuple[int, int, int, int]: ...
    def message_limit(self) -> int | None: ...


EXPOSED = (
    "put",
    "open",
    "get",
    "delete",
    "gone",
    "withdraw",
    "requeue_dead",
    "forget_orphans",
    "fetch",
    "heartbeat",
    "heartbeats",
    "settle",
    "settle_fetch",
    "settle_fetch_late",
    "release",
    "disconnect",
    "peek",
    "stats",
    "message_limit",
)


@contextlib.contextmanager
def _socket_of(conn: Connection) -> Iterator[socket.socket]:
    """A socket on a copy of ``conn``'s descriptor, to set options or peek through. One
    made under a default timeout (``socket.setdefaulttimeout``: a task's, a library's, a
    program's around its Executor) turns the descriptor non-blocking, for ``conn`` too
    (one open file): its next ``os.read`` then raised EAGAIN where it would have waited.
    Made blocking again at once: every manager connection's reads block, bounded by
    ``SO_RCVTIMEO`` (:func:`bounded`)."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.setblocking(True)
        yield sock


def no_delay(conn: Connection) -> Connection:
    """Turn off Nagle's algorithm on a manager connection.

    ``multiprocessing.connection`` writes a message over 16 KiB as two ``send()`` calls
    (length, then payload); with Nagle on, the second waits for the peer's delayed ACK,
    40 ms on Linux. A batch of 128 tasks crosses that size.
    """
    with contextlib.suppress(OSError), _socket_of(conn) as sock:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _timeouts(conn: Connection, read: float, write: float) -> Connection:
    """Make a blocking read on ``conn`` fail after ``read`` seconds and a write after
    ``write`` (``SO_RCVTIMEO``, ``SO_SNDTIMEO``; 0: never)."""
    with contextlib.suppress(OSError), _socket_of(conn) as sock:
        for option, seconds in ((socket.SO_RCVTIMEO, read), (socket.SO_SNDTIMEO, write)):
            timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, option, timeval)
    return conn


_thread_bound = threading.local()  # what thread_bound set, per thread


@contextlib.contextmanager
def thread_bound(seconds: float) -> Iterator[None]:
    """Within it, a connection the calling thread makes (:func:`client`) is bounded to
    ``seconds``, not ``REPLY_TIMEOUT``: a worker's keeper's, which must hear back within
    its lease (:meth:`distq.transport.manager.ManagerTransport.heartbeat`)."""
    was = getattr(_thread_bound, "seconds", None)
    _thread_bound.seconds = seconds
    try:
        yield
    finally:
        _thread_bound.seconds = was


def reply_timeout() -> float:
    """How long a read or write on a connection the calling thread makes may wait."""
    seconds: float | None = getattr(_thread_bound, "seconds", None)
    return REPLY_TIMEOUT if seconds is None else seconds


def thread_bounded() -> bool:
    """Whether the calling thread is within :func:`thread_bound`."""
    return getattr(_thread_bound, "seconds", None) is not None


def bounded(conn: Connection, seconds: float) -> Connection:
    """Make a blocking read or write on ``conn`` fail after ``seconds``: a master that
    accepted the connection and never answers (hung, or cut off after the handshake
    began) is an error the worker recovers from, not a thread blocked for good. Every
    call a worker makes is answered in about a second."""
    return _timeouts(conn, seconds, seconds)


def accepted(conn: Connection) -> None:
    """A connection the master just accepted: no-delay, TCP keepalive, and reads and
    writes that fail after ``HANDSHAKE_TIMEOUT`` until :func:`serving` lifts them."""
    no_delay(conn)
    with contextlib.suppress(OSError), _socket_of(conn) as sock:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in KEEPALIVE:
                if hasattr(socket, name):  # Linux; others keep their system defaults
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    _timeouts(conn, HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT)


def serving(conn: Connection) -> None:
    """An authenticated connection: reads wait for as long as the peer is idle (its next
    call may come at any time), a reply the peer does not take ends it."""
    _timeouts(conn, 0, SERVING_SEND_TIMEOUT)


class PeerWatch:
    """Whether the peer of a served connection closed it (or reset it) while its call
    was served: it sends nothing while it waits for the reply, so readable means gone.
    A reply to it then reaches nobody, and written into the socket it raises nothing.
    The poll is registered once per connection: :meth:`left` runs before each reply
    that hands tasks or results over."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._poll: select.poll | None = None

    def left(self) -> bool:
        if self._poll is None:
            self._poll = select.poll()  # not select(): a master's descriptors may pass 1,023
            self._poll.register(self._conn.fileno(), select.POLLIN)
        if not self._poll.poll(0):
            return False
        return _closed(self._conn)


def _closed(conn: Connection) -> bool:
    """Whether readable ``conn`` was closed or reset by its peer (not merely sent to)."""
    with _socket_of(conn) as sock:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:  # reset
            return True


class Deadlines:
    """Connections that must finish their handshake by a deadline: one thread shuts down
    (never closes) those past it, so a peer that trickles a byte every few seconds, which
    a per-read timeout never stops, is cut too. A connection leaves (:meth:`done`) before
    it is closed, so a descriptor number reused by a later connection is never cut."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # each connection's deadline, its peer's host and when it was added
        self._due: dict[Connection, tuple[float, str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._cut_late, name="distq-handshakes", daemon=True)
        self._thread.start()

    def add(self, conn: Connection, seconds: float, host: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            self._due[conn] = (now + seconds, host, now)

    def done(self, conn: Connection) -> None:
        with self._lock:
            self._due.pop(conn, None)

    def make_room(self, most: int, silent: float) -> tuple[bool, str | None]:
        """Whether another handshake may start, fewer than ``most`` being under way, and
        the host whose handshake was cut to make that room: of those unfinished for
        ``silent`` seconds, the oldest of the host that has the most. Handshakes younger
        than that are never cut (a far worker's take 3 round trips): with every place
        theirs, there is no room, and the next connection waits in the backlog."""
        with self._lock:
            if len(self._due) < most:
                return True, None
            since = time.monotonic() - silent
            stalled = {conn: entry for conn, entry in self._due.items() if entry[2] <= since}
            if not stalled:
                return False, None
            counts = Counter(host for _, host, _ in stalled.values())
            crowded = max(counts, key=counts.__getitem__)
            oldest = min(
                (conn for conn, (_, host, _) in stalled.items() if host == crowded),
                key=lambda conn: stalled[conn][2],
            )
            self._cut(oldest)
            return True, crowded

    def stop(self) -> None:
        self._stop.set()

    def _cut_late(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            with self._lock:
                for conn in [c for c, (due, _, _) in self._due.items() if due <= now]:
                    self._cut(conn)

    def _cut(self, conn: Connection) -> None:
        """Shut ``conn`` down (its thread's read ends at once); under the lock."""
        del self._due[conn]
        with contextlib.suppress(OSError), _socket_of(conn) as sock:
            sock.shutdown(socket.SHUT_RDWR)


# -- what a manager connection unpickles ---------------------------------------------
# multiprocessing's connections unpickle whatever the peer sends, and a pickle can call
# any importable function (os.system, ...): every DISTQ_AUTHKEY holder could run code in
# the master, and a fake master in the workers. Both ends unpickle with Unpickler
# instead, which builds plain data (None, bool, int, float, str, bytes, tuple, list,
# dict, set: no global is named for any of them) and only the globals listed here.

#: What a master unpickles from a peer besides plain data: nothing. A request is
#: ``(object id, method name, args, kwargs)`` of plain data (see :class:`Broker`), the
#: first one on a connection too (``accept_connection``, ``create``, ``incref``, ...).
_REQUEST_GLOBALS: frozenset[tuple[str, str]] = frozenset()
#: What a worker (any process that connects to a master) unpickles from it besides plain
#: data: the built-in exception classes (``Exception``'s subclasses in ``builtins``), for
#: ``("#ERROR", exc)``, a broker method that raised (a ``TypeError`` on arguments an
#: older master does not take, say). Replies are otherwise plain data (see :class:`Broker`).
_REPLY_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    ("builtins", name)
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, Exception)
)


#: What a connection's first request may ask of the master: the stdlib server's public
#: methods but ``shutdown`` (any key holder could stop the master serving everyone; it
#: stops when its job does) and ``debug_info`` (a listing of what it holds).
FIRST_REQUESTS = frozenset(managers.Server.public) - {"shutdown", "debug_info"}


#: The most of a peer's text that is shown (a refused global's name, a reply: any text).
_SHOWN_NAME = 200


class Refused(pickle.UnpicklingError):
    """A message that names a global its receiver does not unpickle: not loaded. Or a
    reply that is no distq master's answer; ``raised``: the error it carried, if the
    master's broker method raised one (a settle it refused in part says how many of its
    settlements it took: ``manager_broker.TAKEN``)."""

    raised: BaseException | None = None


class Unpickler(pickle.Unpickler):
    """``pickle``'s C unpickler, which looks up no global outside ``allowed``."""

    allowed: ClassVar[frozenset[tuple[str, str]]] = frozenset()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        # the peer's text: one short line in the log, not several
        raise Refused(
            f"{shown(f'{module}.{name}')} is not among what the manager protocol unpickles"
        )


class RequestUnpickler(Unpickler):
    allowed = _REQUEST_GLOBALS


class ReplyUnpickler(Unpickler):
    allowed = _REPLY_GLOBALS


#: What a manager message may hold beyond two messages of ``DISTQ_MAX_MESSAGE_BYTES``
#: (a dead letter and its task's body: ``requeue_dead``): the rest of its batch (tasks,
#: results, dead letters), which senders keep within ``manager_broker.BATCH_BYTES``, and
#: the call around it.
FRAME_ROOM = 64 << 20


def frame_limit(max_message_bytes: int) -> int:
    """The longest message a manager connection reads, for ``DISTQ_MAX_MESSAGE_BYTES``."""
    return 2 * max_message_bytes + FRAME_ROOM


class BoundedConnection(Connection):
    """A connection that reads no message over ``frame_limit`` bytes: ``multiprocessing``
    reads a message's length (4 bytes, or 8 after -1), then asks for that much memory at
    once, any length a peer that knows DISTQ_AUTHKEY writes (a terabyte: a
    ``MemoryError``; a gigabyte: waited for). :meth:`message` refuses it unread, and
    the connection is closed by its caller."""

    frame_limit = frame_limit(DEFAULT_MAX_MESSAGE_BYTES)

    def send(self, obj: Any) -> None:
        """The stdlib's, pickled by ``pickle.dumps``: both ends send plain data (see
        :class:`Unpickler`), for which ``ForkingPickler`` (a pickler class made, and its
        dispatch table copied, per message) took 2.5 µs a message, this 0.5. Framed and
        written as ``send_bytes`` does, without its five calls of Python: a message up to
        16 KiB in one ``write()``, a larger one's length, then its body, not copied."""
        body = pickle.dumps(obj)
        handle, size = self.fileno(), len(body)  # fileno(): OSError once closed
        if size > 0x7FFFFFFF:
            head = _LENGTH.pack(-1) + _LONG_LENGTH.pack(size)
        else:
            head = _LENGTH.pack(size)
        if size <= _ONE_WRITE:
            _write_all(handle, head + body)
        else:
            _write_all(handle, head)
            _write_all(handle, body)

    #: Bytes read past the last message (a peer waits for the reply to each: seldom any).
    _rest = b""

    def close(self) -> None:
        self._rest = b""  # none read once closed: "handle is closed", as recv_bytes says
        super().close()

    def message(self) -> bytes:
        """The next message; :class:`FrameTooLarge` for one over ``frame_limit``, not
        read (but for what came with its length), :class:`Refused` for a negative length.
        The peer's close before a message: ``EOFError``; within one: :class:`MessageCut`;
        the network's failure: its ``OSError``.
        Read as ``recv_bytes`` reads it, without its checks and buffers a message: 4.0
        µs of a served request's 9 (its calls, two ``BytesIO``, the length's copy); its
        length and a body up to :data:`_ONE_READ` in one ``read()``, where
        ``recv_bytes`` makes two."""
        data, self._rest = self._rest or self._first(), b""
        if len(data) < 4:
            data = self._at_least(data, 4, "its length's 4 bytes")
        (size,) = _LENGTH.unpack_from(data)
        start = 4
        if size == -1:
            data = self._at_least(data, 12, "its length's 12 bytes")
            (size,) = _LONG_LENGTH.unpack_from(data, 4)
            start = 12
        elif size < 0:  # read as no bytes, it was refused as "not a pickle", unnamed
            raise Refused(f"a message of {size:,} bytes, a length no message has")
        if size > self.frame_limit:
            setting = (self.frame_limit - FRAME_ROOM) // 2
            raise FrameTooLarge(
                f"a message of {size:,} bytes, over the limit of "
                f"{self.frame_limit:,} (twice DISTQ_MAX_MESSAGE_BYTES, {setting:,}, and "
                f"{FRAME_ROOM >> 20} MiB for the batch around it); not read. Give the "
                "master and every worker and producer the same DISTQ_MAX_MESSAGE_BYTES"
            )
        end = start + size
        if len(data) >= end:  # the usual: all of it in the first read
            self._rest = data[end:]
            return data[start:end]
        return self._rest_of(data[start:], size)

    def _first(self) -> bytes:
        """A message's first bytes, :data:`_ONE_READ` at most: ``EOFError`` if the peer
        closed before any, as ``Connection._recv`` says it."""
        data = os.read(self.fileno(), _ONE_READ)
        if not data:
            raise EOFError
        return data

    def _at_least(self, data: bytes, size: int, part: str) -> bytes:
        """``data`` and what follows it, ``size`` bytes at least (a length cut short)."""
        while len(data) < size:
            more = os.read(self.fileno(), _ONE_READ)
            if not more:
                raise MessageCut(len(data), size, part)
            data += more
        return data

    def _rest_of(self, head: bytes, size: int) -> bytes:
        """A body of ``size`` bytes whose ``head`` came with its length: the rest read
        as much at a time as has come, and no further."""
        handle, remaining = self.fileno(), size - len(head)
        chunks = [head]
        while remaining > 0:
            chunk = os.read(handle, remaining)
            if not chunk:
                raise MessageCut(size - remaining, size)
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)


def _write_all(handle: int, data: bytes) -> None:
    written = os.write(handle, data)
    if written < len(data):  # a full socket buffer: the rest as it drains
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(handle, view) :]


#: A message up to this long goes in one ``write()`` with its length, as ``send_bytes``
#: sends it (a larger one's body is not copied to join them).
_ONE_WRITE = 16384

#: What a message's first read asks for: its length and a body up to this size less
#: those bytes, the usual request's and reply's, in one call.
_ONE_READ = 64 << 10


class MessageCut(OSError):
    """The peer closed the connection within a message: ``arrived`` of its ``size`` bytes
    (of the ``part`` named: its length's, or else its body)."""

    def __init__(self, arrived: int, size: int, part: str = "") -> None:
        self.arrived = f"{arrived:,} of {part or f'{size:,} bytes'}"
        super().__init__(f"the connection was closed mid-message: {self.arrived} arrived")


#: What a message of no bytes is: nothing multiprocessing's or distq's connections send.
EMPTY = "an empty message (0 bytes), which no distq master, worker or producer sends"


_LENGTH, _LONG_LENGTH = struct.Struct("!i"), struct.Struct("!Q")


class FrameTooLarge(Refused):
    """A message whose length is over its connection's ``frame_limit``: not read."""


class ServedConnection(BoundedConnection):
    """The master's end of a connection: requests unpickled by :class:`RequestUnpickler`.
    A refused one (over ``frame_limit`` too) ends the connection as the peer's close
    would (``EOFError``: what ends ``multiprocessing``'s ``serve_client``), with
    ``refused`` saying what the peer sent."""

    def __init__(self, handle: int, peer: str, host: str = "") -> None:
        super().__init__(handle)
        self.peer, self.host = peer, host  # host:port, and the host alone
        self.refused: str | None = None
        self.cut: str | None = None  # how much of a message came before the peer's close

    def recv(self) -> Any:
        try:
            data = self.message()  # its EOFError or OSError: the peer closed, or the network
        except Refused as exc:  # over frame_limit, or a negative length: unread
            self.refused = str(exc)
            raise EOFError(self.refused) from None
        except MessageCut as exc:  # ended as a close would, logged (a killed peer's)
            self.cut = exc.arrived
            raise EOFError(str(exc)) from None
        if not data:
            self.refused = (
                f"{EMPTY}: another program that holds DISTQ_AUTHKEY writes to the master; "
                "find it by that address, and give it its own key"
            )
            raise EOFError(self.refused)
        try:
            return RequestUnpickler(io.BytesIO(data)).load()
        except Refused as exc:
            self.refused = f"a message the master does not unpickle ({exc})"
        except Exception as exc:  # not a pickle at all: dropped silently before
            self.refused = (
                f"a message the master does not unpickle (not a pickle: {type(exc).__name__})"
            )
        raise EOFError(self.refused)


class ClientConnection(BoundedConnection):
    """A worker's end of a connection: replies unpickled by :class:`ReplyUnpickler`; a
    refused one raises :class:`Refused` (a ``TransportError``
    in :func:`distq.transport.manager._call`), and so does one that is not a pickle of
    plain data (a dict keyed by a list: its ``TypeError`` escaped as a traceback), and
    one over ``frame_limit`` (:func:`limit_frames`), unread."""

    def recv(self) -> Any:
        data = self.message()  # its EOFError or OSError: the peer closed, or the network
        if not data:
            raise Refused(
                f"{EMPTY}: is DISTQ_MANAGER_ADDRESS a running `distq master` (not another "
                "program that holds DISTQ_AUTHKEY)?"
            )
        try:
            reply = ReplyUnpickler(io.BytesIO(data)).load()
        except pickle.UnpicklingError:
            raise
        except Exception as exc:
            raise Refused(f"not a pickle: {type(exc).__name__}") from None
        if problem := _misshapen(reply):
            refused = Refused(problem)
            raised = reply[1] if isinstance(reply, tuple) and len(reply) == 2 else None
            if isinstance(raised, BaseException) and reply[0] == "#ERROR":
                refused.raised = raised
            raise refused
        return reply


#: What ``multiprocessing``'s proxy makes of each kind of reply but ``#RETURN``: the
#: text of a ``RemoteError`` (the master's server failed a request: an object it does
#: not know, a method not exposed).
_TEXT_REPLIES = ("#TRACEBACK", "#UNSERIALIZABLE")


def _misshapen(reply: object) -> str | None:
    """Why ``reply`` (plain data that loaded) is not one a distq master sends, or None.
    ``multiprocessing``'s proxy raised whatever such a reply made it raise (the
    exception it named, a ``TypeError`` for an error that is none, a ``ValueError`` for
    a kind it does not know): a fake master's traceback out of the worker."""
    if not isinstance(reply, tuple | list) or len(reply) != 2:
        return f"a reply of {type(reply).__name__}, not a (kind, result) pair"
    kind, result = reply
    if kind == "#RETURN":
        return None
    if kind in _TEXT_REPLIES:
        return None if isinstance(result, str) else f"{kind} of {type(result).__name__}, not text"
    if kind == "#ERROR":  # a broker method raised (at a peer's bad input: a retry's delay
        # that is not seconds, a token or limit not an int), or a peer chose what we raise
        if isinstance(result, BaseException):
            return f"an error raised in the master: {shown(repr(result))}"
        return f"an error of {type(result).__name__}, not an exception"
    if kind == "#PROXY":
        return "a proxy, which no call of distq's asks for"
    return f"a reply of an unknown kind: {shown(repr(kind))}"


def shown(text: str) -> str:
    """The peer's ``text`` as one short line."""
    if len(text) > _SHOWN_NAME:
        text = text[:_SHOWN_NAME] + "..."
    return text if text.isprintable() else repr(text)


class Listener(connection.Listener):
    """``multiprocessing.connection.Listener`` on a TCP address, IPv6 too: the stdlib's
    picks ``AF_INET`` for every ``(host, port)``, so an IPv6 host could never listen.
    Its connections are :class:`ServedConnection` objects."""

    def __init__(self, address: tuple[str, int], family: str | None = None, backlog: int = 1):
        family = "AF_INET6" if ":" in address[0] else "AF_INET"
        if family == "AF_INET6":  # a scoped host (fe80::1%eth0): bind() takes its index
            address = ipv6_listen_address(*address)
        # the stdlib server asks for 16: 40 worker slots connecting at once (a master's
        # restart) overflowed it, and some failed their handshake 5 s later
        backlog = max(backlog, socket.SOMAXCONN)
        self._listener = connection.SocketListener(address, family, backlog)  # type: ignore[attr-defined]
        found = getattr(self._listener, "_socket", None)
        if not isinstance(found, socket.socket):  # what accept() takes connections from
            self._listener.close()
            raise changed("SocketListener._socket", type(found).__name__, "a socket.socket")
        self._authkey = None  # the server authenticates each connection in its own thread

    def accept(self) -> ServedConnection:
        """``SocketListener.accept()``, making a :class:`ServedConnection` that knows
        its peer's address."""
        listener = self._listener
        if listener is None:  # close() was called
            raise OSError("listener is closed")
        sock, address = listener._socket.accept()
        sock.setblocking(True)
        return ServedConnection(sock.detach(), host_port(*address[:2]), address[0])


#: The frame limit of the connections made to each master's address (:func:`limit_frames`).
_frame_limits: dict[Any, int] = {}


def limit_frames(address: Any, max_message_bytes: int) -> None:
    """Connections made to ``address`` from now on read messages up to
    :func:`frame_limit` of ``max_message_bytes``: the largest asked for it in this
    process (two transports to one master share the connections of a thread)."""
    limit = frame_limit(max_message_bytes)
    _frame_limits[address] = max(limit, _frame_limits.get(address, limit))


def client(address: Any, authkey: bytes | None = None) -> Connection:
    """``multiprocessing.connection.Client``, on a no-delay socket whose reads time out:
    the connect and the handshake after ``CONNECT_TIMEOUT``, each later read or write
    after ``REPLY_TIMEOUT`` (or the thread's own: :func:`thread_bound`). Raises
    ``TimeoutError`` naming the step that got no answer."""
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError("authkey should be a byte string")
    try:
        sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
    except TimeoutError:
        raise _no_answer("the TCP connect") from None
    sock.setblocking(True)  # the timeouts below are the socket's own: Connection reads the fd
    made = ClientConnection(sock.detach())
    made.frame_limit = _frame_limits.get(address, made.frame_limit)
    conn = bounded(no_delay(made), CONNECT_TIMEOUT)
    try:
        if authkey is not None:
            connection.answer_challenge(conn, authkey)
            connection.deliver_challenge(conn, authkey)
    except (BlockingIOError, TimeoutError):  # SO_RCVTIMEO/SO_SNDTIMEO ran out: EAGAIN
        conn.close()
        raise _no_answer("the authentication handshake (it accepted the connection)") from None
    except BaseException:
        conn.close()
        raise
    return bounded(conn, reply_timeout())


def _no_answer(step: str) -> TimeoutError:
    return TimeoutError(errno.ETIMEDOUT, f"no answer to {step} within {CONNECT_TIMEOUT:g} s")


#: The serializer name under which ``multiprocessing.managers`` finds :func:`client`.
#: ``BaseManager.connect()``, a proxy's first ``incref`` (made in ``BaseProxy.__init__``)
#: and the ``decref`` that follows it open their connections with ``listener_client[serializer]``,
#: not with an instance's ``_Client``: under the stdlib's ``"pickle"`` entry each of them
#: waits forever on a master that accepts and never answers. Same wire format as "pickle".
SERIALIZER = "distq"
getattr(managers, "listener_client")[SERIALIZER] = (Listener, client)  # noqa: B009


class BrokerProxy(BaseProxy):
    """A worker's proxy of the master's :class:`QueueBroker`, on no-delay connections.

    Each method sends its call to the master and returns the reply (see :class:`Broker`).
    """

    _exposed_ = EXPOSED

    def _incref(self) -> None:
        """The stdlib's, without its finalizer: a proxy dropped tells the master nothing.

        That finalizer told the master on a connection of its own, in whatever thread
        dropped the proxy, or at the process's exit: against a master that does not answer
        (frozen, cut off) each waited out ``CONNECT_TIMEOUT``, holding a worker's slot that
        reconnected, or its keeper, 5 s, and a process's exit 5 s a proxy (``distq submit
        --wait`` stopped while its executor's thread waited on a frozen master: 7 s where
        2 s do). It also closed that thread's connection, once no proxy id of the address
        was left in the process's set; every proxy of a master has the same id (one
        object), so an old proxy collected in a live executor's or slot's thread closed
        that thread's connection, mid-send at times (``'NoneType' object cannot be
        interpreted as an integer``: the executor broke). A connection is closed by the
        one who made it (:func:`_close_proxy`), or with its thread. What the master was
        told, a count of the proxies of its broker, it keeps for nothing: the broker lives
        as long as the master does."""
        base: Any = BaseProxy  # typeshed declares none of its private parts
        me: Any = self
        base._incref(me)
        close = getattr(me, "_close", None)
        if close is not None:  # None: owned by the manager, no finalizer
            close.cancel()

    def _call(self, method: str, *args: Any, **named: Any) -> Any:
        """A keyword is named only when it is not None, as a master older than it refuses
        it: ``most``, a fetch's or a get's limit (limits33, or getlim33 for a get: see
        ``ManagerConsumer.most``, ``ManagerProducer.most``); a withdraw's ``redelivered``
        (False only); a settle-then-fetch's ``wait``."""
        call: Callable[..., Any] = self._callmethod  # typeshed types its reply as None
        said = {key: value for key, value in named.items() if value is not None}
        return call(method, args, said) if said else call(method, args)

    def put(self, queue: str, bodies: Sequence[bytes]) -> None:
        self._call("put", queue, bodies)

    def open(self, reply_to: str) -> bool:
        return self._call("open", reply_to) is not False  # None: an older master's "yes"

    def get(
        self, queue: str, max_count: int, timeout: float, most: int | None = None
    ) -> list[bytes] | None:
        reply = self._call("get", queue, max_count, timeout, most=most)
        return (
            None if reply is None else cast("list[bytes]", _list_of(reply, object, "get", "bodies"))
        )

    def delete(self, queue: str) -> None:
        self._call("delete", queue)

    def gone(self, reply_to: Sequence[str]) -> list[str]:
        return _list_of(self._call("gone", reply_to), str, "gone", "queue names")

    def withdraw(self, queue: str, bodies: Sequence[bytes], redelivered: bool = True) -> list[bool]:
        taken = self._call("withdraw", queue, bodies, redelivered=None if redelivered else False)
        found = _list_of(taken, bool, "withdraw", "yes or no")
        if len(found) != len(bodies):
            answers, sent = counted(len(found), "answer"), counted(len(bodies), "body", "bodies")
            raise Refused(f"withdraw's result: {answers} for {sent}")
        return found

    def requeue_dead(self, queue: str, letter: bytes, body: bytes) -> bool:
        return bool(self._call("requeue_dead", queue, letter, body))

    def forget_orphans(self, queue: str, reply_to: str) -> int:
        return _count(self._call("forget_orphans", queue, reply_to), "forget_orphans")

    def fetch(
        self,
        queue: str,
        consumer: str,
        max_count: int,
        timeout: float,
        lease: float,
        most: int | None = None,
    ) -> list[Wire] | None:
        reply = self._call("fetch", queue, consumer, max_count, timeout, lease, most=most)
        return None if reply is None else _deliveries(reply, "fetch")

    def heartbeat(self, consumer: str, lease: float) -> None:
        self._call("heartbeat", consumer, lease)

    def heartbeats(self, consumers: Sequence[str], lease: float) -> None:
        self._call("heartbeats", consumers, lease)

    def settle(self, queue: str, consumer: str, items: Sequence[WireSettlement]) -> list[int]:
        reply = self._call("settle", queue, consumer, items)
        # None: a master from before settle told which were late (Broker says list[int])
        return (
            cast("list[int]", None) if reply is None else _list_of(reply, int, "settle", "tokens")
        )

    def settle_fetch(
        self,
        queue: str,
        consumer: str,
        items: Sequence[WireSettlement],
        max_count: int,
        lease: float,
        most: int | None = None,
        wait: float = 0.0,
    ) -> list[Wire] | None:
        """``wait``: named only when above 0 (an older master refuses it)."""
        reply = self._call(
            "settle_fetch",
            queue,
            consumer,
            items,
            max_count,
            lease,
            most=most,
            wait=wait if wait > 0 else None,
        )
        return None if reply is None else _deliveries(reply, "settle_fetch")

    def settle_fetch_late(
        self,
        queue: str,
        consumer: str,
        items: Sequence[WireSettlement],
        max_count: int,
        lease: float,
        most: int | None = None,
    ) -> tuple[list[int], list[Wire]] | None:
        reply = self._call("settle_fetch_late", queue, consumer, items, max_count, lease, most=most)
        if reply is None:
            return None
        if not isinstance(reply, tuple | list) or len(reply) != 2:
            raise Refused(f"settle_fetch_late's result of {type(reply).__name__}, not a pair")
        late, wire = reply
        return _list_of(late, int, "settle_fetch_late", "tokens"), _deliveries(
            wire, "settle_fetch_late"
        )

    def release(self, consumer: str, tokens: Sequence[int]) -> None:
        self._call("release", consumer, tokens)

    def disconnect(self, consumer: str) -> None:
        self._call("disconnect", consumer)

    def peek(self, queue: str, limit: int) -> list[bytes]:
        return cast(
            "list[bytes]", _list_of(self._call("peek", queue, limit), object, "peek", "bodies")
        )

    def message_limit(self) -> int | None:
        reply = self._call("message_limit")
        return reply if type(reply) is int else None

    def stats(self, queue: str) -> tuple[int, int, int, int]:
        counts = _list_of(self._call("stats", queue), int, "stats", "counts")
        if len(counts) != 4:
            raise Refused(f"stats's result: {len(counts)} counts, not 4")
        ready, in_flight, dead, consumers = counts
        return ready, in_flight, dead, consumers


# -- what a worker takes from a result: its shape checked, a fake master's wrong one a
# refused reply (its TypeError or ValueError escaped the transport: a slot's `gone`)


def _list_of(reply: object, kind: type[_Item], method: str, what: str) -> list[_Item]:
    """``reply`` as a list of ``kind``; :class:`Refused` if it is none. Bodies are of
    any kind (``object``): a worker, a master and the dead-letter listing each read a
    body that is not bytes as malformed, where a refused reply would refuse it forever."""
    if not isinstance(reply, list | tuple):
        raise Refused(f"{method}'s result of {type(reply).__name__}, not a list of {what}")
    if kind is not object:
        for item in reply:
            if not isinstance(item, kind):
                raise Refused(f"{method}'s result holds {type(item).__name__}, not only {what}")
    return reply if isinstance(reply, list) else list(reply)


def _count(reply: object, method: str) -> int:
    if not isinstance(reply, int):
        raise Refused(f"{method}'s result of {type(reply).__name__}, not a count")
    return reply


def _deliveries(reply: object, method: str) -> list[Wire]:
    """``reply`` as deliveries: (token, body, redelivered) each."""
    what = "(token, body, redelivered) triples"
    items = _list_of(reply, tuple, method, what)
    for item in items:
        if len(item) != 3 or not isinstance(item[0], int):  # a body: the worker's to read
            raise Refused(f"{method}'s result holds a delivery not of (token, body, redelivered)")
    return cast("list[Wire]", items)


class ClientManager(BaseManager):
    """A worker's connection to the master's :class:`QueueBroker`: made with
    ``serializer=SERIALIZER``, so every connection it and its proxies open is :func:`client`'s."""

    def distq_broker(self) -> BrokerProxy:
        """A proxy of the master's broker, made in one call to it (``create``). The
        stdlib's method (``register()``'s) made two more, each on a connection of its own
        with its handshake: the proxy's incref, then a decref of the creation's count: a
        count the master keeps for nothing (see :meth:`BrokerProxy._incref`). A master
        frozen after the first (a slot reconnecting as the master stopped, or cut off)
        held the slot's thread at each, 5 s (``CONNECT_TIMEOUT``), or 30 s once it had
        answered the handshake (``REPLY_TIMEOUT``)."""
        manager: Any = self  # typeshed declares none of its private parts
        try:
            token, exposed = manager._create("distq_broker")
        except (TypeError, ValueError):  # its unpacking of a reply not (id, exposed)
            raise Refused("create's result is not an (id, exposed methods) pair") from None
        if not isinstance(token.id, str) or not isinstance(exposed, tuple | list):
            raise Refused("create's result is not an (id, exposed methods) pair")
        return BrokerProxy(token, manager._serializer, manager=self, exposed=exposed, incref=False)

    def same_broker(self, proxy: BrokerProxy) -> BrokerProxy:
        """A proxy of ``proxy``'s broker, made with no call to the master: every proxy of
        a master is of its one broker, and :meth:`distq_broker`'s ``create`` costs it a
        connection of its own, with its handshake and thread."""
        manager: Any = self
        token: Any = getattr(proxy, "_token")  # noqa: B009 (typeshed declares none)
        return BrokerProxy(token, manager._serializer, manager=self, exposed=EXPOSED, incref=False)


ClientManager.register("distq_broker", proxytype=BrokerProxy, create_method=False)


def serving_manager(broker: QueueBroker, settings: Settings) -> BaseManager:
    """A manager class of its own per master, so two masters in one process don't clash."""
    cls: type[BaseManager] = type("_ServerManager", (BaseManager,), {})
    cls.register("distq_broker", callable=lambda: broker, exposed=EXPOSED)
    return cls(address=settings.manager_address, authkey=settings.authkey, serializer=SERIALIZER)
