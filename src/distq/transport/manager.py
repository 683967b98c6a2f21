"""The embedded default: queues hosted by the master over ``multiprocessing.managers``.

The master runs a :class:`~distq.transport.manager_broker.QueueBroker` in-process and
serves it on ``DISTQ_MANAGER_ADDRESS``; workers connect with the shared
``DISTQ_AUTHKEY`` (HMAC challenge before any message is unpickled, so only key holders
can talk to it). Only plain data (``bytes``, ``str``, numbers, in tuples and lists)
crosses the wire: the envelopes stay JSON. Both ends unpickle with
:class:`~distq.transport.manager_wire.Unpickler`, which builds nothing else (built-in
exceptions aside, in replies), so a key holder cannot run code in the master, nor a fake
master in the workers. The wire itself (connections, timeouts, the worker's proxy) is
:mod:`distq.transport.manager_wire`'s.

Leases are per consumer: every delivery a consumer holds shares one deadline, pushed
back by ``fetch`` and ``heartbeat``. A reaper thread in the master puts the deliveries
of a consumer whose deadline passed back behind the tasks queued (a SIGKILLed
worker's tasks go back within about one lease period) and moves due retries in. Each
consumer connection gets a name of its own (the worker's slot name plus a random
suffix), so a reconnecting worker never renews a lease its earlier connection held.
A worker settles a batch and claims its next one in a single call (``settle_fetch``):
each call is a round trip that costs CPU on both sides, the master's included. A batch
with retries or dead letters asks which were late (their leases had lapsed: see
``settle``), ``settle_fetch_late``; against a master from before that call, in two
calls (``settle``, then ``fetch``).

Reply queues exist while their producer does. The hosting process's own (the master's,
a hosting executor's) never lapse (``hold``). A remote producer's (``distq submit
--wait``, ``Executor(host=False)``) is renewed over its connection (``open``, every
quarter of the shortest ``master_ttl`` there is, whatever the master's), and the reaper
drops one not renewed for the master's ``master_ttl``, with the results it holds.
Results addressed to any other queue are dropped, and :meth:`ManagerConsumer.gone`
names them. The master hosts the queues, so they never outlive it and never lose a task
while it runs: a worker that loses the master reconnects (with backoff) to whichever
master listens next on the address.

The master serves each connection in a thread of its own (``multiprocessing``'s
server), and bounds what a peer without the key can hold: the handshake and first call
within ``manager_wire.HANDSHAKE_TIMEOUT``, at most ``_HANDSHAKES_AT_ONCE`` of them at a
time, TCP keepalive on the rest. It listens on IPv4 or IPv6, as the host of the address says.

| queue name          | holds                                       |
|---------------------|---------------------------------------------|
| ``<queue>``         | ready task bodies, FIFO                     |
| ``<queue>.dead``    | encoded dead letters                        |
| reply_to (per job)  | result bodies for the master that owns it   |
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import pickle
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable, Collection, Iterator, Sequence
from multiprocessing import AuthenticationError, connection
from multiprocessing.managers import BaseProxy, RemoteError
from typing import Any, TypeVar

import msgspec

from distq import descriptors
from distq.addresses import host_port
from distq.codec import Codec
from distq.config import (
    AUTHKEY_MISSING,
    MASTER_TTL_MIN_SECONDS,
    MESSAGE_BATCH,
    Settings,
)
from distq.counts import counted
from distq.ending import Endings
from distq.envelope import DeadLetter, cut_letter, first_bytes
from distq.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    MasterStopped,
    MessageRefused,
    MessageTooLarge,
    TransportError,
)
from distq.limits import MIN_MESSAGE_BYTES, OVERSIZED_KEPT_BYTES
from distq.transport import manager_wire as wire
from distq.transport.base import (
    Consumer,
    Delivery,
    Producer,
    QueueStats,
    Revive,
    Role,
    Settlement,
    Transport,
    counting_moves,
    original_body,
    settled_already,
    tags_of,
)
from distq.transport.manager_broker import (
    BATCH_BYTES,
    LATE,
    TAKEN,
    QueueBroker,
    Wire,
    WireSettlement,
)

_T = TypeVar("_T")

log = logging.getLogger(__name__)

#: Most connections the master authenticates at once; more wait in the listen backlog,
#: unless a place is taken by a handshake unfinished after ``_SILENT_SECONDS``: then the
#: oldest such of the host that has the most of them is cut. A peer without the key that
#: holds silent connections (each cut after 5 s, then opened again) took every place and
#: kept the workers in the backlog past their own 5 s (sec14); cutting any handshake, not
#: only a silent one, cut a far worker's own slots (3 round trips each) in turn (diff14).
_HANDSHAKES_AT_ONCE = 256
#: A handshake unfinished this long is a silent peer's more likely than a worker's.
_SILENT_SECONDS = 2.0
#: The shortest a worker's keeper waits for the master to answer its renewal, however
#: short the lease (a third of it): a master busy a moment is not a connection gone.
_KEEPER_WAIT_MIN = 1.0
#: Seconds between two log lines about the same accept problem.
_LOG_EVERY = 60.0
#: The longest a worker's first readiness ping waits for a slot's proxy of the master
#: to be made of (a create of its own costs the master a connection more); under the
#: 2 s a call may take before readiness reads it as a broker that does not answer.
_SLOT_PROXY_WAIT = 1.5


class ManagerTransport(Transport):
    """``DISTQ_TRANSPORT=manager``: the master hosts the queues; workers connect to it."""

    name = "manager"
    tells_leases = True
    queues_in_master = True

    def __init__(self, settings: Settings, role: Role) -> None:
        if not settings.authkey:  # Settings.load refuses this; here for direct callers
            raise ConfigError(AUTHKEY_MISSING)  # a setting to fix: exit 2, not 3
        self._settings = settings
        self._queue = settings.queue
        self._server: Any = None  # multiprocessing's Server: untyped internals
        self._broker: QueueBroker | None = None
        self._keeper: wire.Broker | None = None  # a worker's keeper renews its leases on it
        self._manager: wire.ClientManager | None = None
        host, port = settings.manager_address
        self.address = host_port(host, port)
        self._role = role
        self._acceptor: threading.Thread | None = None
        self._logged: dict[str, float] = {}  # accept problem -> when last logged
        # the connections being served: a child made by fork() closes its copies
        self._served: set[wire.ServedConnection] = set()
        self._waits = _SettleWaits()
        self._inspector: wire.Broker | None = None  # a worker's proxy for stats(), kept
        #: a worker's latest proxy of its master's broker: the inspector is made of it
        self._made: wire.BrokerProxy | None = None
        self._made_once = threading.Event()  # set once a proxy of the master was made
        self._keeper_thread: int | None = None  # the thread that calls heartbeat()
        self._inspector_lock = threading.Lock()
        self._frame_limit = wire.frame_limit(settings.max_message_bytes)
        if role == "master":
            reap_every = min(0.25, settings.lease_seconds / 4)
            # a reaper a little late is not a process that stood still; two turns' time
            # hid a 0.4 s stop from a worker's 0.3 s lease (stood20b)
            broker = QueueBroker(
                reply_ttl=settings.master_ttl,
                stood_still=1.5 * reap_every,
                oversized=_Oversized(settings, self.address),
                most=settings.max_message_bytes,
            )
            manager = wire.serving_manager(broker, settings)
            try:
                self._server = manager.get_server()
            except OSError as exc:
                raise ConnectionFailed(
                    f"cannot listen on {self.address} (DISTQ_MANAGER_ADDRESS): {_listen_error(exc)}"
                ) from None
            broker.serve(settings.queue)  # no peer's reply queue, before any peer is served
            broker.start_reaper(reap_every)
            self._server.stop_event = threading.Event()  # serve_client() polls it
            self._broker = broker
            self._deadlines = wire.Deadlines()
            self._acceptor = threading.Thread(target=self._accept, name="distq-accept", daemon=True)
            self._acceptor.start()
        else:
            wire.limit_frames(settings.manager_address, settings.max_message_bytes)
            self._manager = wire.ClientManager(
                address=settings.manager_address,
                authkey=settings.authkey,
                serializer=wire.SERIALIZER,
            )
            self._connect(self._manager.connect)

    def _accept(self) -> None:
        """Accept connections until closed; each is authenticated and served in a thread
        of its own. Nothing that goes wrong with one connection ends this thread."""
        server = self._server
        assert server is not None
        while self._broker is not None:
            room, crowded = self._deadlines.make_room(_HANDSHAKES_AT_ONCE, _SILENT_SECONDS)
            if crowded is not None:
                self._log_accept_problem(
                    "crowded",
                    f"{_HANDSHAKES_AT_ONCE} connections were authenticating at once; cut "
                    f"the oldest of {crowded}'s unfinished after {_SILENT_SECONDS:g} s (a "
                    "peer that connects and stays silent: a port scanner, or someone "
                    "without DISTQ_AUTHKEY)",
                )
            if not room:  # every place taken by a handshake still young: the next waits
                time.sleep(0.05)
                continue
            try:
                conn = server.listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._log_accept_problem(
                        "fds",
                        f"cannot accept a connection: {exc.strerror}; the waiting ones are "
                        "accepted as open ones close. Raise the open-file limit (ulimit -n, "
                        "LimitNOFILE=, the container's nofile) for the workers' connections",
                    )
                    time.sleep(0.1)  # not a busy loop: accept() fails at once until one closes
                continue  # a closed listener (close()), or a connection reset before accept
            except Exception:  # whatever it is, the master keeps accepting
                time.sleep(0.1)
                continue
            try:
                conn.frame_limit = self._frame_limit
                wire.accepted(conn)
                self._served.add(conn)
                self._deadlines.add(conn, wire.HANDSHAKE_TIMEOUT, conn.host)  # the whole handshake
                threading.Thread(
                    target=self._serve, args=(conn,), name="distq-serve", daemon=True
                ).start()
            except Exception as exc:  # RuntimeError: can't start new thread
                self._deadlines.done(conn)
                self._served.discard(conn)
                conn.close()
                self._log_accept_problem(
                    "thread",
                    f"dropped a connection: cannot start a thread to serve it ({exc}); raise "
                    "the process's thread or memory limit (the container's pids limit, "
                    "ulimit -u, ulimit -v), or run fewer worker slots against this master",
                )
                time.sleep(0.1)

    def _log_accept_problem(self, kind: str, message: str) -> None:
        """Log ``message`` unless the same ``kind`` of problem was logged recently."""
        now = time.monotonic()
        if now - self._logged.get(kind, -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[kind] = now
            log.error("master at %s: %s", self.address, message)

    def _serve(self, conn: wire.ServedConnection) -> None:
        """Serve ``conn`` (:meth:`_serve_requests`), then :meth:`_drop` it."""
        try:
            self._serve_requests(conn)
        finally:
            self._served.discard(conn)
            self._drop(conn)

    def _drop(self, conn: wire.ServedConnection) -> None:
        """Close ``conn``; one dropped for a message the master does not unpickle, or does
        not read for its size, or cut mid-message, is logged first, once, with the peer's
        address: the line is in the log by the time the peer sees the close."""
        if conn.closed:
            return
        if conn.refused is not None:
            log.error(
                "master at %s: dropped the connection from %s: it sent %s",
                self.address,
                conn.peer,
                conn.refused,
            )
        elif conn.cut is not None:
            log.error(
                "master at %s: the connection from %s was closed mid-message, %s "
                "arrived: that call was not served (its worker or producer stopped as it "
                "sent, or the network cut)",
                self.address,
                conn.peer,
                conn.cut,
            )
        conn.close()

    def _serve_requests(self, conn: wire.ServedConnection) -> None:
        """``multiprocessing``'s ``Server.handle_request``, with the handshake and first
        request bounded by ``wire.HANDSHAKE_TIMEOUT``, and nothing sent to a peer that failed
        it: a silent or half-open peer costs the master a thread and a file descriptor for
        that long, not for good."""
        server = self._server
        try:
            try:
                connection.deliver_challenge(conn, server.authkey)
                connection.answer_challenge(conn, server.authkey)
                _, name, args, kwds = conn.recv()
            finally:
                self._deadlines.done(conn)
            if name not in wire.FIRST_REQUESTS:  # not shutdown: any key holder could stop us
                raise ValueError(f"{name!r} unrecognized")
        except Exception as exc:  # no key, a wrong one, a silent peer, a port scan: dropped
            self._drop(conn)
            if isinstance(exc, AuthenticationError):
                self._log_accept_problem(
                    "key",
                    f"a connection from {conn.peer} failed the authentication handshake: "
                    "its DISTQ_AUTHKEY is not this master's (logged once a minute)",
                )
            return
        wire.serving(conn)
        until = _ServedUntil(server.stop_event, conn, self._broker, self.address, self._waits)
        conn.recv = until.recv  # type: ignore[method-assign]
        conn.send = until.send  # type: ignore[method-assign]
        try:
            msg: tuple[str, Any] = ("#RETURN", getattr(server, name)(conn, *args, **kwds))
        except SystemExit:  # serve_client()'s end on EOF: the peer closed, or we stopped
            self._drop(conn)
            return
        except Exception:
            msg = ("#TRACEBACK", traceback.format_exc())
        if name == "accept_connection":  # serve_client() returned: the master stopped
            # no reply: the peer's next call would take this stray one for its own (a
            # settle read it as done); the close tells it the master stopped
            self._drop(conn)
            return
        try:
            conn.send(msg)
        except Exception:  # the peer is gone: nothing to tell it
            pass
        finally:
            self._drop(conn)

    def _connect(self, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except AuthenticationError:
            raise AuthenticationFailed(
                f"authentication failed: the master at {self.address} rejected DISTQ_AUTHKEY; "
                "use the same key as the master"
            ) from None
        except TimeoutError as exc:  # a frozen master, or a service that is not distq's
            raise ConnectionFailed(
                f"the master at {self.address} (DISTQ_MANAGER_ADDRESS) gave {exc.strerror}; "
                "is a running `distq master` (not another service, not a stopped process) there?"
            ) from None
        except BlockingIOError:  # wire.bounded's SO_RCVTIMEO or SO_SNDTIMEO, past the handshake
            raise ConnectionFailed(
                f"the master at {self.address} did not answer within "
                f"{wire.reply_timeout():g} s (stopped, or overloaded?)"
            ) from None
        except (EOFError, ConnectionResetError):  # a master closing as we connect
            raise ConnectionFailed(
                f"the master at {self.address} closed the connection as we connected "
                "(its job is done, or it stopped)"
            ) from None
        except pickle.UnpicklingError as exc:  # not a distq master, or not a genuine one
            raise ConnectionFailed(
                f"refused the reply of the master at {self.address} as we connected: {exc}"
            ) from None
        except AssertionError:  # the stdlib handshake asserts on a greeting not its own
            raise ConnectionFailed(
                f"the service at {self.address} (DISTQ_MANAGER_ADDRESS) answered with "
                "something other than a distq master's handshake; is a running `distq master` "
                "(not another service) there?"
            ) from None
        except OSError as exc:
            hint = "is `distq master` running there?"
            if descriptors.out_of_descriptors(exc):
                hint = descriptors.HINT
            raise ConnectionFailed(
                f"cannot reach the master at {self.address} (DISTQ_MANAGER_ADDRESS): "
                f"{exc.strerror or exc}; {hint}"
            ) from None

    def describe(self) -> str:
        if self._role == "master":
            return f"manager transport on {self.address}"
        return f"master {self.address}"

    def reply_queue(self, job_id: str) -> str:
        return f"{self._queue}.results.{job_id}"

    def _endpoint(self) -> wire.Broker:
        """The broker: the object itself in the master, a fresh proxy in a worker."""
        if self._broker is not None:
            return self._broker
        assert self._manager is not None
        self._made = made = self._connect(self._manager.distq_broker)
        self._made_once.set()
        return made

    def producer(self, reply_to: str) -> Producer:
        broker = self._endpoint()
        if self._broker is not None:
            self._broker.hold(reply_to)  # in the hosting process: lives as long as it does
        else:
            _call(self.address, broker.open, reply_to)
        # The master lapses it by its own master_ttl, which may be shorter than this
        # process's: renewed within the shortest there is.
        renew_every = MASTER_TTL_MIN_SECONDS / 4
        if self._broker is not None:  # in the master: no frames to fit
            return ManagerProducer(broker, self._queue, reply_to, self.address, renew_every)
        return ManagerProducer(
            broker,
            self._queue,
            reply_to,
            self.address,
            renew_every,
            self._endpoint,  # remote: a new proxy
            most=self._settings.max_message_bytes,
        )

    def consumer(self, consumer_id: str) -> Consumer:
        return ManagerConsumer(
            self._endpoint(),
            self._queue,
            consumer_id,
            self._settings.lease_seconds,
            self.address,
            keepers=self._keepers_bound,
            most=self._settings.max_message_bytes,
            # in the master: no frames to fit
            too_large=None if self._broker is not None else _TooLargeForMaster(self._settings),
        )

    renews_apart = True  # a proxy's connection is per thread: the keeper's is its own

    def heartbeat(self, consumers: Sequence[Consumer]) -> None:
        """Through a proxy of the keeper's own, made again after a failure: through a
        slot's, a slot still in a task of a master that restarted failed every renewal,
        the other slots' too (their tasks ran twice). An id the master does not know (a
        slot of the master before) is passed over."""
        # a reply within a third of the lease, else the renewal goes out again on a new
        # connection: one gone silent (no RST: a NAT's state lost) held it REPLY_TIMEOUT,
        # and every running task's lease lapsed meanwhile (each ran again elsewhere). So
        # for every call of the keeper's thread, on its connection and those it makes: its
        # hand-backs (release, settle) on a silent one held it 30 s too, the worker's
        # other leases lapsing meanwhile, and a SIGTERM waiting. Named by a renewal of
        # none too (the keeper's first, before its first tick's hand-backs)
        self._keeper_thread = threading.get_ident()
        ids = [c.consumer_id for c in consumers if isinstance(c, ManagerConsumer)]
        if not ids:
            return
        if self._keeper is None:  # made within the bound too: a master that answered the
            # handshake, then not the proxy's `create`, held the keeper REPLY_TIMEOUT
            with wire.thread_bound(self._keeper_within()):
                self._keeper = self._endpoint()
        try:
            with _within(self._keeper, self._keeper_within()):
                _call(self.address, self._keeper.heartbeats, ids, self._settings.lease_seconds)
        except BaseException:
            keeper, self._keeper = self._keeper, None
            _close_proxy(keeper)
            raise

    def _keeper_within(self) -> float:
        """How long the keeper's calls wait for the master (see :meth:`heartbeat`)."""
        return _reply_within(self._settings.lease_seconds)

    def _keepers_bound(self) -> float | None:
        """:meth:`_keeper_within` in the thread that renews the leases (the keeper's, which
        calls :meth:`heartbeat`); None in any other."""
        if threading.get_ident() != self._keeper_thread:
            return None
        return self._keeper_within()

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        bodies = _call(self.address, self._endpoint().peek, f"{self._queue}.dead", limit)
        return [DeadLetter.read(body, self._queue) for body in bodies]

    def requeue_dead(self, limit: int | None, revive: Revive = original_body) -> int:
        moved = [0]
        with counting_moves(moved):  # cut off part-way: say how many moved, as Redis
            self._requeue_dead(limit, revive, moved)
        return moved[0]

    def _requeue_dead(self, limit: int | None, revive: Revive, done: list[int]) -> None:
        """Move up to ``limit`` letters, one at a time; ``done[0]``: how many moved."""
        broker, dead = self._endpoint(), f"{self._queue}.dead"
        limit = self.dead_there(limit)
        while done[0] < limit:
            letters = _call(self.address, broker.peek, dead, min(MESSAGE_BATCH, limit - done[0]))
            if not letters:
                break
            for letter in letters:  # oldest first; one at a time, each compared and moved
                body = revive(DeadLetter.read(letter, self._queue))
                if not _call(self.address, broker.requeue_dead, self._queue, letter, body):
                    break  # another caller took it: read the dead letters again
                done[0] += 1

    def forget_orphans(self, reply_to: str) -> int:
        return int(_call(self.address, self._endpoint().forget_orphans, self._queue, reply_to))

    def ping(self) -> None:
        """The master answers its ``message_limit``, one field read (a master before
        getlim33 refuses it: an answer too). :meth:`stats` counted every task in flight
        under the lock every serving thread takes, 1 ms at 10,000 held, for a worker's
        readiness, every heartbeat of every worker with ``DISTQ_METRICS_PORT``.

        The first waits up to :data:`_SLOT_PROXY_WAIT` for a slot's proxy of the master
        (a worker's sampler starts as the transport opens, before its slots connect):
        made of it, it costs the master one connection, not two. No later readiness: a
        worker is ready once every slot is connected, its ping answered after the first."""
        if self._broker is None and not self._made_once.is_set():
            self._made_once.wait(_SLOT_PROXY_WAIT)  # else a create, as before
        self._inspect(self._answers)

    def _answers(self, broker: wire.Broker) -> None:
        try:
            limit = _call(self.address, broker.message_limit)
        except FailedRequest as exc:
            if _OLDER_MASTER_LIMIT not in exc.traceback:
                raise
            return
        if limit is None:  # a master tells its limit: this is a stopping one's stray reply
            raise _closed(self.address)

    def _inspect(self, ask: Callable[[wire.Broker], _T]) -> _T:
        """``ask`` the broker. In a worker one proxy serves every call (a worker's
        readiness asks every heartbeat): a fresh one costs the master two connections,
        each with its handshake and thread. It is made of the worker's latest proxy of
        the broker (a slot's), with no ``create``: one connection a master, not two.
        Dropped when a call fails, so the next call connects afresh (to a restarted
        master, say): a ``create`` then, as the latest proxy may be of the master before."""
        with self._inspector_lock:
            if self._inspector is None:
                made, self._made = self._made, None
                self._inspector = (
                    self._endpoint()
                    if made is None or self._manager is None
                    else self._manager.same_broker(made)
                )
            broker = self._inspector
        try:
            return ask(broker)
        except TransportError:
            if broker is not self._broker:
                _close_proxy(broker)  # this thread's connection, shared by its proxies
                with self._inspector_lock:
                    if self._inspector is broker:
                        self._inspector = None
                    if _id_of(self._made) == _id_of(broker):  # a slot's of the same master
                        self._made = None
            raise

    def stats(self) -> QueueStats:
        """The counts, from the master, on the worker's :meth:`_inspect` proxy; the
        tasks queued again after a worker had them, and the time left of the leases
        holding tasks, in the master only (its own broker: the wire's ``stats`` answers
        four counts, as a master of any version does)."""
        ready, in_flight, dead, consumers = self._inspect(
            lambda broker: _call(self.address, broker.stats, self._queue)
        )
        broker = self._broker
        return QueueStats(
            ready=ready,
            in_flight=in_flight,
            dead=dead,
            consumers=consumers,
            redelivered=None if broker is None else broker.redelivered(self._queue),
            lease_left=None if broker is None else broker.lease_left(self._queue),
        )

    def close(self) -> None:
        # a worker's: their connections go with it, the calling thread's too: every proxy
        # of an address shares its thread's connection, so one left open here (a
        # consumer not closed, its master gone) failed the first call of the next
        # transport this thread opened to a master started again at that address
        made = self._made or self._keeper or self._inspector
        self._inspector = self._keeper = self._made = None
        _close_proxy(made)
        broker, self._broker = self._broker, None
        if broker is not None:
            for queue, count in broker.dead_counts().items():
                log.warning(
                    "%s of queue %r %s with this process: on the manager "
                    "transport they live in the memory of the master that hosts the queues. "
                    "Read or requeue them while it runs (distq dead-letters, distq "
                    "requeue-dead), or use Redis or RabbitMQ, which keep them",
                    counted(count, "dead letter"),
                    queue,
                    "ends" if count == 1 else "end",
                )
            for queue, count in broker.task_counts().items():
                log.warning(
                    "%s of queue %r, queued or running, %s with this process: on "
                    "the manager transport the queues live in the memory of the master "
                    "that hosts them, so a task another client submits (distq submit, an "
                    "executor) runs only while it runs (a --rate master, an open Executor); "
                    "Redis and RabbitMQ keep them",
                    counted(count, "task"),
                    queue,
                    "ends" if count == 1 else "end",
                )
            broker.stop()
        if self._server is not None:
            self._deadlines.stop()
            self._server.stop_event.set()
            self._waits.answered(_SETTLE_WAITS_ANSWERED)
            self._wake_acceptor()
            self._server.listener.close()

    def close_inherited(self) -> None:
        """The child's copies of the listening socket and of the workers' connections:
        closed (not shut down, which would cut the parent's), so the address is free once
        the parent closes its own, and a worker sees the parent's close at once (a child
        holding its connection kept it waiting about 30 s). No lock: in the child, only
        the thread that forked runs."""
        if self._server is not None:
            self._server.listener.close()
            for conn in list(self._served):
                with contextlib.suppress(OSError):
                    conn.close()
            self._served.clear()

    def _wake_acceptor(self) -> None:
        """End the thread blocked in ``accept()``: until it returns, the listening socket
        stays open whatever ``close()`` does, and the address cannot be listened on again
        (a second executor on the same address in one process)."""
        if self._acceptor is None or not self._acceptor.is_alive():
            return
        host, port = self._settings.manager_address
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            pass  # the handshake fails, and the thread sees it is to stop
        self._acceptor.join(timeout=1)


