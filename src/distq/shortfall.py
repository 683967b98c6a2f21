"""What a job that ended short says: the tasks not answered, where they are, what to do.

Pure wording, no I/O: a master's job stopped, past its ``--timeout``, with results
dropped, its workers gone or holding its tasks under leases, ends with a line or a
problem from here. The master (:class:`distq.master._Run`) keeps the job's state and the
decisions that need it (which tasks it took back, which came back dropped, when to ask the
broker for its counts) and passes plain counts, the transport's description and the
broker's :class:`~distq.transport.base.QueueStats`; each function returns the text, or
None (or "") when there is nothing to say.
"""

from __future__ import annotations

from distq.counts import counted
from distq.errors import EnvelopeError, UnverifiedRefusal
from distq.transport.base import QueueStats

#: What the stop of an endless ``--rate`` job on a transport that takes nothing back
#: (RabbitMQ) adds to its line: why it exits 1 (README), and how such a job ends with 0.
NOT_TAKEN_BACK_END = (
    "; they count as missing (exit 1), where an endless --rate job's tasks taken back do "
    "not: stop it once its workers have caught up, or give it --tasks"
)


def results_of(count: int) -> str:
    """Whose results, of ``count`` tasks: "its result" of one."""
    return "its result" if count == 1 else "their results"


def short_reason(exc: EnvelopeError) -> str:
    """A dropped result's reason as the end's line names it: its text up to the first
    colon ("unsigned result"), and for a worker's unverified refusal of its task what it
    says, up to its first semicolon ("refused: task signed with another key (key id
    'c6b40400'), not one of this process's DISTQ_SIGNING_KEYS"): the reason the job's
    results stayed away, which "unsigned result" alone did not name."""
    kind = str(exc).split(":", 1)[0].strip()
    if isinstance(exc, UnverifiedRefusal) and exc.said:
        return f'{kind}: a worker says (unverified) "{exc.said.split(";", 1)[0].strip()}"'
    return kind


def first_dropped_said(short: str) -> str:
    """Where the end's line sends the user for the results dropped, and the first one's
    reason in ``short`` (:func:`short_reason`; "" when none was kept), in full in the
    warnings above and the job's problems."""
    return f"see the warnings above, the first one for: {short}" if short else "above"


def no_result_read(dropped: int, first: str | None) -> str:
    """The problem of a job past its --timeout that read no result and ``dropped`` some
    (unreadable, signed with another key, too large): the workers took its tasks, and
    ``first``, the first one's reason, which the lines before may have said long before.
    The job ended with "no worker slot is attached to the job's queue" once its workers
    had gone (--exit-when-idle), sending the user to look for a queue or broker set wrong."""
    some = "the one result" if dropped == 1 else f"all {dropped:,} results"
    return (
        f"no result was read: {some} that came back {'was' if dropped == 1 else 'were'} "
        f"dropped (workers took the job's tasks, and answered), the first one for: "
        f"{first}"
    )


def dropped_beside_read(dropped: int, first: str | None) -> str:
    """The problem of a job past its --timeout that read results and ``dropped`` others (a
    worker with another signing key beside those with the job's): how many, and ``first``,
    the first one's reason. Its end named only the results missing, and said they "may
    still run"."""
    were = "was" if dropped == 1 else "were"
    return f"{counted(dropped, 'result')} that came back {were} dropped, the first one for: {first}"


