"""The RabbitMQ transport's connection layer: connecting, pika's errors, and a channel
whose publishes are confirmed in batches.

:class:`Broker` is where ``DISTQ_AMQP_URL`` points and as whom: it connects, and turns
pika's and the socket's errors into distq's, without the password
(:meth:`Broker.translated`). :class:`Link` is one connection and one channel, for one
thread, with publisher confirms waited for once per batch (pika's ``BlockingChannel``
would wait per message: this goes through :mod:`distq.transport.pika_internals`).
:class:`Try` connects a worker's consumer afresh in a thread of its own. What the broker
does to this process's connections is said once: a memory or disk alarm blocking them,
and tasks it refused to take back (:data:`REFUSALS`). :func:`declared` and
:func:`exists` look queues up with passive declares.

The topology these serve, and why: :mod:`distq.transport.rabbitmq`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import (
    AMQPConnectorException,
    AMQPConnectorStackTimeout,
)

from distq import descriptors, tls
from distq.counts import counted
from distq.credentials import mask_url
from distq.errors import (
    AuthenticationFailed,
    CertificateRejected,
    ConfigError,
    ConnectionFailed,
    MessageRefused,
    TransportError,
)
from distq.ranges import SHOWN_LINE, cut, shortened
from distq.transport.pika_internals import FastChannel, close_within, closed_by_broker, on_blocked

_PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent.value)
# a close (or a stopping master's last call) waits this long for a hung broker, then
# aborts the socket: the process is ending, and leases bring back what it held
CLOSE_SECONDS = 3.0
#: The same wait after a second signal (Transport.hurry): a broker that answers does in
#: far less; one paused or cut off held each close CLOSE_SECONDS after "stop at once".
HURRIED_CLOSE_SECONDS = 0.2
#: How long a wait for confirms a stop came in still waits for them (Link.wait_for_confirms):
#: cut at once, a stop that came in a reconcile on a broker that answered was taken for a
#: failed call, and the master skipped its wait for the results in flight.
STOPPED_CONFIRM_SECONDS = 1.0
_BLOCKED_TIMEOUT = 60.0  # give up on a connection the broker blocks (memory/disk alarm)
# what a nack most likely means: RabbitMQ gives no reason
_REFUSED_WHY = (
    "a length limit with overflow reject-publish on the queue? see `rabbitmqctl list_policies`"
)

# rabbitmq.py's, where these lines were said before they moved here: a JSON line's
# "logger", and a filter on that name, stay as they were
log = logging.getLogger("distq.transport.rabbitmq")


class _Alarm:
    """RabbitMQ blocking this process's connections (a memory or disk alarm: publishes
    wait): said once when it blocks the first, once when it lets the last go, and when
    pika gives up on one blocked for :data:`_BLOCKED_TIMEOUT` (the caller reconnects,
    and a new connection blocked is said again). Before, nothing was said: a master sat
    silent for the 60 s a blocked call waits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # open connections the broker blocks; a closed one is taken out (:meth:`closed`):
        # pika's connections sit in reference cycles, and one closed while blocked stayed
        # here after an alarm longer than the timeout, so its end was never said
        self._blocked: weakref.WeakSet[object] = weakref.WeakSet()

    def blocked(self, where: str, connection: object, reason: str) -> None:
        with self._lock:
            first = not self._blocked
            self._blocked.add(connection)
        if first:
            log.warning(
                "%s blocks publishing: %s (a memory or disk alarm on the broker); waiting "
                "for it to clear (a call blocked for %g s gives up and reconnects)",
                where,
                reason,
                _BLOCKED_TIMEOUT,
            )

    def holds(self, connection: object) -> bool:
        """Whether the broker blocks ``connection`` now."""
        with self._lock:
            return connection in self._blocked

    def unblocked(self, connection: object) -> None:
        with self._lock:
            held = connection in self._blocked
            self._blocked.discard(connection)
            last = held and not self._blocked
        if last:
            log.warning("RabbitMQ takes publishing again: its alarm cleared")

    def closed(self, where: str, connection: object, reason: BaseException) -> None:
        with self._lock:
            held = connection in self._blocked
            self._blocked.discard(connection)
        if held and isinstance(reason, pika.exceptions.ConnectionBlockedTimeout):
            log.warning(
                "%s: gave up on a connection blocked for %g s (the alarm may still be on); "
                "reconnecting",
                where,
                _BLOCKED_TIMEOUT,
            )


