"""Render a benchmark report (the dict ``run.py`` writes as ``latest.json``) as Markdown."""

from __future__ import annotations

import statistics
from typing import Any

from cpu import per_thousand

#: Whose CPU the bench counts, in the order of the table's columns.
ROLES = ("master", "workers", "broker", "total")
#: distq variants that switch one optional feature on, and what it is.
FEATURES = {
    "distq-metrics": "metrics on (every task recorded; endpoints read once a second)",
    "distq-signed": "signing on (a MAC on every task and result pack)",
    "distq-jsonlogs": "JSON logs on (per-task events, no --quiet)",
    "distq-textlogs": "text logs with per-task lines (no --quiet), for comparison",
}
#: Rows measured against another variant than plain distq: (variant, its base, what it is).
#: JSON logs against text logs with the same per-task events: what the format costs
#: once a reader wants a line per task either way.
AGAINST = (
    (
        "distq-jsonlogs",
        "distq-textlogs",
        "JSON logs against text logs, both with a line per task event: the format's own cost",
    ),
)

CONFIGS = """\
- **raw (redis)**: redis-py (with hiredis), no framework. Master LPUSHes tasks 500 per
  command in one pipeline; each worker RPOPs up to 500 (BRPOP when empty) and LPUSHes
  their results in one command; master RPOPs results in batches. No acks (a dead worker
  loses tasks). **raw-per-task**: the same master; each worker BRPOPs one task and
  LPUSHes its one result, the loop a plain redis-py user writes.
- **raw / raw-confirm / raw-confirm-ack (rabbitmq)**: pika `BlockingConnection`;
  durable queues, persistent messages; workers `basic_qos(prefetch_count=32)`, manual
  ack after publishing the result to a results queue; master consumes results with
  auto-ack. `raw-confirm` puts every publishing channel (master and workers) in confirm
  mode, which in pika's blocking API waits for the broker after each message.
  `raw-confirm-ack` also has the master ack each result (manual ack): the guarantees
  distq keeps, as a plain pika user gets them.
- **raw (manager)**: the tutorial's `multiprocessing.managers` round: the master starts
  a `BaseManager`, whose forked server process holds a task and a result `queue.Queue`
  (its CPU is this row's broker column); the master and each worker `get` and `put`
  through proxies (one round trip each, pickled). Random authkey, no sleep.
- **celery**: 2 x `celery worker --pool solo` (one OS process each), JSON,
  `task_acks_late=True`, `worker_prefetch_multiplier=32`, gossip/mingle/heartbeat off.
  Results: redis broker → Redis result backend; rabbitmq broker → `rpc://` backend
  (results to the master's reply queue). Master: `apply_async` per task over one
  producer, then `ResultSet.join_native()`; latency: `delay(n).get()`.
- **dramatiq**: `dramatiq --processes 2 --threads 8` (a supervisor plus 2 worker
  processes), default middleware. Results: redis → `Results` middleware with
  `RedisBackend`, master `message.get_result(block=True)` per message; rabbitmq → no
  result backend exists, so the actor publishes its result as a Dramatiq message to a
  reply queue through the worker's own broker channel and the master reads it with
  `broker.consume()` (workers run with `--queues` so none consumes replies).
- **rq**: 2 x `rq worker` with the default `rq.Worker` (forks a work horse per job);
  capped at 2,000 tasks per throughput round (see N) because fork-per-job runs at a
  few dozen jobs/s. **rq-simple**: 2 x `rq worker -w rq.SimpleWorker` (no fork).
  Both: JSON serializer, `Queue.enqueue_many` in one pipeline, results via RQ's results
  stream (`job.latest_result(timeout=...)`, a blocking XREAD) in order.
- **distq**: `distq worker --quiet` x 2 and `distq master --tasks N --quiet --report`
  (`--max-in-flight 1` for latency); numbers from the master's own report. Defaults
  throughout (`DISTQ_PREFETCH` 128, 5 s leases, acks, confirms, persistent messages). The master
  runs with `--wait-workers 2`: its clock starts once both workers are attached (on
  manager the workers start once and reconnect to each new master, which hosts the
  queues, on the same address).
- **distq-signed**: the same with `DISTQ_SIGNING_KEYS` set on master and workers: a
  MAC over every task (keyed BLAKE2b) and result pack (HMAC-SHA256, over 512 bytes),
  checked before decoding. Its ratio column is
  what signing costs.
- **distq-metrics**: `DISTQ_METRICS_PORT` on the master and every worker, each
  endpoint's `/metrics` and `/readyz` read once a second, on one kept-alive connection
  per endpoint (as Prometheus reads). A counted round lasts well
  under a second at these rates, so a worker's endpoint is read at most once in it and
  a master's (a new process each round) seldom: the row measures what grows with the
  work, every task recorded in the counters and histograms, not a scrape.
- **distq-jsonlogs**: `DISTQ_LOG_FORMAT=json` without `--quiet`: every task's events
  (submitted, settled, result received) as JSON lines into the processes' log files.
  **distq-textlogs**: text logs without `--quiet`, the per-task lines those events
  replace.
- **distq-executor**: the same workers; the master is one `distq.Executor` in the trial
  process (it hosts the queues on manager), kept for every round; throughput
  `list(executor.map("square", tasks))` (chunksize 1: one task per call), latency
  `executor.submit("square", n).result()`, clock started once both workers are attached.
  Its ratio column is `distq master` over the executor.
"""


