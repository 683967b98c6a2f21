"""The bench's CPU accounting (bench/cpu.py) and how the report shows it.

The process tests burn real CPU in real child processes: a role's count must include
its descendants, alive or already reaped, and nothing of the processes it does not own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from reports import made_up_report

import run
from cpu import TICK, CpuMeter, clock_seconds, own_seconds, per_thousand, tree_seconds
from report import write_markdown

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"


def burner(seconds: float) -> list[str]:
    return [sys.executable, "-c", BURN.format(seconds=seconds)]


def test_a_tree_counts_living_and_reaped_children_once() -> None:
    # a parent that burns 0.3 s in a child it waits for, then starts one that stays alive
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.run({burner(0.3)!r}, check=True)\n"
        f"alive = subprocess.Popen({burner(0.3)!r})\n"
        "alive.wait(); print('done', flush=True); time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        meter = CpuMeter({"workers": [parent.pid]})
        meter.start()
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "done"
        used = meter.stop()["workers"]
        # 0.6 s burned by the two children; the parent's own start-up adds a little
        assert 0.55 <= used <= 1.2, used
        assert own_seconds(parent.pid) is not None
        assert own_seconds(parent.pid) < 0.5  # type: ignore[operator]  # its own share only
    finally:
        parent.kill()
        parent.wait()


def test_own_seconds_leave_children_out_and_gone_processes_count_nothing(tmp_path: Path) -> None:
    child = subprocess.Popen(burner(0.2))
    child.wait()
    assert own_seconds(child.pid) is None  # reaped: nothing to read
    assert tree_seconds([child.pid]) == 0.0
    meter = CpuMeter({"master": [child.pid]}, own=["master"])
    meter.start()
    assert meter.stop() == {"master": 0.0}


def test_a_process_clock_reads_what_the_process_reads_of_itself_finer_than_a_tick() -> None:
    before, mine, after = time.process_time(), clock_seconds(os.getpid()), time.process_time()
    assert mine is not None and before - 1e-6 <= mine <= after + 1e-6
    # a child that burns 0.123 s and waits: its clock counts that and its start-up, and
    # /proc/<pid>/stat the same to within a few ticks (which it samples: 19 ms off seen)
    script = BURN.format(seconds=0.123) + "import sys; print('done', flush=True); sys.stdin.read()"
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        precise = clock_seconds(child.pid)
        fields = (Path("/proc") / str(child.pid) / "stat").read_text().rpartition(")")[2].split()
        ticked = (int(fields[11]) + int(fields[12])) / TICK
        assert precise is not None and 0.123 <= precise <= 0.3, precise
        assert abs(precise - ticked) <= 4 / TICK, (precise, ticked)
        assert own_seconds(child.pid) == pytest.approx(precise, abs=0.005)
    finally:
        child.kill()
        child.wait()
    assert clock_seconds(child.pid) is None  # reaped: no clock left to read


def test_per_thousand_totals_the_roles_measured() -> None:
    got = per_thousand({"master": 0.2, "workers": 0.4, "broker": None}, 20_000)
    assert got["master"] == pytest.approx(0.01) and got["workers"] == pytest.approx(0.02)
    assert got["broker"] is None
    assert got["total"] == pytest.approx(0.03)
    assert per_thousand({"broker": None}, 10)["total"] is None


def _ok(cpu: dict[str, float | None], throughput: float = 1000.0) -> dict[str, Any]:
    return {"status": "ok", "tasks": 1000, "throughput": throughput, "cpu_seconds": cpu}


def test_the_report_shows_cpu_by_role_feature_costs_and_scaling() -> None:
    distq = run.summarize(
        [
            _ok({"master": 0.010, "workers": 0.020, "broker": 0.005}),
            _ok({"master": 0.012, "workers": 0.024, "broker": 0.007}),
        ]
    )
    assert distq["cpu_per_1000"]["total"] == pytest.approx(
        {"median": 0.039, "min": 0.035, "max": 0.043}
    )
    signed = run.summarize([_ok({"master": 0.02, "workers": 0.03, "broker": 0.006}, 900.0)])
    manager = run.summarize([_ok({"master": 0.015, "workers": 0.015, "broker": None})])
    json_logs = run.summarize([_ok({"master": 0.02, "workers": 0.03, "broker": 0.01}, 800.0)])
    text_logs = run.summarize([_ok({"master": 0.02, "workers": 0.02, "broker": 0.008}, 900.0)])
    one = run.summarize([_ok({"master": 0.01, "workers": 0.02, "broker": 0.005}, 500.0)])
    text = write_markdown(
        made_up_report(
            [
                {"broker": "redis", "contestant": "distq", **distq},
                {"broker": "redis", "contestant": "distq-signed", **signed},
                {"broker": "redis", "contestant": "distq-jsonlogs", **json_logs},
                {"broker": "redis", "contestant": "distq-textlogs", **text_logs},
                {"broker": "manager", "contestant": "distq", **manager},
            ],
            [{"broker": "redis", "workers": 1, **one}],
        )
    )
    # master, workers, broker, total per 1,000 tasks, and the total per task
    assert (
        "| redis | distq | 0.011 (0.010-0.012) | 0.022 (0.020-0.024) | 0.006 (0.005-0.007) "
        "| 0.039 (0.035-0.043) | 39.0 (35.0-43.0) |" in text
    )
    assert "| manager | distq | 0.015 | 0.015 | in master | 0.030 | 30.0 |" in text
    # signing: 900 vs 1,000 tasks/s, 56 vs 39 µs per task
    assert (
        "| redis | signing on (a MAC on every task and result pack) | -10.0 % | +43.6 % | — |"
        in text
    )
    # JSON logs against plain distq, and against text logs with the same lines (60 vs 48 µs)
    assert "| redis | JSON logs on (per-task events, no --quiet) | -20.0 % | +53.8 % | — |" in text
    assert (
        "| redis | JSON logs against text logs, both with a line per task event: the format's "
        "own cost | -11.1 % | +25.0 % | — |" in text
    )
    assert "| redis | 1 | 500 | 0.010 | 0.020 | 0.005 | 0.035 | 35.0 | ok |" in text
    # the counts --scaling named, not a fixed "1, 2, 4 ..."
    assert "-task round with 1, 2 `distq worker` processes" in text


def _with_metrics(plain: list[dict[str, Any]], metrics: list[dict[str, Any]]) -> list[Any]:
    """Rows of plain distq and of its metrics variant on Redis, with their trials."""
    return [
        {"broker": "redis", "contestant": "distq", **run.summarize(plain),
         "trials_detail": plain},
        {"broker": "redis", "contestant": "distq-metrics", **run.summarize(metrics),
         "trials_detail": metrics},
    ]  # fmt: skip


def test_a_pair_by_pair_range_never_reads_minus_zero() -> None:
    plain = [_ok({"master": 0.010, "workers": 0.010}) for _ in range(2)]
    metrics = [_ok({"master": 0.00999, "workers": 0.010}), _ok({"master": 0.011, "workers": 0.01})]
    text = write_markdown(made_up_report(_with_metrics(plain, metrics), []))
    assert "(+0 to +5) |" in text and "-0 " not in text, text


def test_the_feature_table_pairs_each_trial_with_its_bases_trial_of_the_same_round() -> None:
    """Trial i of a feature against trial i of plain distq: a machine that slows down for
    one round moves both, and the pairs show how far a single comparison wanders."""
    plain = [_ok({"master": 0.010, "workers": 0.010}) for _ in range(3)]
    plain[1] = _ok({"master": 0.020, "workers": 0.020})  # a slow round, for both
    metrics = [
        _ok({"master": 0.011, "workers": 0.010}),  # +5 %
        _ok({"master": 0.022, "workers": 0.022}),  # +10 %, in the slow round
        {"status": "failed", "error": "x"},  # no pair
    ]
    rows = _with_metrics(plain, metrics)
    text = write_markdown(made_up_report(rows, []))
    # by medians, the slow round makes metrics look +62.5 %; pair by pair it is +5 and +10
    assert (
        "| redis | metrics on (every task recorded; endpoints read once a second) | +0.0 % "
        "| +62.5 % | +7.5 % (+5 to +10) |" in text
    ), text
    one = [{**rows[1], "trials_detail": metrics[:1]}, rows[0]]
    assert "| +62.5 % | — |" in write_markdown(
        made_up_report(one, [])
    )  # one pair: no spread to show


def test_scaling_options_are_checked() -> None:
    args = run.parse_args(["--scaling", "1,4", "--repeat", "2"])
    assert args.scaling == [1, 4] and args.scaling_repeat == 2
    assert run.parse_args(["--scaling", ""]).scaling == []
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            run.parse_args(["--scaling", bad])


def test_a_trial_measures_the_broker_process_it_is_given() -> None:
    import trial

    class Fake:
        master_cpu_seconds = None

        def worker_pids(self) -> list[int]:
            return []

        def broker_pids(self) -> list[int]:
            return []

    # once told to, burns 0.3 s of CPU, however long a busy host makes that take, then
    # says so and idles
    script = (
        "import sys\nsys.stdin.readline()\n"
        + BURN.format(seconds=0.3)
        + "print('done', flush=True)\ntime.sleep(30)\n"
    )
    broker = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        meter = trial.cpu_meter(Fake(), broker.pid)  # type: ignore[arg-type]
        meter.start()
        assert broker.stdin is not None and broker.stdout is not None
        broker.stdin.write("go\n")
        broker.stdin.flush()
        assert broker.stdout.readline().strip() == "done"
        used = meter.stop()
    finally:
        broker.kill()
        broker.wait()
    assert set(used) == {"master", "workers", "broker"}
    assert used["workers"] == 0.0
    assert 0.25 <= used["broker"] <= 0.6, used  # the 0.3 s it burned while we watched


def test_the_report_shows_cpu_per_task_one_at_a_time() -> None:
    """The latency round's CPU (``latency_cpu_seconds`` over ``latency_tasks``) gets a table
    of its own; a row without it (an older trial) is left out of that table only."""
    trials = [
        {**_ok({"master": 0.010, "workers": 0.020, "broker": 0.005}), "latency_tasks": 500,
         "latency_cpu_seconds": {"master": 0.10, "workers": 0.15, "broker": 0.05}},
        {**_ok({"master": 0.010, "workers": 0.020, "broker": 0.005}), "latency_tasks": 500,
         "latency_cpu_seconds": {"master": 0.20, "workers": 0.25, "broker": 0.05}},
    ]  # fmt: skip
    distq = run.summarize(trials)
    assert distq["latency_cpu_per_1000"]["total"] == pytest.approx(
        {"median": 0.8, "min": 0.6, "max": 1.0}
    )
    older = run.summarize([_ok({"master": 0.01, "workers": 0.02, "broker": None})])
    assert "latency_cpu_per_1000" not in older
    text = write_markdown(
        made_up_report(
            [
                {"broker": "redis", "contestant": "distq", **distq},
                {"broker": "manager", "contestant": "distq", **older},
            ],
            [],
        )
    )
    table = text.split("### One task at a time", 1)[1].split("\n## ", 1)[0]
    assert "| redis | distq | 0.300 (0.200-0.400) | 0.400 (0.300-0.500) | 0.100 " in table
    assert "| 0.800 (0.600-1.000) | 800.0 (600.0-1000.0) |" in table
    assert "| manager |" not in table


def test_a_round_counts_the_master_of_a_contestant_that_reports_its_own() -> None:
    import trial

    class Fake:
        master_cpu_seconds: float | None = None

        def worker_pids(self) -> list[int]:
            return []

        def broker_pids(self) -> list[int]:
            return []

    fake = Fake()
    meter = trial.cpu_meter(fake, None)  # type: ignore[arg-type]
    meter.start()
    assert trial._cpu_used(fake, meter)["broker"] is None  # type: ignore[arg-type]
    fake.master_cpu_seconds = 1.25  # a distq master's report of its own round
    meter.start()
    assert trial._cpu_used(fake, meter)["master"] == 1.25  # type: ignore[arg-type]


def test_the_meter_s_own_proc_scans_fall_outside_the_own_roles_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tree reading scans all of /proc in this process: that CPU must land before an own
    role's first reading or after its last, never between them (else the master pays it)."""
    import cpu

    spent = [0.0]  # this process's CPU clock, as the fakes advance it

    def scan(roots: Any, proc: Any = None) -> float:
        spent[0] += 1.0  # one /proc scan's cost, in the reading process
        return 0.0

    monkeypatch.setattr(cpu, "tree_seconds", scan)
    monkeypatch.setattr(cpu, "own_seconds", lambda pid, proc=None: spent[0])
    meter = CpuMeter({"master": [1], "workers": [2], "broker": [3]}, own=["master"])
    meter.start()
    used = meter.stop()
    assert used == {"master": 0.0, "workers": 0.0, "broker": 0.0}, used
    assert list(used) == ["master", "workers", "broker"]  # the roles' order, as given


