"""The command line: exit codes and one actionable line for every bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers import Broker
from conftest import REPO
from distq.ranges import shown_number
from launch import free_port
from procs import checkout_env, run_distq, run_python


def distq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_distq(args, checkout_env(**env), timeout=60)


def sigterm_after(proc: subprocess.Popen[str], seconds: float, within: float) -> str:
    """SIGTERM ``proc`` once it has run ``seconds`` (still running, asserted); its output,
    which must end within ``within`` s. It is killed after, whatever happened."""
    try:
        time.sleep(seconds)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=within)[0]
    finally:
        proc.kill()


@contextlib.contextmanager
def connected(silent: socket.socket) -> Iterator[None]:
    """Once the process under test has connected to ``silent`` (a server that answers
    nothing): it is past its imports, in the wait a signal test is about. A fixed sleep
    before the signal lost to a loaded host's imports (1.9 s for distq.cli at load 7):
    SIGINT there was Python's traceback, exit -2."""
    silent.settimeout(60)
    connection, _ = silent.accept()
    with connection:
        yield


def said(proc: subprocess.Popen[str], text: str, within: float = 60) -> str:
    """``proc``'s output up to its first line with ``text``: the event a signal test waits
    for, where a fixed sleep lost to a loaded host's imports. Nothing like it within
    ``within`` s, or ``proc`` ended first: failed, with the output."""
    assert proc.stdout is not None
    lines: list[str] = []
    timer = threading.Timer(within, proc.kill)  # bounded: the read ends at the kill
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                return "".join(lines)
    finally:
        timer.cancel()
    output = "".join(lines)
    raise AssertionError(f"no line with {text!r} within {within} s (exit {proc.poll()}): {output}")


def started(*args: str, **env: str) -> subprocess.Popen[str]:
    """``distq ARGS`` running, its stderr on its stdout (``proc.stdout``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "distq", *args],
        env=checkout_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["worker"], {}, "DISTQ_AUTHKEY is not set"),
        (["worker"], {"DISTQ_TRANSPORT": "kafka"}, "DISTQ_TRANSPORT is 'kafka'"),
        (
            ["master", "--lease-seconds", "x"],
            {"DISTQ_AUTHKEY": "k"},
            "DISTQ_LEASE_SECONDS --lease-seconds",
        ),
        (["worker", "--task", "nomodule_xyz:f"], {"DISTQ_AUTHKEY": "k"}, "cannot import"),
        (
            ["master", "--tasks", "0"],
            {"DISTQ_AUTHKEY": "k"},
            "--tasks: is 0; use a whole number, 1 or more",
        ),
        (
            ["worker"],  # a setting only the transport can judge, before anything connects
            {
                "DISTQ_TRANSPORT": "redis",
                "DISTQ_REDIS_URL": "redis://h:6379/0?health_check_interval=x",
            },
            "DISTQ_REDIS_URL is not a valid Redis URL",
        ),
    ],
)
def test_bad_configuration_exits_2_with_one_line(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    done = distq(*args, **env)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["master", "--rate", "nan"], "--rate"),
        (["master", "--rate", "inf"], "--rate"),
        (["master", "--timeout", "nan"], "--timeout"),
        (["master", "--status-every", "inf"], "--status-every"),
        (["master", "--task-delay", "-1"], "--task-delay"),
        (["master", "--task-delay", "nan"], "--task-delay"),
        (["master", "--task-delay", "inf"], "--task-delay"),
        (["worker", "--exit-when-idle", "nan"], "--exit-when-idle"),
        (["worker", "--connect-timeout", "nan"], "--connect-timeout"),
        (["worker", "--connect-timeout", "-1"], "--connect-timeout"),
        (["worker", "--connect-timeout", "1e300"], "--connect-timeout"),
        (["submit", "jobs:add", "--wait", "--timeout", "inf"], "--timeout"),
        (["submit", "jobs:add", "--wait", "--timeout", "nan"], "--timeout"),
        (["probe", "healthz", "--port", "1", "--timeout", "-1"], "--timeout"),
        (["probe", "healthz", "--port", "1", "--timeout", "nan"], "--timeout"),
        (["probe", "healthz", "--port", "1", "--timeout", "1e12"], "--timeout"),
    ],
)
def test_a_number_flag_out_of_range_exits_2_naming_it(args: list[str], flag: str) -> None:
    """NaN and infinity pass a ``value <= 0`` check: each must be refused, not crash the
    master, never time out, or put NaN on the wire; in a variable's words, "is nan; use
    a number ... seconds" (it said "'nan' is out of range; use a number ...")."""
    done = distq(*args, DISTQ_AUTHKEY="k")
    assert done.returncode == 2, done.stderr
    said = f"argument {flag}: is {shown_number(float(args[-1]))}; use a number "
    assert said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["probe", "healthz", "--port", "9_100"],
            "argument --port: is '9_100', not a whole number",
        ),
        (["master", "--tasks", "\uff15"], "argument --tasks: is '\uff15', not a whole number"),
        (
            ["master", "--seed", "9" * 5000],
            "argument --seed: is about 10**4999; use a whole number of at most "
            f"{sys.get_int_max_str_digits()} digits",
        ),
    ],
    ids=["port", "tasks", "seed"],
)
def test_a_whole_number_flag_refuses_what_its_variable_does_exiting_2(
    args: list[str], said: str
) -> None:
    """``distq probe --port 9_100`` and ``distq master --tasks \uff15`` (fullwidth 5) were
    taken, int() reading them, where DISTQ_METRICS_PORT=9_100 is refused; ``--seed`` of
    5,000 digits printed argparse's "invalid int value: '999...'" with every digit."""
    from distq.cli import _parser

    usage = io.StringIO()
    with pytest.raises(SystemExit) as stopped, contextlib.redirect_stderr(usage):
        _parser().parse_args(args)
    assert stopped.value.code == 2
    error = usage.getvalue().splitlines()[-1]
    assert said in error, error[:300]
    assert len(error) < 200, error[:300]


