"""The Redis transport's wire: one connection per producer or consumer, the scripts run
on it, and the arguments and replies of the calls.

:class:`Wire` is one connection of the client's pool, held by a producer or a consumer,
with commands sent on it directly and pipelines of them; a failed call drops it.
:class:`Script` runs a Lua script (:mod:`distq.transport.redis_scripts`) by EVALSHA, by
EVAL when Redis lost it. :class:`Runs` packs the settle script's arguments as runs.
:func:`raise_first` raises the first error among a pipeline's replies.

What is sent, and why: :mod:`distq.transport.redis`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import redis
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.utils import HIREDIS_AVAILABLE

Arg = bytes | str | int | float

#: How long :meth:`Wire.check`'s PING waits for its answer before it takes the connection
#: for dead: well within a lease, so a silent one (no RST) holds no call for long.
CHECK_ANSWER_SECONDS = 1.0
#: The commands that wait on the server (for ``block``), whose answer a wire's
#: ``answer_within`` does not bound: the connection's socket timeout does.
BLOCKING = frozenset({"BLMOVE"})
#: How long past its own wait (a BLMOVE's block) a call under way when a stop came, or
#: made after it, still waits for the start of its answer (:meth:`Wire.stop_waiting_on`),
#: and how often it looks whether the stop came.
STOPPED_ANSWER_SECONDS = 1.0
STOP_LOOK_SECONDS = 0.1


class Commands(Protocol):
    """What scripts need of a client or a pipeline (the stubs leave pipelines untyped)."""

    def execute_command(self, *args: Arg, **options: Any) -> Any: ...


class Runs:
    """Arguments as runs: ``(op, arg, n, item 1, ..., item n)`` for each stretch of items
    added with the same ``op`` and ``arg``, in the order added (see ``redis_lua/settle.lua``)."""

    __slots__ = ("_arg", "_args", "_at", "_op")

    def __init__(self) -> None:
        self._args: list[Arg] = []
        self._op, self._arg = "", 0
        self._at = -1  # where the count of the run being added to goes

    def add(self, op: str, arg: int, item: bytes) -> None:
        args = self._args
        if op != self._op or arg != self._arg or self._at < 0:
            self._close()
            self._op, self._arg, self._at = op, arg, len(args) + 2
            args += (op, arg, 0)
        args.append(item)

    def _close(self) -> None:
        if self._at >= 0:
            self._args[self._at] = len(self._args) - self._at - 1

    def args(self) -> list[Arg]:
        self._close()
        return self._args


class Fixed(tuple[Arg, ...]):
    """A command a producer or consumer sends again and again as it is (a claim, a wait
    of a block slice): packed once, on the first send. hiredis packs each argument with
    sprintf, ~15,000 instructions for a claim's 16 (issue 16)."""

    _data: bytes | None = None
    _arguments: bytes | None = None

    def packed(self, conn: Any) -> bytes:
        if self._data is None:
            self._data = b"".join(conn.pack_command(*self))
        return self._data

    def arguments(self, conn: Any) -> bytes:
        """Its arguments packed, without the count that starts a command: the head of
        a :class:`Headed` command."""
        if self._arguments is None:
            data = self.packed(conn)
            self._arguments = data[data.index(b"\r\n") + 2 :]
        return self._arguments


class Headed(tuple[Arg, ...]):
    """A command whose first arguments are a :class:`Fixed` one's (its head), packed
    once, and whose others change at each send (its tail: counts, a body, a result),
    packed by hiredis, as redis-py packs them. A lone task's submit and settle: hiredis
    packed all their 11 and 22 arguments each time (~1,800 instructions each, issue 16)."""

    _head: Fixed

    @classmethod
    def of(cls, head: Fixed, tail: Sequence[Arg]) -> Headed:
        command = cls((*head, *tail))
        command._head = head
        return command

    def packed(self, conn: Any) -> bytes:
        head = self._head
        if _pack_tail is None:  # no hiredis: redis-py packs it all, in Python
            return b"".join(conn.pack_command(*self))
        tail = _pack_tail(self[len(head) :])  # as redis-py packs with hiredis
        return b"*%d\r\n" % len(self) + head.arguments(conn) + tail[tail.index(b"\n") + 1 :]


def _hiredis_packer() -> Callable[[tuple[Arg, ...]], bytes] | None:
    """hiredis's ``pack_command``, which redis-py packs with when it takes hiredis at all
    (``HIREDIS_AVAILABLE``: hiredis 3.0 on for redis-py 5.3, 3.2 on for 7.x) and it has
    one; else redis-py packs in Python (an older hiredis, installed without the extra,
    is left unused), and so does :meth:`Headed.packed`."""
    if not HIREDIS_AVAILABLE:
        return None
    import hiredis

    return cast("Callable[[tuple[Arg, ...]], bytes] | None", getattr(hiredis, "pack_command", None))


_pack_tail = _hiredis_packer()

#: Packed commands up to this many bytes in all go out in one send (redis-py's cutoff).
JOIN_BYTES = 6000


