"""Every use of pika's private internals, in one place, checked before it is relied on.

pika's public ``BlockingChannel`` waits for the broker after each publish in confirm
mode (a round trip and a disk sync per message) and writes every frame with its own
system call. The RabbitMQ transport batches instead, through these internals of pika
1.x (pyproject.toml pins pika below 2):

=======================================================  ==================================
internal                                                 used to
=======================================================  ==================================
``BlockingChannel._impl`` (a ``pika.channel.Channel``)   enable confirms with a callback;
                                                         publish and ack without waiting
``BlockingChannel._flush_output(*waiters)``              write what is queued; wait until
                                                         a condition holds (the confirms)
``BlockingConnection._impl._transport._tx_buffers``      join queued frames into one
(a ``deque`` of ``bytes``)                               ``send()``
``BaseConnection._adapter_call_later`` /                 a timer inside a blocking wait
``_adapter_remove_timeout``                              (pika's public ``call_later``
                                                         fires only in
                                                         ``process_data_events``)
``BaseConnection._terminate_stream(error)``              abort the socket of a close the
                                                         broker does not answer (what
                                                         pika's heartbeat checker does)
``BlockingConnection._impl`` (a ``pika.BaseConnection``)  hear Connection.Blocked/Unblocked
                                                         as they come, also inside a
                                                         blocking call (the public
                                                         callbacks wait for it to return);
                                                         read its ``server_properties``
                                                         (the broker's version)
``BlockingChannel._closing_reason``                      say why the broker closed the
                                                         channel (read with a default:
                                                         without it, a plainer message)
``Connection.bytes_received`` / ``bytes_sent``           see whether a connection without
                                                         heartbeats still hears its broker
                                                         (:class:`AnswerWithin`)
``Channel._on_deliver(method_frame, header_frame,        cancel a consumer keeping what it
body)`` (looked up on the instance for each delivery),   was pushed (:func:`cancel_keeping`),
``BlockingChannel._remove_pending_deliveries``           and one that ``BlockingChannel``
                                                         forgot (:func:`cancel_forgotten`)
=======================================================  ==================================

:func:`check_classes` runs when this module is imported, and :class:`FastChannel`
checks the instances of every connection it wraps: a pika release that moved one of
them fails with a :class:`~distq.errors.ConfigError` naming it, never quietly.
``tests/unit/test_pika_internals.py`` runs the same checks without a broker.
"""

from __future__ import annotations

import contextlib
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.channel
import pika.exceptions
from pika.adapters import blocking_connection
from pika.adapters.utils import io_services_utils

from distq.errors import ConfigError
from distq.transport.signatures import parameters_differ


def changed(internal: str, found: object, expected: str) -> ConfigError:
    """The error for an internal that is not what this module expects."""
    version = pika.__version__
    return ConfigError(
        f"pika {version} changed {internal} (found {found}, expected {expected}), "
        "which distq's RabbitMQ transport relies on (see distq.transport.pika_internals); "
        f"install an earlier pika 1.x, e.g. pip install 'pika<{version}'"
    )


def _require(obj: object, owner: str, attribute: str, kind: type | tuple[type, ...]) -> Any:
    value = getattr(obj, attribute, None)
    if not isinstance(value, kind):
        names = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(f"{k.__module__}.{k.__qualname__}" for k in names)
        raise changed(f"{owner}.{attribute}", type(value).__name__, expected)
    return value


def _parameters(method: str, function: object, names: tuple[str, ...]) -> None:
    if problem := parameters_differ(function, names, skip=1, kind="a method"):  # after self
        raise changed(method, *problem)