@pytest.mark.parametrize(
    ("worker_id", "expected"),
    [
        ("w\udcf6rker", "holds bytes that are not UTF-8 (at 1)"),  # a Latin-1 byte in argv
        ("two\nlines", "is not a name: use text on one line"),
        ("w" * (65 << 10), "is 66,560 bytes, over the 4,096 a worker name may be"),
    ],
)
def test_a_worker_id_no_broker_can_carry_exits_2(worker_id: str, expected: str) -> None:
    """A byte that is not UTF-8 (`--worker-id wörker` under a Latin-1 locale) became a
    lone surrogate: the worker connected, failed to send its name, and went on
    reconnecting, its job never run (env11). A name of 65 KiB rides in every result: a
    master finds a too-large result's worker in its first 64 KiB only, and dropped it."""
    done = distq("worker", "--worker-id", worker_id, DISTQ_AUTHKEY="k")
    assert done.returncode == 2, done.stderr
    assert "argument --worker-id: " in done.stderr and expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--host", "bad host"], {}, "argument --host: 'bad host' is not a host"),
        (
            ["--port", "70000"],
            {},
            "argument --port: is 70000; use a whole number from 1 to 65535",  # as its variable
        ),
        (["--port", "0"], {}, "argument --port: is 0; use a whole number from 1 to 65535"),
        (
            [],
            {"DISTQ_METRICS_PORT": "70000"},
            "DISTQ_METRICS_PORT is 70000; use a whole number from 1 to 65535; pass --port",
        ),
        (
            [],
            {"DISTQ_METRICS_PORT": "\u00b2"},
            "DISTQ_METRICS_PORT is '\u00b2', not a whole number; use a whole number from 1 to "
            "65535; pass --port",
        ),
        (  # a ValueError traceback (int() of 5,000 digits), exit 1
            [],
            {"DISTQ_METRICS_PORT": "9" * 5000},
            "DISTQ_METRICS_PORT is about 10**4999; use a whole number from 1 to 65535; pass --port",
        ),
        (
            ["--port", "1"],
            {"DISTQ_METRICS_HOST": "bad host"},
            "DISTQ_METRICS_HOST 'bad host' is not a host",
        ),
        (["--host", "a..b"], {}, "argument --host: 'a..b' is not a host name"),  # a traceback
    ],
)
def test_a_probe_of_a_bad_address_exits_2(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    done = distq("probe", "healthz", *args, **env)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("where", ["missing/dir/report.json", ".", "readonly/report.json"])
def test_a_report_file_that_cannot_be_written_is_refused_before_the_job(
    tmp_path: Path, where: str
) -> None:
    """Found only after the job, it lost the report with a traceback."""
    if where.startswith("readonly"):
        if os.geteuid() == 0:
            pytest.skip("root may write into a read-only directory")
        (tmp_path / "readonly").mkdir(mode=0o500)
    report = tmp_path / where
    started = time.monotonic()
    # a job of 30 s, refused within 15: with 3 s for both, a master held up 3 s as it
    # started (a loaded machine) failed the test, though refused before the job
    done = distq(
        "master",
        "--timeout",
        "30",
        "--report",
        str(report),
        DISTQ_AUTHKEY="k",
        DISTQ_MANAGER_ADDRESS=f"127.0.0.1:{free_port()}",
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"distq: --report {str(report)!r}: ")  # then why
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert time.monotonic() - started < 15  # not after the job


def test_a_report_that_fails_to_be_written_at_the_end_is_one_line(tmp_path: Path) -> None:
    """The directory goes away during the job: exit 1, one line naming --report."""
    folder = tmp_path / "out"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    env.update(
        PYTHONPATH=str(REPO / "src"),
        DISTQ_AUTHKEY="k",
        DISTQ_MANAGER_ADDRESS=f"127.0.0.1:{free_port()}",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "distq", "master", "--timeout", "2", "--report", str(folder / "r")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("master ")  # connected: --report checked
    folder.rmdir()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert f"--report {folder / 'r'}: could not write the job report" in err
    assert "Traceback" not in err


def test_master_cannot_listen_on_a_busy_port() -> None:
    """A port in use is a setting to change, exit 2 as the README's codes say, for the
    manager address as for the metrics port (the manager address's exited 3, "the broker
    cannot be reached", though the master is the broker and nothing was unreachable)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = distq("master", DISTQ_AUTHKEY="k", DISTQ_MANAGER_ADDRESS=f"127.0.0.1:{port}")
        metrics = distq(
            "master",
            DISTQ_AUTHKEY="k",
            DISTQ_MANAGER_ADDRESS=f"127.0.0.1:{free_port()}",
            DISTQ_METRICS_PORT=str(port),
            DISTQ_METRICS_HOST="127.0.0.1",
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"distq: cannot listen on 127.0.0.1:{port} (DISTQ_MANAGER_ADDRESS): Address already "
        "in use; pick a free port or stop what uses it"
    ]
    assert metrics.returncode == 2, metrics.stderr
    assert f"DISTQ_METRICS_PORT {port}: cannot listen on 127.0.0.1:{port}" in metrics.stderr


def test_a_misspelled_variable_warns_and_changes_nothing_else() -> None:
    done = distq("worker", DISTQ_TRANSPRT="redis")
    assert done.returncode == 2  # the manager transport, still without its DISTQ_AUTHKEY
    assert done.stderr.splitlines() == [
        "distq: warning: DISTQ_TRANSPRT is not a distq setting (ignored); "
        "did you mean DISTQ_TRANSPORT?",
        done.stderr.splitlines()[1],
    ]
    assert "DISTQ_AUTHKEY is not set" in done.stderr


def test_a_workers_setting_given_to_a_master_or_a_command_is_said_to_do_nothing() -> None:
    """A master with --task-time-limit 1 let a 3 s task pass, without a word (drift10);
    the variable alone says nothing: compose and Kubernetes share one environment."""
    flags = ["--task-time-limit", "1", "--prefetch", "4", "--drain-seconds", "5"]
    for role in ("master", "status"):
        done = distq(role, *flags, DISTQ_TASK_TIME_LIMIT="2")
        assert done.returncode == 2  # the manager transport, without its DISTQ_AUTHKEY
        assert done.stderr.splitlines()[:3] == [
            f"distq: warning: {flag} is a worker's setting: `distq {role}` does not read it; "
            "give it to `distq worker`"
            for flag in ("--prefetch", "--drain-seconds", "--task-time-limit")
        ]
    quiet = distq("master", DISTQ_TASK_TIME_LIMIT="2", DISTQ_PREFETCH="4")
    assert "warning" not in quiet.stderr and "DISTQ_AUTHKEY is not set" in quiet.stderr
    worker = distq("worker", *flags)
    assert "warning" not in worker.stderr and "DISTQ_AUTHKEY is not set" in worker.stderr


def test_a_variable_named_after_a_commands_flag_is_said_to_do_nothing() -> None:
    """A flag of a command has no variable: DISTQ_CONCURRENCY=8 in a compose file ran one
    slot, DISTQ_MAX_ATTEMPTS the default attempts, without a word."""
    done = distq("worker", DISTQ_CONCURRENCY="8", DISTQ_MAX_ATTEMPTS="5")
    assert done.returncode == 2  # the manager transport, without its DISTQ_AUTHKEY
    assert done.stderr.splitlines()[:2] == [
        "distq: warning: DISTQ_CONCURRENCY is not a distq setting (ignored); --concurrency "
        "is a flag of distq worker: give it on the command line",
        "distq: warning: DISTQ_MAX_ATTEMPTS is not a distq setting (ignored); --max-attempts "
        "is a flag of distq master, distq submit: give it on the command line",
    ]
    assert "DISTQ_AUTHKEY is not set" in done.stderr


def test_a_manager_masters_metrics_on_its_own_port_is_a_bad_setting() -> None:
    """The metrics endpoint took the port first, and the master then said "Address
    already in use; pick a free port or stop what uses it", exit 3: what used it was
    itself."""
    port = str(free_port())
    done = distq(
        "master", "--tasks", "1", "--manager-address", f"127.0.0.1:{port}",
        "--metrics-port", port, "--metrics-host", "127.0.0.1", DISTQ_AUTHKEY="k" * 20,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"distq: DISTQ_METRICS_PORT and DISTQ_MANAGER_ADDRESS name the same port, {port}: a "
        "manager master listens on both; give its metrics endpoint another port"
    )


def test_version_and_help() -> None:
    assert distq("--version").stdout.startswith("distq ")
    worker_help = distq("worker", "--help").stdout
    assert "--exit-when-idle" in worker_help
    assert "$DISTQ_PREFETCH, default 128" in " ".join(worker_help.split())
    assert "--status-every" in distq("master", "--help").stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["submit", "jobs:add", "1", "--kwargs", "{oops"], "--kwargs '{oops' is not JSON"),
        (["submit", "jobs:add", "--kwargs", "[1]"], "is not a JSON object"),
        (["submit", "jobs:add", "--kwargs", '{"a": NaN}'], "is not JSON (NaN is not JSON)"),
        (["submit", "jobs:add", "1", "--timeout", "5"], "without --wait, submit returns"),
        (["worker", "--tasks", "no_such_module_xyz"], "--tasks 'no_such_module_xyz': cannot"),
        (["worker", "--tasks", "seam"], "has no function marked @distq.task"),
    ],
)
def test_bad_task_input_exits_2_before_connecting(args: list[str], expected: str) -> None:
    done = distq(*args, DISTQ_AUTHKEY="k", PYTHONPATH=f"{REPO / 'src'}:{REPO / 'tests'}")
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_the_operating_commands_are_listed() -> None:
    usage = distq("--help").stdout
    for command in ("submit", "status", "dead-letters", "requeue-dead"):
        assert command in usage
    assert "--tasks MODULE" in distq("worker", "--help").stdout


def test_sigterm_while_a_worker_is_still_connecting_exits_at_once() -> None:
    """As PID 1 in a container an unhandled SIGTERM is ignored: `docker stop` would wait
    out its grace period while the worker retries an unreachable broker."""
    proc = started(
        "worker",
        "--connect-timeout",
        "60",
        DISTQ_TRANSPORT="redis",
        DISTQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
    )
    retrying = said(proc, "waiting for the broker")  # said once it has retried 2 s
    output = retrying + sigterm_after(proc, 0, within=5)
    assert proc.returncode == 0, output
    assert "SIGTERM while connecting: worker exit" in output


def test_sighup_stops_a_worker_unless_nohup_ignores_it() -> None:
    """A closed terminal's SIGHUP ended a worker at once, without a line (its tasks back
    only when their leases lapsed); under ``nohup`` it must keep running."""
    env = checkout_env(
        DISTQ_TRANSPORT="redis", DISTQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
    )
    worker = [sys.executable, "-m", "distq", "worker", "--connect-timeout", "60"]
    run = {"env": env, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    plain = subprocess.Popen(worker, **run)  # type: ignore[call-overload]
    kept = subprocess.Popen(["nohup", *worker], **run)  # type: ignore[call-overload]
    try:
        retrying = [said(proc, "waiting for the broker") for proc in (plain, kept)]
        for proc in (plain, kept):  # both started, and retrying the broker
            proc.send_signal(signal.SIGHUP)
        output = retrying[0] + plain.communicate(timeout=5)[0]
        assert plain.returncode == 0, output
        assert "SIGHUP while connecting: worker exit" in output
        time.sleep(1)
        assert kept.poll() is None, kept.communicate()[0]  # nohup: SIGHUP is ignored
        output = sigterm_after(kept, 0, within=5)
        assert kept.returncode == 0, output
        assert "SIGHUP" not in output
    finally:
        plain.kill()
        kept.kill()


def test_a_worker_ends_with_a_line_on_sigterm_from_its_first_line_on() -> None:
    """``make example`` starts its job once each worker has said its first line, and stops
    them with SIGTERM after: from that line on, SIGTERM must find the worker's handler
    (Python's default would end it without a word, or an exit status of 0)."""
    proc = started(
        *("worker", "--tasks", "wordcount_tasks", "--connect-timeout", "60"),
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "examples" / "wordcount")]),
        DISTQ_TRANSPORT="redis",
        DISTQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)  # at once: the worker has not connected yet
        output = first + proc.communicate(timeout=10)[0]
    finally:
        proc.kill()
    assert first.startswith("tasks: "), output
    assert proc.returncode == 0, output
    assert "SIGTERM while connecting: worker exit" in output