class _ServedUntil:
    """A served connection's ``recv`` and ``send`` once its master's ``stopped`` is set.

    ``recv`` ends the connection (``EOFError``, as a peer's close would) with a request
    that comes after: ``serve_client`` looks at the flag only before it waits for the
    next request, so a connection idle when the master closed served one more (a
    worker's fetch leased it a task of the master that had left).

    ``send`` ends it instead of a reply, too: a call that came before the master closed,
    a fetch waiting for tasks, was answered after it (an empty batch), and a worker took
    the master for back ("reconnected to master ... after 0.0 s" after the master's
    "master exit"). Except a settle's (:data:`_SETTLES`), which ran: its results went
    out, and a worker not told counted its batch handed back (its exit line, health,
    metrics); a settle-then-fetch's is sent with no tasks (those end with the master).

    A reply that leases tasks to a worker that left meanwhile (its fetch waited for
    them) hands them back instead, as they were (:meth:`QueueBroker.unsent`): sent, it
    reached nobody, and the tasks waited out the lease while the other workers fetched
    nothing."""

    def __init__(
        self,
        stopped: threading.Event,
        conn: wire.ServedConnection,
        broker: QueueBroker | None,
        address: str,
        waits: _SettleWaits | None = None,
    ) -> None:
        self._stopped, self._recv, self._send = stopped, conn.recv, conn.send
        self._conn, self._broker, self._address = conn, broker, address
        self._peer = wire.PeerWatch(conn)
        self._method: object = None  # the request being served's
        self._args: Any = ()
        self._waits, self._waiting = waits, False

    def recv(self) -> Any:
        request = self._recv()
        self._method = request[1] if isinstance(request, tuple) and len(request) == 4 else None
        self._args = request[2] if self._method is not None else ()
        named = request[3] if self._method == "settle_fetch" else None
        if isinstance(named, dict) and named.get("wait") and self._waits is not None:
            self._waiting = True  # it may wait: counted until answered, before the stop's
            self._waits.begin()  # check (a stop just after it found none to wait for)
        if self._stopped.is_set():
            if self._waiting and self._waits is not None:
                self._waiting = False
                self._waits.end()
            if self._method == "put":  # told, not only cut: "may be queued or not" it read
                self._send(self._put_stopped(taken=False))
            raise EOFError("the master stopped")
        return request

    def send(self, obj: Any) -> None:
        try:
            self._send_until(obj)
        finally:
            if self._waiting and self._waits is not None:
                self._waiting = False
                self._waits.end()

    def _send_until(self, obj: Any) -> None:
        if self._stopped.is_set():
            if self._method == "put":  # ran: taken, unless it failed
                obj = self._put_stopped(taken=isinstance(obj, tuple) and obj[:1] == ("#RETURN",))
            else:
                obj = _ran_before_the_stop(self._method, obj)
            if obj is None:
                raise EOFError("the master stopped")
        method = self._method
        leased = _leased(method, obj) if method in _LEASES else []
        results = _got(method, obj) if method == "get" else []
        if (leased or results) and self._peer.left():
            self._hand_back(leased, results)
            raise EOFError("its peer left")
        try:
            self._send(obj)
        except OSError:
            self._hand_back(leased, results)
            raise

    def _put_stopped(self, taken: bool) -> tuple[str, str]:
        """The reply to a put the master stopped as it served: whether it took the tasks
        (:class:`~distq.errors.MasterStopped` to a producer of this distq's; an older
        one's "failed a request" line shows the text)."""
        bodies = self._args[1] if len(self._args) > 1 else ()
        count = len(bodies) if isinstance(bodies, list | tuple) else 0
        tasks, end = counted(count, "task"), "ends" if count == 1 else "end"
        took = (
            f"it took its {tasks}, which {end} with it unrun"
            if taken
            else f"it did not take its {tasks}"
        )
        why = f"the master at {self._address} stopped as it served this put: {took}"
        return ("#TRACEBACK", f"{_STOPPED_MARK}{taken:d} {why}")

    def _hand_back(self, leased: list[Wire], results: list[bytes]) -> None:
        """What a reply to a peer that left would have taken with it: a worker's leased
        tasks go back to the queue, a producer's results back to the front of its reply
        queue (a producer reconnecting, as an Executor does, reads them there)."""
        if self._broker is None or not self._args or not isinstance(self._args[0], str):
            return
        consumer = self._args[1] if len(self._args) > 1 else None
        if leased and isinstance(consumer, str):
            self._broker.unsent(consumer, leased)
        if results:
            self._broker.unget(self._args[0], results)