_ALARM = _Alarm()


def blocked(connection: object) -> bool:
    """Whether RabbitMQ blocks ``connection`` (pika's connection underneath a
    ``BlockingConnection``, as its callbacks name it) for a memory or disk alarm: its
    publishes wait, and the broker reads nothing more from it meanwhile."""
    return _ALARM.holds(connection)


class _Refusals:
    """The broker refusing tasks a worker hands back to a queue (its nack says no
    reason): said once per queue and process, naming the likely cause. Before, a refused
    split failed the consumer, the pack came again, and its split was refused again:
    no task ever ran, and the queue filled with copies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._said: set[str] = set()

    def refused(self, where: str, queue: str, count: int) -> None:
        with self._lock:
            first = queue not in self._said
            self._said.add(queue)
        them = "it" if count == 1 else "them"
        (log.warning if first else log.debug)(
            "%s refused %s handed back to queue %r (%s); this worker keeps %s and runs %s itself",
            where,
            counted(count, "task"),
            queue,
            _REFUSED_WHY,
            them,
            them,
        )


REFUSALS = _Refusals()


# AMQPConnectorException: pika's connection workflow, e.g. a port that accepts TCP and
# never answers the AMQP handshake (AMQPConnectorStackTimeout); it derives from neither
PikaError = (pika.exceptions.AMQPError, AMQPConnectorException, OSError)

# pika logs every failed connection attempt at ERROR; ours reach the user as ConnectionFailed
logging.getLogger("pika").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Broker:
    """Where and as whom to connect; knows how to name the broker in messages."""

    url: str = field(repr=False)  # it holds the password
    host: str
    port: int
    user: str
    vhost: str
    tls_files: tls.TlsFiles = field(default_factory=tls.TlsFiles)
    queue: str = "distq"  # DISTQ_QUEUE: what a refused permission's hint names
    #: DISTQ_MAX_MESSAGE_BYTES: what a refusal for size names beside the broker's limit
    max_message_bytes: int | None = None
    #: the max_message_size it refused a message over, each time (see translated)
    refused_over: list[int] = field(default_factory=list, compare=False)

    @classmethod
    def from_url(
        cls,
        url: str,
        tls_files: tls.TlsFiles | None = None,
        queue: str = "distq",
        max_message_bytes: int | None = None,
    ) -> Broker:
        try:
            params = pika.URLParameters(url)
        except ValueError as exc:
            raise ConfigError(
                f"DISTQ_AMQP_URL ({mask_url(url)}) is not a valid AMQP URL ({shortened(str(exc))})"
            ) from None
        except Exception as exc:  # SyntaxError, TypeError, AttributeError, ssl.SSLError...
            parts = urlsplit(url)  # pika split it: a user and no password, its TypeError
            if parts.username is not None and parts.password is None:
                user = cut(unquote(parts.username), SHOWN_LINE)  # 5,000 of them: twice
                written = parts.username if len(parts.username) <= SHOWN_LINE else "USER"
                raise ConfigError(
                    f"DISTQ_AMQP_URL ({mask_url(url)}) names the user {user} and no "
                    "password; give the password in DISTQ_AMQP_PASSWORD or "
                    "DISTQ_AMQP_PASSWORD_FILE, or in the URL after the user and a colon "
                    f"({written}:<password>@)"
                ) from None
            # pika reads ?ssl_options= with ast.literal_eval and builds its SSL context at
            # once; a SyntaxError's text would quote the value, and a key's password in it
            why = shortened(exc.msg if isinstance(exc, SyntaxError) else str(exc))
            if "ssl_options" not in parse_qs(urlsplit(url).query):  # another option's
                raise ConfigError(
                    f"DISTQ_AMQP_URL ({mask_url(url)}): an option cannot be used "
                    f"({type(exc).__name__}: {why}); correct it or remove it"
                ) from None
            raise ConfigError(
                f"DISTQ_AMQP_URL ({mask_url(url)}): its ssl_options cannot be used "
                f"({type(exc).__name__}: {why}); give a Python dict of pika's SSL options "
                "(ca_certs, certfile, keyfile, password), or leave them out and set "
                "DISTQ_TLS_CA_FILE, DISTQ_TLS_CERT_FILE and DISTQ_TLS_KEY_FILE"
            ) from None
        odd = {k: v for k, v in (params.tcp_options or {}).items() if type(v) is not int}
        if odd:  # a socket option of text failed at the first connect, with a traceback
            raise ConfigError(
                f"DISTQ_AMQP_URL ({mask_url(url)}) has tcp_options {shortened(repr(odd))}: each "
                "value must be a whole number, e.g. tcp_options={'TCP_KEEPIDLE': 60}"
            )
        user = unquote(urlsplit(url).username or params.credentials.username)
        return cls(
            url,
            params.host,
            params.port,
            user,
            params.virtual_host,
            tls_files or tls.TlsFiles(),
            queue,
            max_message_bytes,
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self, heartbeat: int, name: str) -> Any:
        """A new ``BlockingConnection``; pika's errors become distq's, without the password."""
        params = pika.URLParameters(self.url)
        params.heartbeat = heartbeat
        params.blocked_connection_timeout = _BLOCKED_TIMEOUT
        params.client_properties = {"connection_name": name}
        # the URL's own ssl_options: a query option, not text anywhere (a password may hold it)
        own_options = "ssl_options" in parse_qs(urlsplit(self.url).query)
        if params.ssl_options is not None and not own_options:
            # pika's own amqps context checks host names without telling OpenSSL the host
            context = self.tls_files.context()
            params.ssl_options = pika.SSLOptions(context, server_hostname=self.host)
        where = f"RabbitMQ at {self.address}"
        try:
            connection = pika.BlockingConnection(params)
            on_blocked(
                connection,
                partial(_ALARM.blocked, where),
                _ALARM.unblocked,
                partial(_ALARM.closed, where),
            )
            return connection
        except pika.exceptions.ProbableAuthenticationError:
            raise AuthenticationFailed(
                f"{where} refused user {self.user!r} (DISTQ_AMQP_URL, DISTQ_AMQP_PASSWORD[_FILE]); "
                "check the user and password"
            ) from None
        except pika.exceptions.ProbableAccessDeniedError:
            raise AuthenticationFailed(
                f"{where} refused user {self.user!r} access to vhost {self.vhost!r} "
                "(DISTQ_AMQP_URL); check that the vhost exists and that the user has "
                "permissions on it"
            ) from None
        except (ssl.SSLError, *PikaError) as exc:
            problem = tls.failure(exc)
            if problem is not None:
                error = CertificateRejected if problem.refused else ConnectionFailed
                raise error(problem.line(f"{where} (DISTQ_AMQP_URL)")) from None
            why, hint = _describe(exc), "is it running?"
            if isinstance(exc, AMQPConnectorStackTimeout):
                why = f"no AMQP handshake within {params.stack_timeout:g} s"
                hint = "is that port RabbitMQ's (not Redis's, not a proxy with no broker)?"
            elif descriptors.out_of_descriptors(why):
                hint = descriptors.HINT
            elif params.ssl_options is None and "refused" not in why:
                hint = "is it running? If that port expects TLS, use amqps://"
            raise ConnectionFailed(
                f"cannot reach {where} (DISTQ_AMQP_URL): {why}; {hint}"
            ) from None

    @contextlib.contextmanager
    def translated(self, what: str) -> Iterator[None]:
        """Turn a pika or socket error raised inside into a :class:`TransportError`; a
        permission the user lacks (ACCESS_REFUSED) into a :class:`ConfigError`, which no
        reconnect mends (a master or worker stops, exit 2, instead of retrying, silent);
        a message refused for its size into a :class:`MessageRefused`, the broker's limit
        noted in :attr:`refused_over`."""
        try:
            yield
        except PikaError as exc:
            if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == 403:
                # ACCESS_REFUSED: its text names what was refused, ``what`` may not
                raise ConfigError(self.refused(exc.reply_text)) from None
            if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == 406:
                sizes = _TOO_LARGE.search(str(exc.reply_text))
                if sizes is not None:  # PRECONDITION_FAILED - message size N is larger ...
                    limit, mine = int(sizes[2]), self.max_message_bytes
                    self.refused_over.append(limit)
                    # ours above it let the message grow so large (a pack): both named
                    here = f"; DISTQ_MAX_MESSAGE_BYTES is {mine:,} here" if mine else ""
                    raise MessageRefused(
                        f"RabbitMQ at {self.address}: {what} failed: it refused a message "
                        f"of {int(sizes[1]):,} bytes, over its max_message_size of "
                        f"{limit:,}{here}: set DISTQ_MAX_MESSAGE_BYTES to at most {limit:,} "
                        "on every process (or raise the broker's max_message_size"
                        + (f" to {mine:,})" if mine and mine > limit else ")"),
                        limit,
                    ) from None
            raise TransportError(
                f"RabbitMQ at {self.address}: {what} failed: {_describe(exc)}"
            ) from None

    def refused(self, why: str) -> str:
        """What to say when RabbitMQ refuses this user access (``why``: its reply)."""
        mine = f"^{re.escape(self.queue)}(\\..*)?$"
        grant = shlex.join(
            [
                "rabbitmqctl",
                "set_permissions",
                "-p",
                self.vhost,
                self.user,
                mine,
                f"^({re.escape(self.queue)}(\\..*)?|amq\\.default)$",
                mine,
            ]
        )
        return (
            f"RabbitMQ at {self.address} refused user {self.user!r} ({why}); distq "
            f"needs the configure, write and read permissions on its queues "
            f"({self.queue!r} and those named {self.queue + '.*'!r}) and write on the "
            f"exchange amq.default: {grant}"
        )


#: RabbitMQ's refusal of a message over its ``max_message_size`` (406, closing the channel).
_TOO_LARGE = re.compile(r"message size (\d+) is larger than configured max size (\d+)")


def _describe(exc: BaseException) -> str:
    """The innermost useful message of a pika exception (pika nests them in args)."""
    while True:
        inner = getattr(exc, "exception", None)  # pika's connector errors wrap it here
        if not isinstance(inner, BaseException) and exc.args:
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _nothing() -> None:
    """A callback that only ends a wait for the connection's events."""


