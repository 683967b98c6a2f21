"""Running one delivery's task: what the worker prints and how each kind of input ends.

A failure's line is its ending's note, printed by the worker once settled (test_worker)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from distq.codec import Codec
from distq.console import Console
from distq.ending import Endings
from distq.envelope import DeadLetter, Result, Task
from distq.runner import TaskRunner
from distq.tasks import Registry
from distq.transport import Delivery


def boom(n: int) -> int:
    raise ValueError(f"bad {n}")


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def runner(out: io.StringIO) -> TaskRunner:
    registry = Registry()
    registry.register("boom", boom)
    registry.register("echo", lambda value: value)
    return TaskRunner(registry, Endings("w1", "q"), Console(out=out, err=out))


def run(runner: TaskRunner, name: str, *args: Any, **kw: Any) -> tuple[str, Task, str]:
    """The outcome, the task, and the note (its line; "" when none)."""
    task = Task(name=name, args=list(args), reply_to="replies", **kw)
    ending = runner(Delivery(body=task.encode(), tag=1))
    return ending.outcome, task, ending.note or ""


def test_the_tutorial_line_and_the_squared_value(runner: TaskRunner, out: io.StringIO) -> None:
    task = Task(name="square", args=[733], reply_to="replies")
    ending = runner(Delivery(body=task.encode(), tag=1))
    assert out.getvalue() == "Get task 733 from task_queue.\n"
    assert ending.outcome == "ok" and ending.task == task and ending.duration >= 0
    assert ending.settlement.result is not None
    assert Result.decode(ending.settlement.result).value == 537289


def test_other_tasks_are_shown_by_name_and_arguments(runner: TaskRunner, out: io.StringIO) -> None:
    assert run(runner, "echo", "hi")[0] == "ok"
    assert out.getvalue() == "Get task echo['hi'] from task_queue.\n"


@pytest.mark.parametrize(
    ("name", "argument"),
    [("square", "7\nworker exit. 999 ok\x1b[31m"), ("distq:chunk", "evil\nGet task FORGED")],
)
def test_a_shown_argument_cannot_forge_a_line(
    runner: TaskRunner, out: io.StringIO, name: str, argument: str
) -> None:
    """``square`` and chunks show their first argument, from the wire: printed raw, a
    queue writer's line break and terminal escape wrote a fake "worker exit" line."""
    run(runner, name, argument, [])
    first = out.getvalue().splitlines()[0]
    assert first.startswith("Get task ") and "\\n" in first and "\x1b" not in out.getvalue()


def test_an_unknown_name_or_arguments_that_do_not_fit_fail_at_once(
    runner: TaskRunner, out: io.StringIO
) -> None:
    outcome, _, note = run(runner, "nope", 1, max_attempts=3)
    assert outcome == "failed" and "no task named 'nope'" in note
    assert "no task named" not in out.getvalue()  # the worker prints it, once settled
    assert run(runner, "square", 1, 2, 3, max_attempts=3)[0] == "failed"


def test_a_task_that_raises_is_retried_and_the_operator_told(
    runner: TaskRunner, out: io.StringIO
) -> None:
    outcome, task, note = run(runner, "boom", 5)
    assert outcome == "retried"
    assert note.startswith(f"task boom {task.id} attempt 1/3 failed (ValueError: bad 5); retrying")


def test_garbage_is_dead_lettered_and_nothing_runs(runner: TaskRunner, out: io.StringIO) -> None:
    ending = runner(Delivery(body=b"{not json", tag=1))
    assert ending.outcome == "malformed" and out.getvalue() == ""
    assert ending.note is not None and "dead-lettered a malformed message" in ending.note


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("body", ["a str body", None, 7, [b"x"], (b"y",), {"a": 1}, {1, 2}])
def test_a_body_that_is_not_bytes_is_dead_lettered_not_taken_for_an_outage(
    body: object, signed: bool
) -> None:
    """A manager peer put a str on the task queue: the TypeError reached the slot, which
    took it for a broker outage and handed the batch back, over and over; a list, tuple,
    dict or set did the same with an AttributeError (signed or not), for ever."""
    out = io.StringIO()
    codec = Codec([b"k" * 32] if signed else ())
    endings = Endings("w1", "q", codec=codec)
    runner = TaskRunner(Registry(), endings, Console(quiet=True, out=out, err=out))
    ending = runner(Delivery(body=body, tag=1))  # type: ignore[arg-type]
    assert ending.outcome == "malformed"
    letter = ending.settlement.dead_letter
    assert letter is not None
    dead = DeadLetter.decode(letter)
    assert dead.body == repr(body).encode()
    assert dead.reason.startswith(f"malformed message: task is a {type(body).__name__}, not bytes")