class _SettleWaits:
    """The served settle-then-fetches that may wait for tasks (``wait`` named), until
    answered: a master that stops wakes them (:meth:`QueueBroker.stop`) and lets them
    answer before it exits. Their settles ran; a worker that saw the connection close
    instead counted its batch handed back, whose results had gone out."""

    def __init__(self) -> None:
        self._count = 0
        # a plain Lock, notified only while a stop waits (:attr:`_asked`): a notify on
        # the stdlib's RLock condition at each end: 4,800 instructions a task (callgrind)
        self._lock = threading.Lock()
        self._none = threading.Condition(self._lock)
        self._asked = False

    def begin(self) -> None:
        with self._lock:
            self._count += 1

    def end(self) -> None:
        with self._lock:
            self._count -= 1
            if self._asked and not self._count:
                self._none.notify_all()

    def answered(self, seconds: float) -> bool:
        """Whether every one was answered within ``seconds``."""
        with self._lock:
            self._asked = True
            return self._none.wait_for(lambda: not self._count, seconds)


#: How long a stopping master waits for its settle-then-fetches to answer (each woke up)
_SETTLE_WAITS_ANSWERED = 1.0


def _got(method: object, reply: Any) -> list[bytes]:
    """The results a reply to a producer's ``get`` takes off its reply queue."""
    if method != "get" or not isinstance(reply, tuple) or reply[:1] != ("#RETURN",):
        return []
    bodies = reply[1]
    return bodies if isinstance(bodies, list) and all(type(b) is bytes for b in bodies) else []


