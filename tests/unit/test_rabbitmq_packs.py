"""Packed task messages on RabbitMQ: how a submit is split, and when a message is done."""

from __future__ import annotations

from collections.abc import Sequence

from distq.framing import TASKS_PER_MESSAGE, pack, unpack
from distq.limits import DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES
from distq.transport.base import Delivery
from distq.transport.rabbitmq_packs import (
    MAX_PACK_BYTES,
    MESSAGES_PER_SUBMIT,
    TASKS_TYPE,
    HeldMessages,
    chunks,
    fill,
    pack_bytes,
    regroup,
    task_bodies,
)

BUDGET = pack_bytes(DEFAULT_MAX_MESSAGE_BYTES)


def _t(delivery: Delivery) -> int:
    assert isinstance(delivery.tag, int)
    return delivery.tag


def _bodies(count: int) -> list[bytes]:
    return [b"task-%d" % i for i in range(count)]


def test_a_small_submit_sends_one_task_per_message() -> None:
    bodies = _bodies(2 * MESSAGES_PER_SUBMIT - 1)
    assert [list(c) for c in chunks(bodies, BUDGET)] == [[body] for body in bodies]


def test_a_large_submit_is_packed_in_order_up_to_the_limit() -> None:
    bodies = _bodies(1000)
    got = chunks(bodies, BUDGET)
    assert [body for chunk in got for body in chunk] == bodies
    assert max(len(chunk) for chunk in got) == TASKS_PER_MESSAGE
    assert len(got) >= MESSAGES_PER_SUBMIT


def test_a_middling_submit_still_makes_enough_messages_to_spread() -> None:
    got = chunks(_bodies(10 * MESSAGES_PER_SUBMIT), BUDGET)
    assert len(got) == MESSAGES_PER_SUBMIT
    assert {len(chunk) for chunk in got} == {10}


def test_a_pack_budget_is_the_message_limit_up_to_16_mib() -> None:
    """No pack is larger than a message a distq reader accepts (DISTQ_MAX_MESSAGE_BYTES)
    nor than RabbitMQ 4.x's default max_message_size (16 MiB)."""
    assert pack_bytes(DEFAULT_MAX_MESSAGE_BYTES) == DEFAULT_MAX_MESSAGE_BYTES
    assert pack_bytes(MAX_MESSAGE_BYTES) == MAX_PACK_BYTES == 16 << 20


def _sent(messages: Sequence[Sequence[bytes]]) -> list[bytes]:
    """What goes on the wire: one body alone as itself, several as a pack."""
    return [m[0] if len(m) == 1 else pack(m) for m in messages]


def test_a_submit_of_large_tasks_is_packed_within_the_byte_budget() -> None:
    """256 tasks of 44 KB would make packs of 32 (1.4 MB: over a 1 MiB limit, as 22 MB
    packs of 700 KB tasks are over RabbitMQ 4.x's 16 MiB); each pack stays within the
    budget, and a task as large as the limit goes alone."""
    bodies = [b"%03d" % i + b"x" * 44_000 for i in range(256)]
    bodies[100] = b"x" * DEFAULT_MAX_MESSAGE_BYTES  # as large as a task may be
    got = chunks(bodies, BUDGET)
    assert [body for chunk in got for body in chunk] == bodies  # all, in order
    assert max(len(message) for message in _sent(got)) <= DEFAULT_MAX_MESSAGE_BYTES
    assert [bodies[100]] in [list(chunk) for chunk in got]  # alone, a plain message
    assert max(len(chunk) for chunk in got) == BUDGET // (4 + 44_003)  # as full as fits
    assert [unpack(pack(chunk)) for chunk in got] == [list(chunk) for chunk in got]


def test_results_are_split_by_bytes_only() -> None:
    """A worker's results for one master: any count to a message, within the budget."""
    small = _bodies(200)
    assert [list(m) for m in fill(small, len(small), BUDGET)] == [small]
    big = [b"r" * 300_000] * 10  # 3 MB as one message before
    got = fill(big, len(big), BUDGET)
    assert [len(m) for m in got] == [3, 3, 3, 1]
    assert max(len(message) for message in _sent(got)) <= BUDGET
    assert fill([], 5, BUDGET) == []
    # a body exactly filling the budget with its length prefix still shares nothing
    exact = [b"a" * (BUDGET - 4), b"b"]
    assert [list(m) for m in fill(exact, 2, BUDGET)] == [[exact[0]], [exact[1]]]
    assert [list(m) for m in fill([b"a" * (BUDGET - 9), b"b"], 2, BUDGET)] == [
        [b"a" * (BUDGET - 9), b"b"]
    ]


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