def test_sigterm_while_a_slow_task_module_imports_is_the_workers_stop(tmp_path: Path) -> None:
    """A module that takes a while to import (numpy, a model): a SIGTERM then (a rollout,
    `docker stop`) read as the module's own ``SystemExit``: "importing ... raised
    SystemExit: 0 ...; fix the module", exit 2 (a configuration error)."""
    (tmp_path / "slow_module.py").write_text(
        "import sys, time\nprint('importing', flush=True)\ntime.sleep(30)\n"
    )
    proc = started(
        *("worker", "--tasks", "slow_module"),
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(tmp_path)]),
        DISTQ_TRANSPORT="redis",
        DISTQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)  # while it sleeps in the import
        output = first + proc.communicate(timeout=10)[0]
    finally:
        proc.kill()
    assert first == "importing\n", output
    assert proc.returncode == 0, output
    assert "SIGTERM while connecting: worker exit" in output
    assert "fix the module" not in output, output


#: A ``sitecustomize`` that signals its process (``EARLY``, SIGTERM by default) as the first
#: of distq's modules is imported that the entry point does not name (``ENTRY``): where the
#: imports of distq.cli run, before any ``main()``; the signal lands as the import goes on.
#: With ``AT``, as that module is imported instead (one a command imports where used).
EARLY_SIGNAL = """import os, signal, sys

ENTRY = {"distq", "distq.__main__", os.environ["ENTRY"]}
AT = os.environ.get("AT")


class Early:
    def find_spec(self, name, path=None, target=None):
        if name == AT if AT else name.startswith("distq.") and name not in ENTRY:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.Signals[os.environ.get("EARLY", "SIGTERM")])
            sum(range(100))
        return None


sys.meta_path.insert(0, Early())
"""


def _entry_point() -> tuple[str, str]:
    """The module and function that pyproject.toml's ``distq`` console script runs."""
    with (REPO / "pyproject.toml").open("rb") as project:
        module, function = tomllib.load(project)["project"]["scripts"]["distq"].split(":")
    return module, function


def _signalled_early(
    tmp_path: Path, entry: str, *args: str, early: str = "SIGTERM", at: str = ""
) -> tuple[int, str]:
    """``distq *args`` run by ``entry`` (``python -m distq``, the console script's, or a
    container's ``main.py``), nothing listening at its broker, signalled with ``early`` as
    distq imports (module ``at``, if given): its exit code and output."""
    module, function = _entry_point()
    (tmp_path / "sitecustomize.py").write_text(EARLY_SIGNAL)
    command = {
        "python -m distq": ["-m", "distq", *args],
        "console script": [
            *("-c", f"import sys; from {module} import {function}; sys.exit({function}())"),
            *args,
        ],
        "container": [str(REPO / "services" / args[0] / "main.py"), *args[1:]],
    }[entry]
    proc = subprocess.Popen(
        [sys.executable, *command],
        env=checkout_env(
            PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(tmp_path)]),
            ENTRY=module,
            EARLY=early,
            AT=at,
            DISTQ_TRANSPORT="redis",
            DISTQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = proc.communicate(timeout=30)[0]
    finally:
        proc.kill()
    return proc.returncode, output


@pytest.mark.parametrize("entry", ["python -m distq", "console script", "container"])
@pytest.mark.parametrize(("role", "code"), [("worker", 0), ("master", 1)])
def test_a_sigterm_while_distq_imports_is_a_stop_while_connecting(
    tmp_path: Path, entry: str, role: str, code: int
) -> None:
    """The stop handlers came only once ``main()`` ran, after the imports of distq.cli
    (0.2 s, more on a loaded machine): a SIGTERM then (a scale-in right after a scale-out,
    `make down` right after `up`) ended a worker with Python's default, exit 143 and no
    line, where the README promises "SIGTERM while connecting: worker exit", exit 0. The
    containers' entrypoints (services/*/main.py) run ``main`` with the role first."""
    returncode, output = _signalled_early(tmp_path, entry, role, "--connect-timeout", "60")
    assert (returncode, output) == (code, f"SIGTERM while connecting: {role} exit\n")


@pytest.mark.parametrize(
    ("args", "early", "said"),
    [
        (["status"], "SIGINT", "distq: interrupted\n"),
        (["submit", "square", "3"], "SIGINT", "distq: interrupted before the task was queued\n"),
        (["submit", "square", "3", "--wait"], "SIGTERM", "distq: interrupted before the task"),
        (["submit", "square", "3"], "SIGTERM", "distq: interrupted before the task was queued\n"),
        (["status", "--json"], "SIGTERM", "distq: interrupted\n"),
        (["dead-letters"], "SIGTERM", "distq: interrupted\n"),
        (["requeue-dead"], "SIGTERM", "distq: interrupted: the letters moved so far"),
    ],
)
def test_a_command_interrupted_while_distq_imports_says_so(
    tmp_path: Path, args: list[str], early: str, said: str
) -> None:
    """Ctrl-C as distq imported: a KeyboardInterrupt traceback, where later it says
    "interrupted", exit 1. Each command takes SIGTERM as Ctrl-C (README): only
    ``submit --wait`` did, and the others ended with exit 143 and no line, a
    ``requeue-dead`` cut off without its line saying what became of the letters, a
    ``submit`` without saying that its task may be queued."""
    returncode, output = _signalled_early(tmp_path, "python -m distq", *args, early=early)
    assert returncode == 1, output
    assert output.startswith(said), output


