"""``distq master`` and ``distq worker``: thin wiring of settings, transport and role.

Exit codes: 0 done; 1 the job failed (timeout, failed or wrong results); 2 bad
configuration or usage; 3 the broker could not be reached or refused our credentials.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from distq import __version__
from distq.codec import Codec
from distq.config import VARIABLES, Settings
from distq.console import Console
from distq.errors import AuthenticationFailed, ConfigError, ConnectionFailed
from distq.master import JobSpec, Master
from distq.metrics import MasterMetrics, WorkerMetrics, serve
from distq.security import notices
from distq.tasks import Registry
from distq.transport import Transport, open_transport
from distq.worker import Worker, WorkerOptions

EXIT_FAILED, EXIT_CONFIG, EXIT_UNREACHABLE = 1, 2, 3


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings (each flag overrides its environment variable)")
    for var, flag in VARIABLES.items():
        group.add_argument(flag, dest=var, metavar=var.removeprefix("DISTQ_"), help=f"${var}")
    common.add_argument("--quiet", "-q", action="store_true", help="print only summaries")

    parser = argparse.ArgumentParser(
        prog="distq", description="Distributed master/worker tasks with at-least-once delivery."
    )
    parser.add_argument("--version", action="version", version=f"distq {__version__}")
    roles = parser.add_subparsers(dest="role", required=True, metavar="{master,worker}")

    master = roles.add_parser("master", parents=[common], help="submit the squares job")
    master.add_argument("--tasks", type=_positive(int), help="number of tasks (default 6)")
    master.add_argument(
        "--task-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="each task sleeps S seconds first (the tutorial's worker: 1)",
    )
    master.add_argument("--seed", type=int, help="random seed for the task numbers")
    master.add_argument(
        "--timeout",
        type=_positive(float),
        metavar="S",
        help="give up after S seconds and name what is missing",
    )
    master.add_argument(
        "--rate",
        type=_positive(float),
        metavar="R",
        help="submit R tasks per second until stopped (or --tasks reached)",
    )
    master.add_argument(
        "--max-in-flight",
        type=_positive(int),
        metavar="K",
        help="at most K tasks outstanding (1: one round trip at a time)",
    )
    master.add_argument(
        "--max-attempts",
        type=_positive(int),
        default=3,
        help="attempts per task before it fails for good (default 3)",
    )
    master.add_argument(
        "--wait-workers",
        type=_positive(int),
        metavar="K",
        help="start (and start the clock) once K worker slots are attached",
    )
    master.add_argument(
        "--report", type=Path, metavar="FILE", help="write the job report as JSON to FILE"
    )

    worker = roles.add_parser("worker", parents=[common], help="run tasks")
    worker.add_argument(
        "--concurrency",
        "-c",
        type=_positive(int),
        default=1,
        help="tasks run at once, one thread each (default 1)",
    )
    worker.add_argument(
        "--exit-when-idle",
        type=_positive(float),
        metavar="S",
        help="exit after S seconds with nothing to do",
    )
    worker.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="register a task function by import path (repeatable)",
    )
    worker.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="keep trying to reach the broker for S seconds at start (10)",
    )
    worker.add_argument("--worker-id", help="name in results and dead letters (host-pid)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # its errors reach us as ConnectionFailed
    console = Console(quiet=args.quiet)
    try:
        settings = Settings.load(os.environ, {var: getattr(args, var) for var in VARIABLES})
        registry = Registry()
        for path in getattr(args, "task", []):
            registry.register_path(path)
    except ConfigError as exc:
        console.error(str(exc))
        return EXIT_CONFIG
    try:
        if args.role == "master":
            return _master(args, settings, console)
        return _worker(args, settings, registry, console)
    except ConnectionFailed as exc:
        console.error(str(exc))
        return EXIT_UNREACHABLE


def _master(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    spec = JobSpec(
        tasks=args.tasks if args.tasks is not None else (None if args.rate else 6),
        task_delay=args.task_delay,
        seed=args.seed,
        timeout=args.timeout,
        rate=args.rate,
        max_in_flight=args.max_in_flight,
        max_attempts=args.max_attempts,
        wait_workers=args.wait_workers,
    )
    transport = open_transport(settings, "master")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    metrics = None
    if settings.metrics_port is not None:
        metrics = MasterMetrics()
        serve(settings.metrics_port, metrics.registry)
    try:
        where = f" on {settings.manager_address[0]}:{settings.manager_address[1]}"
        console.info(
            f"master {__version__}: {transport.name} transport"
            + (where if transport.name == "manager" else "")
            + f", queue {settings.queue!r}"
        )
        _notify(console, settings, "master")
        master = Master(transport, console, settings.queue, metrics, Codec.from_settings(settings))
        report = master.run(spec, stop)
    finally:
        transport.close()
    if args.report:
        args.report.write_text(report.to_json() + "\n")
    console.info("master exit")
    return 0 if report.succeeded else EXIT_FAILED


def _worker(
    args: argparse.Namespace, settings: Settings, registry: Registry, console: Console
) -> int:
    transport = _connect_worker(settings, args.connect_timeout, console)
    metrics = None
    if settings.metrics_port is not None:
        metrics = WorkerMetrics()
        serve(settings.metrics_port, metrics.registry)
    where = {
        "manager": f"master {settings.manager_address[0]}:{settings.manager_address[1]}",
        "redis": "redis",
        "rabbitmq": "rabbitmq",
    }[settings.transport]
    console.info(f"Connect to {where} ..... (queue {settings.queue!r})")
    _notify(console, settings, "worker")
    options = WorkerOptions(
        concurrency=args.concurrency,
        prefetch=settings.prefetch,
        heartbeat_interval=settings.heartbeat_interval,
        exit_when_idle=args.exit_when_idle,
        worker_id=args.worker_id or "",
    )
    try:
        return Worker(
            transport,
            registry,
            options,
            console,
            metrics=metrics,
            queue_name=settings.queue,
            codec=Codec.from_settings(settings),
        ).run()
    finally:
        transport.close()


def _notify(console: Console, settings: Settings, role: Literal["master", "worker"]) -> None:
    for level, line in notices(settings, role):
        if level == "warning":
            console.error(f"warning: {line}")
        else:
            console.info(line)


def _connect_worker(settings: Settings, patience: float, console: Console) -> Transport:
    """Open the transport, retrying unreachable brokers for ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return open_transport(settings, "worker")
        except AuthenticationFailed:
            raise
        except ConnectionFailed:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
