"""What a master's lines tell of the tasks not answered when its job ends on --timeout,
or on a stop of an endless --rate job: which it took back, which may still run, and
what to do."""

from __future__ import annotations

import io
import re
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import Target
from distq.codec import Codec
from distq.console import Console
from distq.envelope import Result, Task
from distq.master import JobReport, JobSpec, Master, Workload
from distq.squares import Squares
from distq.transport import Settlement, Transport
from procs import Spawn
from seam import fetch_n, job_a_worker_left

pytestmark = pytest.mark.integration


def test_a_job_past_its_timeout_says_what_it_took_back_and_what_may_still_run(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    # three tasks, one in a worker's hands at --timeout: the master said "job timed out
    # ...: 3 missing" and named them, not that it took two back off the queue (they never
    # run), that the third may still run with nobody to read its result, nor what to do
    master, out, reports, run = _started(hosted, JobSpec(tasks=3, timeout=2), Squares())
    consumer = remote.consumer("held")
    try:
        assert len(fetch_n(consumer, 1)) == 1, out.getvalue()
        deadline = time.monotonic() + 30
        while run.is_alive() and time.monotonic() < deadline:
            consumer.heartbeat()  # held past the 1 s lease: not put back meanwhile
            run.join(0.2)
    finally:
        run.join(30)
        consumer.close()
    said = out.getvalue()
    assert reports and reports[0].missing == 3, said
    assert "a longer --timeout" in said, said
    if target.name != "rabbitmq":
        assert "took back the 2 tasks still queued" in said, said
        assert "the 1 not taken back may still run" in said, said
        return
    # RabbitMQ cannot take a message back out of a queue: it said "the 3 not taken back
    # may still run", not why none was, nor that a worker dead-letters those still queued
    # unrun, the master gone (as a worker asking now finds it)
    assert "took back none of the 3 tasks not answered" in said, said
    assert "cannot take a task back" in said, said
    assert "dead-letters it unrun" in said and "`distq dead-letters`" in said, said
    assert remote.consumer("late").gone([master.reply_to]) == {master.reply_to}
    # and "no worker slot is attached", flatly, though one held a task past its lease
    if "no worker slot is attached" in said:
        assert "past its lease is not counted" in said, said


def test_a_stopped_endless_rate_job_says_how_many_tasks_it_took_back(
    target: Target, hosted: Transport
) -> None:
    # its status lines said "submitted 9", and its end "all 0 results in and correct":
    # the 9 taken back at the stop (never run, so never submitted) went unsaid. On
    # RabbitMQ, which takes nothing back, the stop said they "may still run"
    stop = threading.Event()
    endless = JobSpec(tasks=None, rate=20, drain_seconds=1)
    _, out, reports, run = _started(hosted, endless, Squares(), stop)
    try:
        deadline = time.monotonic() + 20
        while hosted.stats().ready < 3:  # no worker: they stay queued
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.05)
    finally:
        stop.set()
        run.join(30)
    said = out.getvalue()
    if target.name == "rabbitmq":  # submitted, and queued: missing (README)
        assert reports and reports[0].missing >= 3, said
        assert re.search(r"took back none of the \d+ tasks not answered", said), said
        assert "dead-letters it unrun" in said, said
        return
    assert reports and reports[0].succeeded, said
    taken = re.search(r"took back the (\d+) tasks still queued", said)
    assert taken is not None and int(taken[1]) >= 3, said
    assert hosted.stats().ready == 0, said


#: The line of a job past its --timeout whose one task a worker slot holds under a lease
#: not lapsed (Redis, manager); its group: the seconds the lease has left.
_HELD_ONE = (
    r"^distq: no result came back, and worker slots attached to the job's queue at .+ "
    r"hold 1 task under leases not lapsed yet \(the last ends in (\d+\.\d) s unless its "
    r"worker renews it, as a live one does\): a worker may still be running it \(a task "
    r"longer than the --timeout\), or have died holding it \(SIGKILL, the OOM killer\)"
)


