"""Lease records' queue names (the records themselves need a broker: integration tests)."""

from __future__ import annotations

import pytest

from distq.transport.rabbitmq_holds import record_queue


@pytest.mark.parametrize(
    ("queue", "consumer"),
    [
        ("q", "w-0.abc123"),
        ("q" * 100, "w" * 300 + "-0.abc123"),
        ("q", "é" * 200),
        ("q", "\udcff" * 3),
    ],
)
def test_a_lease_record_queue_name_fits_amqp_s_255_bytes(queue: str, consumer: str) -> None:
    name = record_queue(queue, consumer)
    raw = name.encode()  # a name pika can send: UTF-8, whole characters
    assert len(raw) <= 255 and name.startswith(f"{queue}.held.")
    if len(f"{queue}.held.{consumer}".encode(errors="replace")) <= 255 and consumer.isprintable():
        assert name == f"{queue}.held.{consumer}"  # a short one as it always was
    else:
        assert record_queue(queue, consumer + "x") != name  # another id, another queue
