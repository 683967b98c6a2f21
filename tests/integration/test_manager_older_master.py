"""What a manager client asks of a master older than its distq: a keyword or a call that
master refuses is asked once, then not again of it (each refusal is a round trip, a
keyword's the connection too), and asked again of a master that listens next."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conftest import hosted_and_remote
from distq.transport import manager, manager_wire, open_transport
from distq.transport.manager_broker import QueueBroker
from fake_master import fake_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, tuple[str, ...]]]]:
    """Every request this process's proxies send a master: its method and keywords."""
    sent: list[tuple[str, tuple[str, ...]]] = []
    call = manager_wire.BrokerProxy._call

    def counted(self: manager_wire.BrokerProxy, method: str, *args: Any, **named: Any) -> Any:
        sent.append((method, tuple(key for key, value in named.items() if value is not None)))
        return call(self, method, *args, **named)

    monkeypatch.setattr(manager_wire.BrokerProxy, "_call", counted)
    yield sent


def _without_redelivered(monkeypatch: pytest.MonkeyPatch, broker: QueueBroker) -> None:
    """``broker``'s withdraw as a master's before left36: no ``redelivered``."""
    before = broker.withdraw

    def withdraw(queue: str, bodies: list[bytes]) -> object:
        return before(queue, bodies)

    monkeypatch.setattr(broker, "withdraw", withdraw)


def test_a_cancels_withdraw_asks_an_older_master_for_its_flag_once(
    monkeypatch: pytest.MonkeyPatch, asked: list[tuple[str, tuple[str, ...]]]
) -> None:
    # each cancel's withdraw (redelivered=False) was sent with the flag, refused (the
    # connection with it), then sent again without: two calls, and a connection, a chunk,
    # for the producer's life; every other fallback learnt from the first refusal
    with hosted_and_remote(fake_settings("olderwd")) as (hosted, remote):
        _without_redelivered(monkeypatch, hosted._broker)  # type: ignore[attr-defined]
        producer = remote.producer(remote.reply_queue("old"))
        producer.submit([b"a", b"b", b"c"])
        asked.clear()
        assert producer.withdraw([b"a"], False) == [True]
        assert producer.withdraw([b"b"], False) == [True]
        assert producer.withdraw([b"c"], False) == [True]
        withdraws = [named for method, named in asked if method == "withdraw"]
        assert withdraws == [("redelivered",), (), (), ()], withdraws  # the first refused
        producer.close()


def test_a_producer_asks_a_master_started_again_for_the_flag_again(
    monkeypatch: pytest.MonkeyPatch, asked: list[tuple[str, tuple[str, ...]]]
) -> None:
    # the master upgraded in place (a new one on the address) takes the flag: a cancel's
    # withdraw then leaves a task's copy the worker ran
    settings = fake_settings("olderagain")
    older = open_transport(settings, "master")
    remote = open_transport(settings, "client")
    try:
        _without_redelivered(monkeypatch, older._broker)  # type: ignore[attr-defined]
        producer = remote.producer(remote.reply_queue("old"))
        producer.submit([b"a"])
        assert producer.withdraw([b"a"], False) == [True]
        older.close()
        newer = open_transport(settings, "master")
        try:
            producer.reconcile()  # the connection lost: connects afresh
            producer.submit([b"b"])
            asked.clear()
            assert producer.withdraw([b"b"], False) == [True]
            assert [named for method, named in asked if method == "withdraw"] == [("redelivered",)]
            producer.close()
        finally:
            newer.close()
    finally:
        remote.close()


def test_a_producer_asks_an_older_master_for_its_limit_once(
    monkeypatch: pytest.MonkeyPatch, asked: list[tuple[str, tuple[str, ...]]]
) -> None:
    # a master before getlim33 exposes no message_limit: a producer asked it again before
    # each submit holding a large task (a refused round trip each), where a consumer
    # asked once
    older = tuple(name for name in manager_wire.EXPOSED if name != "message_limit")
    monkeypatch.setattr(manager_wire, "EXPOSED", older)
    with hosted_and_remote(fake_settings("olderlimit")) as (_hosted, remote):
        producer = remote.producer(remote.reply_queue("old"))
        large = [b"x" * (manager._LEAST_ROOM + 1)]  # over what some master reads: asked
        asked.clear()
        for _ in range(3):
            producer._fits(large)  # type: ignore[attr-defined]
        assert [method for method, _ in asked] == ["message_limit"], asked
        producer.close()