@pytest.mark.parametrize("early", ["SIGTERM", "SIGINT"])
def test_a_signal_while_submit_wait_imports_the_executor_says_the_task_was_not_queued(
    tmp_path: Path, early: str
) -> None:
    """`submit --wait` imports the Executor only once it runs, where SIGTERM is already
    Ctrl-C (commands.run): one during that import said only "distq: interrupted", not
    that the task was not queued, as one a moment earlier or later did."""
    returncode, output = _signalled_early(
        tmp_path,
        "python -m distq",
        "submit",
        "square",
        "3",
        "--wait",
        early=early,
        at="distq.executor",
    )
    assert (returncode, output) == (1, "distq: interrupted before the task was queued\n")


@pytest.mark.parametrize("args", [["status"], ["submit", "square", "3"]])
def test_a_sigterm_after_a_command_returned_is_not_swallowed(args: list[str]) -> None:
    """``run`` took SIGTERM's handler while the entry point still held it, and put that
    holding handler back as it returned: the handlers found were back for no signal
    after (README: a command that puts in none gets them back), and a SIGTERM as the
    process ended (atexit, a thread joined) was held for good, the process left running."""
    program = (
        "import os, signal, time\n"
        "from distq.startup import main\n"
        f"main({args!r})\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(5)\n"
        "print('still running', signal.getsignal(signal.SIGTERM))\n"
    )
    refused = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: exit 3 at once
    done = run_python(program, checkout_env(DISTQ_TRANSPORT="redis", DISTQ_REDIS_URL=refused))
    assert (done.returncode, done.stdout) == (-signal.SIGTERM, ""), done.stderr


def test_the_commands_import_the_executor_and_pika_only_where_they_use_them() -> None:
    """Every `distq` command imported the Executor (0.07 s: its dispatcher, collector and
    metrics) and pika (0.02 s) at start, which only `submit --wait` and a RabbitMQ
    management URL use: a worker on Redis, `status`, `submit` paid them too."""
    program = (
        "import sys\n"
        "import distq.cli\n"
        "print([m for m in ('distq.executor', 'distq.dispatcher', 'pika') if m in sys.modules])\n"
    )
    done = run_python(program)
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr


def test_importing_distq_in_a_program_leaves_its_signal_handlers_alone() -> None:
    """Only the command's entry points hold the stop signals (README): an Executor's
    program keeps its own handlers, whatever of distq it imports."""
    program = (
        "import signal\n"
        "stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)\n"
        "found = [signal.getsignal(s) for s in stops]\n"
        "import distq, distq.startup\n"
        "from distq import Executor, task\n"
        "assert [signal.getsignal(s) for s in stops] == found, found\n"
        "print(Executor.__name__, task.__name__)\n"
    )
    done = run_python(program)
    assert (done.returncode, done.stdout) == (0, "Executor task\n"), done.stderr


#: A line that signals the process it runs in; the signal lands at the next line.
RAISED = "os.kill(os.getpid(), signal.SIGTERM); sum(range(100))"


def _run_hooked(
    tmp_path: Path, *args: str, url: str = "", timeout: float = 30, **env: str
) -> tuple[int, str]:
    """``distq *args`` on Redis at ``url`` (else a port nothing listens on), with the
    modules in ``tmp_path`` (a task module, a ``sitecustomize``) on its Python path: its
    exit code and output, within ``timeout`` s."""
    proc = started(
        *args,
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(tmp_path)]),
        DISTQ_TRANSPORT="redis",
        DISTQ_REDIS_URL=url or f"redis://127.0.0.1:{free_port()}/0",
        **env,
    )
    try:
        output = proc.communicate(timeout=timeout)[0]
    finally:
        proc.kill()
    return proc.returncode, output


def _task_module(tmp_path: Path, name: str, body: str, imports: str = "os, signal") -> None:
    """A task module ``name`` in ``tmp_path``: ``body`` (where ``{signal}`` is
    :data:`RAISED`) run as it is imported, then one task, ``noop``."""
    (tmp_path / f"{name}.py").write_text(
        f"import {imports}\n\nimport distq\n\n{body.replace('{signal}', RAISED)}\n\n"
        "@distq.task\ndef noop() -> None:\n    pass\n"
    )


#: A task module whose import signals its own worker while Python swallows the exception
#: the worker's handler raises: in a finalizer (Python prints "Exception ignored in" and goes
#: on, as in redis-py's ``__del__`` of a connection a failed attempt dropped), and in code
#: that catches everything. Then the worker connects, to nothing, for its --connect-timeout.
SWALLOWING = {
    "finalizer": "class Garbage:\n    def __del__(self):\n        {signal}\n\n\nGarbage()\n",
    "catch-all": "try:\n    {signal}\nexcept BaseException:\n    pass\n",
    "catch-all, then a wait": (  # no attempt comes: only the alarm ends it
        "import threading\n\ntry:\n    {signal}\nexcept BaseException:\n    pass\n"
        "threading.Event().wait()\n"
    ),
    "redis-finalizer": (  # the connect loop's own: a failed attempt's client, collected
        "import sys\n\n\ndef at_del(frame, event, _arg):\n"
        "    if event == 'call' and frame.f_code.co_qualname == 'Redis.__del__':\n"
        "        sys.setprofile(None)\n        {signal}\n\n\nsys.setprofile(at_del)\n"
    ),
}


@pytest.mark.parametrize("where", sorted(SWALLOWING))
def test_sigterm_that_python_swallows_while_connecting_still_ends_the_worker(
    tmp_path: Path, where: str
) -> None:
    """A CI run under load: a worker SIGTERM'd while it waited for its broker said its stop
    line, printed the traceback of ``SignalExit: 0`` ("Exception ignored in ..."), and ran
    on until its --connect-timeout (exit 3), past the 5 s its stop was given."""
    _task_module(tmp_path, "swallowing", SWALLOWING[where])
    returncode, output = _run_hooked(
        tmp_path,
        *("worker", "--tasks", "swallowing", "--connect-timeout", "60"),
        timeout=15,
    )
    assert returncode == 0, output
    assert "SIGTERM while connecting: worker exit" in output
    assert "Traceback" not in output, output


def test_a_sigterm_a_task_module_turns_into_its_error_leaves_no_alarm_behind(
    tmp_path: Path,
) -> None:
    """A module that catches the stop's exception and raises its own error: the worker says
    the import failed (exit 2) and waits its drain for the thread the module started. The
    alarm the stop armed (2 s) stayed armed and ended it at 2 s with exit 0, no line."""
    (tmp_path / "converting.py").write_text(
        "import os, signal, threading\n\n"
        "threading.Thread(target=threading.Event().wait, name='held').start()\n"
        "try:\n    os.kill(os.getpid(), signal.SIGTERM); sum(range(100))\n"
        "except BaseException as exc:\n    raise RuntimeError('not ready') from exc\n"
    )
    returncode, output = _run_hooked(
        tmp_path,
        *("worker", "--tasks", "converting"),
        DISTQ_DRAIN_SECONDS="4",  # the alarm's 2 s come first, however slow the machine
    )
    assert returncode == 2, output
    assert "importing 'converting' raised RuntimeError: not ready" in output
    assert "the worker exits 2 now, without waiting any longer" in output