def _started(
    hosted: Transport,
    spec: JobSpec,
    workload: Workload[int],
    stop: threading.Event | None = None,
    codec: Codec | None = None,
) -> tuple[Master, io.StringIO, list[JobReport], threading.Thread]:
    """A master on ``hosted`` running the job ``spec`` of ``workload`` in a thread, started
    (``stop`` stops it, ``codec`` signs its tasks): the master, its lines, its report once
    it ends, and the thread."""
    out = io.StringIO()
    reports: list[JobReport] = []
    master = Master(hosted, Console(out=out, err=out), codec=codec)
    run = threading.Thread(target=lambda: reports.append(master.run(spec, workload, stop)))
    run.start()
    return master, out, reports, run


def _keyed_job(
    target: Target, hosted: Transport
) -> tuple[io.StringIO, list[JobReport], Codec, threading.Thread]:
    """A job of 3 squares with --timeout 8, its master signing with a key of its own,
    running in a thread: its lines, its report once it ends, its codec and the thread."""
    keyed = replace(target.settings, signing_keys=(b"the-master-s-key-0123456789abcdef",))
    codec = Codec.from_settings(keyed)
    _, out, reports, run = _started(hosted, JobSpec(tasks=3, timeout=8), Squares(), codec=codec)
    return out, reports, codec, run


def _other_key_worker_ends(target: Target, spawn: Spawn, run: threading.Thread) -> None:
    """A worker signing with another key than the job's takes what it finds, refuses it,
    and leaves when idle; then the job (``run``) ends."""
    env = target.process_env(DISTQ_SIGNING_KEYS="a-worker-s-other-key-fedcba98765")
    worker = spawn("worker", "--exit-when-idle", "1", env=env)
    try:
        assert worker.wait(30) == 0, worker.output()
    finally:
        run.join(30)


def test_a_job_whose_results_were_all_dropped_says_why_not_that_no_worker_is_attached(
    target: Target, hosted: Transport, spawn: Spawn
) -> None:
    """A worker with another signing key took the job's tasks, refused them, and left
    (--exit-when-idle); the master dropped each answer ("dropped a result: ..."), then
    ended past its --timeout with "no worker slot is attached to the job's queue ...: are
    the workers running, with this DISTQ_QUEUE, DISTQ_TRANSPORT and broker?", all of them
    right. It names the results it dropped instead, with the first one's reason."""
    out, reports, _, run = _keyed_job(target, hosted)
    _other_key_worker_ends(target, spawn, run)
    said = out.getvalue()
    assert reports and reports[0].missing == 3, said
    assert "dropped a result: " in said, said
    assert "no worker slot is attached" not in said, said
    dropped = re.search(
        r"^distq: no result was read: all 3 results that came back were dropped \(workers took "
        r"the job's tasks, and answered\), the first one for: (.+)$",
        said,
        re.M,
    )
    assert dropped is not None, said
    assert f"dropped a result: {dropped[1]}" in said, said  # the reason said above
    # its last line said "the 3 not taken back may still run, their results read by
    # nobody; for every result, give the job a longer --timeout, or more workers" (on
    # RabbitMQ: "one a worker holds may still run"): all 3 had come back, and no longer
    # wait reads them
    assert "may still run" not in said, said
    assert "give the job a longer --timeout" not in said, said
    assert (
        "--timeout: the 3 tasks not answered came back, their results dropped (see the "
        "warnings above, the first one for: unsigned result: a worker says (unverified) "
        '"refused: task signed with another key (key id '
    ) in said, said
    assert (
        'DISTQ_SIGNING_KEYS"): a longer --timeout reads them no better; fix what the first '
        "one's reason names"
    ) in said, said


class _EndsItsWorker(Workload[int]):
    """Tasks that end their worker's process each time they run (``os._exit``, as a
    segfault or the OOM killer would): ``worker_tasks:exit_always``."""

    def __init__(self, runs: Path) -> None:
        self.runs = runs

    def tasks(self, count: int, reply_to: str) -> list[tuple[Task, int]]:
        return [
            (Task(name="worker_tasks:exit_always", args=[str(self.runs)], reply_to=reply_to), 0)
            for _ in range(count)
        ]

    def name(self, entry: int) -> str:
        return "exit_always"


