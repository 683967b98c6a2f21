"""Log lines: passwords masked in every format, JSON lines that parse, text lines unchanged."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Sequence

import msgspec
import pytest

from conftest import REPO
from distq.chunks import CHUNK_TASK
from distq.console import Console
from distq.credentials import mask_url
from distq.ending import Ending, Outcome
from distq.envelope import Result, Task
from distq.logs import (
    ConsoleHandler,
    JsonConsole,
    JsonFormatter,
    Line,
    MaskingFormatter,
    TextConsole,
    _ascii,
    mask_secrets,
    timestamp,
)
from distq.telemetry import LONGEST_WAIT, MasterTelemetry, WorkerTelemetry, micros
from distq.transport import Delivery, Settlement
from launch import free_port
from procs import checkout_env, run_distq


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@redis-host:6379/0", "redis://:***@redis-host:6379/0"),
        ("rediss://user:s3cret@h/1?ssl_cert_reqs=none", "rediss://user:***@h/1?ssl_cert_reqs=none"),
        ("amqp://distq:s3cret@rabbit:5672/%2F", "amqp://distq:***@rabbit:5672/%2F"),
        ("amqps://u:p%40ss@rabbit/vh", "amqps://u:***@rabbit/vh"),
        ("http://admin:s3cret@[::1]:15672", "http://admin:***@[::1]:15672"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user@127.0.0.1:6379/0", "redis://user@127.0.0.1:6379/0"),
        ("unix://:s3cret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert mask_secrets(f"cannot reach {url}: refused") == f"cannot reach {shown}: refused"


def test_a_password_with_at_signs_and_colons_is_masked_whole() -> None:
    url = "amqp://distq:a:b@c@rabbit:5672/%2F"
    assert "a:b@c" not in mask_url(url) and "a:b@c" not in mask_secrets(f"x {url} y")
    assert mask_url(url) == "amqp://distq:***@rabbit:5672/%2F"


def test_json_console_prints_one_object_per_line_with_the_process_fields() -> None:
    out, err = io.StringIO(), io.StringIO()
    console = JsonConsole("worker", out=out, err=err, worker="w1")
    console.info("Connect to redis at redis://:s3cret@h:6379/0 .....")
    console.lines(["Get task 5 from task_queue."])  # per-task text: replaced by events
    console.error("task square 42 dead-lettered: boom")
    [info] = [json.loads(line) for line in out.getvalue().splitlines()]
    [error] = [json.loads(line) for line in err.getvalue().splitlines()]
    assert info["level"] == "info" and info["role"] == "worker" and info["worker"] == "w1"
    assert info["message"] == "Connect to redis at redis://:***@h:6379/0 ....."
    assert info["timestamp"].endswith("Z")
    assert error["level"] == "error" and error["message"] == "task square 42 dead-lettered: boom"


def test_a_task_can_be_followed_from_submit_to_settle_to_result() -> None:
    master_out, worker_out = io.StringIO(), io.StringIO()
    master = MasterTelemetry(log=JsonConsole("master", out=master_out))
    worker = WorkerTelemetry(log=JsonConsole("worker", out=worker_out, worker="w1"))
    task = Task(name="square", args=[7], reply_to="r")
    master.submitted([task], outstanding=1)
    settlement = Settlement(Delivery(b"", 1))
    worker.settled([Ending(settlement, "ok", task, task.created_at + 0.01, 0.002)], released=1)
    result = Result(
        task_id=task.id, status="ok", worker="w1", attempt=1, started_at=0, duration=0.002
    )
    master.collected(outstanding=0, received=[(result, 0.015, task.name)])
    submitted, received = (json.loads(line) for line in master_out.getvalue().splitlines())
    settled, released = (json.loads(line) for line in worker_out.getvalue().splitlines())
    assert submitted["event"] == "task submitted" and submitted["task_id"] == task.id
    assert settled["event"] == "task settled" and settled["task_id"] == task.id
    assert settled["worker"] == "w1" and settled["outcome"] == "ok"
    assert (settled["task"], settled["attempt"], settled["duration"]) == ("square", 1, 0.002)
    assert released == {**released, "event": "tasks released", "count": 1}
    assert received["event"] == "result received" and received["task_id"] == task.id
    assert (received["outcome"], received["worker"], received["round_trip"]) == ("ok", "w1", 0.015)
    assert submitted["task"] == settled["task"] == received["task"] == "square"
    assert list(received)[4:7] == ["task_id", "task", "attempt"]  # as the README shows it


def test_quiet_json_keeps_only_the_process_lines() -> None:
    out = io.StringIO()
    log = JsonConsole("master", quiet=True, out=out)
    MasterTelemetry(log=log).submitted([Task(name="square", args=[1], reply_to="r")], 1)
    log.info("master exit")
    assert [json.loads(line)["message"] for line in out.getvalue().splitlines()] == ["master exit"]


@pytest.mark.parametrize("kind", [Console, TextConsole])
def test_text_console_lines_are_unchanged(kind: type[Console]) -> None:
    out = io.StringIO()
    console = kind(out=out, err=out)
    console.lines(["Get task 733 from task_queue."])
    console.info("master exit")
    console.error("boom")
    assert out.getvalue() == "Get task 733 from task_queue.\nmaster exit\ndistq: boom\n"


def test_text_console_masks_passwords() -> None:
    out = io.StringIO()
    console = TextConsole(out=out, err=out)
    console.info("Connect to rabbitmq at amqp://distq:s3cret@h:5672/%2F .....")
    console.error("lost amqp://distq:s3cret@h:5672/%2F")
    assert "s3cret" not in out.getvalue() and out.getvalue().count("distq:***@h") == 2


def test_json_console_masks_passwords_in_info_error_and_rendered_lines() -> None:
    """A task's error naming a broker URL, dead-lettered by a worker with
    ``DISTQ_LOG_FORMAT=json``, printed its password in the clear if the JSON console's
    error() did not mask it (mutant LG1 of mut14a: no test covered that path)."""
    out, err = io.StringIO(), io.StringIO()
    console = JsonConsole("worker", out=out, err=err, worker="w1")
    console.info("Connect to redis at redis://app:Hunter2Secret@db:6379/0 .....")
    console.error("last error: ValueError: could not open redis://app:Hunter2Secret@db:6379/0")
    rendered = console.rendered("lost amqp://distq:Hunter2Secret@rabbit:5672/%2F")
    [info] = [json.loads(line) for line in out.getvalue().splitlines()]
    [error] = [json.loads(line) for line in err.getvalue().splitlines()]
    assert "Hunter2Secret" not in out.getvalue() + err.getvalue() + rendered
    assert info["message"] == "Connect to redis at redis://app:***@db:6379/0 ....."
    assert error["level"] == "error"
    assert error["message"] == "last error: ValueError: could not open redis://app:***@db:6379/0"
    assert json.loads(rendered)["message"] == "lost amqp://distq:***@rabbit:5672/%2F"


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DISTQ_REDIS_URL", "redis://:s3cret-pw@127.0.0.1:{port}/0"),
        ("DISTQ_AMQP_URL", "amqp://distq:s3cret-pw@127.0.0.1:{port}/%2F"),
    ],
)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_unreachable_broker_is_named_without_its_password(
    variable: str, url: str, log_format: str
) -> None:
    transport = "redis" if variable == "DISTQ_REDIS_URL" else "rabbitmq"
    env = checkout_env(
        DISTQ_TRANSPORT=transport,
        DISTQ_LOG_FORMAT=log_format,
        **{variable: url.format(port=free_port())},
    )
    done = run_distq(["worker", "--connect-timeout", "0.5"], env, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "s3cret-pw" not in done.stdout + done.stderr
    assert "cannot reach" in done.stderr


@pytest.mark.parametrize("json_format", [False, True])
def test_library_log_records_are_masked_in_both_formats(json_format: bool) -> None:
    record = logging.LogRecord(
        "distq.transport.redis", logging.WARNING, __file__, 1, "lost %s", ("redis://:pw@h/0",), None
    )
    if json_format:
        line = JsonFormatter({"role": "worker"}).format(record)
        assert json.loads(line)["message"] == "lost redis://:***@h/0"
    else:
        line = MaskingFormatter("distq: %(message)s").format(record)
        assert line == "distq: lost redis://:***@h/0"


def test_a_thread_that_dies_in_json_mode_writes_a_json_line_not_a_traceback() -> None:
    """A task's own thread that raised printed Python's plain traceback into the JSON
    stream: lines that do not parse."""
    code = (
        "import threading\n"
        "from distq.logs import make_console\n"
        "make_console('json', 'worker')\n"
        "def boom(): raise ValueError('in a thread of the task')\n"
        "t = threading.Thread(target=boom, name='tasks-own'); t.start(); t.join()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    (line,) = done.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and record["role"] == "worker", record
    assert record["message"].startswith("exception in thread tasks-own\nTraceback")
    assert record["message"].rstrip().endswith("ValueError: in a thread of the task")


def test_every_json_line_is_compact_non_ascii_and_library_records_too() -> None:
    """Lines with a non-ASCII field (a worker named wörker-✓: every line it wrote) and
    every library record came out of json.dumps with blanks after , and : while the
    README shows one compact form, as msgspec writes the rest."""
    out, err = io.StringIO(), io.StringIO()
    console = JsonConsole("worker", out=out, err=err, worker="wörker-✓")
    console.info("a line with ünïcode")
    console.error("plain")
    record = logging.LogRecord("redis.client", logging.WARNING, __file__, 1, "ascii", (), None)
    lines = [*out.getvalue().splitlines(), *err.getvalue().splitlines()]
    lines.append(JsonFormatter({"role": "worker"}).format(record))
    lines.append(console.rendered("rendered ✓").rstrip("\n"))
    for line in lines:
        assert line.isascii() and line == json.dumps(json.loads(line), separators=(",", ":"))


def test_a_line_with_a_non_utf8_byte_is_written_escaped_not_raised() -> None:
    """A non-UTF-8 byte in a name the process says (an environment variable's, in the
    "not a distq setting" warning) is a lone surrogate in Python: msgspec refused to
    encode it and the JSON console raised UnicodeEncodeError, a master exiting 1 with
    a traceback where the text console printed the warning."""
    out, err = io.StringIO(), io.StringIO()
    console = JsonConsole("master", out=out, err=err)
    console.error("warning: DISTQ_QUEU\udcff is not a distq setting (ignored)")
    console.info("name \udcff")
    for line in [*err.getvalue().splitlines(), *out.getvalue().splitlines()]:
        assert line.isascii() and line == json.dumps(json.loads(line), separators=(",", ":"))
    assert json.loads(err.getvalue())["message"].startswith("warning: DISTQ_QUEU\udcff ")


def test_a_worker_named_with_a_non_utf8_byte_writes_its_task_lines_escaped() -> None:
    """Was: JsonConsole(worker="w\udcff") (a hostname or DISTQ_WORKER_ID with a bad
    byte) raised UnicodeEncodeError from msgspec at its first per-task line; its
    info() and error() lines were escaped already. Every line is written, escaped."""
    out = io.StringIO()
    worker = WorkerTelemetry(log=JsonConsole("worker", out=out, worker="w\udcff"))
    tasks = [Task(name=name, args=[1], reply_to="r") for name in ("square", "t\udcfe")]
    endings = [
        Ending(Settlement(Delivery(b"", n)), "ok", task, task.created_at, 0.001)
        for n, task in enumerate(tasks)
    ]
    worker.settled(endings, released=1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(line.isascii() for line in lines)
    assert [json.loads(line)["worker"] for line in lines] == ["w\udcff"] * 3
    assert [json.loads(line).get("task") for line in lines] == ["square", "t\udcfe", None]


def test_a_worker_named_with_a_non_utf8_byte_writes_its_numbers_as_every_other_worker() -> None:
    """Was: every per-task line of a worker named "w\udcff" went through json.dumps, its
    times in Python's form ("duration":2e-06) where any other worker's lines say 2e-6.
    Only its head is escaped so now; the rest of its lines are written as any other's."""
    lines = {}
    for name in ("w\udcff", "w1"):
        out = io.StringIO()
        worker = WorkerTelemetry(log=JsonConsole("worker", out=out, worker=name))
        task = Task(name="square", args=[1], reply_to="r", id="id0", created_at=100.0)
        worker.settled([Ending(Settlement(Delivery(b"", 0)), "ok", task, 100.000002, 0.000002)])
        lines[name] = re.sub(r'"timestamp":"[^"]*"', '"timestamp":"T"', out.getvalue())
    assert lines["w\udcff"].endswith('"queue_wait":2e-6,"duration":2e-6}\n')
    assert lines["w\udcff"].replace('"w\\udcff"', '"w1"') == lines["w1"]