def _range(stat: dict[str, float] | None, scale: float, fmt: str) -> str:
    if not stat:
        return "—"
    median = format(stat["median"] * scale, fmt)
    if stat["min"] == stat["max"]:
        return median
    low, high = format(stat["min"] * scale, fmt), format(stat["max"] * scale, fmt)
    return f"{median} ({low}-{high})"


def _ratio(ours: dict[str, float] | None, theirs: dict[str, float] | None) -> str:
    if not ours or not theirs or not theirs["median"]:
        return "—"
    return f"{ours['median'] / theirs['median']:.2f}x"


def _status(row: dict[str, Any]) -> str:
    status = _outcome(row)
    if row.get("planned_trials"):  # the run stopped before this row's other trials
        status += f", {row['trials']} of {row['planned_trials']} trials (run stopped)"
    return status


def _outcome(row: dict[str, Any]) -> str:
    if row["ok"] == row["trials"]:
        return "ok"
    failed = [s for s in row["statuses"] if s != "ok"]
    kinds = ", ".join(sorted(set(failed)))
    if row["ok"] == 0:
        return kinds.upper()
    return f"{row['ok']}/{row['trials']} ok ({kinds})"


def _cpu_cells(row: dict[str, Any], key: str = "cpu_per_1000") -> list[str]:
    """CPU seconds per 1,000 tasks by role, then the total in µs per task."""
    cpu = row.get(key) or {}
    cells = [_range(cpu.get(role), 1, ".3f") for role in ROLES[:-1]]
    total = cpu.get("total")
    return [*cells, _range(total, 1, ".3f"), _range(total, 1e3, ".1f")]


_CPU_HEADER = [
    "| broker | contestant | master (s/1k) | workers (s/1k) | broker (s/1k) "
    "| total (s/1k) | total (µs/task) |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
]


