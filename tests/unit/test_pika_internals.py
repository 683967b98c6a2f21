"""pika's private internals the RabbitMQ transport relies on, checked without a broker.

A pika release that moves one fails here, naming it (and at run time, at the first
connection, with the same message): see distq.transport.pika_internals.
"""

from __future__ import annotations

import socket
from collections import deque
from unittest import mock

import pika
import pika.channel
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils import io_services_utils

from distq.errors import ConfigError
from distq.transport import pika_internals


def test_pika_is_the_major_version_distq_is_pinned_to() -> None:
    assert pika.__version__.split(".")[0] == "1"


def test_the_classes_have_what_distq_calls() -> None:
    pika_internals.check_classes()


def test_a_blocking_channel_keeps_its_channel_as_impl() -> None:
    impl = mock.create_autospec(pika.channel.Channel, instance=True, channel_number=1)
    channel = BlockingChannel(impl, mock.Mock())
    assert pika_internals.check_channel(channel) is impl


def test_an_io_transport_queues_frames_in_a_deque() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        transport = io_services_utils._AsyncPlaintextTransport(ours, mock.Mock(), mock.Mock())
        pending = pika_internals.check_transport(transport)
        assert isinstance(pending, deque) and not pending
        transport.write(b"frame")
        assert list(pending) == [b"frame"]


def test_a_moved_internal_is_named_with_pikas_version() -> None:
    with pytest.raises(ConfigError) as caught:
        pika_internals.check_channel(object())
    message = str(caught.value)
    assert f"pika {pika.__version__} changed BlockingChannel._impl" in message
    assert "expected pika.channel.Channel" in message and "pip install 'pika<" in message
    with pytest.raises(ConfigError, match=r"_tx_buffers \(found NoneType, expected"):
        pika_internals.check_transport(object())
    with pytest.raises(ConfigError, match=r"changed BlockingConnection\._impl"):
        pika_internals.on_blocked(
            object(), lambda _c, _r: None, lambda _c: None, lambda _c, _r: None
        )