class Link:
    """One connection and one channel with batched publisher confirms, for one thread."""

    def __init__(self, broker: Broker, heartbeat: int, name: str) -> None:
        self.broker = broker
        self._sequence = 0
        self._unconfirmed: set[int] = set()
        self._refused: set[int] = set()  # publishes nacked, not raised nor taken yet
        self._returned: list[str] = []
        # the first publish the broker may have refused or returned: None while none was
        self._failed_at: int | None = None
        self.asked: float | None = None  # when a question to the broker went unanswered
        self.connection = broker.connect(heartbeat, name)
        try:
            with broker.translated("opening a channel"):
                self.channel = self.connection.channel()
                # BlockingChannel.confirm_delivery makes every publish wait; see module doc.
                self.fast = FastChannel(self.connection, self.channel)
                self.fast.enable_confirms(self._on_confirm, self._on_return)
        except BaseException:
            self.close()
            raise

    @property
    def is_open(self) -> bool:
        return bool(self.connection.is_open and self.channel.is_open)

    def answered(self, _frame: object) -> None:
        """The broker answered the question asked at :attr:`asked` (see
        :meth:`~distq.transport.rabbitmq.RabbitMQConsumer.answers`); the wait for events
        ends at once (a ready event does that; this callback of the channel underneath
        does not)."""
        self.asked = None
        self.connection.call_later(0, _nothing)

    def check_open(self) -> None:
        """Raise a pika error if the connection or channel closed (pika's calls on a
        closed connection raise an unrelated ValueError instead)."""
        if not self.is_open:
            reason = closed_by_broker(self.channel)
            if reason is not None:  # its words: a message over its max_message_size...
                raise reason
            raise pika.exceptions.ConnectionWrongStateError("the connection was closed")

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if method.multiple:
            done = {seq for seq in self._unconfirmed if seq <= method.delivery_tag}
        else:
            done = {method.delivery_tag}
        if isinstance(method, pika.spec.Basic.Nack):
            refused = done & self._unconfirmed
            if refused:
                self._refused |= refused
                self._failed(min(refused))
        self._unconfirmed -= done

    def _on_return(self, _channel: Any, method: Any, _props: Any, _body: bytes) -> None:
        self._returned.append(method.routing_key)
        # a return names no publish: RabbitMQ sends it just before that publish's ack, so
        # the publish is still unconfirmed, at or after the oldest one not confirmed yet
        self._failed(min(self._unconfirmed) if self._unconfirmed else self._sequence)

    def _failed(self, sequence: int) -> None:
        if self._failed_at is None or sequence < self._failed_at:
            self._failed_at = sequence

    @property
    def failed(self) -> bool:
        """Whether the broker refused or returned a publish on this link: from there on,
        it vouches for none (see :attr:`confirmed`)."""
        return self._failed_at is not None

    def publish(
        self, routing_key: str, body: bytes, *, mandatory: bool, properties: Any = _PERSISTENT
    ) -> None:
        """Publish persistently via the default exchange; confirmed by :meth:`confirm`."""
        self._sequence += 1
        self._unconfirmed.add(self._sequence)
        self.fast.publish(routing_key, body, properties, mandatory)

    @property
    def unconfirmed(self) -> int:
        return len(self._unconfirmed)

    @property
    def sequence(self) -> int:
        """How many messages were published on this link: the last one's number."""
        return self._sequence

    @property
    def confirmed(self) -> int:
        """How many publishes on this link, counted from the first, the broker confirmed
        and holds: the prefix before the first one unconfirmed, refused or returned."""
        confirmed = min(self._unconfirmed) - 1 if self._unconfirmed else self._sequence
        if self._failed_at is not None:
            confirmed = min(confirmed, self._failed_at - 1)
        return confirmed

    def send(self) -> None:
        """Write everything published so far to the socket; do not wait for confirms."""
        self.fast.send()

    def confirm(self, keep: int = 0) -> None:
        """Block until at most ``keep`` publishes await their confirm, then :meth:`check`."""
        self._wait_for_confirms(keep)
        self.check()

    def refused(self, sequences: Collection[int]) -> set[int]:
        """Wait for every confirm; which of these publishes (their :attr:`sequence`
        numbers) the broker refused. The caller deals with those: :meth:`check` no
        longer raises for them."""
        self._wait_for_confirms(0)
        out = self._refused & set(sequences)
        self._refused -= out
        return out

    def returned_to(self, routing_key: str) -> bool:
        """Whether a mandatory publish to ``routing_key`` came back unroutable (no such
        queue) since the last check; the broker returns one before it confirms it."""
        return routing_key in self._returned

    def unroutable(self) -> set[str]:
        """Wait for every confirm; the routing keys the broker had no queue for (mandatory
        publishes it returned) since the last check. Raises if it refused any."""
        self._wait_for_confirms(0)
        returned, self._returned = set(self._returned), []
        self.check()
        return returned

    def wait_for_confirms(self, stop: threading.Event | None = None) -> bool:
        """Block until every publish is confirmed (or refused), raising nothing for a
        refused or returned one: :attr:`failed` and :attr:`confirmed` say. False if
        ``stop`` was set first (noticed within 5 s: pika's I/O loop wakes that often) and
        the confirms did not come :data:`STOPPED_CONFIRM_SECONDS` after that."""
        if stop is None:
            self._wait_for_confirms(0)
            return True
        if self._unconfirmed:
            self.fast.wait(lambda: not self._unconfirmed or stop.is_set())
        if self._unconfirmed:  # stopped as they were due: a broker that answers sends them
            self.fast.wait(lambda: not self._unconfirmed, STOPPED_CONFIRM_SECONDS)
        if self._unconfirmed and stop.is_set():
            return False
        self._wait_for_confirms(0)
        return True

    def _wait_for_confirms(self, keep: int) -> None:
        if len(self._unconfirmed) > keep:
            self.fast.wait(lambda: len(self._unconfirmed) <= keep)
        if len(self._unconfirmed) > keep:
            raise pika.exceptions.ChannelWrongStateError("channel closed before confirming")

    def check(self) -> None:
        """Raise for any publish the broker refused or could not route since the last check."""
        refused, returned = self._refused, self._returned
        self._refused, self._returned = set(), []
        if refused:
            raise TransportError(
                f"RabbitMQ at {self.broker.address} refused {counted(len(refused), 'message')} "
                f"({_REFUSED_WHY})"
            )
        if returned:
            raise TransportError(
                f"RabbitMQ at {self.broker.address} has no queue {sorted(set(returned))[0]!r} "
                "to route to; was it deleted?"
            )

    def close(self, seconds: float = CLOSE_SECONDS) -> None:
        """Close the connection; within ``seconds`` (:data:`CLOSE_SECONDS`) whatever the
        broker does."""
        with contextlib.suppress(*PikaError):
            if self.connection.is_open:
                close_within(self.connection, seconds)