def _cpu_section(report: dict[str, Any]) -> list[str]:
    rows = [r for r in report["rows"] if r.get("cpu_per_1000")]
    if not rows:
        return []
    lines = [
        "",
        "## CPU per task, by role",
        "",
        "CPU seconds (user + system) per 1,000 tasks over the throughput round, from each "
        "process's own CPU-time clock (nanoseconds; reaped children from `/proc/<pid>/stat`); "
        "master: the "
        "process that submits and collects (for `distq` rows the `distq master` process's "
        "own count over its timed job; for the others the trial process), workers: every "
        "worker process and its children, broker: the server's processes. On manager, distq "
        "serves the queues in its master's own process, so its master column includes them "
        "(broker: in master); the tutorial's raw manager serves them from the server "
        "process `BaseManager.start()` forks, counted as its broker. For the `distq` "
        "command-line rows (every `distq*` row but `distq-executor`) each round is one "
        "`distq master` process: its master column and the clock cover its timed job "
        "only, while the workers' and broker's columns cover that whole process, its "
        "start-up, connection, wait for workers and exit too. `distq-executor`, connected "
        "once for every round, shows the difference. Median (min-max); CPU "
        "time moves far less with the machine's other load than throughput does.",
        "",
        *_CPU_HEADER,
    ]
    lines += _cpu_rows(rows, "cpu_per_1000")
    sequential = [r for r in report["rows"] if r.get("latency_cpu_per_1000")]
    if sequential:
        lines += [
            "",
            "### One task at a time",
            "",
            "The same, over the latency round: one task submitted, its result awaited, then "
            "the next. This is what a master and workers cost per task when tasks come one "
            "by one (a low rate, an Executor's `submit().result()`): the broker round trips "
            "of each task, not spread over a batch. For the `distq` command-line rows the "
            "master is the `distq master --max-in-flight 1` process's own count over its "
            "timed job, while the workers' and broker's columns again cover that whole "
            "process (start-up, connection, wait for workers, exit), which weighs more per "
            "task in this shorter round; compare `distq-executor`.",
            "",
            *_CPU_HEADER,
            *_cpu_rows(sequential, "latency_cpu_per_1000"),
        ]
    return lines


def _broker_cell(row: dict[str, Any], cell: str) -> str:
    """distq on manager has no broker process: its queues are in its master. Any other
    row on manager without a broker figure did not count its queue server."""
    if row["broker"] != "manager" or cell != "—":
        return cell
    return "in master" if row.get("contestant", "distq").startswith("distq") else "not counted"


def _cpu_rows(rows: list[dict[str, Any]], key: str) -> list[str]:
    lines = []
    for row in rows:
        cells = _cpu_cells(row, key)
        cells[2] = _broker_cell(row, cells[2])
        lines.append(f"| {row['broker']} | {row['contestant']} | " + " | ".join(cells) + " |")
    return lines


def _feature_section(report: dict[str, Any]) -> list[str]:
    """Each optional feature's row against plain distq: throughput and CPU per task."""
    by_key = {(r["broker"], r["contestant"]): r for r in report["rows"]}
    lines: list[str] = []
    for (broker, name), row in by_key.items():
        base = by_key.get((broker, "distq"))
        if name not in FEATURES or base is None:
            continue
        lines.append(_feature_row(broker, FEATURES[name], row, base))
        for variant, other, label in AGAINST:
            if name == variant and (broker, other) in by_key:
                lines.append(_feature_row(broker, label, row, by_key[(broker, other)]))
    if not lines:
        return []
    return [
        "",
        "## What each optional feature costs",
        "",
        "Each feature's row against plain `distq` on the same broker (medians), unless it "
        "names another base: the change in throughput and in CPU per task (all roles). "
        "Positive CPU = the feature costs that much more per task. Trials run round-robin, "
        "so trial i of a feature ran next to trial i of its base: the last column is the "
        "change in CPU per task pair by pair, median (min to max). Its spread is how far "
        "one pair can be trusted on this machine.",
        "",
        "| broker | feature | throughput | CPU per task | CPU per task, pair by pair |",
        "| --- | --- | ---: | ---: | ---: |",
        *lines,
    ]


def _feature_row(broker: str, label: str, row: dict[str, Any], base: dict[str, Any]) -> str:
    cpu, base_cpu = row.get("cpu_per_1000") or {}, base.get("cpu_per_1000") or {}
    return (
        f"| {broker} | {label} | {_change(row.get('throughput'), base.get('throughput'))} | "
        f"{_change(cpu.get('total'), base_cpu.get('total'))} | {_paired(row, base)} |"
    )