#: The calls whose reply leases tasks: (token, body, redelivered) each, in a list.
_LEASES = frozenset({"fetch", "settle_fetch", "settle_fetch_late"})


def _leased(method: object, reply: Any) -> list[Wire]:
    """The tasks ``reply`` to ``method`` leases (none but a fetch's)."""
    if method not in _LEASES or not isinstance(reply, tuple) or reply[:1] != ("#RETURN",):
        return []
    wires = reply[1]
    if method == "settle_fetch_late":  # (late, leased)
        wires = wires[1] if isinstance(wires, tuple) and len(wires) == 2 else None
    return wires if isinstance(wires, list) else []


#: The calls whose reply goes out once the master stopped: each ran, its results out.
#: (A put's says the master stopped: :meth:`_ServedUntil._put_stopped`.)
_SETTLES = frozenset({"settle", "settle_fetch", "settle_fetch_late"})
#: How a put's reply starts when the master stopped as it served it, then 1 or 0: taken.
_STOPPED_MARK = "distq-master-stopped:"


def _ran_before_the_stop(method: object, reply: Any) -> Any:
    """``reply`` to ``method`` to send once the master stopped, without the tasks a
    settle-then-fetch leased; None: none to send."""
    if method not in _SETTLES or not isinstance(reply, tuple) or reply[:1] != ("#RETURN",):
        return None
    if method == "settle_fetch":
        return ("#RETURN", [])
    if method == "settle_fetch_late" and isinstance(reply[1], tuple):
        return ("#RETURN", (reply[1][0], []))
    return reply


def _listen_error(exc: OSError) -> str:
    """Why the master cannot listen, and what to do about it."""
    what = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror):
        return (
            f"cannot resolve its host ({what}); use 0.0.0.0 (every interface), "
            "or a name or address of this machine"
        )
    if exc.errno == errno.EADDRINUSE:
        return f"{what}; pick a free port or stop what uses it"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{what}: that address is not one of this machine's; use 0.0.0.0 (every "
            "interface), :: for IPv6, or one of this host's addresses"
        )
    if exc.errno == errno.EAFNOSUPPORT:
        return f"{what}: this machine has no IPv6; use an IPv4 address, or 0.0.0.0"
    if exc.errno == errno.EACCES:
        return f"{what}: ports below 1024 need privileges; pick a port above 1023"
    return what


