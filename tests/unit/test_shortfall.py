"""What a job that ended short says (distq.shortfall): each branch's words, in full.

The master's tests run these through a whole job; here each function is called with the
counts a job would pass, and every line is compared whole, so a word changed in any
branch (one task or many, taken back or not, past --timeout or stopped) fails here.
"""

from __future__ import annotations

import pytest

from distq.errors import EnvelopeError, SignatureError, UnverifiedRefusal
from distq.shortfall import (
    NOT_TAKEN_BACK_END,
    all_came_back_dropped,
    dropped_beside_read,
    first_dropped_said,
    held_under_lease,
    left_line,
    no_result_read,
    nobody_answered,
    results_of,
    short_reason,
    taken_and_dropped,
    taken_said,
)
from distq.transport.base import QueueStats

WHERE = "redis transport at 127.0.0.1:6379"
RABBITMQ_NOT_TAKEN = (
    "(the rabbitmq transport cannot take a task back off its queue): a worker that reaches "
    "one still queued dead-letters it unrun, its master gone (`distq dead-letters` lists "
    "them), and one a worker holds may still run, its result read by nobody"
)
LEASE_END = (
    "(SIGKILL, the OOM killer), its slot counted as attached until its lease lapses, and "
    "only then do its tasks go to another worker; see the workers' logs, and give the job a "
    "--timeout longer than its tasks take, and than the workers' DISTQ_LEASE_SECONDS"
)


def stats(**counts: object) -> QueueStats:
    """A queue's counts: none ready, in flight, dead or attached unless given."""
    given = {"ready": 0, "in_flight": 0, "dead": 0, "consumers": 0, **counts}
    return QueueStats(**given)  # type: ignore[arg-type]


def left(**given: object) -> str | None:
    """:func:`left_line` of a job stopped on a transport that takes tasks back, with
    nothing taken back nor dropped unless given."""
    args: dict[str, object] = {
        "waiting": 0,
        "taken": 0,
        "never_ran": 0,
        "came_back_dropped": 0,
        "takes_back": True,
        "transport": "redis",
        "timed_out": False,
        "exits_1": False,
        "first_short": "",
        **given,
    }
    return left_line(**args)  # type: ignore[arg-type]


def test_whose_results_one_task_or_many() -> None:
    assert results_of(1) == "its result"
    assert results_of(0) == results_of(2) == "their results"


def test_a_dropped_results_short_reason_is_its_text_up_to_the_first_colon() -> None:
    assert short_reason(EnvelopeError("not a result envelope: b'{'")) == "not a result envelope"
    assert short_reason(SignatureError("unsigned result: from 'q'")) == "unsigned result"


def test_a_workers_refusal_names_what_it_says_up_to_its_first_semicolon() -> None:
    said = "refused: task signed with another key (key id 'c6b40400'); see its keys"
    refusal = UnverifiedRefusal("unsigned result: a refusal", "t1", said)
    assert short_reason(refusal) == (
        "unsigned result: a worker says (unverified) "
        "\"refused: task signed with another key (key id 'c6b40400')\""
    )
    assert short_reason(UnverifiedRefusal("unsigned result: a refusal", "t1")) == (
        "unsigned result"
    )


def test_where_the_end_sends_the_user_for_the_results_dropped() -> None:
    assert first_dropped_said("") == "above"
    assert first_dropped_said("unsigned result") == (
        "see the warnings above, the first one for: unsigned result"
    )


def test_no_result_read_one_dropped_or_many() -> None:
    assert no_result_read(1, "unsigned result: x") == (
        "no result was read: the one result that came back was dropped (workers took the "
        "job's tasks, and answered), the first one for: unsigned result: x"
    )
    assert no_result_read(1200, "too large") == (
        "no result was read: all 1,200 results that came back were dropped (workers took "
        "the job's tasks, and answered), the first one for: too large"
    )


