"""``make bench``: distq against raw clients, Celery, Dramatiq and RQ, side by side.

Starts its own Redis and RabbitMQ on free loopback ports, runs every (broker,
contestant) trial ``--repeat`` times, round-robin, each in a process group of its own
that is killed if it outlives ``--timeout``, stops the brokers by PID, and writes
``bench/results/RESULTS.md`` and ``bench/results/latest.json``. A failed or timed-out
trial is a cell in the table, never the end of the run; so are the trials after a
broker died (not run). A stop (SIGINT, SIGTERM) or a harness error still writes both
files, with every trial that finished.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

# The brokers come from tests/launch/, the project's one launcher of local servers.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

import contestants
import servers
from cpu import per_thousand
from processes import die_with_parent
from report import ROLES, write_markdown

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PACKAGES = ("distq", "celery", "kombu", "dramatiq", "rq", "redis", "pika")
MEMORY_TIMEOUT = 900.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per throughput round")
    parser.add_argument("--repeat", type=int, default=3, help="trials per contestant")
    parser.add_argument(
        "--only",
        default=",".join(contestants.BROKERS),
        help="brokers, comma-separated (default: redis,rabbitmq,manager)",
    )
    parser.add_argument(
        "--contestants",
        default=",".join(contestants.CONTESTANTS),
        help=f"comma-separated subset of {','.join(contestants.CONTESTANTS)}",
    )
    parser.add_argument("--latency-tasks", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per trial")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also run distq's worker-memory stage (--memory-tasks tasks per transport)",
    )
    parser.add_argument("--memory-tasks", type=int, default=200_000)
    parser.add_argument("--no-caps", action="store_true", help="no per-contestant task caps")
    parser.add_argument(
        "--scaling",
        default="1,2,4",
        help="distq's scaling stage: worker process counts, comma-separated ('' to skip)",
    )
    parser.add_argument(
        "--scaling-repeat", type=int, default=None, help="trials per count (default: --repeat)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy flame graphs of distq's master and workers (the main table's throughput "
        "rounds, not the scaling or memory stage) here, a folder per trial",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.only = _pick(args.only, contestants.BROKERS, "--only")
    args.contestants = _pick(args.contestants, contestants.CONTESTANTS, "--contestants")
    try:
        args.scaling = [int(w) for w in args.scaling.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--scaling: worker counts are whole numbers, got {args.scaling!r}")
    if any(w < 1 for w in args.scaling):
        parser.error("--scaling: worker counts must be at least 1")
    if args.scaling_repeat is None:
        args.scaling_repeat = args.repeat
    for name in ("tasks", "repeat", "workers", "memory_tasks", "scaling_repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.latency_tasks < 2:
        parser.error("--latency-tasks must be at least 2")
    return args


def _pick(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    chosen = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in allowed]
    if unknown:
        raise SystemExit(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return chosen


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived: clean up and leave. A BaseException, like
    KeyboardInterrupt, so no ``except Exception`` (a broker that did not start) takes it
    for a failure and runs on."""


