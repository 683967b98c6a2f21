"""The harness's own checks: result verification, summaries, the report, brokers.

Part of ``make test`` (``.venv/bin/pytest bench/tests`` alone; no peers needed, the
broker test needs ``redis-server`` and is skipped without it).
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from reports import made_up_report

import run
from contestants import REGISTRY, load
from contestants.base import Collector, Latency, VerifyError, expect_squares
from report import write_markdown


def test_collector_rejects_wrong_duplicate_and_unknown_results() -> None:
    collector = Collector([2, 3])
    collector.add(0, 4)
    with pytest.raises(VerifyError, match="duplicate"):
        collector.add(0, 4)
    with pytest.raises(VerifyError, match="expected 9"):
        collector.add(1, 10)
    with pytest.raises(VerifyError, match="unknown"):
        collector.add(5, 1)
    assert not collector.done
    collector.add(1, 9)
    assert collector.done


def test_expect_squares_names_the_first_wrong_result() -> None:
    expect_squares([1, 2], [1, 4])
    with pytest.raises(VerifyError, match="task 1"):
        expect_squares([1, 2], [1, 5])
    with pytest.raises(VerifyError, match="expected 2 results"):
        expect_squares([1, 2], [1])


def test_latency_percentiles() -> None:
    lat = Latency.from_samples([i / 1000 for i in range(1, 101)])
    assert lat.count == 100
    assert lat.p50 == pytest.approx(0.050)  # nearest rank: the 50th of 100
    assert lat.p99 == pytest.approx(0.099)


def test_every_row_s_percentiles_are_distq_masters_nearest_rank() -> None:
    """distq's rows take p50/p99 from ``distq master``'s report; every other row's must
    come from the same definition, or the two sit in one column meaning different things."""
    from distq.master import percentile

    samples = [0.30, 0.10, 0.20, 0.11]
    lat = Latency.from_samples(samples)
    ordered = sorted(samples)
    assert (lat.p50, lat.p99) == (percentile(ordered, 0.5), percentile(ordered, 0.99))
    assert lat.p50 == 0.11  # the lower middle value, not the mean of the two (0.155)


def _trial(status: str, throughput: float = 0.0, **extra: Any) -> dict[str, Any]:
    if status != "ok":
        return {"status": status, "error": "phase: Boom: it broke", **extra}
    return {
        "status": "ok",
        "tasks": 100,
        "throughput": throughput,
        "latency_p50_seconds": 0.001,
        "latency_p99_seconds": 0.002,
        **extra,
    }


def test_summary_and_markdown_show_ranges_ratios_and_failures() -> None:
    distq = run.summarize([_trial("ok", 200.0), _trial("ok", 100.0), _trial("ok", 300.0)])
    assert distq["throughput"] == {"median": 200.0, "min": 100.0, "max": 300.0}
    peer = run.summarize([_trial("ok", 50.0), _trial("timeout")])
    assert peer["ok"] == 1 and peer["statuses"] == ["ok", "timeout"]
    broken = run.summarize([_trial("failed")])
    rows = [
        {"broker": "redis", "contestant": "celery", **peer},
        {"broker": "redis", "contestant": "rq", **broken},
        {"broker": "redis", "contestant": "distq", **distq},
    ]
    brokers = {"redis": {"version": "7"}}
    report = made_up_report(rows, [], tasks=100, repeat=3, packages={"distq": "0"}, brokers=brokers)
    text = write_markdown(report)
    assert "| redis | distq | 100 | 200 (100-300) |" in text
    assert "| 4.00x |" in text  # distq 200 / celery 50
    assert "1/2 ok (timeout)" in text
    assert "| FAILED |" in text
    assert "- redis / rq: phase: Boom: it broke" in text


def test_every_registered_contestant_is_a_class_of_its_name_in_its_module() -> None:
    """What the import below checks, without the peers' packages: ``make test``'s venv has
    no celery, dramatiq or rq, so that test always skipped there and a renamed class or a
    broken peer module showed only as FAILED cells in a full ``make bench``."""
    for (_broker, name), where in REGISTRY.items():
        module, _, cls = where.partition(":")
        path = Path(run.__file__).parent / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text(), str(path))  # a syntax error fails here
        classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
        assert cls in classes, f"{where}: no class {cls} in {path}"
        named = [
            node.value.value
            for node in classes[cls].body
            if isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["name"]
            and isinstance(node.value, ast.Constant)
        ]
        assert named in ([], [name]), f"{where} is named {named}, registered as {name!r}"


def test_every_registered_contestant_loads() -> None:
    pytest.importorskip("celery")
    pytest.importorskip("dramatiq")
    pytest.importorskip("rq")
    for broker, name in REGISTRY:
        assert load(broker, name).name == name


def test_options_are_checked() -> None:
    args = run.parse_args(["--only", "redis,manager", "--contestants", "raw,distq"])
    assert args.only == ["redis", "manager"]
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "kafka"])
    with pytest.raises(SystemExit):
        run.parse_args(["--repeat", "0"])


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_broker_starts_on_loopback_and_stops_by_pid() -> None:
    import servers

    broker = servers.start_redis()
    try:
        port = int(broker.url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(16) == b"+PONG\r\n"
        pid = broker.server.pid
        assert pid is not None
    finally:
        broker.stop()
    assert broker.server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not broker.workdir.exists()


STUB_TRIAL = """\
import json, os, sys, time
argv = sys.argv
if os.path.exists(os.environ["STUB_FAIL"]):
    sys.exit("simulated crash: trial died before writing its result")
