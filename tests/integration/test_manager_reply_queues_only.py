"""A manager peer reads (``get``) and deletes (``delete``) a producer's reply queue only,
over the real manager transport (a master hosted in this process, a worker's transport
connected to it): a get of the task queue took its tasks with no lease (lost if that
peer died), a delete dropped it with every task in it. distq's own processes never do
either: a worker fetches under a lease."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conftest import hosted_and_remote
from distq.envelope import Task, new_id
from distq.transport import Transport, manager_wire
from fake_master import fake_settings
from seam import dead_letter, fetch_n, results_n

pytestmark = pytest.mark.integration

QUEUE = "distq"


@pytest.fixture
def pair() -> Iterator[tuple[Transport, Transport]]:
    """A master hosting ``QUEUE`` with 3 tasks queued, and a worker's transport."""
    with hosted_and_remote(fake_settings(QUEUE)) as (hosted, remote):
        producer = hosted.producer(hosted.reply_queue(new_id()))
        tasks = [Task(name="echo", args=[n], reply_to=producer.reply_to) for n in range(3)]
        producer.submit([task.encode() for task in tasks])
        yield hosted, remote
        producer.close()


def _peer(remote: Transport) -> Any:
    """The worker's broker proxy: what a peer holding DISTQ_AUTHKEY calls."""
    return remote._endpoint()  # type: ignore[attr-defined]


def _refusal(method: Any, *args: Any) -> str:
    """The master's error, as the peer's proxy got it: short, as a worker shows only the
    start of one."""
    with pytest.raises(manager_wire.Refused) as refused:
        method(*args)
    said = str(refused.value.raised)
    assert len(said) <= 200, said
    return said


def test_a_peer_cannot_take_tasks_off_the_task_queue_without_a_lease(
    pair: tuple[Transport, Transport],
) -> None:
    # it took 2 of the 3, unleased: ready 1, none in flight, and a worker found 1
    hosted, remote = pair
    said = _refusal(_peer(remote).get, QUEUE, 2, 0.0)
    assert f"get of queue '{QUEUE}' refused" in said, said
    assert "only a producer's reply queue" in said, said
    assert "a worker fetches tasks under a lease" in said, said
    assert hosted.stats().ready == 3
    consumer = remote.consumer("w")
    assert len(fetch_n(consumer, 3, within=2)) == 3  # all of them still for a worker
    consumer.close()


def test_a_peer_cannot_delete_the_task_queue(pair: tuple[Transport, Transport]) -> None:
    # it dropped the queue with its 3 tasks: ready 0, and never run
    hosted, remote = pair
    said = _refusal(_peer(remote).delete, QUEUE)
    assert f"delete of queue '{QUEUE}' refused" in said, said
    assert "only a producer's reply queue" in said, said
    assert hosted.stats().ready == 3


def test_a_peer_cannot_take_or_delete_dead_letters_so() -> None:
    # distq dead-letters reads them with peek, requeue-dead takes them with requeue_dead
    with hosted_and_remote(fake_settings(QUEUE)) as (hosted, remote):
        dead_letter(hosted, remote, [(b"x", "no", QUEUE)])
        dead = f"{QUEUE}.dead"
        assert f"get of queue '{dead}' refused" in _refusal(_peer(remote).get, dead, 1, 0)
        assert f"delete of queue '{dead}' refused" in _refusal(_peer(remote).delete, dead)
        assert hosted.stats().dead == 1


def test_a_peer_cannot_open_the_task_queue_as_its_reply_queue(
    pair: tuple[Transport, Transport],
) -> None:
    # opened, the task queue was a reply queue: its tasks read and deleted as results
    hosted, remote = pair
    said = _refusal(_peer(remote).open, QUEUE)
    assert f"open of queue '{QUEUE}' refused" in said, said
    assert "refused" in _refusal(_peer(remote).get, QUEUE, 2, 0.0)
    assert hosted.stats().ready == 3


def test_a_peer_cannot_open_the_task_queue_before_a_task_is_queued() -> None:
    # opened before the first put or fetch made it, the task queue was a reply queue
    with hosted_and_remote(fake_settings(QUEUE)) as (hosted, remote):
        for queue in (QUEUE, f"{QUEUE}.dead"):
            assert f"open of queue '{queue}' refused" in _refusal(_peer(remote).open, queue)
        producer = hosted.producer(hosted.reply_queue(new_id()))
        producer.submit([Task(name="echo", args=[1], reply_to=producer.reply_to).encode()])
        assert "refused" in _refusal(_peer(remote).get, QUEUE, 1, 0.0)
        assert hosted.stats().ready == 1
        producer.close()


def test_a_get_of_a_queue_none_opened_waits_and_takes_nothing(
    pair: tuple[Transport, Transport],
) -> None:
    # a reply queue that lapsed, read before its producer opens it again: nothing, as
    # before; the name is not kept, and a task put there later is not taken
    _, remote = pair
    assert _peer(remote).get(f"{QUEUE}.results.gone", 5, 0.05) == []
    assert _peer(remote).get("later", 5, 0.0) == []
    _peer(remote).put("later", [b"t"])
    assert "refused" in _refusal(_peer(remote).get, "later", 5, 0.0)
    _peer(remote).delete(f"{QUEUE}.results.gone")  # a producer's close after a lapse


def test_a_remote_producer_reads_its_results_and_drops_its_reply_queue(
    pair: tuple[Transport, Transport],
) -> None:
    hosted, remote = pair
    producer = remote.producer(remote.reply_queue(new_id()))
    producer.submit([Task(name="echo", args=[9], reply_to=producer.reply_to).encode()])
    broker: Any = hosted._broker  # type: ignore[attr-defined]
    broker.put(producer.reply_to, [b"a result"])  # as a worker's settle pushes it
    assert results_n(producer, 1, within=2) == [b"a result"]
    producer.close()
    assert producer.reply_to not in broker._queues