def exists(connection: Any, queue: str) -> bool:
    """Whether ``queue`` exists."""
    return declared(connection, queue)[0] is not None


def declared(
    connection: Any, *queues: str, making: dict[str, dict[str, Any]] | None = None
) -> list[Any | None]:
    """Each queue's counts (a passive declare's ``Queue.DeclareOk``), None for one that
    does not exist (a client declared none; a retry queue expired).

    Asked on channels of their own: a queue that does not exist closes the channel that
    asked, with a 404. A passive declare counts as using a queue, so one that exists
    stays while its counts are read. A queue in ``making`` is declared (durable, with
    its arguments there), made if it is not there, as its users make it: no 404, no
    channel closed. One there with other arguments (406), or that this user may not
    declare (403), is asked passively instead, and taken out of ``making``.
    """
    found: list[Any | None] = []
    making = {} if making is None else making
    channel = connection.channel()
    try:
        for queue in queues:
            arguments = making.get(queue)
            try:
                if arguments is None:
                    counts = channel.queue_declare(queue, passive=True)
                else:
                    counts = channel.queue_declare(queue, durable=True, arguments=arguments)
                found.append(counts.method)
            except pika.exceptions.ChannelClosedByBroker as exc:
                refused = arguments is not None and exc.reply_code in (403, 406)
                if exc.reply_code != 404 and not refused:
                    raise
                channel = connection.channel()
                if refused:  # asked passively, now and from now on
                    del making[queue]
                    found.append(declared(connection, queue)[0])
                else:
                    found.append(None)
    finally:
        with contextlib.suppress(*PikaError):
            if channel.is_open:
                channel.close()
    return found


class Try:
    """One try to connect a consumer afresh, in a thread of its own (pika's connect waits
    up to 15 s for a broker that takes the connection and never answers). What it makes
    is in :attr:`made` once the thread ends; a try dropped closes the link it makes."""

    def __init__(self, open_link: Callable[[], Link]) -> None:
        self.started = time.monotonic()
        self.made: Link | BaseException | None = None
        self._dropped = False
        self._lock = threading.Lock()  # between the try's thread and drop()
        self.thread = threading.Thread(
            target=self._run, args=(open_link,), name="distq-reconnect", daemon=True
        )
        self.thread.start()

    @property
    def age(self) -> float:
        return time.monotonic() - self.started

    def _run(self, open_link: Callable[[], Link]) -> None:
        try:
            made: Link | BaseException = open_link()
        except BaseException as exc:  # raised in the thread that takes it
            made = exc
        with self._lock:
            self.made, dropped = made, self._dropped
        if dropped and isinstance(made, Link):
            made.close()  # nobody takes it

    def drop(self) -> None:
        """Nobody takes what this try makes: its link, made or to come, is closed."""
        with self._lock:
            self._dropped, made = True, self.made
        if isinstance(made, Link):
            made.close()