def test_a_batch_with_a_name_of_a_non_utf8_byte_writes_its_numbers_and_other_lines_as_any() -> None:
    """Was: a batch holding a task named with a non-UTF-8 byte went whole through
    json.dumps: its every line's times in Python's form ("duration":2e-06, where any
    other batch says 2e-6), an infinite one as Infinity, which is no JSON (msgspec: null).
    Now only that name is escaped as json escapes it; the lines are msgspec's."""
    lines = {}
    for name in ("t\udcfe", "t"):
        out = io.StringIO()
        worker = WorkerTelemetry(log=JsonConsole("worker", out=out, worker="w1"))
        tasks = [Task(n, [1], "r", id=f"id{n}", created_at=100.0) for n in ("square", name)]
        worker.settled(
            [
                Ending(Settlement(Delivery(b"", 0)), "ok", tasks[0], 100.000002, math.inf),
                Ending(Settlement(Delivery(b"", 1)), "ok", tasks[1], 100.5, 0.000002),
            ]
        )
        lines[name] = re.sub(r'"timestamp":"[^"]*"', '"timestamp":"T"', out.getvalue())
    assert lines["t"].splitlines()[0].endswith('"queue_wait":2e-6,"duration":null}')
    assert lines["t\udcfe"] == lines["t"].replace('"t"', '"t\\udcfe"').replace("idt", "idt\\udcfe")