def nobody_answered(
    stats: QueueStats, outstanding: int, where: str, unattached_note: str
) -> str | None:
    """The problem of a job that got no result at all, nor dropped any, from the broker's
    counts of its queue at ``where`` (the transport's description), ``outstanding`` tasks
    not answered; None when there is nothing to say. Workers on another queue, database,
    vhost or transport wait as silently as the master does, and the lines of both sides
    read alike: whether any worker slot is attached. So did workers that took the job's
    tasks and died on them (a task's ``os._exit``, a segfault, the OOM killer), which the
    broker tells apart where it can (:func:`taken_and_dropped`): that was sent to check
    its queue names. With a slot attached, the tasks it may hold past a worker's death
    (:func:`held_under_lease`)."""
    if stats.consumers:
        return held_under_lease(stats, where)
    took = taken_and_dropped(stats, outstanding)
    if took:
        return (
            f"no result came back, yet workers took tasks off the job's queue at "
            f"{where} ({took}), and no worker slot is attached to it now: "
            "they may have crashed on a task (its os._exit, a segfault, the OOM killer) "
            "or been stopped; see the workers' logs and exit statuses, and start them again"
        )
    unsure = (
        ""
        if stats.redelivered is not None
        else " Or did they take the job's tasks and crash on one? This broker does not "
        "say whether a worker had a task: see the workers' logs"
    )
    return (
        f"no worker slot is attached to the job's queue at {where}"
        f"{unattached_note}: are the workers running, with this DISTQ_QUEUE, "
        "DISTQ_TRANSPORT and broker (the database of DISTQ_REDIS_URL, the vhost of "
        f"DISTQ_AMQP_URL, DISTQ_MANAGER_ADDRESS)?{unsure}"
    )


def held_under_lease(stats: QueueStats, where: str, read: bool = False) -> str | None:
    """The problem of a job past its --timeout, a worker slot attached to its queue at
    ``where``: the tasks held under a lease that has not lapsed, where the broker tells
    (Redis, manager); None where it does not, or none is held. A worker SIGKILLed holds
    its tasks, and its slot counts as attached, until its lease lapses: a --timeout
    shorter than the lease ended with no word of it. So does a live worker running a task
    longer than the --timeout, renewing its lease (with no result ``read``, the one reason
    a live worker holds it still). RabbitMQ puts a dead worker's tasks back at once, and
    tells no lease."""
    left = stats.lease_left
    if left is None or not stats.in_flight:
        return None
    # a live worker renews its lease as it runs a task longer than the --timeout: the
    # broker tells it from a dead one's no better than by the lease's time left
    held, it = counted(stats.in_flight, "task"), "it" if stats.in_flight == 1 else "them"
    lead = "" if read else "no result came back, and "
    longer = "" if read else " (a task longer than the --timeout)"
    return (
        f"{lead}worker slots attached to the job's queue at "
        f"{where} hold {held} under leases not lapsed yet "
        f"(the last ends in {left:.1f} s unless its worker renews it, as a live one does): "
        f"a worker may still be running {it}{longer}, or have "
        f"died holding {it} (SIGKILL, the OOM killer), its slot counted as attached until "
        "its lease lapses, and only then do its tasks go to another worker; see the "
        "workers' logs, and give the job a --timeout longer than its tasks take, and than "
        "the workers' DISTQ_LEASE_SECONDS"
    )


def taken_and_dropped(stats: QueueStats, outstanding: int) -> str:
    """What the broker's counts say workers took of the job's ``outstanding`` tasks and
    gave up on without a result, "" when nothing: the queue's tasks queued again after a
    worker had them (it handed them back, as a stop does, or its lease lapsed: the
    queue's, which may hold other jobs' too), and the job's tasks not answered that the
    queue no longer holds (dead-lettered, say). Not where the broker does not count every
    lease (RabbitMQ): there a slot running a task past its lease holds it, alive, and is
    not counted as attached."""
    queued = stats.ready + stats.in_flight if stats.in_flight_known else outstanding
    gone = outstanding - min(outstanding, queued)
    said = []
    if stats.redelivered:  # on Redis and manager alike, handed back or lapsed
        said.append(
            f"the queue holds {counted(stats.redelivered, 'task')} a worker had and gave up "
            "unanswered: it handed them back, or its lease lapsed"
        )
    if gone:
        dead = ": `distq dead-letters` lists those dead-lettered" if stats.dead else ""
        are = "is" if gone == 1 else "are"
        said.append(f"{gone:,} of the {outstanding:,} not answered {are} no longer queued{dead}")
    return "; ".join(said)