@pytest.mark.parametrize("where", ["catch-all", "finalizer"])
def test_a_sigterm_swallowed_while_the_broker_is_away_ends_as_a_stop_does(
    tmp_path: Path, where: str
) -> None:
    """Swallowed, with no broker to answer: the alarm (code that catches everything) or
    the unraisable hook (a finalizer) ended the worker with os._exit, the thread its task
    module started cut without a word. It now leaves at its next attempt as a stop does:
    it says the thread is alive and waits its drain for it."""
    held = "threading.Thread(target=threading.Event().wait, name='held').start()\n"
    _task_module(tmp_path, "holding", held + SWALLOWING[where], "os, signal, threading")
    returncode, output = _run_hooked(
        tmp_path,
        *("worker", "--tasks", "holding", "--connect-timeout", "60"),
        DISTQ_DRAIN_SECONDS="1",
    )
    assert returncode == 0, output
    assert "1 thread that tasks started is alive (held): the worker waits at most " in output
    assert "for it to end, or a signal" in output
    assert "the worker exits 0 now, without waiting any longer" in output


#: Where a task module swallows its worker's stop (code that catches everything): as it is
#: imported, and as the worker's attempt to reach its broker begins (a profile hook).
CATCHING = {
    "import": "try:\n    {signal}\nexcept BaseException:\n    pass\n",
    "attempt": (
        "import sys\n\n\ndef at_open(frame, event, _arg):\n"
        "    if event == 'call' and frame.f_code.co_name == 'open_transport':\n"
        "        sys.setprofile(None)\n        try:\n            {signal}\n"
        "        except BaseException:\n            pass\n\n\nsys.setprofile(at_open)\n"
    ),
}


def _catching_at(qualname: str, event: str = "call") -> str:
    """The "attempt" hook of :data:`CATCHING`, at ``qualname``'s ``event`` in place of
    open_transport's call: its signal sent and swallowed there."""
    hook = CATCHING["attempt"].replace("event == 'call'", f"event == {event!r}")
    return hook.replace("co_name == 'open_transport'", f"co_qualname == {qualname!r}")


