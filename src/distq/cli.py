"""``distq master``, ``distq worker`` and ``distq probe``: thin wiring of settings,
transport and role.

Exit codes: 0 done; 1 the job failed (timeout, failed or wrong results), or a probe
did not answer 200; 2 bad configuration or usage; 3 the broker could not be reached or
refused our credentials.
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

from distq import __version__
from distq.config import VARIABLES, Settings
from distq.console import Console
from distq.errors import AuthenticationFailed, ConfigError, ConnectionFailed
from distq.logs import make_console, mask_url
from distq.master import JobSpec, Master
from distq.observe import MasterObservability, WorkerObservability
from distq.probe import add_probe_parser, run_probe
from distq.tasks import Registry
from distq.transport import Transport, open_transport
from distq.worker import Worker, WorkerOptions, default_worker_id

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
    roles = parser.add_subparsers(dest="role", required=True, metavar="{master,worker,probe}")

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
    add_probe_parser(roles)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.role == "probe":
        return run_probe(args, os.environ)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # its errors reach us as ConnectionFailed
    flags = {var: getattr(args, var) for var in VARIABLES}
    wanted = flags["DISTQ_LOG_FORMAT"] or os.environ.get("DISTQ_LOG_FORMAT", "")
    console = make_console("json" if wanted.strip() == "json" else "text", args.role, args.quiet)
    try:
        settings = Settings.load(os.environ, flags)
        registry = Registry()
        for path in getattr(args, "task", []):
            registry.register_path(path)
    except ConfigError as exc:
        console.error(str(exc))
        return EXIT_CONFIG
    fields = {}
    if args.role == "worker":  # named now: the JSON lines carry it from the first one
        args.worker_id = fields["worker"] = args.worker_id or default_worker_id()
    console = make_console(settings.log_format, args.role, args.quiet, **fields)
    try:
        if args.role == "master":
            return _master(args, settings, console)
        return _worker(args, settings, registry, console)
    except ConnectionFailed as exc:
        console.error(str(exc))
        return EXIT_UNREACHABLE
    except ConfigError as exc:  # found once running, e.g. the metrics port is taken
        console.error(str(exc))
        return EXIT_CONFIG


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
    observe = MasterObservability(settings, console)
    try:
        transport = open_transport(settings, "master")
    except BaseException:
        observe.close()
        raise
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        observe.attach(transport)
        console.info(
            f"master {__version__}: {transport.name} transport {_where(settings)}"
            f", queue {settings.queue!r}"
        )
        master = Master(transport, console, settings.queue, observe.telemetry, observe.health)
        report = master.run(spec, stop)
    finally:
        observe.close()
        transport.close()
    if args.report:
        args.report.write_text(report.to_json() + "\n")
    console.info("master exit")
    return 0 if report.succeeded else EXIT_FAILED


def _worker(
    args: argparse.Namespace, settings: Settings, registry: Registry, console: Console
) -> int:
    observe = WorkerObservability(settings, console, args.concurrency, registry.names())
    try:
        transport = _connect_worker(settings, args.connect_timeout, console)
    except BaseException:
        observe.close()
        raise
    observe.attach(transport)
    where = {
        "manager": f"master {settings.manager_address[0]}:{settings.manager_address[1]}",
        "redis": f"redis {_where(settings)}",
        "rabbitmq": f"rabbitmq {_where(settings)}",
    }[settings.transport]
    console.info(f"Connect to {where} ..... (queue {settings.queue!r})")
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
            health=observe.health,
            telemetry=observe.telemetry,
            queue_name=settings.queue,
        ).run()
    finally:
        observe.close()
        transport.close()


def _where(settings: Settings) -> str:
    """The broker, as a banner names it: the password masked."""
    if settings.transport == "manager":
        return f"on {settings.manager_address[0]}:{settings.manager_address[1]}"
    url = settings.redis_url if settings.transport == "redis" else settings.amqp_url
    return f"at {mask_url(url)}"


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