def _call(address: str, method: Callable[..., _T], *args: Any, **named: Any) -> _T:
    """Call the broker, turning a lost connection into :class:`TransportError`.

    A connection that failed is forgotten (:func:`_close_proxy`), and marked lost (a
    close then does not connect afresh: :func:`_lost`): it is the calling
    thread's, shared by every proxy of the address, so kept it would fail each later
    call of that thread for good. A slot closes its consumer and so forgets it anyway;
    the worker's keeper thread, renewing long batches' leases, never did: after its
    master restarted, every renewal failed ("Broken pipe") for the worker's life."""
    proxy = getattr(method, "__self__", None)
    try:
        return method(*args, **named)
    except (EOFError, ConnectionResetError):
        _close_proxy(proxy, lost=True)
        raise _closed(address) from None
    except BlockingIOError:  # wire.bounded's SO_RCVTIMEO or SO_SNDTIMEO ran out (EAGAIN)
        # its reply may still come, and would answer this thread's next call: start afresh
        _close_proxy(proxy, lost=True)
        raise TransportError(
            f"the master at {address} did not answer within "
            f"{wire.reply_timeout():g} s (stopped, or overloaded?)"
        ) from None
    except AuthenticationError:  # connecting afresh for this call: a master of another key
        _close_proxy(proxy, lost=True)
        raise AuthenticationFailed(
            f"authentication failed: the master at {address} rejected DISTQ_AUTHKEY; "
            "use the same key as the master"
        ) from None
    except AssertionError:  # the same: the stdlib handshake asserts on a greeting not its own
        _close_proxy(proxy, lost=True)
        raise TransportError(
            f"the service at {address} (DISTQ_MANAGER_ADDRESS) answered with something "
            "other than a distq master's handshake; is a running `distq master` (not another "
            "service) there?"
        ) from None
    except TimeoutError as exc:  # wire.client's, connecting afresh for this call
        _close_proxy(proxy, lost=True)
        raise TransportError(
            f"the master at {address} gave {exc.strerror} (stopped, or overloaded?)"
        ) from None
    except OSError as exc:
        _close_proxy(proxy, lost=True)
        raise TransportError(f"lost the connection to the master at {address}: {exc!r}") from None
    except RemoteError as exc:
        text = str(exc.args[0]) if exc.args else ""
        if text.startswith(_STOPPED_MARK):  # the master stopped as it served a put
            _close_proxy(proxy, lost=True)
            said = text.removeprefix(_STOPPED_MARK)
            raise MasterStopped(wire.shown(said[2:]), taken=said[:1] == "1") from None
        if _unknown_to(proxy, exc):  # made before the master restarted: its leases are gone
            raise TransportError(
                f"the master at {address} no longer knows this consumer: it restarted "
                "since, and the leases of this consumer's tasks went with it"
            ) from None
        text = str(exc.args[0]) if exc.args else ""
        # its last line: the traceback's text, which a key holder chooses, made the
        # worker's one line several (a forged one among them), or a megabyte
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        shown = wire.shown(lines[-1] if lines else "no reason given")
        raise FailedRequest(f"the master at {address} failed a request: {shown}", text) from None
    except pickle.UnpicklingError as exc:  # wire.Refused: a reply naming a global; or garbage
        raised = getattr(exc, "raised", None)
        # not a master to keep talking to on this connection; but one whose broker method
        # raised (a settle it refused in part) answered: a close tells it, on one of its
        # own, and what the consumer held goes back at once. Marked lost, the close told
        # it nothing, and the tasks the settle left leased waited out their lease
        _close_proxy(proxy, lost=raised is None)
        raise RefusedReply(
            f"refused a reply of the master at {address} and dropped the connection: {exc}",
            raised,
        ) from None


class RefusedReply(TransportError):
    """A reply the worker refused (:class:`wire.Refused`); ``raised``: the error it
    carried, if the master's broker method raised one."""

    def __init__(self, message: str, raised: BaseException | None) -> None:
        super().__init__(message)
        self.raised = raised


def _taken(exc: TransportError, count: int) -> tuple[int, list[int]]:
    """How many of a settle call's ``count`` settlements its master took though it failed
    ``exc``: those before the one it refused (:meth:`QueueBroker.settle` takes none
    after it), as its error says (:data:`~distq.transport.manager_broker.TAKEN`), and
    the tokens of those it found late (``LATE``: their retries and dead letters not
    sent). 0 for any other failure, and from a master that does not say it (none known
    taken). Not read from the error's text: a master of 94c73d7 counted in the same
    words only the one it refused, having settled those after it; a count of 5,000
    digits raised."""
    raised = exc.raised if isinstance(exc, RefusedReply) else None
    if not isinstance(raised, ValueError):
        return 0, []
    taken, late = getattr(raised, TAKEN, None), getattr(raised, LATE, None)
    if type(taken) is not int or not 0 < taken < count:
        return 0, []
    if type(late) is not list or not all(type(token) is int for token in late):
        return 0, []  # which were late unknown: none known settled
    return taken, late


class FailedRequest(TransportError):
    """The master's server failed a request (``multiprocessing``'s ``RemoteError``):
    ``traceback`` is all of its text, the message its last line."""

    def __init__(self, message: str, traceback: str) -> None:
        super().__init__(message)
        self.traceback = traceback


def _unknown_to(proxy: object, exc: RemoteError) -> bool:
    """Whether ``exc`` is the master's ``KeyError`` for ``proxy``'s object: a master
    started since the proxy was made has no object of that id."""
    ident = getattr(proxy, "_id", None)
    text = str(exc.args[0]) if exc.args else ""
    return ident is not None and text.rstrip().endswith(f"KeyError: {ident!r}")


def _closed(address: str) -> TransportError:
    return TransportError(
        f"the master at {address} closed the connection (its job is done, or it stopped)"
    )


class _Refusals:
    """What a master older than this distq refused (a keyword, a call: one of the
    ``_OLDER_*`` texts), learnt at its first refusal and asked of it no more: each refusal
    is a round trip, and a keyword's (read as a refused reply) the connection too. A
    client connected afresh (to a master restarted in place, maybe newer) :meth:`forget` it."""

    def __init__(self) -> None:
        self._refused: set[str] = set()

    def __contains__(self, refusal: str) -> bool:
        return refusal in self._refused

    def __bool__(self) -> bool:
        """Whether this master refused anything yet."""
        return bool(self._refused)

    def first(self, refusal: str, newer: Callable[[], _T], older: Callable[[], _T]) -> _T:
        """``newer()``; ``older()`` at its refusal by ``refusal`` (refused unread: nothing
        was done), and from then on in its place."""
        if refusal not in self._refused:
            try:
                return newer()
            except TransportError as exc:
                if not self.learnt(exc, refusal):
                    raise
        return older()

    def learnt(self, exc: TransportError, *refusals: str) -> bool:
        """Whether ``exc`` is the refusal of one of ``refusals``, kept if so."""
        said = exc.traceback if isinstance(exc, FailedRequest) else str(exc)
        for refusal in refusals:
            if refusal in said:
                self._refused.add(refusal)
                return True
        return False

    def forget(self) -> None:
        self._refused.clear()


def _master_limit(address: str, broker: wire.Broker, refusals: _Refusals) -> int | None:
    """The master's DISTQ_MAX_MESSAGE_BYTES, as its ``message_limit`` tells it; None
    from a master before getlim33, which has no such call (sent to as before)."""
    return refusals.first(
        _OLDER_MASTER_LIMIT, lambda: _call(address, broker.message_limit), lambda: None
    )


def _call_list(
    address: str, method: Callable[..., list[_T] | None], *args: Any, **named: Any
) -> list[_T]:
    """:func:`_call` for a method that returns a list. A master that is stopping ends
    each connection with one stray ``None`` reply (``multiprocessing``'s server sends
    what ``serve_client`` returned): that reads as the master having closed it."""
    got = _call(address, method, *args, **named)
    if got is None:
        raise _closed(address)
    return got