def test_results_dropped_beside_those_read_one_or_many() -> None:
    assert dropped_beside_read(1, "unsigned result: x") == (
        "1 result that came back was dropped, the first one for: unsigned result: x"
    )
    assert dropped_beside_read(2500, "too large") == (
        "2,500 results that came back were dropped, the first one for: too large"
    )


def test_held_under_lease_with_no_result_read_one_task() -> None:
    assert held_under_lease(stats(in_flight=1, consumers=1, lease_left=12.34), WHERE) == (
        f"no result came back, and worker slots attached to the job's queue at {WHERE} "
        "hold 1 task under leases not lapsed yet (the last ends in 12.3 s unless its worker "
        "renews it, as a live one does): a worker may still be running it (a task longer "
        f"than the --timeout), or have died holding it {LEASE_END}"
    )


def test_held_under_lease_beside_results_read_many_tasks() -> None:
    held = stats(in_flight=2000, consumers=4, lease_left=0.04)
    assert held_under_lease(held, WHERE, read=True) == (
        f"worker slots attached to the job's queue at {WHERE} hold 2,000 tasks under "
        "leases not lapsed yet (the last ends in 0.0 s unless its worker renews it, as a "
        "live one does): a worker may still be running them, or have died holding them "
        f"{LEASE_END}"
    )


def test_no_lease_line_where_the_broker_tells_none_or_nothing_is_held() -> None:
    assert held_under_lease(stats(in_flight=3, consumers=1), WHERE) is None  # RabbitMQ
    assert held_under_lease(stats(consumers=1, lease_left=5.0), WHERE, read=True) is None


def test_taken_and_dropped_says_nothing_when_the_queue_holds_every_task() -> None:
    assert taken_and_dropped(stats(ready=2, in_flight=1, redelivered=0), 3) == ""
    # a broker that cannot count every lease: none counted as gone
    assert taken_and_dropped(stats(in_flight_known=False, dead=4), 3) == ""


def test_taken_and_dropped_names_tasks_handed_back_and_tasks_gone() -> None:
    assert taken_and_dropped(stats(ready=1, redelivered=1), 1) == (
        "the queue holds 1 task a worker had and gave up unanswered: it handed them back, "
        "or its lease lapsed"
    )
    assert taken_and_dropped(stats(ready=3, redelivered=3, dead=2), 5) == (
        "the queue holds 3 tasks a worker had and gave up unanswered: it handed them back, "
        "or its lease lapsed; 2 of the 5 not answered are no longer queued: "
        "`distq dead-letters` lists those dead-lettered"
    )
    assert taken_and_dropped(stats(ready=4), 5) == "1 of the 5 not answered is no longer queued"
    # no dead letters: not sent to look for them
    assert taken_and_dropped(stats(ready=2, redelivered=2), 5) == (
        "the queue holds 2 tasks a worker had and gave up unanswered: it handed them back, "
        "or its lease lapsed; 3 of the 5 not answered are no longer queued"
    )


def test_nobody_answered_with_a_slot_attached_is_the_lease_line() -> None:
    held = stats(in_flight=2, consumers=1, lease_left=3.0)
    assert nobody_answered(held, 2, WHERE, "") == held_under_lease(held, WHERE)
    assert nobody_answered(stats(in_flight=2, consumers=1), 2, WHERE, "") is None


def test_nobody_answered_after_workers_took_tasks_and_went_away() -> None:
    assert nobody_answered(stats(ready=2, redelivered=2), 2, WHERE, " (note)") == (
        f"no result came back, yet workers took tasks off the job's queue at {WHERE} (the "
        "queue holds 2 tasks a worker had and gave up unanswered: it handed them back, or "
        "its lease lapsed), and no worker slot is attached to it now: they may have crashed "
        "on a task (its os._exit, a segfault, the OOM killer) or been stopped; see the "
        "workers' logs and exit statuses, and start them again"
    )


UNATTACHED = (
    f"no worker slot is attached to the job's queue at {WHERE} (note): are the workers "
    "running, with this DISTQ_QUEUE, DISTQ_TRANSPORT and broker (the database of "
    "DISTQ_REDIS_URL, the vhost of DISTQ_AMQP_URL, DISTQ_MANAGER_ADDRESS)?"
)