def all_came_back_dropped(waiting: int, timed_out: bool, first_short: str) -> str:
    """The end's line of a job stopped (or past its --timeout, ``timed_out``) whose every
    one of the ``waiting`` tasks not answered came back with a result it dropped, the
    first one's reason ``first_short`` (:func:`short_reason`): it said "the 3 not taken
    back may still run, their results read by nobody; for every result, give the job a
    longer --timeout, or more workers", none of which held."""
    some = "task" if waiting == 1 else f"{waiting:,} tasks"
    results, them = ("its result", "it") if waiting == 1 else ("their results", "them")
    longer = f"a longer --timeout reads {them} no better; " if timed_out else ""
    return (
        f"{'--timeout' if timed_out else 'the stop'}: the {some} not answered came "
        f"back, {results} dropped ({first_dropped_said(first_short)}): {longer}fix what "
        "the first one's reason names"
    )


def taken_said(taken: int, never_ran: int) -> str:
    """What the end's line says of the ``taken`` tasks it took back, ``never_ran`` of them
    an endless ``--rate`` job's counted as never submitted: "took back the 1 tasks still
    queued (or their retries): they do not run" was said of one."""
    if taken == 1:
        never = ", not counted as submitted" if never_ran else ""
        return f"took back the 1 task still queued (or its retry): it does not run{never}"
    never = f", {never_ran:,} of them not counted as submitted" if never_ran else ""
    return f"took back the {taken:,} tasks still queued (or their retries): they do not run{never}"


def left_line(
    *,
    waiting: int,
    taken: int,
    never_ran: int,
    came_back_dropped: int,
    takes_back: bool,
    transport: str,
    timed_out: bool,
    exits_1: bool,
    first_short: str,
) -> str | None:
    """The end of a job stopped or past its --timeout (``timed_out``), in one line, None
    when there is nothing to say: of its ``waiting`` tasks not answered, how many it took
    back (``taken``, ``never_ran`` of them an endless job's counted as never submitted:
    they do not run after it), how many it did not (a worker's may run on, its result
    read by nobody), how many of those came back with a result it dropped
    (``came_back_dropped``, the first one's reason ``first_short``); on a ``transport``
    that cannot take a task back (not ``takes_back``), where those go, and, when its
    tasks not answered decide the exit of an endless job's stop (``exits_1``), why it
    exits 1; past --timeout, what to do."""
    left = waiting - (taken - never_ran)
    said = []
    # of those not taken back, the ones whose results came back and were dropped, as
    # counts tell: their line said they "may still run, their results read by nobody",
    # and to give the job "a longer --timeout, or more workers", none of which held
    dropped = min(came_back_dropped, left)
    if dropped:
        said.append(
            f"{dropped:,} of the {waiting:,} not answered came back, {results_of(dropped)} "
            f"dropped ({first_dropped_said(first_short)}): "
            + ("a longer --timeout reads those no better; " if timed_out else "")
            + "fix what the first one's reason names"
        )
    if left and not takes_back:  # RabbitMQ: "may still run" hid why, and that a worker
        # dead-letters those queued once the master is gone (its queue)
        none = (
            "did not take back the 1 task" if left == 1 else f"took back none of the {left:,} tasks"
        )
        said.append(
            f"{none} not answered (the {transport} "
            "transport cannot take a task back off its queue): a worker that reaches one "
            "still queued dead-letters it unrun, its master gone (`distq dead-letters` "
            "lists them), and one a worker holds may still run, its result read by nobody"
            + (NOT_TAKEN_BACK_END if exits_1 else "")
        )
        left = 0
    if taken:
        said.append(taken_said(taken, never_ran))
    if left > dropped:  # "the other": those dropped were not taken back either
        other, results = "other " if dropped else "", results_of(left - dropped)
        said.append(
            f"the {other}{left - dropped:,} not taken back may still run, {results} read by nobody"
        )
    if said and timed_out and len(said) > bool(dropped):  # not for those dropped only
        them = "the rest" if dropped else "every result"
        said.append(f"for {them}, give the job a longer --timeout, or more workers")
    if not said:
        return None
    return f"{'--timeout' if timed_out else 'the stop'}: {'; '.join(said)}"