class ManagerProducer(Producer):
    """A producer, in the master (``broker`` is the :class:`QueueBroker`) or remote (a
    proxy: ``distq submit --wait``, ``Executor(host=False)``). A remote one's reply queue
    lapses the master's ``Settings.master_ttl`` after its last renewal (the master's own
    never does): :meth:`reconcile` renews it,
    and so do :meth:`submit` and :meth:`results` every ``renew_every`` seconds (for
    callers that do not reconcile, an executor), one extra call at most that often. A
    remote one whose connection is gone (the master restarted) connects afresh in
    :meth:`reconcile`, with ``reconnect``."""

    takes_back = True

    def __init__(
        self,
        broker: wire.Broker,
        queue: str,
        reply_to: str,
        address: str,
        renew_every: float,
        reconnect: Callable[[], wire.Broker] | None = None,
        *,
        most: int | None = None,
    ) -> None:
        """``most``: a remote one's DISTQ_MAX_MESSAGE_BYTES, named in each get: the master
        sends an error result for a result over it (:meth:`QueueBroker.get`)."""
        self._broker, self._queue, self.reply_to, self._address = broker, queue, reply_to, address
        self._own_most = most
        self._refusals = _Refusals()  # what this connection's master refused
        self._reconnect = reconnect
        self._submitted = 0
        self._lapsed = False  # seen lapsed by a renewal since the last reconcile
        self._renew_every = renew_every
        self._renew_at = time.monotonic() + renew_every  # opened by ManagerTransport.producer
        self._master_most: int | None = None  # asked once, when a task is large

    @property
    def most(self) -> int | None:
        """None against a master of a distq before getlim33, which refuses a limit named."""
        return None if _OLDER_LIMITS in self._refusals else self._own_most

    def submit(self, bodies: Sequence[bytes]) -> None:
        if time.monotonic() >= self._renew_at:
            self._renew()
        if self._own_most is not None and max(map(len, bodies), default=0) > _LEAST_ROOM:
            self._fits(bodies)
        for chunk in _batches(bodies):
            _call(self._address, self._broker.put, self._queue, chunk)
            self._submitted += len(chunk)

    def _fits(self, bodies: Sequence[bytes]) -> None:
        """:class:`MessageRefused`, before any is sent, if one of ``bodies`` is too large
        for the master's frames (a remote producer's DISTQ_MAX_MESSAGE_BYTES above the
        master's): sent, the master dropped the connection at each put, and the producer
        reconnected and sent it again, without end. The master's limit is asked once (a
        master before getlim33 tells none: sent as before)."""
        if self._master_most is None:
            self._master_most = _master_limit(self._address, self._broker, self._refusals)
            if self._master_most is None:
                return
        room, most = _sendable(self._master_most), self._master_most
        largest = max(map(len, bodies))
        if largest <= room:
            return
        fix = (
            f"the master at {self._address} reads in a message (twice its "
            f"DISTQ_MAX_MESSAGE_BYTES of {most:,}, and 64 MiB, less 5 MiB for the batch "
            "around it): it cannot be sent; give the master at least this process's "
            f"DISTQ_MAX_MESSAGE_BYTES ({self._own_most:,})"
        )
        raise MessageRefused(f"a task of {largest:,} bytes is over the {room:,} {fix}", room, fix)

    def reconcile(self) -> int:
        """Renew the reply queue; every submitted body while it stayed open (the queues
        live in the master, so none is lost while it runs), 0 once it had lapsed (the
        tasks queued then are dead-lettered unrun: the caller submits again what it
        still waits for, and a duplicate result is dropped). A lost connection is opened
        afresh first (a restarted master holds none of the tasks: 0)."""
        try:
            self._renew()
        except TransportError:
            if self._reconnect is None:
                raise
            _close_proxy(self._broker)
            self._broker = self._reconnect()  # raises while the master is away
            # named again: a master restarted in place may be newer than the one that
            # refused it (sent any result, and one over this producer's frames refused)
            self._refusals.forget()
            self._master_most = None  # its limit: asked again
            self._renew()
        self.lapsed = self._lapsed
        if self._lapsed:
            self._submitted, self._lapsed = 0, False
        return self._submitted

    def _renew(self) -> None:
        if not _call(self._address, self._broker.open, self.reply_to):
            self._lapsed = True
        self._renew_at = time.monotonic() + self._renew_every

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        if time.monotonic() >= self._renew_at:
            self._renew()
        get, reply_to = self._broker.get, self.reply_to
        return self._refusals.first(
            _OLDER_LIMITS,
            lambda: _call_list(self._address, get, reply_to, max_count, timeout, most=self.most),
            lambda: _call_list(self._address, get, reply_to, max_count, timeout),
        )

    def withdraw(self, bodies: Sequence[bytes], redelivered: bool = True) -> list[bool]:
        found: list[bool] = []
        withdraw, queue = self._broker.withdraw, self._queue
        for chunk in _batches(bodies):
            found += self._refusals.first(  # a master older than the flag takes every copy
                _OLDER_WITHDRAW,
                functools.partial(_call, self._address, withdraw, queue, chunk, redelivered),
                functools.partial(_call, self._address, withdraw, queue, chunk),
            )
        return found

    def close(self) -> None:
        # RemoteError: a master started since knows no object of this proxy's (its queue
        # went with the master before): the refusal is no news, and a remote traceback.
        # AuthenticationError, AssertionError: a close in a thread of its own connects
        # afresh, to a master of another key, or another service
        with contextlib.suppress(
            OSError, EOFError, pickle.UnpicklingError, RemoteError, *_HANDSHAKE_FAILURES
        ):
            if not _lost(self._broker):  # the master's reply queue lapses without it
                self._broker.delete(self.reply_to)
        _close_proxy(self._broker)


class ManagerConsumer(Consumer):
    resettles = True  # the master's leases outlive a connection

    def __init__(
        self,
        broker: wire.Broker,
        queue: str,
        consumer_id: str,
        lease: float,
        address: str,
        *,
        keepers: Callable[[], float | None] = lambda: None,
        most: int | None = None,
        too_large: _TooLargeForMaster | None = None,
    ) -> None:
        """``keepers``: how long a call may wait in the calling thread if that is the
        worker's keeper (None in any other: ``wire.REPLY_TIMEOUT``). ``most``: this
        worker's DISTQ_MAX_MESSAGE_BYTES, named in each fetch: the master dead-letters a
        task over it (:meth:`QueueBroker.fetch`) rather than send it. ``too_large``:
        what a remote worker settles in place of a result too large for its master."""
        # a suffix per connection: an earlier connection's leases are never renewed by this one
        self._id = f"{consumer_id}.{secrets.token_hex(3)}"
        self._broker, self._queue = broker, queue
        self._lease, self._address = lease, address
        self._refusals = _Refusals()  # what the master refused (an older distq's)
        self._keepers = keepers
        self._own_most = most
        self._too_large = too_large
        self._answered: list[object] = []  # the tags of a settle's calls answered so far
        self._master_most: int | None = None  # asked once, when a result is large

    @property
    def most(self) -> int | None:
        """None against a master of a distq before limits33, which refuses a limit named."""
        return None if _OLDER_LIMITS in self._refusals else self._own_most

    def _fitted(self, settlements: Sequence[Settlement]) -> Sequence[Settlement]:
        """``settlements``, a result too large for the master to read (over its frames,
        below its DISTQ_MAX_MESSAGE_BYTES) replaced by its task's error result, and a dead
        letter so large by one that keeps the start of its task: sent, the master refused
        the whole settle and the task ran again, each time. Only a result or letter too
        large for some master's frames asks this one's limit (once)."""
        if self._too_large is None or max(map(_largest, settlements), default=0) <= _LEAST_ROOM:
            return settlements
        if self._master_most is None:  # asked once: an older master's refusal is kept
            self._master_most = _master_limit(self._address, self._broker, self._refusals)
        if self._master_most is None:
            return settlements
        room, most = _sendable(self._master_most), self._master_most
        return [s if _largest(s) <= room else self._too_large(s, most) for s in settlements]

    def _bounded(self) -> contextlib.AbstractContextManager[None]:
        """The calls of the worker's keeper (its hand-backs: a release, a settle; a close
        after one failed) bounded as its renewals (``ManagerTransport.heartbeat``): on a
        connection gone silent they waited 30 s, the worker's other leases lapsing
        meanwhile, and a SIGTERM waiting for them."""
        within = self._keepers()
        return contextlib.nullcontext() if within is None else _within(self._broker, within)

    def fetch(self, max_count: int, timeout: float) -> list[Delivery]:
        wire: list[Wire] = self._claim(
            _call_list, self._broker.fetch, self._queue, self._id, max_count, timeout, self._lease
        )
        return _deliveries(wire)

    def _claim(
        self, call: Callable[..., _T], method: Callable[..., Any], *args: Any, **named: Any
    ) -> _T:
        """``call(address, method, *args, **named)``, naming :attr:`most`; without it from
        then on against a master that refuses it (a distq before limits33: its method
        takes no ``most``, and its TypeError closes the connection), which then sends a
        task over it, as before."""
        return self._refusals.first(
            _OLDER_LIMITS,
            lambda: call(self._address, method, *args, most=self.most, **named),
            lambda: call(self._address, method, *args, **named),
        )

    @property
    def consumer_id(self) -> str:
        return self._id

    def heartbeat(self) -> None:
        _call(self._address, self._broker.heartbeat, self._id, self._lease)

    def gone(self, reply_to: Collection[str]) -> set[str]:
        if not reply_to:
            return set()
        return set(_call_list(self._address, self._broker.gone, list(reply_to)))

    def settle(self, settlements: Sequence[Settlement]) -> None:
        """In calls of :data:`BATCH_BYTES` of results, retries and dead letters (and the
        last one's): one call of a batch's results of 1 MiB each was over the master's
        frame limit, refused, and the tasks ran again."""
        self._begin()
        with self._telling_settled():
            for batch in _settle_batches(self._fitted(settlements)):
                self._settle(batch)

    def _begin(self) -> None:
        self.late, self.settled_late, self._answered = frozenset(), frozenset(), []

    @contextlib.contextmanager
    def _telling_settled(self) -> Iterator[None]:
        """A settle in calls whose later call failed: the earlier calls' tasks not late
        are :attr:`settled_late` (their results went out, and they do not come back with
        the lease); the worker counted them handed back."""
        try:
            yield
        except TransportError:
            self.settled_late = frozenset(self._answered) - frozenset(self.late)
            raise

    @contextlib.contextmanager
    def _taking_refused(self, settlements: Sequence[Settlement]) -> Iterator[None]:
        """One settle call's: those of its ``settlements`` the master took though it
        refused one (:func:`_taken`) are answered (:meth:`_telling_settled`), those it
        found late :attr:`late`: their results went out, and the worker counted the
        whole call handed back."""
        try:
            yield
        except TransportError as exc:
            taken, late = _taken(exc, len(settlements))
            if taken:
                self.late = frozenset(self.late) | frozenset(late)
                self._answered += (s.delivery.tag for s in settlements[:taken])
            raise

    def _settle(self, settlements: Sequence[Settlement]) -> None:
        """One call of :meth:`settle`'s, its late tokens added to :attr:`late`."""
        with self._bounded(), self._taking_refused(settlements):
            late = _call(
                self._address, self._broker.settle, self._queue, self._id, _wire(settlements)
            )
        # None: a master from before settle told which were late (01e67ef); one of this
        # version that stops closes the connection
        if late:
            self.late = frozenset(self.late) | frozenset(late)
        self._answered += (s.delivery.tag for s in settlements)

    def settle_then_fetch(
        self, settlements: Sequence[Settlement], max_count: int, timeout: float = 0.0
    ) -> list[Delivery]:
        """Settled and the next batch claimed in one call to the master, which waits up to
        ``timeout`` for the first task when none is ready. A batch with retries or dead
        letters, where the settle may find some :attr:`late`, asks which
        (``settle_fetch_late``, without waiting); a master of a distq before that call,
        in two calls (settle, then fetch)."""
        if not settlements or max_count <= 0:
            self.settle(settlements)
            return []
        self._begin()
        settlements = self._fitted(settlements)
        if len(settlements) == 1:  # one call, whatever its size: none taken if refused
            return self._settle_last_then_fetch(settlements, max_count, timeout)
        with self._telling_settled():
            *before, settlements = _settle_batches(settlements)  # large results
            for batch in before:
                self._settle(batch)
            with self._taking_refused(settlements):
                return self._settle_last_then_fetch(settlements, max_count, timeout)

    def _settle_last_then_fetch(
        self, settlements: Sequence[Settlement], max_count: int, timeout: float
    ) -> list[Delivery]:
        """:meth:`settle_then_fetch`'s last call: one that settles results only waits up
        to ``timeout`` for the first task in the master (an older master takes
        no wait: it answers at once, and the worker fetches again, as before)."""
        if _may_be_late(settlements):
            with self._bounded():
                return self._settle_then_fetch_late(settlements, max_count)
        args = (self._queue, self._id, _wire(settlements), max_count, self._lease)
        settle_fetch = self._broker.settle_fetch
        # a slot's call (unbounded: not the keeper's) to a master that took every keyword
        # so far: no closures, no context
        if not self._refusals and self._keepers() is None:
            try:
                return _deliveries(
                    _call_list(
                        self._address, settle_fetch, *args, most=self._own_most, wait=timeout
                    )
                )
            except TransportError as exc:
                if not self._refusals.learnt(exc, _OLDER_WAIT, _OLDER_LIMITS):
                    raise
        with self._bounded():
            wire: list[Wire] = self._refusals.first(
                _OLDER_WAIT,
                lambda: self._claim(_call_list, settle_fetch, *args, wait=timeout),
                lambda: self._claim(_call_list, settle_fetch, *args),
            )
        return _deliveries(wire)

    def _settle_then_fetch_late(
        self, settlements: Sequence[Settlement], max_count: int
    ) -> list[Delivery]:
        """:meth:`settle_then_fetch` of a batch with retries or dead letters: its
        :attr:`late` said too, in one call (two to a master without that call)."""
        return self._refusals.first(
            _OLDER_MASTER,
            lambda: self._settle_and_fetch_late(settlements, max_count),
            lambda: self._settle_and_fetch(settlements, max_count),
        )

    def _settle_and_fetch_late(
        self, settlements: Sequence[Settlement], max_count: int
    ) -> list[Delivery]:
        reply = self._claim(
            _call,
            self._broker.settle_fetch_late,
            self._queue,
            self._id,
            _wire(settlements),
            max_count,
            self._lease,
        )
        if reply is None:  # see _call_list
            raise _closed(self._address)
        late, wire = reply
        self.late = frozenset(self.late) | frozenset(late)
        return _deliveries(wire)

    def _settle_and_fetch(
        self, settlements: Sequence[Settlement], max_count: int
    ) -> list[Delivery]:
        """In two calls, to a master without ``settle_fetch_late``: a fetch that fails
        after the settle ran tells it (:attr:`settled_late`), a lone settlement's too
        (:meth:`settle_then_fetch` tells only a batch's), which was counted handed back."""
        self._settle(settlements)
        with settled_already(), self._telling_settled():
            return self.fetch(max_count, 0.0)

    def release(self, deliveries: Sequence[Delivery]) -> int:
        tokens = tags_of(deliveries, int, "manager")
        with self._bounded():
            _call(self._address, self._broker.release, self._id, tokens)
        return len(tokens)

    def close(self) -> None:
        # the master gone means leases gone (RemoteError: a master started since, see
        # ManagerProducer.close). Its answer waited for within a third of the lease, as
        # the keeper's calls: a slot's close on a master frozen after its last call
        # waited REPLY_TIMEOUT (30 s), the slot's thread and the worker's stop with it;
        # what the consumer held goes back as its lease runs out anyway
        with (
            _within(self._broker, _reply_within(self._lease)),
            contextlib.suppress(
                OSError, EOFError, pickle.UnpicklingError, RemoteError, *_HANDSHAKE_FAILURES
            ),
        ):
            if not _lost(self._broker):
                self._broker.disconnect(self._id)
        _close_proxy(self._broker)