def test_nobody_answered_with_no_slot_attached_names_the_settings_to_check() -> None:
    assert nobody_answered(stats(ready=2, redelivered=0), 2, WHERE, " (note)") == UNATTACHED
    # a broker that cannot tell whether a worker had a task says so
    assert nobody_answered(stats(ready=2), 2, WHERE, " (note)") == (
        f"{UNATTACHED} Or did they take the job's tasks and crash on one? This broker does "
        "not say whether a worker had a task: see the workers' logs"
    )


def test_taken_said_one_task_or_many_some_never_submitted() -> None:
    assert taken_said(1, 0) == "took back the 1 task still queued (or its retry): it does not run"
    assert taken_said(1, 1) == (
        "took back the 1 task still queued (or its retry): it does not run, not counted as "
        "submitted"
    )
    assert taken_said(3, 0) == (
        "took back the 3 tasks still queued (or their retries): they do not run"
    )
    assert taken_said(3, 2) == (
        "took back the 3 tasks still queued (or their retries): they do not run, 2 of them "
        "not counted as submitted"
    )


def test_every_task_not_answered_came_back_dropped() -> None:
    assert all_came_back_dropped(1, True, "unsigned result") == (
        "--timeout: the task not answered came back, its result dropped (see the warnings "
        "above, the first one for: unsigned result): a longer --timeout reads it no better; "
        "fix what the first one's reason names"
    )
    assert all_came_back_dropped(1500, False, "") == (
        "the stop: the 1,500 tasks not answered came back, their results dropped (above): "
        "fix what the first one's reason names"
    )


def test_nothing_left_says_nothing() -> None:
    assert left() is None
    assert left(timed_out=True, takes_back=False) is None


def test_every_task_taken_back_at_a_stop() -> None:
    assert left(waiting=3, taken=3) == (
        "the stop: took back the 3 tasks still queued (or their retries): they do not run"
    )


def test_an_endless_jobs_stop_counts_those_taken_back_as_never_submitted() -> None:
    assert left(waiting=1, taken=5, never_ran=4) == (
        "the stop: took back the 5 tasks still queued (or their retries): they do not run, "
        "4 of them not counted as submitted"
    )


def test_past_timeout_some_taken_back_the_rest_may_still_run() -> None:
    assert left(waiting=3, taken=1, timed_out=True) == (
        "--timeout: took back the 1 task still queued (or its retry): it does not run; the "
        "2 not taken back may still run, their results read by nobody; for every result, "
        "give the job a longer --timeout, or more workers"
    )


def test_one_or_many_not_taken_back_at_a_stop() -> None:
    assert left(waiting=1) == (
        "the stop: the 1 not taken back may still run, its result read by nobody"
    )
    assert left(waiting=1500) == (
        "the stop: the 1,500 not taken back may still run, their results read by nobody"
    )


def test_a_transport_that_takes_nothing_back_one_task_at_a_stop() -> None:
    assert left(waiting=1, takes_back=False, transport="rabbitmq") == (
        f"the stop: did not take back the 1 task not answered {RABBITMQ_NOT_TAKEN}"
    )


def test_a_transport_that_takes_nothing_back_many_past_timeout() -> None:
    assert left(waiting=4, takes_back=False, transport="rabbitmq", timed_out=True) == (
        f"--timeout: took back none of the 4 tasks not answered {RABBITMQ_NOT_TAKEN}; for "
        "every result, give the job a longer --timeout, or more workers"
    )


def test_an_endless_jobs_stop_on_a_transport_that_takes_nothing_back_says_why_exit_1() -> None:
    line = left(waiting=2, takes_back=False, transport="rabbitmq", exits_1=True)
    assert line == (
        f"the stop: took back none of the 2 tasks not answered {RABBITMQ_NOT_TAKEN}"
        f"{NOT_TAKEN_BACK_END}"
    )
    assert NOT_TAKEN_BACK_END == (
        "; they count as missing (exit 1), where an endless --rate job's tasks taken back do "
        "not: stop it once its workers have caught up, or give it --tasks"
    )