def check_classes() -> None:
    """Check what can be checked without a connection: the classes and their methods."""
    flush = getattr(blocking_connection.BlockingChannel, "_flush_output", None)
    if not isinstance(flush, types.FunctionType):
        raise changed("BlockingChannel._flush_output", type(flush).__name__, "a method")
    channel = pika.channel.Channel
    _parameters("Channel.confirm_delivery", channel.confirm_delivery, ("ack_nack_callback",))
    _parameters(
        "Channel.basic_publish",
        channel.basic_publish,
        ("exchange", "routing_key", "body", "properties", "mandatory"),
    )
    _parameters("Channel.basic_ack", channel.basic_ack, ("delivery_tag", "multiple"))
    _parameters(
        "Channel.queue_delete", channel.queue_delete, ("queue", "if_unused", "if_empty", "callback")
    )
    _parameters("Channel.add_on_return_callback", channel.add_on_return_callback, ("callback",))
    _parameters(
        "Channel._on_deliver", channel._on_deliver, ("method_frame", "header_frame", "body")
    )
    _parameters("Channel.basic_cancel", channel.basic_cancel, ("consumer_tag", "callback"))
    tags = getattr(channel, "consumer_tags", None)
    if not isinstance(tags, property):
        raise changed("Channel.consumer_tags", type(tags).__name__, "a property")
    _parameters(
        "BlockingChannel._remove_pending_deliveries",
        blocking_connection.BlockingChannel._remove_pending_deliveries,
        ("consumer_tag",),
    )
    _require(io_services_utils, "io_services_utils", "_AsyncTransportBase", type)
    base = pika.BaseConnection
    _parameters(
        "BaseConnection._adapter_call_later", base._adapter_call_later, ("delay", "callback")
    )
    _parameters(
        "BaseConnection._adapter_remove_timeout", base._adapter_remove_timeout, ("timeout_id",)
    )
    _parameters("BaseConnection._terminate_stream", base._terminate_stream, ("error",))


def closed_by_broker(channel: object) -> BaseException | None:
    """Why the broker closed ``channel`` (a ``BlockingChannel``), if it did: its
    ``ChannelClosedByBroker`` (a 406 naming a message over its max_message_size), which
    pika raises only from the channel's next own call."""
    reason = getattr(channel, "_closing_reason", None)
    return reason if isinstance(reason, pika.exceptions.ChannelClosedByBroker) else None


def check_channel(channel: object) -> Any:
    """The ``pika.channel.Channel`` under a ``BlockingChannel``."""
    return _require(channel, "BlockingChannel", "_impl", pika.channel.Channel)


def on_blocked(
    connection: object,
    blocked: Callable[[object, str], None],
    unblocked: Callable[[object], None],
    closed: Callable[[object, BaseException], None],
) -> None:
    """Call ``blocked(impl, reason)`` when RabbitMQ blocks ``connection`` (a memory or
    disk alarm: its publishes wait), ``unblocked(impl)`` when it lets it go, as the
    frames arrive (``BlockingConnection``'s own callbacks run only once the call that
    waits returns, which a blocked publish does not until the alarm clears), and
    ``closed(impl, reason)`` when the connection closes (pika's blocked-connection
    timeout among the reasons: ``pika.exceptions.ConnectionBlockedTimeout``)."""
    impl = _require(connection, "BlockingConnection", "_impl", pika.BaseConnection)
    impl.add_on_connection_blocked_callback(
        lambda conn, frame: blocked(conn, str(getattr(frame.method, "reason", "") or "no reason"))
    )
    impl.add_on_connection_unblocked_callback(lambda conn, _frame: unblocked(conn))
    impl.add_on_close_callback(closed)


def server_version(connection: object) -> str | None:
    """The version the broker of ``connection`` (a ``BlockingConnection``) said it runs
    as it took it (AMQP ``Connection.Start``'s ``server_properties``), None if it said none."""
    impl = _require(connection, "BlockingConnection", "_impl", pika.BaseConnection)
    version = (getattr(impl, "server_properties", None) or {}).get("version")
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    return version if isinstance(version, str) else None


@contextlib.contextmanager
def _delivering(
    channel: Any, consumer_tag: str, deliver: Callable[[Any, Any, Any, bytes], None]
) -> Iterator[Any]:
    """Within: each delivery pushed to the consumer ``consumer_tag`` of ``channel`` (a
    ``BlockingChannel``) and not yet dispatched, waiting in the channel or arriving
    meanwhile, goes to ``deliver(channel, method, properties, body)``; the others to
    pika's dispatch. Yields the channel's ``pika.channel.Channel``."""
    impl = check_channel(channel)
    for event in channel._remove_pending_deliveries(consumer_tag):
        deliver(channel, event.method, event.properties, event.body)
    pikas = impl._on_deliver

    def on_deliver(method_frame: Any, header_frame: Any, body: bytes) -> None:
        if method_frame.method.consumer_tag == consumer_tag:
            deliver(channel, method_frame.method, header_frame.properties, body)
        else:
            pikas(method_frame, header_frame, body)

    impl._on_deliver = on_deliver
    try:
        yield impl
    finally:
        del impl._on_deliver  # pika's own again