kill = os.environ.get("STUB_KILL_BROKER")
if kill and not os.path.exists(kill):  # the broker dies in this trial, which fails
    open(kill, "w").close()
    pid = int(argv[argv.index("--broker-pid") + 1])
    os.kill(pid, 9)
    for _ in range(500):  # dead by the trial's end, as a broker killed mid-trial is (a zombie
        try:  # until run.py reaps it): else run.py's next check met it dying, "does not answer"
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] in "ZX":
                break
        except OSError:
            break
        time.sleep(0.01)
    result = {"status": "failed", "error": "latency: ConnectionError: reset by peer"}
    open(argv[argv.index("--out") + 1], "w").write(json.dumps(result))
    sys.exit(0)
workers = int(argv[argv.index("--workers") + 1])
profile = argv[argv.index("--profile") + 1] if "--profile" in argv else None
result = {"status": "ok", "tasks": 100, "throughput": 1000.0 * workers, "elapsed_seconds": 0.1,
          "cpu_seconds": {"master": 0.01, "workers": 0.01, "broker": None}, "profile": profile}
open(argv[argv.index("--out") + 1], "w").write(json.dumps(result))
"""


@pytest.fixture
def stub_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """run.py runs ``[sys.executable, trial.py, ...]``: make that a stub which writes an ok
    result, or dies without one while the returned file exists."""
    stub = tmp_path / "stub_trial"
    stub.write_text(f"#!{sys.executable}\n{STUB_TRIAL}")
    stub.chmod(0o755)
    fail = tmp_path / "FAIL"
    monkeypatch.setenv("STUB_FAIL", str(fail))
    monkeypatch.setattr(sys, "executable", str(stub))
    return fail


def test_a_trial_that_writes_no_result_fails_and_scaling_trials_keep_their_own_logs(
    stub_trial: Path, tmp_path: Path
) -> None:
    args = run.parse_args(["--contestants", "distq", "--repeat", "1", "--scaling", "1,2"])
    logdir = tmp_path / "logs"
    main = run.run_trial(
        args, "manager", "", "distq", 1, logdir, tasks=100, latency_tasks=10, timeout=30
    )
    assert main["status"] == "ok"
    stub_trial.touch()  # every trial from now on dies before writing result.json
    again = run.run_trial(
        args, "manager", "", "distq", 1, logdir, tasks=100, latency_tasks=10, timeout=30
    )
    assert again["status"] == "failed", again  # not the earlier trial's result.json
    assert "simulated crash" in again["error"]
    stub_trial.unlink()
    main = run.run_trial(
        args, "manager", "", "distq", 1, logdir, tasks=100, latency_tasks=10, timeout=30
    )
    stub_trial.touch()
    rows = run.scaling_rows(args, "manager", "", None, None, logdir)
    assert [row["statuses"] for row in rows] == [["failed"], ["failed"]]
    logs = {row["trials_detail"][0]["logs"] for row in rows}
    assert main["logs"] not in logs and len(logs) == 2
    assert json.loads((Path(main["logs"]) / "result.json").read_text())["status"] == "ok"
    # a trial killed while writing its result leaves half of one: failed, not a crash
    torn = tmp_path / "torn.json"
    torn.write_text('{"status": "ok", "throughput": 12')
    (tmp_path / "trial.log").write_text("killed")
    assert run._read_result(torn, tmp_path, -9)["status"] == "failed"


def test_profile_runs_only_the_main_trials_each_into_files_of_its_own(
    stub_trial: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # keep pytest's handlers
    results = tmp_path / "results"
    argv = ["--only", "manager", "--contestants", "distq", "--repeat", "2", "--scaling", "1,2"]
    argv += ["--profile", str(tmp_path / "profiles"), "--results-dir", str(results)]
    assert run.main(argv) == 0
    report = json.loads((results / "latest.json").read_text())
    main = report["rows"][0]["trials_detail"]
    scaling = [t for row in report["scaling"] for t in row["trials_detail"]]
    assert [t["status"] for t in main + scaling] == ["ok"] * 6
    assert [(t["workers"], t["profile"]) for t in scaling] == [(w, None) for w in (1, 1, 2, 2)]
    profiles = [t["profile"] for t in main]
    assert None not in profiles and len(set(profiles)) == 2  # repeat 2 keeps repeat 1's graphs
    logs = [t["logs"] for t in main + scaling]
    assert len(set(logs)) == len(logs)


def test_the_recorded_command_runs_again_with_an_empty_argument(
    stub_trial: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RESULTS.md's command is pasted back into a shell: ``--scaling ''`` must stay one
    (empty) argument, not vanish and make ``--results-dir`` the value of ``--scaling``."""
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # keep pytest's handlers
    results = tmp_path / "results dir"  # a space needs quoting too
    argv = ["--only", "manager", "--contestants", "distq", "--repeat", "1", "--scaling", ""]
    argv += ["--results-dir", str(results)]
    assert run.main(argv) == 0
    command = json.loads((results / "latest.json").read_text())["command"]
    assert f"`{command}`" in (results / "RESULTS.md").read_text()
    words = shlex.split(command)
    assert words[0] == "bench/run.sh" and words[1:] == argv
    again = run.parse_args(words[1:])
    assert again.scaling == [] and again.results_dir == results