def test_raw_manager_counts_its_queue_server_process_as_the_broker(tmp_path: Path) -> None:
    """The tutorial's ``BaseManager.start()`` forks a server that holds both queues and
    serves every proxy call: it is the raw manager row's broker, not nobody's CPU."""
    import multiprocessing

    import trial
    from contestants.base import Context
    from contestants.raw_manager import RawManager

    ctx = Context(
        broker="manager",
        url="",
        queue="q",
        workers=0,  # the server alone; the proxies below do what the workers would
        workdir=tmp_path,
        deadline=time.monotonic() + 60,
    )
    raw = RawManager(ctx)
    raw.start_workers()
    try:
        server = [p.pid for p in multiprocessing.active_children()]
        assert len(server) == 1 and server[0] != os.getpid()
        meter = trial.cpu_meter(raw, None)
        assert meter.roles.get("broker") == server
        meter.start()
        for i in range(1000):
            raw.task_queue.put((i, i))
            raw.task_queue.get()
        used = meter.stop()
    finally:
        raw.stop_workers()
    assert used["broker"] >= 0.01, used  # 2,000 proxy calls served, each a few µs or more


def test_the_report_names_where_manager_queues_are_counted() -> None:
    distq = run.summarize([_ok({"master": 0.015, "workers": 0.015, "broker": None})])
    raw = run.summarize([_ok({"master": 0.01, "workers": 0.01, "broker": 0.02})])
    text = write_markdown(
        made_up_report(
            [
                {"broker": "manager", "contestant": "distq", **distq},
                {"broker": "manager", "contestant": "raw", **raw},
            ],
            [],
        )
    )
    assert "| manager | distq | 0.015 | 0.015 | in master | 0.030 | 30.0 |" in text
    assert "| manager | raw | 0.010 | 0.010 | 0.020 | 0.040 | 40.0 |" in text
    assert "On manager the queues live in the master" not in text
    assert "the server process `BaseManager.start()` forks, counted as its broker" in text
    older = run.summarize([_ok({"master": 0.01, "workers": 0.01, "broker": None})])
    text = write_markdown(made_up_report([{"broker": "manager", "contestant": "raw", **older}], []))
    assert "| manager | raw | 0.010 | 0.010 | not counted | 0.020 | 20.0 |" in text