def test_events_of_a_batch_are_one_object_per_line_in_order_whatever_they_hold() -> None:
    out = io.StringIO()
    worker = WorkerTelemetry(log=JsonConsole("worker", out=out, worker="w1"))
    names = ["square", 'odd\n{"level":"x"}\n{', "plain", "naïve"]
    tasks = [Task(name=name, args=[n], reply_to="r") for n, name in enumerate(names)]
    outcomes: list[Outcome] = ["ok", "failed", "released", "retried"]
    endings = [
        Ending(Settlement(Delivery(b"", n)), outcome, task, task.created_at, 0.0000015)
        for n, (task, outcome) in enumerate(zip(tasks, outcomes, strict=True))
    ]
    worker.settled(endings, released=2)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line.get("task") for line in lines] == [*names, None]
    assert [line["level"] for line in lines] == ["info", "error", "info", "info", "info"]
    assert all(line["role"] == "worker" and line["worker"] == "w1" for line in lines)
    assert [line["event"] for line in lines] == ["task settled"] * 4 + ["tasks released"]
    assert lines[0]["duration"] == 0.000002  # to the microsecond, half up


def test_a_chunks_settled_line_names_the_function_it_calls_as_its_metrics_do() -> None:
    """DistqTaskErrorRatioHigh names the task a chunk calls (its metrics count it under
    that function), and its runbook sends the operator to the JSON lines for that task's
    errors: they said "task": "distq:chunk", for every function mapped in chunks, so
    none of them named the task the alert did."""
    out = io.StringIO()
    worker = WorkerTelemetry(log=JsonConsole("worker", out=out, worker="w1"))
    chunk = Task(name=CHUNK_TASK, args=["mod:resize", [[1], [2]]], reply_to="r")
    odd = Task(name=CHUNK_TASK, args=[7], reply_to="r")  # arguments naming no function
    endings = [
        Ending(Settlement(Delivery(b"", n)), "retried", task, task.created_at, 0.001)
        for n, task in enumerate([chunk, odd])
    ]
    worker.settled(endings)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["task"] for line in lines] == ["mod:resize", CHUNK_TASK]
    assert [line["task_id"] for line in lines] == [chunk.id, odd.id]


