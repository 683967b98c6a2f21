"""Packed task messages on RabbitMQ: how a submit is split, and when a message is done."""

from __future__ import annotations

from distq.transport.base import Delivery
from distq.transport.rabbitmq_packs import (
    MESSAGES_PER_SUBMIT,
    TASKS_PER_MESSAGE,
    TASKS_TYPE,
    HeldMessages,
    chunks,
    pack,
    task_bodies,
)


def _t(delivery: Delivery) -> int:
    assert isinstance(delivery.tag, int)
    return delivery.tag


def _bodies(count: int) -> list[bytes]:
    return [b"task-%d" % i for i in range(count)]


def test_a_small_submit_sends_one_task_per_message() -> None:
    bodies = _bodies(2 * MESSAGES_PER_SUBMIT - 1)
    assert [list(c) for c in chunks(bodies)] == [[body] for body in bodies]


def test_a_large_submit_is_packed_in_order_up_to_the_limit() -> None:
    bodies = _bodies(1000)
    got = chunks(bodies)
    assert [body for chunk in got for body in chunk] == bodies
    assert max(len(chunk) for chunk in got) == TASKS_PER_MESSAGE
    assert len(got) >= MESSAGES_PER_SUBMIT


def test_a_middling_submit_still_makes_enough_messages_to_spread() -> None:
    got = chunks(_bodies(10 * MESSAGES_PER_SUBMIT))
    assert len(got) == MESSAGES_PER_SUBMIT
    assert {len(chunk) for chunk in got} == {10}


def test_each_task_gets_a_tag_of_its_own_and_the_message_flag() -> None:
    held = HeldMessages()
    first = held.receive(7, [b"a", b"b"], redelivered=True)
    second = held.receive(8, [b"c"], redelivered=False)
    tags = [_t(d) for d in first + second]
    assert len(set(tags)) == 3 and 7 not in tags[:1]
    assert [d.body for d in first + second] == [b"a", b"b", b"c"]
    assert [d.redelivered for d in first + second] == [True, True, False]
    assert len(held) == 3 and all(tag in held for tag in tags)


def test_a_message_is_acked_only_once_every_task_in_it_is_settled() -> None:
    held = HeldMessages()
    a, b = held.receive(5, [b"a", b"b"], redelivered=False)
    assert held.settle([_t(a)]) == []
    assert 5 in held.messages
    assert held.settle([_t(b)]) == [5]
    assert not held.messages and len(held) == 0
    assert held.settle([_t(a)]) == []  # settled already: nothing more to ack


def test_a_message_released_whole_is_requeued_as_it_came() -> None:
    held = HeldMessages()
    tasks = held.receive(3, [b"a", b"b"], redelivered=False)
    plan = held.release(_t(d) for d in tasks)
    assert (plan.nack, plan.ack, plan.republish) == ([3], [], [])
    assert not held.messages


def test_released_tasks_of_a_partly_settled_message_are_published_again() -> None:
    held = HeldMessages()
    a, b, c = held.receive(4, [b"a", b"b", b"c"], redelivered=False)
    assert held.settle([_t(a)]) == []
    plan = held.release([_t(b)])
    assert (plan.republish, plan.ack, plan.nack) == ([b"b"], [], [])  # c still runs
    plan = held.release([_t(c)])
    assert (plan.republish, plan.ack, plan.nack) == ([b"c"], [4], [])


def test_a_task_released_while_its_neighbours_run_is_published_again() -> None:
    held = HeldMessages()
    a, b = held.receive(9, [b"a", b"b"], redelivered=False)
    plan = held.release([_t(b)])
    assert (plan.republish, plan.ack, plan.nack) == ([b"b"], [], [])
    assert held.settle([_t(a)]) == [9]


def test_taking_messages_hands_over_their_open_tasks() -> None:
    held = HeldMessages()
    a, b = held.receive(2, [b"a", b"b"], redelivered=False)
    (c,) = held.receive(3, [b"c"], redelivered=False)
    held.settle([_t(a)])
    assert held.take([2]) == {_t(b): b"b"}
    assert list(held.messages) == [3] and len(held) == 1 and _t(c) in held


def test_a_message_counts_as_partly_settled_until_it_is_done() -> None:
    held = HeldMessages()
    a, b = held.receive(6, [b"a", b"b"], redelivered=False)
    (c,) = held.receive(7, [b"c"], redelivered=False)
    assert not held.partly_settled() and held.tags() == [_t(a), _t(b), _t(c)]
    held.settle([_t(a)])
    assert held.partly_settled() and held.tags() == [_t(b), _t(c)]
    held.settle([_t(b)])
    assert not held.partly_settled()


def test_a_message_carries_its_pack_or_itself() -> None:
    bodies = _bodies(3)
    assert task_bodies(TASKS_TYPE, pack(bodies)) == bodies
    assert task_bodies(None, pack(bodies)) == [pack(bodies)]  # not marked: one task
    broken = pack(bodies)[:-1]
    assert task_bodies(TASKS_TYPE, broken) == [broken]  # whole, to be dead-lettered
    assert task_bodies(TASKS_TYPE, b"") == [b""]


def test_a_pack_split_for_a_slow_worker_goes_back_task_by_task() -> None:
    held = HeldMessages()
    first, *rest = held.receive(11, [b"a", b"b", b"c"], redelivered=False)
    plan = held.release([_t(d) for d in rest], whole=False)
    assert (plan.republish, plan.ack, plan.nack) == ([b"b", b"c"], [], [])
    assert held.settle([_t(first)]) == [11]
    (only,) = held.receive(12, [b"d"], redelivered=False)
    plan = held.release([_t(only)], whole=False)  # never handed out, still not whole
    assert (plan.republish, plan.ack, plan.nack) == ([b"d"], [12], [])


def test_a_message_some_of_whose_tasks_went_back_is_never_requeued_whole() -> None:
    """Requeued whole, it would bring back the tasks published again: each would run
    twice (a pack split for a slot that then hands its task back, or the rest of a
    pack given back while the slot runs its share)."""
    for whole in (False, True):
        held = HeldMessages()
        first, *rest = held.receive(11, [b"a", b"b", b"c"], redelivered=False)
        plan = held.release([_t(d) for d in rest], whole=whole)
        assert (plan.republish, plan.ack, plan.nack) == ([b"b", b"c"], [], [])
        plan = held.release([_t(first)])
        assert (plan.republish, plan.ack, plan.nack) == ([b"a"], [11], [])
        assert held.partly_settled() is False and len(held) == 0