def test_past_timeout_some_came_back_dropped_the_others_may_still_run() -> None:
    line = left(waiting=5, came_back_dropped=2, timed_out=True, first_short="unsigned result")
    assert line == (
        "--timeout: 2 of the 5 not answered came back, their results dropped (see the "
        "warnings above, the first one for: unsigned result): a longer --timeout reads those "
        "no better; fix what the first one's reason names; the other 3 not taken back may "
        "still run, their results read by nobody; for the rest, give the job a longer "
        "--timeout, or more workers"
    )


def test_at_a_stop_one_came_back_dropped_and_one_may_still_run() -> None:
    assert left(waiting=2, came_back_dropped=1) == (
        "the stop: 1 of the 2 not answered came back, its result dropped (above): fix what "
        "the first one's reason names; the other 1 not taken back may still run, its result "
        "read by nobody"
    )


def test_thousands_dropped_and_left_are_counted_with_separators() -> None:
    assert left(waiting=2500, came_back_dropped=1200) == (
        "the stop: 1,200 of the 2,500 not answered came back, their results dropped (above): "
        "fix what the first one's reason names; the other 1,300 not taken back may still "
        "run, their results read by nobody"
    )


def test_those_dropped_only_get_no_longer_timeout_advice() -> None:
    # more dropped than left (copies of tasks read): counted up to those left
    assert left(waiting=2, came_back_dropped=5, timed_out=True) == (
        "--timeout: 2 of the 2 not answered came back, their results dropped (above): a "
        "longer --timeout reads those no better; fix what the first one's reason names"
    )


def test_dropped_beside_a_transport_that_takes_nothing_back() -> None:
    line = left(
        waiting=3, came_back_dropped=1, takes_back=False, transport="rabbitmq", timed_out=True
    )
    assert line == (
        "--timeout: 1 of the 3 not answered came back, its result dropped (above): a longer "
        "--timeout reads those no better; fix what the first one's reason names; took back "
        f"none of the 3 tasks not answered {RABBITMQ_NOT_TAKEN}; for the rest, give the job "
        "a longer --timeout, or more workers"
    )


@pytest.mark.parametrize("timed_out", [False, True])
def test_the_line_names_what_ended_the_job(timed_out: bool) -> None:
    line = left(waiting=2, taken=2, timed_out=timed_out)
    assert line is not None
    assert line.startswith("--timeout: " if timed_out else "the stop: ")


def test_every_count_in_the_end_line_has_thousands_separators() -> None:
    # each part of one line counts alike: "took back the 1200 tasks ...; the 1,300 not
    # taken back may still run" was said of an endless job's stop
    assert left(waiting=2500, taken=2200, never_ran=1000, timed_out=True) == (
        "--timeout: took back the 2,200 tasks still queued (or their retries): they do not "
        "run, 1,000 of them not counted as submitted; the 1,300 not taken back may still "
        "run, their results read by nobody; for every result, give the job a longer "
        "--timeout, or more workers"
    )
    assert left(waiting=2500, came_back_dropped=1, takes_back=False, transport="rabbitmq") == (
        "the stop: 1 of the 2,500 not answered came back, its result dropped (above): fix "
        "what the first one's reason names; took back none of the 2,500 tasks not answered "
        f"{RABBITMQ_NOT_TAKEN}"
    )


def test_taken_and_dropped_counts_thousands_with_separators() -> None:
    assert taken_and_dropped(stats(ready=1500, redelivered=1500, dead=1), 2500) == (
        "the queue holds 1,500 tasks a worker had and gave up unanswered: it handed them "
        "back, or its lease lapsed; 1,000 of the 2,500 not answered are no longer queued: "
        "`distq dead-letters` lists those dead-lettered"
    )