def test_a_settled_lines_queue_wait_is_the_one_the_metric_counts() -> None:
    """A created_at of -1e308 or 0 (a hand-written producer) wrote "queue_wait": 1e308 or
    55 years into the task's line while the histogram counted 0 (diff13b)."""
    out = io.StringIO()
    worker = WorkerTelemetry(log=JsonConsole("worker", out=out, worker="w1"))
    now = time.time()
    tasks = [Task(name="square", args=[1], reply_to="r", created_at=at) for at in (-1e308, 0.0)]
    tasks.append(Task(name="square", args=[1], reply_to="r", created_at=now - 0.25))
    endings = [Ending(Settlement(Delivery(b"", 1)), "ok", task, now, 0.001) for task in tasks]
    worker.settled(endings)
    waits = [json.loads(line)["queue_wait"] for line in out.getvalue().splitlines()]
    assert waits[:2] == [0.0, 0.0] and 0.2 < waits[2] < 0.3, waits


def test_a_masters_batch_of_results_and_duplicates_is_written_in_the_order_it_came() -> None:
    out = io.StringIO()
    master = MasterTelemetry(log=JsonConsole("master", out=out))

    def result(task_id: str, status: str, worker: str) -> Result:
        return Result(task_id, status, worker, 1, 0.0, 0.0000015)  # type: ignore[arg-type]

    master.collected(
        outstanding=0,
        received=[
            (result("t1", "ok", "w1"), 0.0123456, "square"),
            (result("t1", "ok", "w2"), None, ""),  # a duplicate
            (result("t2", "error", "w2"), 0.02, "square"),
        ],
    )
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["event"], line["task_id"], line["worker"]) for line in lines] == [
        ("result received", "t1", "w1"),
        ("duplicate result", "t1", "w2"),
        ("result received", "t2", "w2"),
    ]
    assert [line["level"] for line in lines] == ["info", "info", "error"]
    assert (lines[0]["round_trip"], lines[0]["duration"]) == (0.012346, 0.000002)
    assert len({line["timestamp"] for line in lines}) == 1  # one stamp per batch
    master.collected(outstanding=0)  # nothing new: nothing written
    assert len(out.getvalue().splitlines()) == 3


def test_a_failed_tasks_result_line_says_its_outcome_is_error() -> None:
    """The master's JSON ``result received`` line of a task that failed for good said
    ``"outcome":"ok"`` (mutant T5 of mut14a): a log pipeline counting failures by
    outcome saw none, while the level said error."""
    out = io.StringIO()
    master = MasterTelemetry(log=JsonConsole("master", out=out))
    task = Task(name="jobs:fail_with", args=["x"], reply_to="r")
    master.submitted([task], outstanding=1)
    failed = Result(
        task.id, "error", "w1", 3, 0.0, 0.25, error_type="ValueError", error_message="x"
    )
    master.collected(outstanding=0, received=[(failed, 0.5, task.name)])
    _, received = (json.loads(line) for line in out.getvalue().splitlines())
    assert received["event"] == "result received" and received["task_id"] == task.id
    assert (received["level"], received["outcome"]) == ("error", "error")
    assert received["task"] == "jobs:fail_with"
    assert (received["attempt"], received["worker"]) == (3, "w1")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.0, 0.0), (0.0123454, 0.012345), (0.0123456, 0.012346), (2.5e-7, 0.0), (7.0, 7.0)],
)
def test_times_in_events_are_to_the_microsecond(seconds: float, shown: float) -> None:
    assert micros(seconds) == shown


def test_times_in_events_are_rounded_half_up_as_int_rounds_them_at_every_magnitude() -> None:
    """micros() floors as a float (``// 1``), not through an int: the same number for
    every time a line rounds, from nanoseconds to 1e9 s, halves included."""
    drawn = random.Random(16)
    times = [drawn.uniform(0, 10.0**exponent) for exponent in range(-9, 10) for _ in range(500)]
    times += [(n + 0.5) / 1e6 for n in range(0, 10**6, 997)]  # a 7th digit of 5
    times += [math.nextafter(t, 0.0) for t in times[-1000:]] + [0.0, -0.0, 999_999_999.9999999]
    assert [micros(t) for t in times] == [int(t * 1e6 + 0.5) / 1e6 for t in times]


def test_times_no_clock_would_give_are_written_as_they_are() -> None:
    assert math.isnan(micros(math.nan)) and micros(-0.0000021) == -0.000002
    assert micros(math.inf) == math.inf and micros(3e9 + 0.25) == 3e9 + 0.25


ODD_TIMES = [0.0, 0.0000015, 0.0123456, -0.0000021, 999_999_999.9999996, 3e9 + 0.25, math.nan]


def _as_written(seconds: float) -> float | None:
    """``micros(seconds)`` as a JSON line holds it (NaN as null)."""
    shown = micros(seconds)
    return None if math.isnan(shown) else shown