def _cpu_per_task(trial: dict[str, Any]) -> float | None:
    """A trial's CPU over every role measured, per 1,000 tasks; None if it failed."""
    if trial.get("status") != "ok" or not trial.get("tasks"):
        return None
    return per_thousand(trial.get("cpu_seconds") or {}, trial["tasks"])["total"]


def _paired(row: dict[str, Any], base: dict[str, Any]) -> str:
    """The change in CPU per task of each trial against the base's trial of the same
    round, as ``median (min to max)``; a dash without two such pairs."""
    changes = []
    pairs = zip(row.get("trials_detail") or [], base.get("trials_detail") or [], strict=False)
    for ours, theirs in pairs:  # a base with fewer trials (one ran out of time) pairs fewer
        a, b = _cpu_per_task(ours), _cpu_per_task(theirs)
        if a is not None and b:
            changes.append((a / b - 1) * 100)
    if len(changes) < 2:
        return "—"
    low, high = round(min(changes)) + 0, round(max(changes)) + 0  # + 0: no "-0"
    return f"{statistics.median(changes):+.1f} % ({low:+d} to {high:+d})"


def _change(ours: dict[str, float] | None, base: dict[str, float] | None) -> str:
    if not ours or not base or not base["median"]:
        return "—"
    return f"{(ours['median'] / base['median'] - 1) * 100:+.1f} %"


def _counts(report: dict[str, Any]) -> str:
    """The worker counts the scaling round ran with: ``--scaling``'s, else its rows'."""
    counts = report["settings"].get("scaling") or sorted(
        {row["workers"] for row in report.get("scaling") or []}
    )
    return ", ".join(str(count) for count in counts)