def _on_signal(signum: int, _frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def run_trial(
    args: argparse.Namespace,
    broker: str,
    url: str,
    name: str,
    repeat: int,
    logdir: Path,
    *,
    tasks: int,
    latency_tasks: int,
    timeout: float,
    memory: bool = False,
    scaling: bool = False,
    profile: bool = False,
    workers: int | None = None,
    broker_pid: int | None = None,
    broker_server: servers.Broker | None = None,
) -> dict[str, Any]:
    """Run ``trial.py`` in a new process group; kill the group if it overstays.

    ``broker_server``: the broker run.py started, checked (and, Redis, flushed) first;
    when it is dead or does not answer, the trial is not run but failed, saying why.

    Each kind of trial has a workdir (``tag``) of its own: the main table's
    ``{broker}-{name}-{repeat}``, the scaling stage's ``...-scale-w{workers}-{repeat}``
    and the memory stage's ``...-mem``, so no trial's logs or result replace another's.
    ``profile``: under py-spy (``--profile``), its flame graphs in a folder named ``tag``.
    """
    workers = workers or args.workers
    if memory:
        tag = f"{broker}-{name}-mem"
    elif scaling:
        tag = f"{broker}-{name}-scale-w{workers}-{repeat}"
    else:
        tag = f"{broker}-{name}-{repeat}"
    if workers != args.workers and not scaling:
        tag += f"-w{workers}"
    trouble = _trouble(broker_server)
    if trouble is not None:
        print(f"  {tag}: NOT RUN: {trouble}", flush=True)
        error = f"not run: {trouble}"
        return {
            "status": "failed",
            "error": error,
            "broker": broker,
            "contestant": name,
            "repeat": repeat,
            "workers": workers,
        }
    workdir = logdir / tag
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "result.json"
    out.unlink(missing_ok=True)  # only this trial's own result is ever read back
    argv = [
        sys.executable,
        str(BENCH_DIR / "trial.py"),
        "--broker",
        broker,
        "--contestant",
        name,
        "--url",
        url,
        "--queue",
        f"bench-{name}-{uuid.uuid4().hex[:8]}",
        "--tasks",
        str(tasks),
        "--latency-tasks",
        str(latency_tasks),
        "--workers",
        str(workers),
        "--broker-pid",
        str(broker_pid or 0),
        "--seed",
        str(repeat),
        "--timeout",
        str(timeout),
        "--workdir",
        str(workdir),
        "--out",
        str(out),
    ]
    if memory:
        argv.append("--memory")
    if args.no_caps:
        argv.append("--no-caps")
    if profile and args.profile is not None:
        argv += ["--profile", str(args.profile.resolve() / tag)]
    print(f"  {tag}: ", end="", flush=True)
    started = time.monotonic()
    with open(workdir / "trial.log", "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
            cwd=BENCH_DIR,
        )
        try:
            proc.wait(timeout=timeout + 30)  # the trial's own deadline, plus clean-up
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _end_group(proc)
    result: dict[str, Any]
    if timed_out:
        result = {"status": "timeout", "error": f"no result within {timeout:.0f} s"}
    else:
        result = _read_result(out, workdir, proc.returncode)
    result.update(broker=broker, contestant=name, repeat=repeat, workers=workers, logs=str(workdir))
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    if result["status"] == "ok":
        lat = result.get("latency_p50_seconds")
        extra = f", p50 {lat * 1e3:.2f} ms" if lat is not None else ""
        cpu = per_thousand(result.get("cpu_seconds") or {}, result.get("tasks") or 1)
        total = cpu.get("total")
        if total is not None:
            extra += f", {total * 1e3:.1f} µs CPU/task"
        print(f"{result['throughput']:,.0f} tasks/s{extra} ({result['wall_seconds']} s)")
    else:
        print(f"{result['status'].upper()}: {result.get('error', '')[:300]}")
    return result


def _read_result(out: Path, workdir: Path, returncode: int | None) -> dict[str, Any]:
    """The result the trial wrote to ``out``; failed if it wrote none, or not a whole one."""
    try:
        result: dict[str, Any] = json.loads(out.read_text())
        status = result["status"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        text = (workdir / "trial.log").read_text(errors="replace")[-1500:]
        why = "no result" if isinstance(exc, FileNotFoundError) else f"no whole result ({exc})"
        return {"status": "failed", "error": f"trial exited {returncode}, {why}: {text}"}
    if status != "ok" and "RoundTimeout" in result.get("error", ""):
        result["status"] = "timeout"
    return result


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop whatever is left of a trial's process group (its PGID is the trial's PID)."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(proc.pid):
            break
        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            proc.poll()  # reap the leader so it does not linger as a zombie
            time.sleep(0.1)
    proc.wait(timeout=5)


def _trouble(broker: servers.Broker | None) -> str | None:
    """Before a trial: None when ``broker`` can take it (Redis flushed, so no trial pays
    for another's leftovers), else why not: its server died, or does not answer."""
    if broker is None:
        return None
    if broker.server.pid is None:
        return f"{broker.name} is not running: its server (started by run.py) has exited"
    if broker.name == "redis":
        import redis

        client = redis.Redis.from_url(broker.url, socket_connect_timeout=10, socket_timeout=60)
        try:
            client.flushall()
        except redis.RedisError as exc:
            return f"{broker.name} does not answer: {type(exc).__name__}: {exc}"
        finally:
            client.close()
    return None


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in trials if t["status"] == "ok"]
    row: dict[str, Any] = {
        "trials": len(trials),
        "ok": len(ok),
        "tasks": max((t.get("tasks", 0) for t in trials), default=0),
        "errors": [t.get("error", "") for t in trials if t["status"] != "ok"],
        "statuses": [t["status"] for t in trials],
    }
    for key in ("throughput", "latency_p50_seconds", "latency_p99_seconds"):
        stat = _stat([t[key] for t in ok if t.get(key) is not None])
        if stat:
            row[key] = stat
    rounds = (("cpu_per_1000", "cpu_seconds", "tasks"),  # the throughput round
              ("latency_cpu_per_1000", "latency_cpu_seconds", "latency_tasks"))  # fmt: skip
    for key, seconds, tasks in rounds:
        per_task = [per_thousand(t[seconds], t[tasks]) for t in ok if t.get(seconds)]
        if per_task:
            row[key] = {
                role: _stat([v for c in per_task if (v := c.get(role)) is not None])
                for role in ROLES
            }
    return row