def _packed(conn: Any, commands: Sequence[Sequence[Arg]]) -> list[bytes]:
    """``commands`` packed, :class:`Fixed` ones as packed before, :class:`Headed` ones
    but for their tails: small ones joined into one send, as redis-py's
    ``pack_commands`` does; large ones each sent as it is."""
    out: list[bytes] = []
    for command in commands:
        if type(command) is Fixed or type(command) is Headed:
            out.append(command.packed(conn))
        else:
            out += conn.pack_command(*command)
    if len(out) > 1:
        return [b"".join(out)] if sum(map(len, out)) <= JOIN_BYTES else _joined(out)
    return out


def _joined(chunks: list[bytes]) -> list[bytes]:
    """``chunks`` cut into sends as redis-py's ``pack_commands`` cuts them: small ones
    joined until past :data:`JOIN_BYTES`, a larger one sent as it is (a settle of a
    large result, then the wait and the claim: two sends, not three)."""
    out: list[bytes] = []
    pieces: list[bytes] = []
    size = 0
    for chunk in chunks:
        if size > JOIN_BYTES or len(chunk) > JOIN_BYTES:
            if pieces:
                out.append(b"".join(pieces))
            pieces, size = [], 0
        if len(chunk) > JOIN_BYTES:
            out.append(chunk)
        else:
            pieces.append(chunk)
            size += len(chunk)
    if pieces:
        out.append(b"".join(pieces))
    return out


class Script:
    """A Lua script run by EVALSHA, falling back to EVAL when the server lost it.

    Ours rather than redis-py's ``Script``, which adds a SCRIPT EXISTS round trip to
    every pipeline that runs one; in a pipeline (:meth:`Wire.pipeline`), the caller
    sends :meth:`command` and runs :meth:`evaluate` if the server had lost the script.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: Commands, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted or SCRIPT FLUSH; EVAL caches it again
            return client.execute_command("EVAL", self.source, len(keys), *keys, *args)

    def command(self, keys: Sequence[str], args: Sequence[Arg]) -> tuple[Arg, ...]:
        """The EVALSHA command, for a pipeline."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def evaluate(self, client: Commands, command: Sequence[Arg]) -> Any:
        """EVAL with the arguments of an EVALSHA :meth:`command` that met NOSCRIPT (it
        caches the script again)."""
        return client.execute_command("EVAL", self.source, *command[2:])