def test_quiet_prints_no_task_line() -> None:
    out = io.StringIO()
    registry = Registry()
    registry.register("boom", boom)
    runner = TaskRunner(registry, Endings("w1", "q"), Console(quiet=True, out=out, err=out))
    assert run(runner, "square", 3)[0] == "ok"
    assert out.getvalue() == ""
    outcome, _, note = run(runner, "boom", 3)
    assert outcome == "retried" and "attempt 1/3 failed" in note and out.getvalue() == ""


def test_the_traceback_of_a_failed_task_starts_in_the_task_code(runner: TaskRunner) -> None:
    task = Task(name="boom", args=[5], reply_to="replies", max_attempts=1)
    ending = runner(Delivery(body=task.encode(), tag=1))
    assert ending.outcome == "failed" and ending.settlement.result is not None
    text = Result.decode(ending.settlement.result).error_traceback
    assert text is not None
    frames = [line for line in text.splitlines() if line.startswith("  File ")]
    assert len(frames) == 1 and frames[0].endswith(", in boom"), text
    assert "distq/runner.py" not in text


class _Unshown(Registry):
    def show(self, task: Task) -> str:
        raise AssertionError("a per-task text line was formatted for a console that drops it")


def test_json_logs_format_no_text_line_per_task() -> None:
    from distq.logs import JsonConsole

    out = io.StringIO()
    runner = TaskRunner(_Unshown(), Endings("w1", "q"), JsonConsole("worker", out=out, err=out))
    assert run(runner, "square", 3)[0] == "ok"
    assert out.getvalue() == ""  # the task's event is the batch's, written at its settle
    assert Console().task_lines and not Console(quiet=True).task_lines


