"""ManagerConsumer's reading of a master's replies, against a stand-in broker."""

from __future__ import annotations

from typing import Any

import pytest

from distq.errors import TransportError
from distq.transport import Delivery, Settlement
from distq.transport.manager import ManagerConsumer


class _StoppingMaster:
    """A master of an earlier distq that stopped: it ended each connection with a stray
    ``None`` reply, which the next call reads as its own."""

    def settle(self, *args: Any) -> None:
        return None


def test_a_settle_answered_by_a_stopping_masters_stray_reply_is_not_done() -> None:
    broker: Any = _StoppingMaster()
    consumer = ManagerConsumer(broker, "q", "w-0", 5.0, "127.0.0.1:1")
    settlement = Settlement(Delivery(body=b"t", tag=1), reply_to="q.results.j", result=b"r")
    with pytest.raises(TransportError, match="closed the connection"):
        consumer.settle([settlement])