def test_every_time_in_a_line_is_micros_of_it_whatever_the_clock_said() -> None:
    """The lines round their times inline (a call per time cost more than the rest of
    the line): each must still be what :func:`micros` makes of it, a queue wait outside
    (0, LONGEST_WAIT] 0 as the metric counts it."""
    out = io.StringIO()
    worker = WorkerTelemetry(log=JsonConsole("worker", out=out, worker="w1"))
    master = MasterTelemetry(log=JsonConsole("master", out=out))
    task = Task(name="square", args=[1], reply_to="r", created_at=1000.0)
    starts = [1000.0 + wait for wait in ODD_TIMES]
    worker.settled(
        [
            Ending(Settlement(Delivery(b"", n)), "ok", task, start, run)
            for n, (start, run) in enumerate(zip(starts, ODD_TIMES, strict=True))
        ]
    )
    master.collected(
        0,
        [
            (Result("t", "ok", "w1", 1, 0.0, run), trip, "")
            for run, trip in zip(ODD_TIMES, ODD_TIMES[::-1], strict=True)
        ],
    )
    settled, received = out.getvalue().splitlines()[:7], out.getvalue().splitlines()[7:]
    settled_lines = [json.loads(line) for line in settled]
    assert [line["duration"] for line in settled_lines] == [_as_written(t) for t in ODD_TIMES]
    waits = [start - 1000.0 for start in starts]
    assert [line["queue_wait"] for line in settled_lines] == [
        micros(wait) if 0 < wait <= LONGEST_WAIT else 0.0 for wait in waits
    ]
    received_lines = [json.loads(line) for line in received]
    assert [line["duration"] for line in received_lines] == [_as_written(t) for t in ODD_TIMES]
    assert [line["round_trip"] for line in received_lines] == [
        _as_written(t) for t in ODD_TIMES[::-1]
    ]


def _written(stream: io.StringIO | io.TextIOWrapper) -> list[str]:
    """The lines on ``stream``, each timestamp replaced by T once checked."""
    if isinstance(stream, io.TextIOWrapper):
        stream.flush()
        text = stream.buffer.getvalue().decode(stream.encoding)  # type: ignore[attr-defined]
    else:
        text = stream.getvalue()
    assert text.endswith("\n") and "\r" not in text
    stamps = re.findall(r'"timestamp":"([^"]*)"', text)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s) for s in stamps)
    return re.sub(r'"timestamp":"[^"]*"', '"timestamp":"T"', text).splitlines()


@pytest.mark.parametrize(
    "stream",
    [
        io.StringIO,
        lambda: io.TextIOWrapper(io.BytesIO()),  # the lines' bytes go into its buffer
        lambda: io.TextIOWrapper(io.BytesIO(), encoding="utf-16"),  # not ASCII as it is
    ],
)
def test_every_event_line_is_written_byte_for_byte_as_the_readme_shows_it(
    stream: type[io.StringIO],
) -> None:
    """The per-task lines, key order, separators, number forms and \\u escapes included,
    whatever path writes them: a batch of one outcome, a mixed one, a line of a name
    outside ASCII or with a line break, an undecoded task. A batch holding a name outside
    ASCII was written again by json.dumps, its every line's numbers in Python's form
    ("duration":2e-06) where msgspec wrote the same line in any other batch as 2e-6."""
    worker_out, master_out = stream(), stream()
    worker_out.write("a task's print(), in the text stream\n")  # goes first, unflushed
    worker = WorkerTelemetry(log=JsonConsole("worker", out=worker_out, worker="w1"))
    master = MasterTelemetry(log=JsonConsole("master", out=master_out))
    tasks = [
        Task(name=name, args=[1], reply_to="r", id=f"id{n}", attempt=n + 1, created_at=100.0)
        for n, name in enumerate(["square", "square", "naïve😀", 'odd\n{"x"}', "square"])
    ]
    outcomes: list[Outcome] = ["ok", "ok", "failed", "retried", "ok"]
    settled = [
        Ending(Settlement(Delivery(b"", n)), outcome, task, 100.25, 0.0000015 * n)
        for n, (task, outcome) in enumerate(zip(tasks, outcomes, strict=True))
    ]
    settled.append(Ending(Settlement(Delivery(b"", 9)), "malformed"))
    worker.settled(settled, released=2)
    worker.settled(settled[:2])
    master.submitted(tasks[:3], outstanding=3)
    master.collected(
        0,
        [
            (Result("id0", "ok", "w1", 1, 0.0, 0.5), 1.25, tasks[0].name),
            (Result("id0", "ok", "w2", 1, 0.0, 0.5), None, ""),
            (Result("id2", "error", "w✓", 3, 0.0, 3e9 + 0.25), 0.000001, tasks[2].name),
        ],
    )
    head = '{"timestamp":"T","level":"%s","role":"worker","worker":"w1","event":'
    ok, error = head % "info", head % "error"
    settled_lines = [
        f'{ok}"task settled","outcome":"ok","task_id":"id0","task":"square","attempt":1,'
        '"queue_wait":0.25,"duration":0.0}',
        f'{ok}"task settled","outcome":"ok","task_id":"id1","task":"square","attempt":2,'
        '"queue_wait":0.25,"duration":2e-6}',
        f'{error}"task settled","outcome":"failed","task_id":"id2",'
        '"task":"na\\u00efve\\ud83d\\ude00","attempt":3,"queue_wait":0.25,"duration":3e-6}',
        f'{ok}"task settled","outcome":"retried","task_id":"id3",'
        '"task":"odd\\n{\\"x\\"}","attempt":4,"queue_wait":0.25,"duration":5e-6}',
        f'{ok}"task settled","outcome":"ok","task_id":"id4","task":"square","attempt":5,'
        '"queue_wait":0.25,"duration":6e-6}',
        f'{error}"task settled","outcome":"malformed","task":"(unknown)"}}',
        f'{ok}"tasks released","count":2}}',
    ]
    assert _written(worker_out) == [
        "a task's print(), in the text stream",
        *settled_lines,
        *settled_lines[:2],
    ]
    head = '{"timestamp":"T","level":"%s","role":"master","event":'
    ok, error = head % "info", head % "error"
    assert _written(master_out) == [
        f'{ok}"task submitted","task_id":"id0","task":"square","attempt":1}}',
        f'{ok}"task submitted","task_id":"id1","task":"square","attempt":2}}',
        f'{ok}"task submitted","task_id":"id2","task":"na\\u00efve\\ud83d\\ude00","attempt":3}}',
        f'{ok}"result received","task_id":"id0","task":"square","attempt":1,'
        '"duration":0.5,"outcome":"ok","round_trip":1.25,"worker":"w1"}',
        f'{ok}"duplicate result","task_id":"id0","worker":"w2"}}',
        f'{error}"result received","task_id":"id2","task":"na\\u00efve\\ud83d\\ude00","attempt":3,'
        '"duration":3000000000.25,"outcome":"error","round_trip":1e-6,"worker":"w\\u2713"}',
    ]