def test_a_worker_whose_stdout_went_away_still_runs_its_tasks() -> None:
    """Its ``Get task`` line cannot be printed: the task runs all the same (before, the
    BrokenPipeError ended the slot's batch as an outage; then each task was
    dead-lettered as one the worker could not handle)."""

    class Gone(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    err = io.StringIO()
    runner = TaskRunner(Registry(), Endings("w1", "q"), Console(out=Gone(), err=err))
    for n in (3, 4):
        task = Task(name="square", args=[n], reply_to="replies")
        ending = runner(Delivery(body=task.encode(), tag=1))
        assert ending.outcome == "ok" and ending.settlement.result is not None
        assert Result.decode(ending.settlement.result).value == n * n
    assert err.getvalue() == "distq: stdout cannot be written any more; going on without it\n"


def test_a_get_task_line_of_large_arguments_is_cut_as_error_lines_are(
    runner: TaskRunner, out: io.StringIO
) -> None:
    """100 KB of arguments made a 100,065-character ``Get task`` line at each delivery,
    where an error line is cut to 4,000 characters of its message (errortext)."""
    from distq.errortext import MAX_MESSAGE_CHARS

    assert run(runner, "echo", "x" * 100_000)[0] == "ok"
    line = out.getvalue().splitlines()[0]
    assert line.startswith("Get task echo['xxx") and line.endswith(" from task_queue.")
    assert len(line) < MAX_MESSAGE_CHARS + 100
    shown = len("echo['']") + 100_000
    assert f"... ({shown - MAX_MESSAGE_CHARS:,} characters cut) from task_queue." in line


def test_each_get_task_line_is_out_whole_before_its_task_runs() -> None:
    """The last ``Get task`` line of a worker a task killed names that task (README): each
    line reaches the file, whole and in order, before its task is called, not held with
    its batch's."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")  # holds text till flushed, as stdout
    seen: list[str] = []

    def look(n: int) -> int:
        seen.append(raw.getvalue().decode())
        return n

    registry = Registry()
    registry.register("look", look)
    runner = TaskRunner(registry, Endings("w1", "q"), Console(out=stream, err=stream))
    for n in range(3):
        assert run(runner, "look", n)[0] == "ok"
    assert run(runner, "square", 733)[0] == "ok"
    lines = [f"Get task look[{n}] from task_queue.\n" for n in range(3)]
    assert seen == ["".join(lines[: n + 1]) for n in range(3)]
    assert raw.getvalue().decode() == "".join(lines) + "Get task 733 from task_queue.\n"


def test_a_per_task_line_counts_on_the_bar_and_json_logs_drop_it() -> None:
    from distq.console import Progress
    from distq.logs import JsonConsole

    out, err = io.StringIO(), io.StringIO()
    console = Console(out=out, err=err)
    console.bar = Progress(10, err)
    console.task_line("Get task 1 from task_queue.")
    assert console.bar.done == 1 and out.getvalue() == ""
    json = JsonConsole("worker", out=out, err=out)
    json.task_line("Get task 1 from task_queue.")
    assert out.getvalue() == ""


@pytest.mark.parametrize(("name", "attempt"), [("echo", 5), ("boom", 4)])
def test_a_task_past_its_last_attempt_is_not_run_and_fails_for_good_at_once(
    name: str, attempt: int
) -> None:
    """A task whose attempt is already past ``max_attempts`` (hand-made, or moved back
    by hand from a retry queue) is exhausted: it ended as one that failed its last
    attempt does, an error result and a dead letter, but only after it had run once
    more, saying "failed 5 of 3 attempts" of an attempt that was no failure."""
    calls: list[int] = []

    def echo(value: int) -> int:
        calls.append(value)
        return value

    def raises(value: int) -> int:
        calls.append(value)
        return boom(value)

    registry = Registry()
    registry.register("echo", echo)
    registry.register("boom", raises)
    out = io.StringIO()
    runner = TaskRunner(registry, Endings("w1", "q"), Console(out=out, err=out))
    task = Task(name=name, args=[1], reply_to="replies", attempt=attempt, max_attempts=3)
    ending = runner(Delivery(body=task.encode(), tag=1))
    assert calls == []
    assert ending.outcome == "failed" and ending.settlement.retry is None
    reason = f"cannot run: NoAttemptsLeft: attempt {attempt} is past its last (3, its max_"
    assert ending.settlement.dead_letter is not None
    assert DeadLetter.decode(ending.settlement.dead_letter).reason.startswith(reason)
    assert ending.settlement.result is not None
    result = Result.decode(ending.settlement.result)
    assert result.status == "error" and result.error_message is not None
    assert result.error_message.startswith(reason) and result.error_type == "NoAttemptsLeft"
    assert ending.note is not None and reason in ending.note


@pytest.mark.parametrize(
    ("name", "args", "error_type"), [("nope", [1], "UnknownTask"), ("echo", [1, 2], "TypeError")]
)
def test_a_task_past_its_last_attempt_that_could_never_run_says_why_it_cannot(
    name: str, args: list[Any], error_type: str
) -> None:
    """A task past its last attempt that could not run at any attempt (an unknown name,
    arguments that do not fit) was refused as NoAttemptsLeft, saying "`distq
    requeue-dead` starts it over at attempt 1": requeued so, it failed at once for the
    reason it was not told. It says that reason, as at any attempt."""
    registry = Registry()
    registry.register("echo", lambda value: value)
    out = io.StringIO()
    runner = TaskRunner(registry, Endings("w1", "q"), Console(out=out, err=out))
    task = Task(name=name, args=args, reply_to="replies", attempt=5, max_attempts=3)
    ending = runner(Delivery(body=task.encode(), tag=1))
    assert ending.outcome == "failed" and ending.settlement.result is not None
    result = Result.decode(ending.settlement.result)
    assert (result.status, result.error_type) == ("error", error_type), result.error_message
    assert "requeue-dead" not in (result.error_message or "")