@contextlib.contextmanager
def _within(proxy: object, seconds: float) -> Iterator[None]:
    """The calling thread's calls bounded to ``seconds`` within: on its connection (one a
    thread, which every proxy of an address shares: ``proxy``'s), and on one a call makes
    afresh; ``REPLY_TIMEOUT`` again after. Within another, as that one says."""
    if wire.thread_bounded():
        yield
        return
    conn = _connection_of(proxy)
    if conn is not None:  # none yet: made by the call, within CONNECT_TIMEOUT, then seconds
        wire.bounded(conn, seconds)
    try:
        with wire.thread_bound(seconds):
            yield
    finally:
        conn = _connection_of(proxy)
        if conn is not None:  # none: closed by a failure, nothing to undo
            wire.bounded(conn, wire.REPLY_TIMEOUT)


def _reply_within(lease: float) -> float:
    """How long a call that must not outlast a lease waits for the master's answer: a
    third of the lease, :data:`_KEEPER_WAIT_MIN` at least, ``REPLY_TIMEOUT`` at most."""
    return min(wire.REPLY_TIMEOUT, max(_KEEPER_WAIT_MIN, lease / 3))


def _connection_of(proxy: object) -> Any:
    """The calling thread's connection of ``proxy``'s address, if it has one."""
    return getattr(getattr(proxy, "_tls", None), "connection", None)


def _deliveries(wire: Sequence[Wire]) -> list[Delivery]:
    return [Delivery(body=body, tag=token, redelivered=again) for token, body, again in wire]


#: What the stdlib handshake of a connection made afresh by a call raises: the master's
#: key is another (a master started since), the service is not a master (AssertionError)
_HANDSHAKE_FAILURES = (AuthenticationError, AssertionError)

_OLDER_MASTER = "'settle_fetch_late' of"  # in the refusal of a method not exposed
_OLDER_MASTER_LIMIT = "'message_limit' of"  # the same: a master before getlim33
#: In the refusal of a fetch's limit by a master of a distq before limits33 (a get's: getlim33)
_OLDER_LIMITS = "unexpected keyword argument 'most'"
#: In the refusal of a withdraw's ``redelivered`` by a master older than that keyword
_OLDER_WITHDRAW = "unexpected keyword argument 'redelivered'"
#: In the refusal of a settle-then-fetch's ``wait`` by a master older than that keyword
_OLDER_WAIT = "unexpected keyword argument 'wait'"


def _may_be_late(settlements: Sequence[Settlement]) -> bool:
    """Whether any of ``settlements`` publishes a retry or a dead letter, which a master
    refuses from a lease that lapsed."""
    for s in settlements:  # noqa: SIM110  # any() made a generator for a lone task
        if s.retry is not None or s.dead_letter is not None:
            return True
    return False


def _wire(settlements: Sequence[Settlement]) -> list[WireSettlement]:
    tokens = tags_of([s.delivery for s in settlements], int, "manager")
    return [
        (token, s.reply_to, s.result, s.retry, s.retry_delay, s.dead_letter)
        for token, s in zip(tokens, settlements, strict=True)
    ]


def _cuts(sizes: Sequence[int]) -> Iterator[slice]:
    """Where items of ``sizes`` bytes are cut into the calls they are sent in:
    :data:`BATCH_BYTES` of them before a call's last (one message each, within its
    limit: ``manager_wire.frame_limit``), as the master's replies are."""
    if sum(sizes) <= BATCH_BYTES:  # the common case: one call
        yield slice(0, len(sizes))
        return
    start, room = 0, BATCH_BYTES
    for at, size in enumerate(sizes):
        room -= size
        if room < 0:
            yield slice(start, at + 1)
            start, room = at + 1, BATCH_BYTES
    if start < len(sizes):
        yield slice(start, len(sizes))