def _sitecustomize(tmp_path: Path, hook: str) -> None:
    """``hook`` (where ``{signal}`` is :data:`RAISED`) as the ``sitecustomize`` of the
    Python that runs from ``tmp_path``: it runs as that Python starts."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal\n\n" + hook.replace("{signal}", RAISED)
    )


#: A SIGTERM just as ``commands.run`` put in its handler (as signal.signal returns to it).
AS_RUN_TAKES_SIGTERM = (
    "import sys\n\n\ndef at_set(frame, event, _arg):\n"
    "    caller = frame.f_back\n"
    "    if event == 'return' and frame.f_code.co_name == 'signal' and caller is not None \\\n"
    "            and caller.f_code.co_qualname == 'run' \\\n"
    "            and caller.f_globals.get('__name__') == 'distq.commands':\n"
    "        sys.setprofile(None)\n        {signal}\n\n\nsys.setprofile(at_set)\n"
)


@pytest.mark.parametrize(
    ("args", "said"),
    [(["status"], "distq: interrupted\n"), (["submit", "square", "3"], "distq: interrupted")],
)
def test_a_sigterm_as_a_command_takes_it_says_interrupted(
    tmp_path: Path, args: list[str], said: str
) -> None:
    """``run`` put in its SIGTERM handler before its ``try``: a SIGTERM that landed there
    (one the entry point held and had not yet acted on, run by the new handler) ended the
    command with a KeyboardInterrupt traceback, not "interrupted", exit 1 (README)."""
    _sitecustomize(tmp_path, AS_RUN_TAKES_SIGTERM)
    returncode, output = _run_hooked(tmp_path, *args)
    assert (returncode, "Traceback" in output) == (1, False), output
    assert output.startswith(said), output


@pytest.mark.parametrize("where", sorted(CATCHING))
def test_a_sigterm_swallowed_before_the_broker_answers_starts_no_work(
    tmp_path: Path, redis_broker: Broker, where: str
) -> None:
    """The stop said "worker exit", its exception swallowed (code that catches everything),
    and the broker answered within the alarm's 2 s: the worker connected and started its
    task loop ("Connect to ..."), fetching tasks, until the alarm ended it at once, mid-task,
    its leases held, with exit 1. A stop asked while connecting now ends it, exit 0, before
    any work starts."""
    _task_module(tmp_path, "catching", CATCHING[where])
    returncode, output = _run_hooked(
        tmp_path,
        *("worker", "--tasks", "catching"),
        url=redis_broker.url,
        DISTQ_QUEUE=f"swallowed-{os.getpid()}",
    )
    assert returncode == 0, output
    assert "SIGTERM while connecting: worker exit" in output
    assert "Connect to" not in output, output


@pytest.mark.parametrize("where", ["_say_time_limits", "Keeper.__init__"])
def test_a_sigterm_swallowed_once_connected_ends_the_worker_before_its_task_loop(
    tmp_path: Path, redis_broker: Broker, where: str
) -> None:
    """Connected, its task loop's handlers not yet in place ("while connecting" still), a
    stop swallowed (code that catches everything, as the worker says its time limits, or
    as its Worker is made): the worker started its task loop, and the alarm ended it
    mid-loop 2 s on, exit 1 (the loop's), its leases held. It now ends before the loop,
    exit 0."""
    _task_module(tmp_path, "catching", _catching_at(where))
    returncode, output = _run_hooked(
        tmp_path,
        *("worker", "--tasks", "catching"),
        url=redis_broker.url,
        DISTQ_QUEUE=f"swallowed-{os.getpid()}",
    )
    assert returncode == 0, output
    assert "SIGTERM while connecting: worker exit" in output
    assert "worker exit." not in output, output  # the task loop's summary


#: How a worker's task loop ends, given by the ``sitecustomize`` of its Python (code that
#: runs beside it): its queue empty (exit 0); a slot's thread ended on an error, a bug
#: (exit 1); its queue's key made another type, a setting the broker refuses (exit 2).
LOOP_ENDINGS = {
    "idle": ("", 0, "task_queue is empty"),
    "slot": (
        "def in_a_slot(frame, event, _arg):\n"
        "    if not threading.current_thread().name.startswith('distq-slot-'):\n"
        "        sys.setprofile(None)\n"
        "    elif event == 'call' and frame.f_code.co_qualname == 'Worker._work_on':\n"
        "        sys.setprofile(None)\n        raise RuntimeError('a bug')\n\n\n"
        "threading.setprofile(in_a_slot)\n",
        1,
        "slot 0 stopped: RuntimeError: a bug",
    ),
    "refused": (
        "def refuse():\n    import redis\n\n"
        "    broker = redis.Redis.from_url(os.environ['DISTQ_REDIS_URL'])\n"
        "    broker.set(os.environ['DISTQ_QUEUE'], 'hello')\n    broker.close()\n",
        2,
        "Redis key 'loop-ends-refused-",
    ),
}


@pytest.mark.parametrize("ending", sorted(LOOP_ENDINGS))
def test_a_sigterm_as_the_task_loop_ends_keeps_the_workers_summary_and_exit_code(
    tmp_path: Path, redis_broker: Broker, ending: str
) -> None:
    """The task loop over, Worker.run put back the handler it found ("while connecting")
    before _worker put in its own: a SIGTERM as the worker summed up its run (a profile
    hook's, at WorkerHealth.snapshot) said "SIGTERM while connecting: worker exit", lost
    the "worker exit. N ok ..." line, and exited 0 where the run meant 1 or 2."""
    body, code, said = LOOP_ENDINGS[ending]
    start = "refuse()" if ending == "refused" else "pass"  # as the slots start
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal, sys, threading\n\n" + body + "\n\ndef at_the_end(frame, event, _arg):\n"
        "    if event != 'call':\n        return\n"
        "    if frame.f_code.co_qualname == 'Worker._start':\n"
        f"        {start}\n"
        "    elif frame.f_code.co_qualname == 'WorkerHealth.snapshot':\n"
        "        sys.setprofile(None)\n"
        "        os.kill(os.getpid(), signal.SIGTERM); sum(range(100))\n\n\n"
        "sys.setprofile(at_the_end)\n"
    )
    returncode, output = _run_hooked(
        tmp_path,
        *("worker", "--exit-when-idle", "1"),
        url=redis_broker.url,
        DISTQ_QUEUE=f"loop-ends-{ending}-{os.getpid()}",
    )
    assert returncode == code, output
    assert "SIGTERM: the worker is stopping already" in output  # the signal, come and said
    assert "worker exit. 0 ok, 0 failed for good" in output, output
    assert "while connecting" not in output, output
    assert said in output, output  # the loop ended as meant


def test_a_sigterm_swallowed_once_connected_starts_no_job(
    tmp_path: Path, redis_broker: Broker
) -> None:
    """Connected, its job's handlers not yet in place ("while connecting" still), a stop
    swallowed (a finalizer's or code's that catches everything; here a profile hook's,
    from the sitecustomize of the master's Python): the master started its job ("master
    ...: redis at ...", its tasks sent to the queue) until the alarm ended it 2 s on. It
    now ends before the job, as a stop while connecting does."""
    _sitecustomize(tmp_path, _catching_at("_connect", "return"))  # cli's
    returncode, output = _run_hooked(
        tmp_path,
        *("master", "--tasks", "3"),
        url=redis_broker.url,
        DISTQ_QUEUE=f"swallowed-{os.getpid()}",
    )
    assert returncode == 1, output  # a job not started is not done
    assert "SIGTERM while connecting: master exit" in output
    assert "put task" not in output, output  # its job's tasks, sent


def test_a_sigterm_once_every_result_is_in_says_the_job_is_over(
    tmp_path: Path, redis_broker: Broker
) -> None:
    """A SIGTERM as the master sums up a job with every result in (a profile hook's, at
    _Run._finish) said "stopping the job; results in flight get up to 5 s": nothing was
    in flight, and the job ends done, exit 0. It says the job is over now."""
    _sitecustomize(tmp_path, _catching_at("_Run._finish"))
    queue = f"all-in-{os.getpid()}"
    worker = started(
        *("worker", "--exit-when-idle", "20"),
        DISTQ_TRANSPORT="redis",
        DISTQ_REDIS_URL=redis_broker.url,
        DISTQ_QUEUE=queue,
    )
    try:
        returncode, output = _run_hooked(
            tmp_path,
            *("master", "--tasks", "3", "--timeout", "20"),
            url=redis_broker.url,
            DISTQ_QUEUE=queue,
        )
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
    assert returncode == 0, output
    assert "all 3 results in and correct" in output, output
    assert (  # the signal, come and said
        "SIGTERM: the job is over (every result in), ending already "
        "(send SIGTERM again to stop at once)\n"
    ) in output, output
    assert "results in flight" not in output, output


@pytest.mark.parametrize("extra", [["--tasks", "3"], ["--rate", "5"]])
@pytest.mark.parametrize("where", ["_Run._withdraw", "_Run._finish"])
def test_a_sigterm_once_a_job_timed_out_keeps_its_timeout_lines(
    tmp_path: Path, redis_broker: Broker, extra: list[str], where: str
) -> None:
    """Its --timeout past, no worker attached, the job's loop over: a SIGTERM as the master
    took back its tasks or summed up its job (a profile hook's) turned "job timed out" into
    "job stopped", and lost the line that no worker slot is attached and the --timeout
    advice. Then it said "stopping the job; results in flight get up to 5 s", which no
    longer happens: the job ends as timed out, its exit 1 (an endless --rate job's too)."""
    _sitecustomize(tmp_path, _catching_at(where))
    returncode, output = _run_hooked(
        tmp_path,
        *("master", *extra, "--timeout", "1"),
        url=redis_broker.url,
        DISTQ_QUEUE=f"timed-out-{os.getpid()}",
    )
    assert returncode == 1, output
    assert (  # the signal, come and said
        "SIGTERM: the job is over (past its --timeout), ending already "
        "(send SIGTERM again to stop at once)\n"
    ) in output, output
    assert "results in flight" not in output, output
    assert "job timed out after" in output, output
    assert "no worker slot is attached to the job's queue" in output, output
    assert "give the job a longer --timeout" in output, output
    assert "master exit" in output, output


@pytest.mark.parametrize(("extra", "code"), [([], 1), (["--rate", "5"], 0)])
def test_a_master_still_connecting_ends_at_once_on_sigterm(extra: list[str], code: int) -> None:
    """The master's handler came only once it had connected: as PID 1 a SIGTERM while it
    waited for a broker that does not answer was ignored, and `docker stop` waited out
    its whole grace period. A job not started is not done (exit 1), but an endless
    --rate job's stop is its end (exit 0)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes connections, says nothing
        proc = started(
            "master",
            *extra,
            DISTQ_TRANSPORT="redis",
            DISTQ_REDIS_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
        )
        # once it connected, waiting for the broker's answer. Left to wait, the broker's
        # timeout ended it 9 s on with exit 3 ("cannot reach Redis"): the exit code tells
        # the two apart. Its exit takes ~65 ms of CPU: 0.5 to 1.6 s at load 24, where
        # ``within=2`` failed 1 run in 7.
        with connected(silent):
            output = sigterm_after(proc, 0.2, within=10)
    assert proc.returncode == code, output
    assert "SIGTERM while connecting: master exit" in output


@pytest.mark.parametrize(("extra", "code"), [(["--tasks", "5"], 1), (["--rate", "5"], 0)])
def test_a_master_stopped_while_waiting_for_workers_is_stopped_not_out_of_time(
    extra: list[str], code: int
) -> None:
    """An endless --rate master stopped before its workers came (a rollout) exited 1,
    saying "only 0 of 1 worker slots attached in time" with no --timeout (signals10)."""
    env = {"DISTQ_AUTHKEY": "k" * 16, "DISTQ_MANAGER_ADDRESS": f"127.0.0.1:{free_port()}"}
    proc = started("master", "--wait-workers", "1", *extra, **env)
    waiting = said(proc, "waiting for 1 worker slots to attach")
    output = waiting + sigterm_after(proc, 0, within=10)
    assert proc.returncode == code, output
    assert "waiting for 1 worker slots to attach" in output
    assert "in time" not in output and "job never started after" in output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["status"], "distq: interrupted"),
        (["dead-letters"], "distq: interrupted"),
        (["requeue-dead"], "distq: interrupted: the letters moved so far are on the task queue"),
        (["submit", "square", "3"], "distq: interrupted before the task was queued"),
    ],
)
def test_ctrl_c_on_a_command_whose_broker_is_slow_says_so_in_one_line(
    args: list[str], said: str
) -> None:
    """A KeyboardInterrupt traceback and exit 130: for submit, a script could not tell
    whether the task was queued (signals10)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes connections, says nothing
        proc = started(
            *args,
            DISTQ_TRANSPORT="redis",
            DISTQ_REDIS_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
        )
        try:
            with connected(silent):  # its handlers in place: a sleep lost to slow imports
                proc.send_signal(signal.SIGINT)
                output = proc.communicate(timeout=10)[0]
        finally:
            proc.kill()
    assert proc.returncode == 1, output
    assert said in output and "Traceback" not in output, output


def test_a_master_says_what_a_signal_does_and_a_second_one_stops_it_at_once() -> None:
    """Silent for the drain's 5 s after Ctrl-C, and a second Ctrl-C did nothing."""
    proc = started(
        *("master", "--tasks", "3", "--timeout", "60"),
        DISTQ_AUTHKEY="k",
        DISTQ_MANAGER_ADDRESS=f"127.0.0.1:{free_port()}",
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the job runs: its tasks wait for a worker
            if line.startswith("put task "):
                break
        proc.send_signal(signal.SIGINT)
        said = ""
        while not said.startswith("SIGINT"):  # the job's own lines come first
            said = proc.stdout.readline()
            assert said, "no line for the SIGINT"
        proc.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        output = said + proc.communicate(timeout=10)[0]
        took = time.monotonic() - stopped
    finally:
        proc.kill()
    assert said.startswith("SIGINT: stopping the job; results in flight get up to 5 s"), output
    assert "SIGINT again: stopping at once" in output, output
    assert took < 3, (took, output)  # not the drain's 5 s
    assert proc.returncode == 1 and "3 missing" in output, output


def test_a_master_or_worker_collects_young_objects_less_often() -> None:
    import gc

    from distq.cli import YOUNG_GC_THRESHOLD, fewer_collections

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)  # CPython's default
        fewer_collections()
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, 10, 10)
        for kept in ((0, 10, 10), (YOUNG_GC_THRESHOLD * 2, 5, 5)):  # off, or set higher
            gc.set_threshold(*kept)
            fewer_collections()
            assert gc.get_threshold() == kept
    finally:
        gc.set_threshold(*before)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts TCP connections and never says a word: a Redis
    port given as RabbitMQ's, a load balancer with no backend, a hung broker."""
    held: list[socket.socket] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(50)
        server.settimeout(0.2)
        done = threading.Event()

        def accept() -> None:
            while not done.is_set():
                with contextlib.suppress(OSError):  # a timeout: look at done again
                    held.append(server.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield server.getsockname()[1]
        finally:
            done.set()
            thread.join(5)
            for conn in held:
                conn.close()


@pytest.mark.parametrize(
    "args",
    [["status"], ["worker", "--connect-timeout", "2"]],
    ids=["status", "worker"],
)
def test_a_port_that_never_answers_the_amqp_handshake_exits_3_with_one_line(
    silent_port: int, args: list[str]
) -> None:
    """pika's AMQPConnectorStackTimeout derives from neither AMQPError nor OSError: it
    escaped as a traceback, exit 1, and the worker did not retry it."""
    url = f"amqp://guest:secret@127.0.0.1:{silent_port}/%2F?stack_timeout=0.5"
    started = time.monotonic()
    done = distq(*args, DISTQ_TRANSPORT="rabbitmq", DISTQ_AMQP_URL=url)
    assert done.returncode == 3, done.stderr
    why = (
        f"cannot reach RabbitMQ at 127.0.0.1:{silent_port} (DISTQ_AMQP_URL): no AMQP "
        "handshake within 0.5 s; is that port RabbitMQ's (not Redis's, not a proxy with no "
        "broker)?"
    )
    assert done.stderr.splitlines() == [f"distq: {why}"]
    if args[0] == "worker":  # retried for its --connect-timeout, as any unreachable broker
        assert time.monotonic() - started > 2


@pytest.mark.parametrize(
    ("query", "option"),
    [
        ("foo=bar", "foo"),
        ("ssl=true", "ssl"),
        ("sslmode=require", "sslmode"),
        ("timeout=3", "timeout"),
    ],
)
def test_an_unknown_redis_url_option_exits_2_naming_it(query: str, option: str) -> None:
    """redis-py passed it on to its connection class: a TypeError at the first command,
    a traceback and exit 1."""
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0?{query}"
    for args in (["status"], ["worker", "--connect-timeout", "5"]):
        done = distq(*args, DISTQ_TRANSPORT="redis", DISTQ_REDIS_URL=url)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("distq: DISTQ_REDIS_URL (redis://:***@127.0.0.1:"), (
            done.stderr
        )
        assert f"has unknown option {option!r}" in done.stderr
        assert ("rediss://" in done.stderr) == option.startswith("ssl")
        assert "hunter2" not in done.stderr and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("retry=3", "has option 'retry', which a URL cannot give (distq sets it itself"),
        ("socket_type=x", "has option 'socket_type', which a URL cannot give (it is not text"),
        ("credential_provider=x", "has option 'credential_provider', which a URL cannot"),
        ("socket_keepalive_options=x", "has option 'socket_keepalive_options', which"),
        ("socket_connect_timeout=1e10", "use a number of seconds above 0 and at most 1,000,000"),
    ],
)
def test_a_redis_url_option_no_url_can_give_exits_2_naming_it(query: str, said: str) -> None:
    """redis-py takes these options, but not as text: it passed the URL's text on, and
    every command (master, worker, status, the Executor) failed with a traceback, exit 1;
    a timeout of 1e10 s overflowed the socket's (input17)."""
    url = f"redis://127.0.0.1:{free_port()}/0?{query}"
    done = distq("status", DISTQ_TRANSPORT="redis", DISTQ_REDIS_URL=url)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tasks", ""], "distq: --tasks '': '' is not a module's full name"),
        (["--tasks", ".x"], "distq: --tasks '.x': '.x' is not a module's full name"),
        (["--task", ".x:f"], "distq: --task '.x:f': '.x' is not a module's full name"),
        (["--tasks", "broken_at_import"], "raised RuntimeError: boom at import (at "),
        (["--tasks", "bad_syntax"], "raised SyntaxError: invalid syntax (at "),
    ],
)
def test_a_task_module_that_cannot_be_imported_exits_2_with_one_line(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    """Empty and relative names, and a module whose code fails, gave a traceback, exit 1."""
    (tmp_path / "broken_at_import.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "bad_syntax.py").write_text("def f(:\n")
    done = distq(
        "worker",
        *args,
        DISTQ_AUTHKEY="k",
        PYTHONPATH=f"{REPO / 'src'}:{tmp_path}",
        DISTQ_MANAGER_ADDRESS=f"127.0.0.1:{free_port()}",
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert expected in done.stderr


@pytest.mark.parametrize("value", ["1025", "99999999999999999999999"])
def test_a_worker_concurrency_above_its_bound_exits_2_before_connecting(value: str) -> None:
    """Each slot is a thread and a lock: a huge value used memory until the OOM killer."""
    done = distq("worker", "--concurrency", value, DISTQ_AUTHKEY="k")
    assert done.returncode == 2, done.stderr
    assert (
        f"argument --concurrency/-c: is {value}; use a whole number from 1 to 1024" in done.stderr
    )
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("role", ["master", "worker"])
def test_a_bare_ipv6_manager_address_exits_2_at_once(role: str) -> None:
    """``::1`` was host ':' port 1: the master exited 3, the worker retried for 10 s."""
    started = time.monotonic()
    done = distq(role, DISTQ_AUTHKEY="k", DISTQ_MANAGER_ADDRESS="::1")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "distq: DISTQ_MANAGER_ADDRESS is '::1', not host:port; write an IPv6 address in "
        "brackets, then its port: [::1]:PORT, e.g. [::1]:9000"
    ]
    assert time.monotonic() - started < 8


@pytest.mark.parametrize("name", ["", "  "])
def test_submit_of_an_empty_task_name_exits_2_before_connecting(name: str) -> None:
    """It was queued (exit 0, an id printed), and a worker could only dead-letter it."""
    done = distq("submit", name, "3", DISTQ_AUTHKEY="k", DISTQ_MANAGER_ADDRESS="127.0.0.1:1")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"distq: TASK is {name!r}; name a task the workers run, e.g. mypkg.jobs:resize or square"
    ]


def test_probe_takes_quiet_as_every_command_does() -> None:
    """The README: "--quiet | summaries only (every command takes it)"."""
    for flag in ("--quiet", "-q"):
        done = distq("probe", "healthz", flag, "--port", str(free_port()), "--timeout", "1")
        assert done.returncode == 1, done.stderr  # no answer; not a usage error (2)
        assert "unrecognized arguments" not in done.stderr
        assert done.stderr.startswith("distq: no answer from http://127.0.0.1:")


def test_make_help_lists_every_target_the_readme_runs() -> None:
    """``make install`` is in the README but was missing from ``make help``."""
    makefile = (REPO / "Makefile").read_text()
    help_lines = makefile.partition("\nhelp:\n")[2].partition("\n\n")[0]
    phony = makefile.partition(".PHONY:")[2].partition("\n")[0].split()
    readme = (REPO / "README.md").read_text()
    for target in phony:
        if target != "help" and f"make {target}" in readme:
            assert re.search(rf"\bmake {target}\b", help_lines), target
    assert re.search(r"\bmake install\b", help_lines) and re.search(r"\bmake clean\b", help_lines)


def test_a_signal_while_a_stopping_worker_closes_keeps_its_exit_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Worker put back the pre-connect handler when it returned: a SIGTERM during
    the closes after it said "SIGTERM while connecting: worker exit", exited 0 (losing
    the 2 of a setting the broker refused) and skipped the rest of the closes."""
    import argparse
    import io

    from distq import cli
    from distq.config import Settings
    from distq.console import Console
    from distq.tasks import Registry

    class Observed:
        health = telemetry = None

        def attach(self, _transport: object) -> None: ...
        def close(self) -> None: ...

    class Transport:
        closed = False
        broker_version = None  # as a transport that was told none (Transport's property)

        def describe(self) -> str:
            return "a stand-in"

        def close(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # the signal lands during the closes
            Transport.closed = True

    class Refused:
        def __init__(self, *_args: object, **_kwargs: object) -> None: ...

        def run(self, ended: object = None) -> int:
            return 2

    monkeypatch.setattr(cli, "WorkerObservability", lambda *_a, **_k: Observed())
    monkeypatch.setattr(cli, "_connect", lambda *_a: Transport())
    monkeypatch.setattr(cli, "Worker", Refused)
    out = io.StringIO()
    console = Console(out=out, err=out)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        cli._leave_on_signal(console, "worker", 0)  # as main() installs it
        args = argparse.Namespace(
            concurrency=1, exit_when_idle=None, worker_id="w", connect_timeout=1.0
        )
        assert cli._worker(args, Settings(), Registry(), console) == 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert Transport.closed
    assert "SIGTERM: the worker is stopping already" in out.getvalue()
    assert "while connecting" not in out.getvalue()


def test_a_command_started_with_stderr_closed_keeps_its_exit_code() -> None:
    """``2>&-`` (a daemon, cron): sys.stderr is None, and every failing command exited 1,
    not the README's 2 (configuration) or 3 (broker)."""
    done = subprocess.run(
        f"{sys.executable} -m distq worker 2>&-",
        shell=True,
        executable="/bin/bash",
        env=checkout_env(DISTQ_TRANSPORT="kafka"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)


def test_a_worker_waiting_for_its_broker_says_so_once() -> None:
    """--connect-timeout (120 s in the Kubernetes manifests) waited without a line: the
    reason came only with the exit 3 at its end. Said once the wait has lasted 2 s (at
    the first refusal, a start-up race, it was noise)."""
    done = distq(
        "worker",
        "--connect-timeout",
        "4",
        DISTQ_TRANSPORT="redis",
        DISTQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.count("waiting for the broker: cannot reach Redis at 127.0.0.1:") == 1
    assert "trying again for up to 4 s (--connect-timeout)" in done.stdout, done.stdout
    short = distq(
        "worker",
        "--connect-timeout",
        "1",
        DISTQ_TRANSPORT="redis",
        DISTQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    assert short.returncode == 3 and "waiting for the broker" not in short.stdout


def test_submit_wait_stopped_while_it_connects_says_so() -> None:
    """SIGTERM before the executor had connected (which may take seconds) still ended
    `submit --wait` with exit 143 and no word."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes connections, says nothing
        proc = started(
            *("submit", "jobs:add", "1", "2", "--wait"),
            DISTQ_TRANSPORT="redis",
            DISTQ_REDIS_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
        )
        with connected(silent):  # connecting: the server answers nothing
            output = sigterm_after(proc, 0, within=10)
    assert proc.returncode == 1, output
    assert "distq: interrupted before the task was queued" in output and "Traceback" not in output


def test_a_worker_says_its_time_limits_and_each_name_it_does_not_run() -> None:
    """``squre=1`` (a typo) protected nothing, and read the same as a right setting
    (drift10): both unsaid."""
    import io

    from distq import cli
    from distq.console import Console
    from distq.tasks import Registry
    from distq.timelimits import TimeLimits

    out, err = io.StringIO(), io.StringIO()
    cli._say_time_limits(
        Console(out=out, err=err), TimeLimits.parse("30,squre=1,square=2"), Registry()
    )
    assert out.getvalue() == "time limits: 30,square=2,squre=1\n"
    assert err.getvalue() == (
        "distq: warning: DISTQ_TASK_TIME_LIMIT names 'squre', which this worker does not run "
        "(it runs square)\n"
    )
    out, err = io.StringIO(), io.StringIO()
    cli._say_time_limits(Console(out=out, err=err), TimeLimits.parse("off"), Registry())
    assert out.getvalue() == err.getvalue() == ""


@pytest.mark.parametrize(
    ("word", "value"),
    [("-1e3", -1000.0), ("-2.5E-1", -0.25), ("-7", -7), ("-0", 0)],
)
def test_submit_takes_every_negative_json_number_as_an_argument(word: str, value: float) -> None:
    """argparse took "-1e3" for an unknown option ("unrecognized arguments"), though
    `submit` reads each ARG as JSON and "1e3" was taken (readme18)."""
    from distq.cli import _parser

    parsed = _parser().parse_args(["submit", "jobs:add", word, "1"])
    assert parsed.args == [word, "1"]
    assert json.loads(word) == value


def test_submit_still_refuses_an_unknown_option() -> None:
    from distq.cli import _parser

    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        _parser().parse_args(["submit", "jobs:add", "-x"])


def test_a_negative_amqp_retry_delay_exits_2_with_one_line() -> None:
    """pika raised its ValueError ("call_later: delay must be non-negative") out of the
    first failed connection attempt: a traceback, exit 1."""
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F?connection_attempts=2&retry_delay=-5"
    done = distq("status", DISTQ_TRANSPORT="rabbitmq", DISTQ_AMQP_URL=url)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("distq: DISTQ_AMQP_URL (amqp://guest:***@127.0.0.1:")
    assert "has retry_delay='-5'; use a number of seconds from 0" in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.parametrize("role", ["submit", "master"])
def test_max_attempts_reads_as_the_readme_says_and_refuses_as_the_other_counts(
    role: str,
) -> None:
    """`--help` showed `--max-attempts MAX_ATTEMPTS` where README shows `--max-attempts N`,
    and submit read it with a bare ``int``: "invalid int value: 'abc'", where every other
    count says what it wants (flagtypes.count)."""
    from distq.cli import _parser

    words = ["submit", "jobs:add"] if role == "submit" else ["master"]
    usage = io.StringIO()
    with pytest.raises(SystemExit) as stopped, contextlib.redirect_stderr(usage):
        _parser().parse_args([*words, "--max-attempts", "abc"])
    assert stopped.value.code == 2
    assert "--max-attempts N" in usage.getvalue()
    assert "argument --max-attempts: is 'abc', not a whole number" in usage.getvalue()
