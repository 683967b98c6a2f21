"""ManagerConsumer's reading of a master's replies, against a stand-in broker."""

from __future__ import annotations

from typing import Any

from distq.transport import Delivery, Settlement
from distq.transport.manager import ManagerConsumer


class _EarlierMaster:
    """A master from before a settle told which tasks were late (``01e67ef``): it
    answers every settle ``None``."""

    def settle(self, *args: Any) -> None:
        return None


def test_a_settle_answered_none_by_an_earlier_master_is_done_none_late() -> None:
    # A stopping master of this version closes the connection instead of answering
    # (test_manager_transport: a settle after its master stopped reads as closed).
    broker: Any = _EarlierMaster()
    consumer = ManagerConsumer(broker, "q", "w-0", 5.0, "127.0.0.1:1")
    settlement = Settlement(Delivery(body=b"t", tag=1), reply_to="q.results.j", result=b"r")
    consumer.settle([settlement])
    assert consumer.late == frozenset()