def _batches(bodies: Sequence[bytes]) -> Iterator[list[bytes]]:
    """``bodies`` in the calls they are sent in: ``MESSAGE_BATCH`` at most, cut by
    :func:`_cuts`."""
    for start in range(0, len(bodies), MESSAGE_BATCH):
        chunk = list(bodies[start : start + MESSAGE_BATCH])
        if sum(map(len, chunk)) <= BATCH_BYTES:  # the common case: one look, in C, no list
            yield chunk
        else:
            yield from (chunk[cut] for cut in _cuts(list(map(len, chunk))))


def _settle_size(settlement: Settlement) -> int:
    """The bytes a settlement sends: its result, retry and dead letter."""
    return (
        len(settlement.result or b"")
        + len(settlement.retry or b"")
        + len(settlement.dead_letter or b"")
    )


def _largest(settlement: Settlement) -> int:
    """The bytes of a settlement's larger body the master reads: its result or its dead
    letter (a retry is its task again, which the master took)."""
    return max(len(settlement.result or b""), len(settlement.dead_letter or b""))


def _settle_batches(settlements: Sequence[Settlement]) -> list[Sequence[Settlement]]:
    """``settlements`` in the calls they are settled in, cut by :func:`_cuts` as a
    producer's put is (:func:`_batches`)."""
    return [settlements[cut] for cut in _cuts(list(map(_settle_size, settlements)))]


def _sendable(most: int) -> int:
    """The largest body a peer of DISTQ_MAX_MESSAGE_BYTES ``most`` reads past the
    :data:`BATCH_BYTES` of bodies before a call's or reply's last, 1 MiB spared for the
    message around them (``wire.frame_limit``)."""
    return wire.frame_limit(most) - BATCH_BYTES - (1 << 20)


#: What every master reads past a batch: a body within it asks no master its limit.
_LEAST_ROOM = _sendable(MIN_MESSAGE_BYTES)


class _TooLargeForMaster:
    """What a remote worker settles in place of a result or a dead letter too large for
    its master to read (:meth:`ManagerConsumer._fitted`): the error result of its task,
    naming both limits, signed with the worker's keys (no result, and a line logged, if
    it names no task); a dead letter keeping the start of its task, saying why."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def __call__(self, settlement: Settlement, most: int) -> Settlement:
        if len(settlement.result or b"") > _sendable(most):
            settlement = self._result(settlement, most)
        if len(settlement.dead_letter or b"") > _sendable(most):
            settlement = self._letter(settlement, most)
        return settlement

    def _letter(self, settlement: Settlement, most: int) -> Settlement:
        """The dead letter, its task's body cut to its first :data:`OVERSIZED_KEPT_BYTES`:
        whole (JSON writes a quote of the task's in 4 bytes), the master refused the
        settle, and the task ran again, each time, unanswered."""
        cut, why = cut_letter(
            settlement.dead_letter or b"",
            f"too large for the master to read (its DISTQ_MAX_MESSAGE_BYTES is {most:,}, this "
            f"worker's {self._settings.max_message_bytes:,}): give the master at least this "
            "worker's DISTQ_MAX_MESSAGE_BYTES",
        )
        log.error("a dead letter too large for the master: %s", why)
        return msgspec.structs.replace(settlement, dead_letter=cut)

    def _result(self, settlement: Settlement, most: int) -> Settlement:
        settings, result = self._settings, settlement.result or b""
        keys = settings.signing_keys or settings.signing_key
        codec = Codec(keys, most, settings.transport, settings.queue)
        reader = (
            f"the master's DISTQ_MAX_MESSAGE_BYTES (this worker's is "
            f"{settings.max_message_bytes:,}); too large for the master to read, the worker "
            "did not send it"
        )
        fix = "give the master at least this worker's DISTQ_MAX_MESSAGE_BYTES"
        stand_ins = codec.oversized_results(result, reader, fix)
        if len(stand_ins) != 1:  # a pack is never this large: garbage
            log.error(
                "dropped a result of %s bytes, too large for the master (DISTQ_MAX_MESSAGE_BYTES "
                "%s) and naming no task",
                f"{len(result):,}",
                f"{most:,}",
            )
            return msgspec.structs.replace(settlement, result=None)
        [stand_in] = stand_ins
        log.error("task %s: %s", stand_in.task_id, stand_in.error_message)
        # in the format of its task's message, as the result it stands in for
        sealed = codec.seal_result(stand_in, settlement.delivery.body)
        return msgspec.structs.replace(settlement, result=sealed)


class _Oversized:
    """The master's dead letter and answer for a task too large for the worker that
    fetched it to read (:meth:`QueueBroker.fetch`), as that worker makes them of one over
    its DISTQ_MAX_MESSAGE_BYTES (:meth:`Endings.malformed`), the reason naming both
    limits; and the line it logs. Checked with a codec at the worker's limit, the
    master's keys (the worker's, which a smaller task is checked with, it does not know)."""

    def __init__(self, settings: Settings, address: str) -> None:
        self._settings, self._address = settings, address

    def sendable(self, most: int) -> int:
        return _sendable(most)

    def __call__(
        self, queue: str, body: bytes, most: int
    ) -> tuple[str | None, bytes | None, bytes]:
        settings = self._settings
        keys = settings.signing_keys or settings.signing_key
        codec = Codec(keys, most, settings.transport, queue)
        endings = Endings(f"master {self._address}", queue, codec)
        error = MessageTooLarge(  # as a worker's own (limits.check_size), and both limits
            f"task is {len(body):,} bytes, over the limit of {most:,} (DISTQ_MAX_MESSAGE_BYTES "
            f"of the worker that fetched it; the master's is {settings.max_message_bytes:,}); "
            "too large for that worker to read, the master did not send it"
        )
        try:
            ending = endings.malformed(Delivery(body=body, tag=0), error)
            [settlement] = endings.settlements([ending])
        except Exception:  # a bug: the task is dead-lettered all the same, unanswered
            log.exception("master at %s: cannot answer a task too large", self._address)
            reason = f"refused: {error}; not answered: the master failed to (see its log)"
            letter = DeadLetter(
                first_bytes(body, OVERSIZED_KEPT_BYTES), reason, queue, endings.worker_id
            )
            return None, None, letter.encode()
        log.error("master at %s: %s", self._address, ending.note)
        result, dead = settlement.result, settlement.dead_letter
        assert dead is not None  # malformed: always dead-lettered
        return settlement.reply_to, None if result is None else bytes(result), dead

    def results(self, body: bytes, most: int) -> list[bytes]:
        settings = self._settings
        keys = settings.signing_keys or settings.signing_key
        codec = Codec(keys, most, settings.transport, settings.queue)
        reader = (
            "the DISTQ_MAX_MESSAGE_BYTES of the process that gets it (the master's is "
            f"{settings.max_message_bytes:,}); too large for that process to read, the "
            "master did not send it"
        )
        try:
            made = [codec.seal_result(r, body) for r in codec.oversized_results(body, reader)]
        except Exception:  # a bug: the result is dropped all the same, not sent
            log.exception("master at %s: cannot answer a result too large", self._address)
            return []
        if not made:
            log.error(
                "master at %s: dropped a result message of %s bytes, too large for the "
                "producer that got it (DISTQ_MAX_MESSAGE_BYTES %s), that names no task",
                self._address,
                f"{len(body):,}",
                f"{most:,}",
            )
        return made


def _close_proxy(broker: object, lost: bool = False) -> None:
    """Close a proxy's connection, and forget it: every proxy of one address shares its
    thread's connection, and a closed one left behind would fail the next proxy's calls
    (a slot reconnecting after its master restarted). ``lost``: a call failed on it (or
    connecting it), see :func:`_lost`; a close of an open one clears that."""
    if isinstance(broker, BaseProxy):
        local: Any = getattr(broker, "_tls", None)
        conn = getattr(local, "connection", None)
        if conn is not None:
            conn.close()
            with contextlib.suppress(AttributeError):
                del local.connection
        if local is not None and (lost or conn is not None):
            local.lost = lost


def _id_of(proxy: object) -> object:
    """The id of ``proxy``'s object in its master (every proxy of a master shares its
    broker's), None for none: a proxy of a master started since has another."""
    return getattr(proxy, "_id", None)


def _lost(broker: object) -> bool:
    """Whether the calling thread's connection of ``broker``'s address was closed by a
    failed call, and none made since: a close then tells the master nothing (what it held
    goes as its lease or reply queue lapses). Its call connected afresh, and against a
    master gone (another process on its port, a host that drops packets) or frozen it
    waited out ``CONNECT_TIMEOUT``, a slot's or an executor's close with it."""
    local = getattr(broker, "_tls", None)
    return getattr(local, "connection", None) is None and getattr(local, "lost", False) is True