def test_the_most_tasks_of_one_message_counts_those_still_held() -> None:
    held = HeldMessages()
    pack_of_four = held.receive(2, [b"a", b"b", b"c", b"d"], redelivered=False)
    (single,) = held.receive(3, [b"e"], redelivered=False)
    assert held.most_of_one_message([*pack_of_four, single]) == 4
    held.settle([_t(pack_of_four[0])])
    assert held.most_of_one_message([*pack_of_four[1:], single]) == 3
    assert held.most_of_one_message([*pack_of_four, single]) == 3  # a settled one: not held
    assert held.most_of_one_message([]) == 0


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


def test_a_pack_no_master_writes_is_one_malformed_message_not_thousands() -> None:
    """One 64 KiB message of 16,384 empty entries made 16,384 dead letters and lines."""
    empties = pack([b""] * 16_384)
    assert task_bodies(TASKS_TYPE, empties) == [empties]
    too_many = pack(_bodies(TASKS_PER_MESSAGE + 1))
    assert task_bodies(TASKS_TYPE, too_many) == [too_many]
    most = _bodies(TASKS_PER_MESSAGE)
    assert task_bodies(TASKS_TYPE, pack(most)) == most
    one_empty = pack([b"a", b"", b"c"])
    assert task_bodies(TASKS_TYPE, one_empty) == [one_empty]


def test_a_pack_over_the_budget_an_older_master_wrote_is_still_its_tasks() -> None:
    """Masters before the 16 MiB budget packed 32 tasks whatever their size: a worker
    took a 19 MB pack of 600 KB tasks for one task over its limit and dead-lettered it,
    cut to 64 KiB: 32 tasks lost, the submitter never answered (upgrade11)."""
    bodies = [bytes([65 + i % 26]) * 600_000 for i in range(TASKS_PER_MESSAGE)]
    assert len(pack(bodies)) > MAX_PACK_BYTES
    assert task_bodies(TASKS_TYPE, pack(bodies)) == bodies


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


def test_tasks_the_broker_refused_to_take_back_are_held_again_in_their_message() -> None:
    """A full queue refuses part of a split: those tasks stay held, and their message
    is acked only once they are settled (not when the split was planned)."""
    held = HeldMessages()
    (a, b, c) = held.receive(11, [b"a", b"b", b"c"], redelivered=False)
    held.settle([_t(a)])
    plan = held.release([_t(b), _t(c)])
    assert (plan.republish, plan.ack) == ([b"b", b"c"], [11])
    assert held.keep(plan, [_t(c)]) == [c]  # "b" went, "c" was refused
    assert plan.ack == [] and 11 in held.messages and _t(c) in held
    assert held.partly_settled()  # never requeued whole: "b" is in the queue again
    assert held.release([_t(c)]).nack == []


def test_tasks_handed_back_go_in_messages_of_the_slots_batch_flag_by_flag() -> None:
    """A split's rest (:func:`regroup`): in order, at most ``per_message`` and the byte
    budget to a message, tasks flagged redelivered never beside ones not."""
    tasks = [Delivery(bytes([97 + i]) * (1 + i), i, False) for i in range(7)]
    assert [[d.tag for d in m] for m in regroup(tasks, set(), 3, 1 << 20)] == [
        [0, 1, 2],
        [3, 4, 5],
        [6],
    ]
    assert [[d.tag for d in m] for m in regroup(tasks, {2, 3}, 3, 1 << 20)] == [
        [0, 1],
        [2, 3],
        [4, 5, 6],
    ]
    assert [[d.tag for d in m] for m in regroup(tasks, set(), 1, 1 << 20)] == [
        [i] for i in range(7)
    ]
    # bytes: bodies of 5 and 6, each after its 4-byte length, fit in 20; a third does not
    assert [[d.tag for d in m] for m in regroup(tasks[4:], set(), 3, 20)] == [[4, 5], [6]]
    assert regroup([], set(), 3, 20) == []


def test_an_empty_task_handed_back_goes_alone() -> None:
    """A pack holding an empty body is read whole, as one malformed task: an empty one
    (a queue writer's message) never shares a message with others."""
    tasks = [Delivery(body, i, False) for i, body in enumerate([b"a", b"", b"b", b"c", b""])]
    messages = regroup(tasks, set(), 3, 1 << 20)
    assert [[d.tag for d in m] for m in messages] == [[0], [1], [2, 3], [4]]


def test_tasks_handed_back_that_came_redelivered_go_flagged_apart() -> None:
    """A task delivered redelivered (it may have run on a worker that lost it) goes back
    flagged, never in a message with tasks that did not."""
    tasks = [Delivery(b"t", i, again) for i, again in enumerate([False, True, True, False])]
    messages = regroup(tasks, set(), 3, 1 << 20)
    assert [[d.tag for d in m] for m in messages] == [[0], [1, 2], [3]]