def cancel_keeping(
    channel: Any, consumer_tag: str, deliver: Callable[[Any, Any, Any, bytes], None]
) -> None:
    """``channel.basic_cancel(consumer_tag)`` (a ``BlockingChannel``'s consumer, manual
    acks), handing each delivery pushed to that consumer and not yet dispatched (waiting
    in the channel, or arriving until the broker's Cancel-ok) to ``deliver(channel,
    method, properties, body)``, the consumer's callback, instead of pika's reject with
    requeue: a quorum queue counts such a requeue as a delivery (a delivery limit then
    dead-letters the task unrun), and flags the message redelivered."""
    with _delivering(channel, consumer_tag, deliver):
        channel.basic_cancel(consumer_tag)


def cancel_forgotten(
    channel: Any, consumer_tag: str, deliver: Callable[[Any, Any, Any, bytes], None]
) -> None:
    """Cancel the consumer ``consumer_tag`` of ``channel`` (a ``BlockingChannel``) whose
    ``basic_consume`` raised after it went out (an error while it waited for the
    Consume-ok, the link still open): ``BlockingChannel`` forgot it, its
    ``pika.channel.Channel`` did not, and the broker may have it and push it tasks,
    each of which then raised a ``KeyError`` in pika's dispatch and stayed unacked
    until the connection closed. The deliveries it was pushed (waiting in the channel,
    or arriving until the broker's Cancel-ok) go to ``deliver``, as in
    :func:`cancel_keeping`. Nothing is sent for a consumer the channel does not know (the
    Consume never went out, or the channel closed)."""
    with _delivering(channel, consumer_tag, deliver) as impl:
        if consumer_tag not in impl.consumer_tags:
            return
        impl.basic_cancel(consumer_tag, callback=_ignored)
        channel._flush_output(lambda: consumer_tag not in impl.consumer_tags)


def _ignored(_frame: object) -> None:
    """A Cancel-ok waited for through the channel's consumers, not this callback."""


def check_transport(transport: object) -> deque[bytes]:
    """The queue of frames waiting for the socket of a connection's I/O transport."""
    _require(transport, "the connection's transport", "_tx_buffers", deque)
    pending: deque[bytes] = getattr(transport, "_tx_buffers")  # noqa: B009 - checked above
    return pending


check_classes()


def close_within(connection: Any, seconds: float) -> None:
    """``BlockingConnection.close()`` (each open channel's Close, then the connection's,
    each awaiting its Close-Ok), bounded: after ``seconds`` the socket is aborted and the
    close raises a pika error (the connection is closed either way).

    pika's own close waits for the broker's answers for ever: a hung broker (paused, or
    a network cut without a reset) held a stopping process until it was killed. The
    heartbeat checker does not help a connection without heartbeats, nor one whose
    owner is already ending. On a healthy broker the close is what it was; the timer is
    removed.
    """
    impl = _require(connection, "BlockingConnection", "_impl", pika.BaseConnection)

    def abort() -> None:
        if not impl.is_closed:
            impl._terminate_stream(
                pika.exceptions.StreamLostError(
                    f"no answer to closing the connection within {seconds:g} s; aborted"
                )
            )

    timer = impl._adapter_call_later(seconds, abort)
    try:
        connection.close()
    finally:
        impl._adapter_remove_timeout(timer)