def _stat(values: list[float]) -> dict[str, float] | None:
    """Median, min and max of ``values``; None when there are none."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def scaling_rows(
    args: argparse.Namespace,
    broker_name: str,
    url: str,
    broker: servers.Broker | None,
    broker_pid: int | None,
    logdir: Path,
    into: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """distq with each of ``args.scaling`` worker processes, round-robin, no latency round.

    The rows go into ``into`` (and are returned), also when a stop cuts the stage short:
    then with the trials that finished (see :func:`_rows`)."""
    print(f"  scaling: distq with {', '.join(map(str, args.scaling))} worker processes")
    rows: list[dict[str, Any]] = [] if into is None else into
    trials: dict[int, list[dict[str, Any]]] = {w: [] for w in args.scaling}
    try:
        for repeat in range(1, args.scaling_repeat + 1):
            for workers in args.scaling:
                trials[workers].append(
                    run_trial(
                        args,
                        broker_name,
                        url,
                        "distq",
                        repeat,
                        logdir,
                        tasks=args.tasks,
                        latency_tasks=0,
                        timeout=args.timeout,
                        scaling=True,
                        workers=workers,
                        broker_pid=broker_pid,
                        broker_server=broker,
                    )
                )
    finally:
        rows += _rows(trials, "workers", args.scaling_repeat, broker=broker_name)
    return rows


def _rows(
    trials: dict[Any, list[dict[str, Any]]], key: str, planned: int, **fixed: Any
) -> list[dict[str, Any]]:
    """One summarized row per ``trials`` entry (``{key: its key}``) that has any trials.
    A row with fewer than ``planned`` (a stop cut its stage short) keeps the ones that
    finished, and says how many were planned."""
    rows = []
    for value, done in trials.items():
        if not done:
            continue
        row = {**fixed, key: value, **summarize(done), "trials_detail": done}
        if len(done) < planned:
            row["planned_trials"] = planned
        rows.append(row)
    return rows


def machine() -> dict[str, Any]:
    cpu = "unknown"
    ram_kib = 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
    os_name = platform.platform()
    if Path("/etc/os-release").exists():
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    commit = subprocess.run(
        ["git", "-C", str(BENCH_DIR), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "ram_gib": round(ram_kib / 1024 / 1024, 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "distq_commit": commit or "unknown",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    started = dt.datetime.now(dt.UTC)
    logdir = Path(tempfile.mkdtemp(prefix="distq-bench-"))
    report: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        # quoted as a shell reads it back: an empty value (``--scaling ''``) stays one
        "command": "bench/run.sh " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "settings": {
            "tasks": args.tasks,
            "repeat": args.repeat,
            "latency_tasks": args.latency_tasks,
            "workers": args.workers,
            "timeout": args.timeout,
            "memory_tasks": args.memory_tasks if args.memory else None,
            "scaling": args.scaling,
            "scaling_repeat": args.scaling_repeat,
        },
        "machine": machine(),
        "load_average_start": os.getloadavg(),
        "brokers": {},
        "rows": [],
        "memory": [],
        "scaling": [],
        "logs": str(logdir),
    }
    print(f"distq bench: logs in {logdir}")
    running: list[servers.Broker] = []
    interrupted = aborted = None
    try:
        for broker_name in args.only:
            names = [
                n for b, n in contestants.REGISTRY if b == broker_name and n in args.contestants
            ]
            if not names:
                continue
            url, broker, broker_pid = "", None, None
            if broker_name in servers.STARTERS:
                print(f"starting {broker_name} ...", flush=True)
                try:
                    broker = servers.STARTERS[broker_name]()
                except Exception as exc:
                    error = f"{broker_name} did not start: {exc}"
                    print(f"  {error}")
                    for name in names:
                        report["rows"].append(
                            {
                                "broker": broker_name,
                                "contestant": name,
                                **summarize([{"status": "failed", "error": error}]),
                            }
                        )
                    continue
                running.append(broker)
                url, broker_pid = broker.url, broker.server.pid
                report["brokers"][broker_name] = {"version": broker.version}
            trials: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
            try:
                for repeat in range(1, args.repeat + 1):
                    for name in names:
                        trials[name].append(
                            run_trial(
                                args,
                                broker_name,
                                url,
                                name,
                                repeat,
                                logdir,
                                tasks=args.tasks,
                                latency_tasks=args.latency_tasks,
                                timeout=args.timeout,
                                profile=True,  # the main table's trials only
                                broker_pid=broker_pid,
                                broker_server=broker,
                            )
                        )
            finally:  # a stop keeps the trials that finished
                report["rows"] += _rows(trials, "contestant", args.repeat, broker=broker_name)
            if args.scaling and "distq" in names:
                scaling_rows(
                    args, broker_name, url, broker, broker_pid, logdir, into=report["scaling"]
                )
            if args.memory and "distq" in names:
                report["memory"].append(
                    run_trial(
                        args,
                        broker_name,
                        url,
                        "distq",
                        0,
                        logdir,
                        tasks=args.memory_tasks,
                        latency_tasks=0,
                        timeout=max(args.timeout, MEMORY_TIMEOUT),
                        memory=True,
                        broker_pid=broker_pid,
                        broker_server=broker,
                    )
                )
            if broker:
                broker.stop()
                running.remove(broker)
    except Stopped as exc:
        interrupted = str(exc)
        print(f"\ninterrupted by {interrupted}; stopping brokers")
    except Exception as exc:  # a bug of the harness: the trials so far are still written
        traceback.print_exc()
        aborted = f"{type(exc).__name__}: {exc}"
        print(f"\naborted by {aborted}; stopping brokers")
    finally:
        for broker in running:
            broker.stop()
    report["load_average_end"] = os.getloadavg()
    report["interrupted"] = interrupted
    report["aborted"] = aborted
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = write_markdown(report)
    (args.results_dir / "RESULTS.md").write_text(markdown)
    print()
    print(markdown)
    print(f"wrote {args.results_dir / 'RESULTS.md'} and latest.json")
    return 130 if interrupted else 1 if aborted else 0


if __name__ == "__main__":
    sys.exit(main())