def test_a_job_whose_worker_crashed_on_its_tasks_says_so_not_to_check_the_queue_names(
    target: Target, hosted: Transport, spawn: Spawn, tmp_path: Path
) -> None:
    """A worker took the job's tasks and its process died on one (a task's os._exit); the
    master, past its --timeout with no result, said "no worker slot is attached to the
    job's queue ...: are the workers running, with this DISTQ_QUEUE, DISTQ_TRANSPORT and
    broker ...?", sending the user to check queue names that were right. The broker
    knows a worker had them (queued again as its lease lapsed): the line says so."""
    runs = tmp_path / "runs"
    _, out, reports, run = _started(hosted, JobSpec(tasks=2, timeout=6), _EndsItsWorker(runs))
    worker = spawn("worker", "--task", "worker_tasks:exit_always")
    try:
        assert worker.wait(30) != 0, worker.output()  # the task ended it
    finally:
        run.join(30)
    said = out.getvalue()
    assert runs.exists() and reports and reports[0].missing == 2, said
    if target.name == "rabbitmq":  # its counts do not say a worker had them: both asked
        assert "no worker slot is attached to the job's queue" in said, said
        assert "? Or did they take the job's tasks and crash on one? This broker" in said, said
        return
    assert "no worker slot is attached to the job's queue" not in said, said
    assert re.search(
        r"^distq: no result came back, yet workers took tasks off the job's queue at .+ \(the "
        r"queue holds (1 task|2 tasks) a worker had and gave up unanswered: it handed them "
        r"back, or its lease lapsed\), and no "
        r"worker slot is attached to it now: they may have crashed on a task",
        said,
        re.M,
    ), said