class AnswerWithin:
    """While its block runs, abort ``connection``'s socket once the broker has sent
    nothing for ``seconds`` since this process last sent it something (or since the
    block began): the blocking call under way then raises a pika error, and
    :attr:`fired` says why. For a connection without heartbeats, which pika never
    finds gone while a broker that hangs (paused, cut off without a reset) keeps the
    TCP connection open: a call on it waited for ever.

    Looked at every quarter of ``seconds`` from pika's own I/O loop, which runs only
    while a call waits for the broker: a look that comes late (the caller was busy
    between calls) starts the count afresh, and so does one while ``excused(impl)``
    holds (the broker blocks the connection for an alarm: pika's own timeout for that
    applies).
    """

    def __init__(
        self, connection: Any, seconds: float, excused: Callable[[object], bool] | None = None
    ) -> None:
        self.seconds = seconds
        self.fired = False
        self._excused = excused
        self._impl = _require(connection, "BlockingConnection", "_impl", pika.BaseConnection)
        _require(self._impl, "Connection", "bytes_received", int)
        _require(self._impl, "Connection", "bytes_sent", int)
        self._timer: object | None = None

    def __enter__(self) -> AnswerWithin:
        impl = self._impl
        self._seen = (impl.bytes_received, impl.bytes_sent)
        self._quiet_since = time.monotonic()
        self._schedule()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._timer is not None:
            self._impl._adapter_remove_timeout(self._timer)
            self._timer = None

    def _schedule(self) -> None:
        self._due = time.monotonic() + self.seconds / 4
        self._timer = self._impl._adapter_call_later(self.seconds / 4, self._look)

    def _look(self) -> None:
        self._timer = None
        impl, now = self._impl, time.monotonic()
        if impl.is_closed:
            return
        seen = (impl.bytes_received, impl.bytes_sent)
        excused = self._excused is not None and self._excused(impl)
        if seen != self._seen or now - self._due > self.seconds / 4 or excused:
            self._seen, self._quiet_since = seen, now  # heard, asked anew, or not waiting
        elif now - self._quiet_since >= self.seconds:
            self.fired = True
            impl._terminate_stream(
                pika.exceptions.StreamLostError(
                    f"no answer from the broker within {self.seconds:g} s; aborted"
                )
            )
            return
        self._schedule()


class FastChannel:
    """A ``BlockingChannel`` driven without its per-message waits; one thread only.

    Publishes and acks are queued on the underlying channel and go out, as one
    ``send()``, at the next :meth:`send` or :meth:`wait`.
    """

    def __init__(self, connection: Any, channel: Any) -> None:
        self._channel = channel
        self._impl = check_channel(channel)
        self._connection_impl = _require(
            connection, "BlockingConnection", "_impl", pika.BaseConnection
        )
        base = io_services_utils._AsyncTransportBase
        check_transport(_require(self._connection_impl, "SelectConnection", "_transport", base))

    def enable_confirms(
        self,
        on_confirm: Callable[[Any], None],
        on_return: Callable[[Any, Any, Any, bytes], None],
    ) -> None:
        """Confirm mode, with ``on_confirm(frame)`` for each Basic.Ack/Nack instead of waits."""
        self._impl.confirm_delivery(ack_nack_callback=on_confirm)
        self._impl.add_on_return_callback(on_return)

    def publish(self, routing_key: str, body: bytes, properties: Any, mandatory: bool) -> None:
        """Queue a publish to the default exchange."""
        self._impl.basic_publish("", routing_key, body, properties, mandatory)

    def ack(self, delivery_tag: int, multiple: bool) -> None:
        """Queue an ack; it goes out with the next write."""
        self._impl.basic_ack(delivery_tag, multiple)

    def send(self) -> None:
        """Write everything queued so far; do not wait for replies."""
        self._coalesce()
        self._channel._flush_output()

    def wait(self, until: Callable[[], bool], seconds: float | None = None) -> None:
        """Write everything queued, then process input until ``until()`` holds, or for
        at most ``seconds`` (None: no bound).

        Returns early if the channel or connection closes, or the time runs out; the
        caller checks ``until``. ``until`` is also checked each time the I/O loop wakes
        (at least every 5 s), so it may watch something other than the broker.
        """
        self._coalesce()
        if seconds is None:
            self._channel._flush_output(until)
            return
        expired: list[bool] = []
        impl = self._connection_impl
        timer = impl._adapter_call_later(seconds, lambda: expired.append(True))
        try:
            self._channel._flush_output(lambda: bool(expired) or until())
        finally:
            impl._adapter_remove_timeout(timer)

    def queue_delete(self, queue: str, seconds: float) -> bool:
        """Delete ``queue``, waiting at most ``seconds`` for the broker's answer;
        whether it answered (raises if the channel or connection closed)."""
        answered: list[Any] = []
        self._impl.queue_delete(queue, callback=answered.append)
        self.wait(lambda: bool(answered), seconds)
        return bool(answered)

    def _coalesce(self) -> None:
        """Join the frames waiting for the socket into one ``send()``: pika writes each
        frame (three per message) with its own system call."""
        transport = self._connection_impl._transport
        if transport is None:
            return  # closed: the flush that follows raises
        pending = transport._tx_buffers
        if len(pending) > 1:
            joined = b"".join(pending)
            pending.clear()
            pending.append(joined)