def test_a_batch_of_one_task_name_is_written_byte_for_byte_whatever_its_ids_and_times() -> None:
    """The common batch, every task of one name (what a worker's or master's batch
    holds), pinned byte for byte: ids that need escapes, levels by outcome, times at
    the edges of their rounding (a half, LONGEST_WAIT, just under 1e9, below 0.5 µs)."""
    worker_out, master_out = io.StringIO(), io.StringIO()
    worker = WorkerTelemetry(log=JsonConsole("worker", out=worker_out, worker="w1"))
    master = MasterTelemetry(log=JsonConsole("master", out=master_out))
    ids = ["id0", 'q"uo\\te', "tab\tnl\n", "café", "ctl\x01", "id5", "id6"]
    times = [
        (0.25, 0.0), (1e-9, 0.0000025), (LONGEST_WAIT, 999_999_999.9999996),
        (0.0012345, 1.5), (0.5, 2e-6), (0.0000005, 0.0000004999), (1234.5678915, 3.0000005),
    ]  # fmt: skip
    tasks = [
        Task("square", [1], "r", id=task_id, attempt=n + 1, created_at=100.0)
        for n, task_id in enumerate(ids)
    ]
    outcomes: list[Outcome] = ["ok", "ok", "retried", "failed", "ok", "orphaned", "ok"]
    endings = [
        Ending(Settlement(Delivery(b"", n)), outcome, task, 100.0 + wait, run)
        for n, (task, outcome, (wait, run)) in enumerate(zip(tasks, outcomes, times, strict=True))
    ]
    worker.settled(endings)
    worker.settled(endings[:1] + endings[2:])  # no wait of 0 (1e-9 s) among them
    master.submitted(tasks, len(tasks))
    master.collected(
        0,
        [
            (Result(t.id, "error" if n == 3 else "ok", "w1", t.attempt, 0.0, run), wait, t.name)
            for n, (t, (wait, run)) in enumerate(zip(tasks, times, strict=True))
        ],
    )
    head = '{"timestamp":"T","level":"%s","role":"worker","worker":"w1","event":"task settled",'
    ok, error = head % "info", head % "error"
    escaped = ['"id0"', '"q\\"uo\\\\te"', '"tab\\tnl\\n"', '"caf\\u00e9"', '"ctl\\u0001"']
    escaped += ['"id5"', '"id6"']
    settled = [
        ("ok", 1, "0.25", "0.0"), ("ok", 2, "0.0", "3e-6"),
        ("retried", 3, "31622400.0", "1000000000.0"), ("failed", 4, "0.001234", "1.5"),
        ("ok", 5, "0.5", "2e-6"), ("orphaned", 6, "0.0", "0.0"),
        ("ok", 7, "1234.567892", "3.000001"),
    ]  # fmt: skip
    settled_lines = [
        f'{ok if outcome in ("ok", "retried") else error}"outcome":"{outcome}","task_id":{task_id},'
        f'"task":"square","attempt":{attempt},"queue_wait":{wait},"duration":{run}}}'
        for task_id, (outcome, attempt, wait, run) in zip(escaped, settled, strict=True)
    ]
    assert _written(worker_out) == settled_lines + settled_lines[:1] + settled_lines[2:]
    head = '{"timestamp":"T","level":"%s","role":"master","event":'
    received = [
        ("0.0", "0.25"), ("3e-6", "0.0"), ("1000000000.0", "31622400.0"), ("1.5", "0.001235"),
        ("2e-6", "0.5"), ("0.0", "1e-6"), ("3.000001", "1234.567892"),
    ]  # fmt: skip
    assert _written(master_out) == [
        f'{head % "info"}"task submitted","task_id":{task_id},"task":"square","attempt":{n + 1}}}'
        for n, task_id in enumerate(escaped)
    ] + [
        f'{head % ("error" if n == 3 else "info")}"result received","task_id":{task_id},'
        f'"task":"square","attempt":{n + 1},"duration":{run},'
        f'"outcome":"{"error" if n == 3 else "ok"}","round_trip":{trip},"worker":"w1"}}'
        for n, (task_id, (run, trip)) in enumerate(zip(escaped, received, strict=True))
    ]


