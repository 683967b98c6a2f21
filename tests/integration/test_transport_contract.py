"""The transport contract (distq.transport.base), proven on every transport and real broker.

Each test runs three times: manager (this process hosts the queues, consumers connect
over TCP), redis and rabbitmq (real servers from tests/brokers.py).
"""

from __future__ import annotations

import time

import pytest

from conftest import Target, free_port
from distq.config import Settings
from distq.envelope import DeadLetter
from distq.errors import AuthenticationFailed, ConnectionFailed
from distq.transport import Settlement, Transport, open_transport
from seam import fetch_n, results_n

pytestmark = pytest.mark.integration


def test_submit_fetch_settle_and_collect(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer("r.contract.one")
    bodies = [f"task-{i}".encode() for i in range(50)]
    producer.submit(bodies)
    consumer = remote.consumer("c1")
    deliveries = fetch_n(consumer, 50)
    assert sorted(d.body for d in deliveries) == sorted(bodies)
    consumer.settle(
        [Settlement(d, reply_to=producer.reply_to, result=b"done:" + d.body) for d in deliveries]
    )
    assert sorted(results_n(producer, 50)) == sorted(b"done:" + b for b in bodies)
    assert consumer.fetch(10, 0.2) == []
    consumer.close()
    producer.close()


def test_tasks_come_out_in_submission_order(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer("r.contract.order")
    producer.submit([b"a", b"b", b"c"])
    consumer = remote.consumer("c1")
    assert [d.body for d in fetch_n(consumer, 3)] == [b"a", b"b", b"c"]


def test_waits_block_and_return_empty(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer("r.contract.wait")
    consumer = remote.consumer("c1")
    started = time.monotonic()
    assert consumer.fetch(5, 0.3) == []
    assert 0.2 <= time.monotonic() - started < 3
    started = time.monotonic()
    assert producer.results(5, 0.3) == []
    assert 0.2 <= time.monotonic() - started < 3
    started = time.monotonic()
    assert producer.results(5, 0) == []  # zero means "don't wait", never "wait forever"
    assert time.monotonic() - started < 1


def test_a_waiting_consumer_wakes_at_once(hosted: Transport, remote: Transport) -> None:
    import threading

    producer = hosted.producer("r.contract.wake")
    consumer = remote.consumer("c1")
    consumer.fetch(1, 0.05)  # set up the subscription where the transport has one
    timer = threading.Timer(0.3, producer.submit, args=([b"x"],))
    timer.start()
    started = time.monotonic()
    got = consumer.fetch(1, 5.0)
    timer.join()
    assert [d.body for d in got] == [b"x"]
    assert time.monotonic() - started < 2.0


def test_release_hands_back_to_the_front(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer("r.contract.release")
    producer.submit([b"first", b"second"])
    consumer = remote.consumer("c1")
    (first,) = fetch_n(consumer, 1)
    assert first.body == b"first"
    consumer.release([first])
    again = fetch_n(consumer, 2)
    assert [d.body for d in again] == [b"first", b"second"]
    assert again[0].redelivered


def test_expired_lease_goes_back_to_the_queue(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    producer = hosted.producer("r.contract.lease")
    producer.submit([b"1", b"2", b"3"])
    dead = remote.consumer("dies")
    assert len(fetch_n(dead, 3)) == 3
    # "dies" never heartbeats again (lease 1 s): another consumer gets the tasks back
    survivor = open_transport(target.settings, "worker").consumer("survives")
    started = time.monotonic()
    again = fetch_n(survivor, 3, within=15)
    assert sorted(d.body for d in again) == [b"1", b"2", b"3"]
    assert all(d.redelivered for d in again)
    assert time.monotonic() - started < 8  # a couple of lease periods, not minutes


def test_heartbeat_keeps_the_lease(target: Target, hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer("r.contract.heartbeat")
    producer.submit([b"long"])
    holder = remote.consumer("holder")
    (delivery,) = fetch_n(holder, 1)
    other = open_transport(target.settings, "worker").consumer("other")
    until = time.monotonic() + 3.0  # three lease periods
    while time.monotonic() < until:
        holder.heartbeat()
        assert other.fetch(1, 0.3) == []
    holder.settle([Settlement(delivery, reply_to=producer.reply_to, result=b"ok")])
    assert results_n(producer, 1) == [b"ok"]
    assert other.fetch(1, 1.5) == []


def test_retry_waits_its_delay(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer("r.contract.retry")
    producer.submit([b"try-1"])
    consumer = remote.consumer("c1")
    (delivery,) = fetch_n(consumer, 1)
    consumer.settle([Settlement(delivery, retry=b"try-2", retry_delay=1.5)])
    started = time.monotonic()
    assert consumer.fetch(1, 0.5) == []
    (again,) = fetch_n(consumer, 1, within=10)
    assert again.body == b"try-2"
    assert time.monotonic() - started >= 1.2


def test_dead_letters_keep_body_and_reason(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer("r.contract.dead")
    producer.submit([b"\xff not json"])
    consumer = remote.consumer("c1")
    (delivery,) = fetch_n(consumer, 1)
    letter = DeadLetter(body=delivery.body, reason="malformed", queue="q", worker="w")
    consumer.settle([Settlement(delivery, dead_letter=letter.encode())])
    deadline = time.monotonic() + 5
    while not hosted.dead_letters() and time.monotonic() < deadline:
        time.sleep(0.05)
    (found,) = hosted.dead_letters()
    assert (found.body, found.reason) == (b"\xff not json", "malformed")
    assert hosted.stats().dead == 1


def test_results_reach_only_their_producer(hosted: Transport, remote: Transport) -> None:
    mine, theirs = hosted.producer("r.contract.mine"), hosted.producer("r.contract.theirs")
    mine.submit([b"m"])
    theirs.submit([b"t"])
    consumer = remote.consumer("c1")
    consumer.settle(
        [
            Settlement(d, reply_to=(mine if d.body == b"m" else theirs).reply_to, result=d.body)
            for d in fetch_n(consumer, 2)
        ]
    )
    assert results_n(mine, 1) == [b"m"]
    assert results_n(theirs, 1) == [b"t"]
    assert mine.results(5, 0.3) == []


def test_stats_count_ready_tasks(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer("r.contract.stats")
    producer.submit([b"1", b"2", b"3", b"4", b"5"])
    producer.flush()  # the broker holds them all now, even where confirms are asynchronous
    assert hosted.stats().ready == 5
    consumer = remote.consumer("c1")
    taken = fetch_n(consumer, 2)
    assert len(taken) == 2
    stats = hosted.stats()
    assert stats.ready + len(taken) == 5
    assert stats.consumers == 1
    other = remote.consumer("c2")
    other.fetch(1, 0.1)
    assert hosted.stats().consumers == 2


def test_wrong_credentials_are_refused(target: Target, hosted: Transport) -> None:
    settings = Settings.load(target.bad_credentials_env)
    with pytest.raises(AuthenticationFailed):
        open_transport(settings, "worker")


def test_unreachable_broker_is_a_clear_error(target: Target) -> None:
    port = free_port()
    env = dict(target.env)
    env.update(
        {
            "DISTQ_MANAGER_ADDRESS": f"127.0.0.1:{port}",
            "DISTQ_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "DISTQ_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{port}/%2F",
        }
    )
    with pytest.raises(ConnectionFailed) as caught:
        open_transport(Settings.load(env), "worker")
    assert f"127.0.0.1:{port}" in str(caught.value)