class Wire:
    """One connection of the pool, held by one producer or consumer until it closes.

    Commands are sent and read on it directly: redis-py's client layer costs about 97 µs
    of CPU per call (a connection out of the pool and back, observability hooks, checks),
    which a consumer pays twice per batch. A producer's or a consumer's calls are made
    by one thread at a time, so one connection serves them all. A failed call drops the
    connection (it may hold half a reply); the next call opens a new one. As with the
    client (``Retry(NoBackoff(), 0)``), nothing is sent again on its own.

    ``answer_within``: how long a call waits for the start of each answer but a
    :data:`BLOCKING` command's, then fails (a :class:`redis.TimeoutError`) and drops the
    connection; None: the socket timeout (a block slice + 5 s). A consumer's and the
    keeper's are shorter than the lease: a connection gone silent while in use (no RST:
    a NAT's state lost, a partition) held a lease renewal past the lease. ``why``: what
    the timeout's message adds after the wait, where it comes from (the setting).
    """

    def __init__(
        self, pool: redis.ConnectionPool, answer_within: float | None = None, why: str = ""
    ) -> None:
        self._pool: Any = pool  # the stubs still want get_connection's old arguments
        self.answer_within = answer_within
        self._why = f", {why}" if why else ""
        self._conn: Any = None
        self._links = 0  # connections taken from the pool so far
        self._used = time.monotonic()  # the last call's end
        self._stop: threading.Event | None = None  # see stop_waiting_on

    def stop_waiting_on(self, stop: threading.Event) -> None:
        """A call under way when ``stop`` is set, or made after (the stop's own: the
        drain's withdraw and result reads), waits for the start of each answer
        :data:`STOPPED_ANSWER_SECONDS` past its own wait at most, then fails (a
        :class:`redis.TimeoutError`) and drops the connection: a stopping master waited
        out the whole socket timeout (a block slice + 5 s) on a Redis gone silent, before
        the stop or once it began."""
        self._stop = stop

    @property
    def link(self) -> int | None:
        """Which connection the wire holds (None: none; the next call takes one): a number
        that changes with each. While it stays the same, every call went to one Redis that
        never restarted: a restart ends the connection, which fails the next call on it
        (redis-py would connect it again on its own: see :meth:`_reconnected`)."""
        return self._links if self._conn is not None else None

    def execute_command(self, *args: Arg, **options: Any) -> Any:
        """One command; its reply as redis-py parses it, an error reply raised."""
        conn = self._connection()
        stop = self._stop
        try:
            conn.send_command(*args)
            return self._answer(conn, self.answer_within, self._why, stop, args)
        except ResponseError:
            raise  # a whole reply was read: the connection is fine
        except BaseException:
            self._drop()
            raise
        finally:
            self._used = time.monotonic()

    def check(self, idle: float) -> None:
        """After ``idle`` s without a call, a PING: a connection that died meanwhile (Redis
        restarted, its idle ``timeout``, a proxy's) is dropped, so that the next call,
        which carries results, goes out on a new one. A worker's keeper renews the leases
        on a connection of its own, so a slot's lies idle while its tasks run; its settle,
        sent on a dead one, failed, and its results were lost (the tasks ran again).
        The answer is waited for :data:`CHECK_ANSWER_SECONDS` at most: a connection gone
        silent (a NAT's state lost, a vanished host: no RST) held the PING for the whole
        socket timeout (a block slice + 5 s, longer than the default lease)."""
        if self._conn is None or time.monotonic() - self._used < idle:
            return
        conn = self._conn
        try:
            conn.send_command("PING")
            if conn.can_read(timeout=CHECK_ANSWER_SECONDS):
                conn.read_response()
            else:
                self._drop()  # silent: the next call connects
        except ResponseError:
            pass  # a whole reply was read: the connection is fine
        except (RedisError, OSError):
            self._drop()  # dropped: the next call connects
        except BaseException:
            self._drop()
            raise
        finally:
            self._used = time.monotonic()

    def pipeline(
        self,
        commands: Sequence[Sequence[Arg]],
        replies: list[Any] | None = None,
        waiting: Callable[[list[Any]], None] | None = None,
    ) -> list[Any]:
        """Send ``commands`` at once; their replies in order, an error reply as its
        exception (not raised: see :func:`raise_first`). Each reply is added to
        ``replies`` as it is read, so a caller whose call fails has those read before.
        ``waiting`` is called with those read so far before a :data:`BLOCKING`
        command's reply is waited for: work done while Redis waits."""
        conn = self._connection()
        stop = self._stop
        try:
            conn.send_packed_command(_packed(conn, commands))
            if replies is None:
                replies = []
            for command in commands:
                if command[0] not in BLOCKING:
                    within = self.answer_within
                else:
                    within = None
                    if waiting is not None:
                        waiting(replies)
                try:
                    replies.append(self._answer(conn, within, self._why, stop, command))
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            self._drop()
            raise
        finally:
            self._used = time.monotonic()

    @staticmethod
    def _answer(
        conn: Any,
        within: float | None,
        why: str = "",
        stop: threading.Event | None = None,
        command: Sequence[Arg] = (),
    ) -> Any:
        """The next reply on ``conn``, its start waited for ``within`` s at most (None: the
        socket timeout); once it starts, the rest within the socket timeout. With
        ``stop``, set meanwhile: not past ``command``'s own wait (a BLMOVE's) +
        :data:`STOPPED_ANSWER_SECONDS`."""
        if within is not None:
            if not conn.can_read(timeout=within):
                raise redis.TimeoutError(
                    f"Timeout reading from socket (no answer in {within:.1f} s{why})"
                )
        elif stop is not None:
            # the first look here: an answer within it (a lone task's, issue 16) needs
            # no loop, nor the wait's block worked out
            started = time.monotonic()
            if not conn.can_read(timeout=STOP_LOOK_SECONDS):
                block = float(command[-1]) if command[0] in BLOCKING else 0.0
                _await_unless_stopped(conn, stop, block, started)
        return conn.read_response()

    def _connection(self) -> Any:
        if self._conn is None:
            conn = self._pool.get_connection()
            try:
                conn.connect()  # connected before the callback: only a reconnect calls it
            except BaseException:
                self._pool.release(conn)
                raise
            conn.register_connect_callback(self._reconnected)
            self._conn = conn
            self._links += 1
        return self._conn

    def _reconnected(self, _conn: Any) -> None:
        """redis-py connects the connection held again (the pool disconnected it under us):
        fail the call instead, as if the connection had dropped. A call may count on
        the Redis of the calls before it (a producer's take acks by its count, which
        means something only to that Redis), and the next call takes a new ``link``."""
        raise redis.ConnectionError("the connection was closed; the next call opens a new one")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.deregister_connect_callback(self._reconnected)
            conn.disconnect()
            self._pool.release(conn)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.deregister_connect_callback(self._reconnected)
            self._pool.release(conn)


def _await_unless_stopped(conn: Any, stop: threading.Event, block: float, started: float) -> None:
    """Wait on for the start of ``conn``'s next reply, a first look since ``started``
    (``time.monotonic()``) having found none: up to its socket timeout, as a read does,
    unless ``stop`` is set and ``block`` + :data:`STOPPED_ANSWER_SECONDS` passed."""
    limit = conn.socket_timeout
    while True:
        waited = time.monotonic() - started
        if stop.is_set() and waited >= block + STOPPED_ANSWER_SECONDS:
            raise redis.TimeoutError(
                f"Timeout reading from socket (no answer in {waited:.1f} s, and stopping: "
                "not waiting longer)"
            )
        if limit is not None and waited >= limit:
            raise redis.TimeoutError(f"Timeout reading from socket (no answer in {waited:.1f} s)")
        if conn.can_read(timeout=STOP_LOOK_SECONDS):
            return


def raise_first(replies: Any) -> None:
    """Raise the first error among pipeline (or transaction) replies."""
    if isinstance(replies, Exception):
        raise replies
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