def test_a_job_whose_tasks_a_worker_dead_lettered_and_left_says_so_on_every_transport(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    """A worker took the job's two tasks, dead-lettered them without a result, and left.
    Only a manager queue was tested: on Redis too the tasks are no longer queued, and the
    line says workers took them and where the dead letters are listed; RabbitMQ, whose
    counts do not say, asks both."""
    said, taken = job_a_worker_left(hosted, remote, take=2, dead_letter=True, timeout=3)
    assert taken == 2, said
    if target.name == "rabbitmq":
        assert "? Or did they take the job's tasks and crash on one? This broker" in said, said
        return
    assert "no worker slot is attached to the job's queue" not in said, said
    assert re.search(
        r"^distq: no result came back, yet workers took tasks off the job's queue at .+ \(2 of "
        r"the 2 not answered are no longer queued: `distq dead-letters` lists those "
        r"dead-lettered\), and no worker slot is attached to it now",
        said,
        re.M,
    ), said


def test_a_job_that_read_some_results_and_dropped_the_rest_names_why_at_its_end(
    target: Target, hosted: Transport, remote: Transport, spawn: Spawn
) -> None:
    """A worker with the job's signing key answered one task; one with another key took
    the other two, refused them, and left. The master dropped those two answers
    ("dropped a result: ..."), then ended past its --timeout with "the 2 not taken back
    may still run, their results read by nobody; for every result, give the job a longer
    --timeout, or more workers", none of which held: both came back, and the reason was
    in the warnings above. Its end names them, and the first one's reason."""
    out, reports, codec, run = _keyed_job(target, hosted)
    _answer_one(remote, codec, "keyed")
    _other_key_worker_ends(target, spawn, run)
    said = out.getvalue()
    assert reports and reports[0].answered == 1 and reports[0].missing == 2, said
    assert "may still run" not in said, said
    assert "give the job a longer --timeout" not in said, said
    assert "no worker slot is attached" not in said, said
    dropped = re.search(
        r"^distq: 2 results that came back were dropped, the first one for: (.+)$", said, re.M
    )
    assert dropped is not None, said
    assert f"dropped a result: {dropped[1]}" in said, said  # the reason said above
    assert (
        "--timeout: the 2 tasks not answered came back, their results dropped (see the "
        "warnings above, the first one for: unsigned result: a worker says (unverified) "
        '"refused: task signed with another key'
    ) in said, said
    assert "a longer --timeout reads them no better; fix what the first one's reason" in said


def test_a_job_past_its_timeout_whose_worker_was_killed_holding_a_task_says_its_lease(
    target: Target, hosted: Transport, spawn: Spawn
) -> None:
    """A worker took the job's task and was SIGKILLed, its lease (30 s) longer than the
    job's --timeout: past it, the master found the dead worker's slot still attached (its
    lease not lapsed) and said nothing of why no result came. Where the broker tells the
    lease (Redis, manager), it says a worker may have died holding tasks, and when that
    lease ends; RabbitMQ puts a dead worker's task back at once, its slot gone."""
    _, out, reports, run = _started(hosted, JobSpec(tasks=1, timeout=6), Squares(60.0))
    env = target.process_env(DISTQ_LEASE_SECONDS="30", DISTQ_PREFETCH="1")
    worker = spawn("worker", env=env)
    try:
        worker.wait_for(r"^Get task \d+ from task_queue")
        worker.signal(signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL, worker.output()
    finally:
        run.join(30)
    said = out.getvalue()
    assert reports and reports[0].missing == 1, said
    if target.name == "rabbitmq":  # no lease to tell: the task went back with the slot
        assert "leases not lapsed" not in said, said
        assert "no worker slot is attached to the job's queue" in said, said
        return
    held = re.search(_HELD_ONE, said, re.M)
    assert held is not None, said
    assert 15 < float(held[1]) <= 30, said
    assert "no worker slot is attached" not in said, said


def test_a_job_that_read_a_result_and_whose_worker_was_killed_holding_a_task_says_its_lease(
    target: Target, hosted: Transport, remote: Transport, spawn: Spawn
) -> None:
    """A job of two tasks read one result; a worker took the other and was SIGKILLed, its
    lease (30 s) longer than what was left of the --timeout. The master said the lease's
    line only with no result read: this one ended with "the 1 not taken back may still
    run, its result read by nobody; for the rest, give the job a longer --timeout, or more
    workers", not that a worker that may be dead holds it, nor until when. Where the
    broker tells the lease (Redis, manager) it says so, once; RabbitMQ tells none."""
    out, reports, run = _two_tasks_one_answered(target, hosted, remote)
    worker = spawn("worker", env=target.process_env(DISTQ_LEASE_SECONDS="30", DISTQ_PREFETCH="1"))
    try:
        worker.wait_for(r"^Get task \d+ from task_queue")
        worker.signal(signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL, worker.output()
    finally:
        run.join(30)
    said = out.getvalue()
    assert reports and reports[0].answered == 1 and reports[0].missing == 1, said
    assert "no result came back" not in said, said
    if target.name == "rabbitmq":  # no lease to tell: the task went back with the slot
        assert "leases not lapsed" not in said, said
        assert "one a worker holds may still run, its result read by nobody" in said, said
        return
    assert "the 1 not taken back may still run, its result read by nobody" in said, said
    held = re.findall(
        r"^distq: worker slots attached to the job's queue at .+ hold 1 task under leases "
        r"not lapsed yet \(the last ends in (\d+\.\d) s unless its worker renews it, as a "
        r"live one does\): a worker may still be running it, or have died holding it "
        r"\(SIGKILL, the OOM killer\), .+ DISTQ_LEASE_SECONDS$",
        said,
        re.M,
    )
    assert len(held) == 1, said  # one line, said once
    assert 15 < float(held[0]) <= 30, said


def test_a_job_that_read_a_result_and_whose_live_worker_runs_on_says_its_lease_and_end(
    target: Target, hosted: Transport, remote: Transport, spawn: Spawn
) -> None:
    """The ordinary case of 266e8530's line: a --timeout too short for the job, some
    results read, a live worker mid-task (60 s) renewing its lease (5 s). Its lines, read
    whole: the lease's line once, its lease renewed (at most 5 s left), without "no result
    came back", then the end's, which it does not contradict: the task may still run, its
    result read by nobody."""
    out, reports, run = _two_tasks_one_answered(target, hosted, remote)
    worker = spawn("worker", env=target.process_env(DISTQ_PREFETCH="1"))
    try:
        worker.wait_for(r"^Get task \d+ from task_queue")
        run.join(30)
        assert worker.proc.poll() is None, worker.output()  # alive, its task running
    finally:
        worker.signal(signal.SIGKILL)
        run.join(30)
    said = out.getvalue()
    assert reports and reports[0].answered == 1 and reports[0].missing == 1, said
    assert "no result came back" not in said and "no worker slot" not in said, said
    if target.name == "rabbitmq":  # no lease to tell; nothing taken back
        assert "leases not lapsed" not in said, said
        assert "--timeout: did not take back the 1 task not answered" in said, said
        return
    held = re.findall(
        r"^distq: worker slots attached to the job's queue at .+ hold 1 task under leases "
        r"not lapsed yet \(the last ends in (\d+\.\d) s unless its worker renews it, as a "
        r"live one does\): a worker may still be running it, or have died holding it "
        r"\(SIGKILL, the OOM killer\), .+ give the job a --timeout longer than its tasks "
        r"take, and than the workers' DISTQ_LEASE_SECONDS$",
        said,
        re.M,
    )
    assert len(held) == 1, said
    assert 0 < float(held[0]) <= 5, said  # renewed: a live worker's
    assert (
        "--timeout: the 1 not taken back may still run, its result read by nobody; for "
        "every result, give the job a longer --timeout, or more workers\n"
    ) in said, said


def test_a_job_past_its_timeout_whose_live_worker_still_runs_its_task_says_it_may_run_on(
    target: Target, hosted: Transport, spawn: Spawn
) -> None:
    """A live worker (its lease renewed every third of DISTQ_LEASE_SECONDS, 5 s) ran the
    job's one task (60 s) past the job's --timeout (6 s): the master said only that "a
    worker may have died holding tasks" and to "give the job a --timeout longer than the
    workers' DISTQ_LEASE_SECONDS", which it was already; a lease not lapsed says a worker
    renews it, alive and running its task, as likely as one that died since."""
    _, out, reports, run = _started(hosted, JobSpec(tasks=1, timeout=6), Squares(60.0))
    worker = spawn("worker", env=target.process_env(DISTQ_PREFETCH="1"))
    try:
        worker.wait_for(r"^Get task \d+ from task_queue")
        run.join(30)
        assert worker.proc.poll() is None, worker.output()  # alive, its task running
    finally:
        worker.signal(signal.SIGKILL)
        run.join(30)
    said = out.getvalue()
    assert reports and reports[0].missing == 1, said
    if target.name == "rabbitmq":  # no lease to tell
        assert "leases not lapsed" not in said, said
        return
    held = re.search(
        _HELD_ONE + r", .+"
        r"give the job a --timeout longer than its tasks take, and than the workers' "
        r"DISTQ_LEASE_SECONDS$",
        said,
        re.M,
    )
    assert held is not None, said
    assert 0 < float(held[1]) <= 5, said


def _two_tasks_one_answered(
    target: Target, hosted: Transport, remote: Transport
) -> tuple[io.StringIO, list[JobReport], threading.Thread]:
    """A job of two 60 s tasks with an 8 s --timeout, running in a thread, one of its
    tasks answered by hand (a consumer of ``remote``): its output, its report once it
    ends, and its thread."""
    _, out, reports, run = _started(hosted, JobSpec(tasks=2, timeout=8), Squares(60.0))
    codec = Codec.from_settings(target.settings)
    _answer_one(remote, codec, "answers-one")
    return out, reports, run


def _answer_one(remote: Transport, codec: Codec, worker: str) -> None:
    """Take one of the job's tasks off ``remote`` and answer it right, as ``worker``."""
    consumer = remote.consumer(worker)
    try:
        (delivery,) = fetch_n(consumer, 1)
        task = codec.open_task(delivery.body)
        answer = Result(
            task_id=task.id,
            status="ok",
            worker=worker,
            attempt=1,
            started_at=0.0,
            duration=0.0,
            value=task.args[0] ** 2,
        )
        body = codec.seal_result(answer, delivery.body)
        consumer.settle([Settlement(delivery, reply_to=task.reply_to, result=body)])
    finally:
        consumer.close()