def _scaling_section(report: dict[str, Any]) -> list[str]:
    rows = report.get("scaling") or []
    if not rows:
        return []
    lines = [
        "",
        "## distq scaling: worker processes on one broker",
        "",
        f"The same {report['settings']['tasks']:,}-task round with {_counts(report)} "
        "`distq worker` processes (concurrency 1 each) on one broker and one master, "
        "median (min-max) of "
        f"{report['settings'].get('scaling_repeat', 1)} trial(s). This machine has "
        f"{report['machine']['nproc']} CPUs for all of them: where throughput stops growing, "
        "it is saturated, and the CPU per task says what one more worker host would have to "
        "carry.",
        "",
        "| broker | workers | throughput (tasks/s) | master (s/1k) | workers (s/1k) "
        "| broker (s/1k) | total (s/1k) | total (µs/task) | status |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        cells = _cpu_cells(row)
        cells[2] = _broker_cell(row, cells[2])  # scaling rows are distq's
        lines.append(
            f"| {row['broker']} | {row['workers']} | {_range(row.get('throughput'), 1, ',.0f')} | "
            + " | ".join(cells)
            + f" | {_status(row)} |"
        )
    return lines


def write_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    s = report["settings"]
    lines = [
        "# distq benchmark: squares job",
        "",
        f"Run {report['date']} - {report['finished']} with `{report['command'].strip()}`"
        + (f" — **interrupted by {report['interrupted']}**" if report.get("interrupted") else "")
        + (f" — **aborted by {report['aborted']}**" if report.get("aborted") else ""),
        "",
        "| machine | |",
        "| --- | --- |",
        f"| CPUs | nproc {m['nproc']}, {m['cpu']} |",
        f"| RAM | {m['ram_gib']} GiB |",
        f"| OS | {m['os']}, kernel {m['kernel']} |",
        f"| Python | {m['python']} |",
        f"| packages | {', '.join(f'{k} {v}' for k, v in m['packages'].items())} |",
        f"| distq commit | {m['distq_commit']} |",
        "| brokers | "
        + (", ".join(f"{k} {v['version']}" for k, v in report["brokers"].items()) or "—")
        + " |",
        "| load average (1/5/15 min) | start "
        + " / ".join(f"{x:.2f}" for x in report["load_average_start"])
        + ", end "
        + " / ".join(f"{x:.2f}" for x in report["load_average_end"])
        + " |",
        "",
        f"Workload: N random `square(n)`, n in 1..1000, no delay, {s['workers']} worker "
        "processes already connected and warmed by a 200-task round; throughput = N / time "
        "from the first submit to the last verified result. Latency: "
        f"{s['latency_tasks']} sequential single tasks (after 20 unmeasured), round trip; "
        "p50 and p99 by nearest rank for every row (distq master's own definition). "
        f"Each cell: median (min-max) of {s['repeat']} trial(s); a trial is killed after "
        f"{s['timeout']:.0f} s. The ratio columns are distq's median over the row's median "
        "on the same broker: throughput above 1x means distq is faster, latency below 1x "
        "means distq answers sooner.",
        "",
        "| broker | contestant | N | throughput (tasks/s) | latency p50 (ms) | "
        "latency p99 (ms) | distq ÷ this, throughput | distq ÷ this, p50 | status |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    distq = {r["broker"]: r for r in report["rows"] if r["contestant"] == "distq"}
    notes: list[str] = []
    for row in report["rows"]:
        ours = distq.get(row["broker"], {})
        is_distq = row["contestant"] == "distq"
        status = _status(row)
        if row["errors"]:
            notes.append(
                f"- {row['broker']} / {row['contestant']}: "
                + "; ".join(sorted({e.splitlines()[0][:300] for e in row["errors"] if e}))
            )
        lines.append(
            f"| {row['broker']} | {row['contestant']} | {row['tasks']:,} | "
            f"{_range(row.get('throughput'), 1, ',.0f')} | "
            f"{_range(row.get('latency_p50_seconds'), 1e3, '.2f')} | "
            f"{_range(row.get('latency_p99_seconds'), 1e3, '.2f')} | "
            f"{'—' if is_distq else _ratio(ours.get('throughput'), row.get('throughput'))} | "
            f"{'—' if is_distq else _ratio(ours.get('latency_p50_seconds'), row.get('latency_p50_seconds'))} | "  # noqa: E501
            f"{status} |"
        )
    if notes:
        lines += ["", "Failures:", "", *notes]
    lines += _cpu_section(report)
    lines += _feature_section(report)
    lines += _scaling_section(report)
    if report["memory"]:
        lines += [
            "",
            f"## distq worker memory, {s['memory_tasks']:,}-task run",
            "",
            "VmRSS of each worker process from /proc, sampled every 0.2 s: start = first "
            "sample (before the round, after the 200-task warm-up), halfway = the middle "
            "sample, end = last sample while the worker was alive.",
            "",
            "| broker | worker pid | start (MiB) | halfway (MiB) | end (MiB) | peak (MiB) "
            "| run | status |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for trial in report["memory"]:
            run = (
                f"{trial['throughput']:,.0f} tasks/s in {trial['elapsed_seconds']:.1f} s"
                if trial["status"] == "ok"
                else "—"
            )
            samples = trial.get("worker_rss") or [{}]
            for w in samples:
                mib = {
                    k: f"{w[k] / 1024:.1f}" if k in w else "—"
                    for k in ("start_kib", "half_kib", "end_kib", "peak_kib")
                }
                error = "" if trial["status"] == "ok" else f": {trial.get('error', '')[:200]}"
                lines.append(
                    f"| {trial['broker']} | {w.get('pid', '—')} | {mib['start_kib']} | "
                    f"{mib['half_kib']} | {mib['end_kib']} | {mib['peak_kib']} | {run} | "
                    f"{trial['status']}{error} |"
                )
    lines += ["", "## How each contestant is set up", "", CONFIGS]
    lines += [
        "Numbers come from one shared 2-core machine; other work may have been running "
        "(see the load averages), so treat differences under ~20 % as noise. "
        f"Raw per-trial numbers and logs: `latest.json` (logs under `{report['logs']}`).",
        "",
    ]
    return "\n".join(lines)