def test_a_stop_while_a_broker_starts_ends_the_run_marked_interrupted(
    stub_trial: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT arrives (as run.Stopped, from the handler) while RabbitMQ starts: no
    "did not start" cell, no next broker's trials, and the report says interrupted."""
    import servers

    monkeypatch.setattr(signal, "signal", lambda *_: None)  # keep pytest's handlers

    def interrupted_start() -> servers.Broker:
        raise run.Stopped("SIGINT")

    monkeypatch.setitem(servers.STARTERS, "rabbitmq", interrupted_start)
    results = tmp_path / "results"
    argv = ["--only", "rabbitmq,manager", "--contestants", "raw", "--repeat", "1"]
    argv += ["--scaling", "", "--results-dir", str(results)]
    assert run.main(argv) == 130
    report = json.loads((results / "latest.json").read_text())
    assert report["interrupted"] == "SIGINT"
    assert report["rows"] == []  # neither a failed rabbitmq row nor a manager trial
    assert "interrupted by SIGINT" in (results / "RESULTS.md").read_text()


@pytest.mark.parametrize("stop_at", [3, 6])
def test_a_stop_keeps_the_finished_trials_of_the_broker_it_was_on(
    stop_at: int, stub_trial: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT in the ``stop_at``-th trial: 3 is manager-raw-2 of the main table, 6 the
    scaling stage's second (2 workers, repeat 1). Every trial that finished stays in
    latest.json and RESULTS.md, its row marked with how many trials were planned."""
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # keep pytest's handlers
    real_run_trial = run.run_trial
    calls = []

    def run_trial(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(args[3])
        if len(calls) == stop_at:
            raise run.Stopped("SIGINT")
        return real_run_trial(*args, **kwargs)

    monkeypatch.setattr(run, "run_trial", run_trial)
    results = tmp_path / "results"
    argv = ["--only", "manager", "--contestants", "raw,distq", "--repeat", "2"]
    argv += ["--scaling", "1,2", "--scaling-repeat", "1", "--results-dir", str(results)]
    assert run.main(argv) == 130
    report = json.loads((results / "latest.json").read_text())
    assert report["interrupted"] == "SIGINT"
    text = (results / "RESULTS.md").read_text()
    rows = {row["contestant"]: row for row in report["rows"]}
    if stop_at == 3:
        assert set(rows) == {"raw", "distq"}
        assert [(r["trials"], r["ok"], r["planned_trials"]) for r in rows.values()] == [
            (1, 1, 2),
            (1, 1, 2),
        ]
        assert [t["repeat"] for t in rows["raw"]["trials_detail"]] == [1]
        assert "| manager | raw | 100 | 2,000 |" in text
        assert "ok, 1 of 2 trials (run stopped) |" in text
        assert report["scaling"] == []
    else:
        assert [r["trials"] for r in rows.values()] == [2, 2]
        assert all("planned_trials" not in r for r in rows.values())
        assert [(r["workers"], r["trials"]) for r in report["scaling"]] == [(1, 1)]
        assert "| manager | 1 | 1,000 |" in text


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_broker_that_dies_fails_the_trials_after_it_and_the_report_is_written(
    stub_trial: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's own Redis is SIGKILLed during its first trial (by the stub, with the PID
    run.py passes as --broker-pid): that trial fails, the ones after it are failed cells
    "not run", the manager stage still runs, and both files are written."""
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # keep pytest's handlers
    monkeypatch.setenv("STUB_KILL_BROKER", str(tmp_path / "killed"))
    results = tmp_path / "results"
    argv = ["--only", "redis,manager", "--contestants", "raw,distq", "--repeat", "2"]
    argv += ["--scaling", "1", "--results-dir", str(results)]
    assert run.main(argv) == 0
    report = json.loads((results / "latest.json").read_text())
    assert report["interrupted"] is None and report["aborted"] is None
    redis_rows = [r for r in report["rows"] if r["broker"] == "redis"]
    assert [(r["contestant"], r["statuses"]) for r in redis_rows] == [
        ("raw", ["failed", "failed"]),
        ("distq", ["failed", "failed"]),
    ]
    errors = [t["error"] for r in redis_rows for t in r["trials_detail"]]
    assert errors[0].startswith("latency: ConnectionError")
    assert all(e.startswith("not run: redis is not running") for e in errors[1:])
    assert [(r["broker"], r["statuses"]) for r in report["scaling"]] == [
        ("redis", ["failed", "failed"]),
        ("manager", ["ok", "ok"]),
    ]
    manager = [r["statuses"] for r in report["rows"] if r["broker"] == "manager"]
    assert manager == [["ok", "ok"], ["ok", "ok"]]
    assert "- redis / distq: not run: redis is not running" in (results / "RESULTS.md").read_text()


def test_a_broker_that_does_not_answer_is_trouble_and_a_harness_error_still_writes(
    stub_trial: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import servers

    class Gone:  # a redis-server that runs but does not answer: nothing on its port
        pid = os.getpid()
        url = f"redis://127.0.0.1:{_closed_port()}/0"

    dead = servers.Broker("redis", cast(Any, Gone()), tmp_path)
    assert (run._trouble(dead) or "").startswith("redis does not answer: ConnectionError")
    # an unexpected error in the harness: the trials so far are still written
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # keep pytest's handlers
    real_run_trial = run.run_trial
    calls = []

    def run_trial(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(args[3])
        if len(calls) == 2:
            raise KeyError("oops")
        return real_run_trial(*args, **kwargs)

    monkeypatch.setattr(run, "run_trial", run_trial)
    results = tmp_path / "results"
    argv = ["--only", "manager", "--contestants", "raw,distq", "--repeat", "1"]
    assert run.main([*argv, "--scaling", "", "--results-dir", str(results)]) == 1
    report = json.loads((results / "latest.json").read_text())
    assert report["aborted"] == "KeyError: 'oops'"
    assert [(r["contestant"], r["statuses"]) for r in report["rows"]] == [("raw", ["ok"])]
    assert "aborted by KeyError: 'oops'" in (results / "RESULTS.md").read_text()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