def test_a_lines_timestamp_is_what_datetime_makes_of_its_time_at_every_edge() -> None:
    """A line's timestamp (:meth:`JsonConsole.stamp`, its second formatted once) is
    byte for byte what datetime's isoformat makes of the time: times drawn over years,
    and at the edges of a millisecond and of a second (a time that rounds up to the next
    microsecond, and so the next millisecond or second), negative ones too."""
    drawn = random.Random(38)
    times = [drawn.uniform(0, 4e9) for _ in range(3000)] + [-1.5, -0.0004, 0.0, 1e-7]
    for second in (1_700_000_000, 1_767_225_599, 951_868_799, 0, 86_399):
        for fraction in (0.0, 0.0004995, 0.0005, 0.9994999, 0.9995, 0.9999994, 0.9999995):
            times += [second + fraction, math.nextafter(second + fraction, math.inf)]
            times += [math.nextafter(second + fraction, -math.inf)]
    console = JsonConsole("worker", out=io.StringIO())
    assert [JsonConsole("worker", out=io.StringIO()).stamp(at) for at in times] == [
        timestamp(at) for at in times
    ]
    assert [console.stamp(at) for at in sorted(times)] == [timestamp(at) for at in sorted(times)]


def test_a_consoles_timestamp_follows_its_clock_stepped_back() -> None:
    """One console's stamps as its clock is stepped back (NTP: a second, a millisecond,
    half of one, across a second and a day) and on again: each is what datetime makes
    of the time, none the one cached for the later time it saw before (the cache is of
    a millisecond and a second, not of the latest time)."""
    day = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    times = [day + 0.0012, day + 0.0002, day + 0.0015, day - 0.9994, day + 0.0016]
    times += [day + 1.25, day + 0.25, day + 0.2504, day - 86_400.5, day + 1.25, day + 1.2495]
    console = JsonConsole("master", out=io.StringIO())
    assert [console.stamp(at) for at in times] == [timestamp(at) for at in times]
    assert [console.stamp(at) for at in times[::-1]] == [timestamp(at) for at in times[::-1]]


def test_a_batchs_lines_have_one_timestamp_though_the_clock_ticks_while_they_are_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Was (ffc8e42): each head of a batch (ok, error, duplicate) read the clock, so a
    batch's error line could say a millisecond later than its ok lines. The clock here
    moves 5 ms at every read."""
    clock = iter(range(10**6))
    monkeypatch.setattr(time, "time", lambda: 1000.0 + next(clock) * 0.005)
    out = io.StringIO()
    worker = WorkerTelemetry(log=JsonConsole("worker", out=out, worker="w1"))
    master = MasterTelemetry(log=JsonConsole("master", out=out))
    task = Task(name="square", args=[1], reply_to="r", id="id0", created_at=999.0)
    outcomes: list[Outcome] = ["ok", "failed", "orphaned", "ok"]
    endings = [
        Ending(Settlement(Delivery(b"", n)), outcome, task, 999.5, 0.001)
        for n, outcome in enumerate(outcomes)
    ]
    worker.settled([*endings, Ending(Settlement(Delivery(b"", 9)), "malformed")], released=1)
    master.submitted([task], 1)
    results = [Result("id0", status, "w1", 1, 0.0, 0.001) for status in ("ok", "error")]
    master.collected(
        0, [(results[0], 0.5, "square"), (results[1], 0.5, ""), (results[0], None, "")]
    )
    batches = [out.getvalue().splitlines()[:6], out.getvalue().splitlines()[7:]]
    for lines in batches:
        assert len({json.loads(line)["timestamp"] for line in lines}) == 1, lines


def test_random_batches_lines_hold_their_events_fields_in_order_encoded_as_msgspec_does() -> None:
    """A batch's lines share their head (encoded once: logs.Line): whatever the batch
    holds, each line is its event's keys in order, its values as the inputs say, written
    byte for byte as msgspec writes that object (escapes as json's)."""
    drawn = random.Random(35)
    names = ["square", "naïve😀", 'odd\n{"x"}', "a},{b", "w✓"]
    odd = [0.0, 1.5e-6, -2.1e-6, 999_999_999.9999996, 3e9 + 0.25, 0.5, 5e-7]
    outcomes: list[Outcome] = ["ok", "ok", "retried", "failed"]
    out = io.StringIO()
    worker = WorkerTelemetry(log=JsonConsole("worker", out=out, worker="w✓"))
    master = MasterTelemetry(log=JsonConsole("master", out=out))
    expected: list[dict[str, object]] = []

    def time_() -> float:
        return drawn.choice(odd) if drawn.random() < 0.3 else drawn.uniform(0, 2.0)

    for batch in range(40):
        tasks = [
            Task(drawn.choice(names), [1], "r", id=f"id{batch}.{n}", attempt=n % 3 + 1)
            for n in range(drawn.randint(1, 12))
        ]
        settled = [(drawn.choice(outcomes), time_(), time_()) for _ in tasks]
        worker.settled(
            [
                Ending(Settlement(Delivery(b"", 0)), outcome, task, task.created_at + wait, run)
                for task, (outcome, wait, run) in zip(tasks, settled, strict=True)
            ]
        )
        master.submitted(tasks, len(tasks))
        results = [
            (
                Result(t.id, drawn.choice(["ok", "error"]), "w✓", t.attempt, 0.0, time_()),
                time_(),
                t.name,
            )
            for t in tasks
        ]
        master.collected(0, [*results, (results[0][0], None, "")])
        for task, (outcome, wait, run) in zip(tasks, settled, strict=True):
            wait = (task.created_at + wait) - task.created_at
            expected.append(
                {
                    "level": "info" if outcome in ("ok", "retried") else "error",
                    "role": "worker", "worker": "w✓", "event": "task settled", "outcome": outcome,
                    "task_id": task.id, "task": task.name, "attempt": task.attempt,
                    "queue_wait": micros(wait) if 0 < wait <= LONGEST_WAIT else 0.0,
                    "duration": micros(run),
                }
            )  # fmt: skip
        for task in tasks:
            expected.append(
                {"level": "info", "role": "master", "event": "task submitted",
                 "task_id": task.id, "task": task.name, "attempt": task.attempt}
            )  # fmt: skip
        for (result, trip, _), task in zip(results, tasks, strict=True):
            expected.append(
                {
                    "level": "info" if result.status == "ok" else "error", "role": "master",
                    "event": "result received", "task_id": task.id, "task": task.name,
                    "attempt": task.attempt, "duration": micros(result.duration),
                    "outcome": result.status, "round_trip": micros(trip), "worker": "w✓",
                }
            )  # fmt: skip
        expected.append(
            {"level": "info", "role": "master", "event": "duplicate result",
             "task_id": tasks[0].id, "worker": "w✓"}
        )  # fmt: skip
    lines = _written(out)
    assert [_ascii(msgspec.json.encode(json.loads(line))).decode() for line in lines] == lines
    assert [json.loads(line) for line in lines] == [{"timestamp": "T", **e} for e in expected]


class _Kept(JsonConsole):
    """A JSON console that keeps the per-task lines it is handed, as well as writing them."""

    kept: list[Line]

    def write_lines(self, lines: Sequence[Line]) -> None:
        self.kept = [*getattr(self, "kept", []), *lines]
        super().write_lines(lines)


def test_no_per_task_line_carries_what_the_garbage_collector_needs() -> None:
    """Was: each of the three lines a task was made as an object the garbage collector
    could track (its header allocated, linked, unlinked and freed), though a line holds
    only texts and numbers, in no cycle, which msgspec then saw and untracked: about 210
    instructions a line. Every kind of line, each event's struct (logs.Line, gc=False)."""
    worker_log, master_log = (
        _Kept("worker", out=io.StringIO(), worker="w1"),
        _Kept("master", out=io.StringIO()),
    )
    task = Task(name="square", args=[1], reply_to="r", id="id0", created_at=100.0)
    outcomes: list[Outcome] = ["ok", "failed"]
    endings = [Ending(Settlement(Delivery(b"", 0)), o, task, 100.5, 0.25) for o in outcomes]
    undecoded = Ending(Settlement(Delivery(b"", 1)), "malformed")
    WorkerTelemetry(log=worker_log).settled([*endings, undecoded], released=1)
    master = MasterTelemetry(log=master_log)
    master.submitted([task], 1)
    result = Result("id0", "ok", "w1", 1, 0.0, 0.25)
    master.collected(0, [(result, 0.5, "square"), (result, None, "")])
    kinds = {type(line) for line in worker_log.kept + master_log.kept}
    assert kinds == set(Line.__subclasses__()), kinds
    assert {kind.__name__: kind.__struct_config__.gc for kind in kinds} == {
        kind.__name__: False for kind in kinds
    }


class _InterruptedOnce(io.StringIO):
    """stderr caught mid-write by a signal once: the handler's record, written from the
    signal handler, is refused as a BufferedWriter refuses a reentrant call."""

    interrupted = False

    def write(self, text: str) -> int:
        if not self.interrupted:
            self.interrupted = True
            raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")
        return super().write(text)


def test_a_record_dropped_for_a_reentrant_write_is_said_so_not_as_a_full_stderr() -> None:
    """A record a signal handler logged amid another write was dropped, and the note
    said "stderr was full (a non-blocking descriptor ...)": it was not full."""
    err = _InterruptedOnce()
    handler = ConsoleHandler(Console(out=io.StringIO(), err=err), MaskingFormatter("%(message)s"))
    logger = logging.getLogger("distq.test_reentrant")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("from the signal handler")
        logger.warning("the next one")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    said = err.getvalue()
    assert "from the signal handler" not in said and "the next one" in said, said
    assert "stderr was full" not in said, said
    assert "signal handler" in said and "said once" in said, said


@pytest.mark.parametrize("worker", [None, "w1", "naïve✓", "w\udcff"])
def test_a_head_is_its_whole_object_encoded_at_every_millisecond(worker: str | None) -> None:
    """A head (:meth:`JsonConsole.head`) is its timestamp quoted before bytes encoded
    once per level, event and worker: byte for byte the head of the whole object encoded
    as a line is (msgspec's, or json's escapes for a lone surrogate), each millisecond,
    second and level, a worker's name outside ASCII too."""
    console = JsonConsole("worker" if worker else "master", out=io.StringIO())
    for at in (1_767_225_599.9994, 1_767_225_599.9996, 1_767_225_600.0012, 5.0, 5.0004):
        for level, event in [("info", "task settled"), ("error", "task settled"),
                             ("info", "tasks released"), ("info", "task settled")]:  # fmt: skip
            fields = {"timestamp": timestamp(at), "level": level, "role": console.role}
            if worker is not None:
                fields["worker"] = worker
            fields["event"] = event
            try:
                whole = msgspec.json.encode(fields)
            except UnicodeEncodeError:
                whole = json.dumps(fields, separators=(",", ":")).encode()
            head = console.head(level, event, worker, at)
            assert b'{"timestamp":' + bytes(head) + b"}" == whole
