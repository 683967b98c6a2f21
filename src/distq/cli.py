"""``distq master``, ``distq worker`` and ``distq probe``: thin wiring of settings,
transport and role.

``submit``, ``status``, ``dead-letters`` and ``requeue-dead`` live in :mod:`distq.commands`.

Exit codes: 0 done; 1 the job failed (timeout, failed or wrong results), or a probe
did not answer 200; 2 bad configuration or usage; 3 the broker could not be reached or
refused our credentials.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Literal, NoReturn

from distq import __version__, commands, descriptors, flagtypes, probe, startup
from distq.codec import Codec
from distq.config import (
    CONCURRENCY,
    CONNECT_TIMEOUT,
    DEFAULTS,
    MAX_ATTEMPTS,
    MAX_CONCURRENCY,
    MOST_ATTEMPTS,
    PREFIX,
    SETTINGS,
    STATUS_EVERY,
    TASKS,
    WORKERS_ONLY,
    Settings,
    misspelled,
)
from distq.console import Console, announce, escaping
from distq.envelope import shown
from distq.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    SignalExit,
    TransportError,
)
from distq.logs import make_console
from distq.management import delivery_limit_warning
from distq.master import JobSpec, Master
from distq.observe import MasterObservability, WorkerObservability
from distq.probe import add_probe_parser, command_parser
from distq.security import notices
from distq.signals import (
    exit_now,
    leave_if_asked,
    leave_surely,
    leave_under_way,
    stop_signals,
)
from distq.squares import Squares
from distq.taskoutput import whole_lines
from distq.tasks import Registry
from distq.timelimits import TimeLimits
from distq.transport import Transport, open_transport
from distq.worker import Worker, WorkerOptions, default_worker_id, exit_status

EXIT_FAILED, EXIT_CONFIG, EXIT_UNREACHABLE = 1, 2, 3

#: A master's or worker's youngest-generation threshold for CPython's cycle collector.
#: The default, 700 new container objects, is a few hundred tasks here (each makes a few
#: lists, tuples and structs, freed by reference counting, not by the collector); every
#: 10th young collection also walks the older generation, and the master holds a table
#: entry per task in flight. At 5,000 a 100,000-task job on Redis spent 45 ms in the
#: collector, not 131 (measured with ``gc.callbacks``): about 0.9 µs per task.
YOUNG_GC_THRESHOLD = 5_000


#: How long a wait for the broker (``--connect-timeout``) goes unsaid: a start-up race.
WAIT_SAID_AFTER = 2.0


def fewer_collections() -> None:
    """Raise this process's young-generation threshold to :data:`YOUNG_GC_THRESHOLD`;
    a collector switched off (threshold 0) or set higher is left as it is."""
    young, older, oldest = gc.get_threshold()
    if 0 < young < YOUNG_GC_THRESHOLD:
        gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings (each flag overrides its environment variable)")
    for entry in SETTINGS:
        group.add_argument(
            entry.flag,
            dest=entry.variable,
            metavar=entry.variable.removeprefix("DISTQ_"),
            help=f"{entry.help} (${entry.variable}, default {entry.shown_default})".replace(
                "%",
                "%%",  # argparse formats help with %
            ),
        )
    common.add_argument("--quiet", "-q", action="store_true", help="print only summaries")

    parser, roles = command_parser()

    master = roles.add_parser("master", parents=[common], help="submit the squares job")
    master.add_argument(
        "--tasks", type=flagtypes.count, metavar="N", help=f"number of tasks (default {TASKS})"
    )
    master.add_argument(
        "--task-delay",
        type=flagtypes.seconds_or_zero,
        default=0.0,
        metavar="S",
        help="each task sleeps S seconds first (the tutorial's worker: 1)",
    )
    master.add_argument(
        "--seed", type=flagtypes.seed, metavar="X", help="random seed for the task numbers"
    )
    master.add_argument(
        "--timeout",
        type=flagtypes.seconds,
        metavar="S",
        help="give up S seconds after reaching the broker: take back the tasks still queued "
        "(Redis, manager), name those missing (exit 1)",
    )
    master.add_argument(
        "--rate",
        type=flagtypes.rate,
        metavar="R",
        help="submit R tasks per second until SIGTERM/SIGINT, the job's end (exit 0 when every "
        "task submitted came back; Redis and manager take back those still queued), or --tasks "
        "reached",
    )
    master.add_argument(
        "--max-in-flight",
        type=flagtypes.count,
        metavar="K",
        help="at most K tasks outstanding (1: one round trip at a time)",
    )
    master.add_argument(
        "--status-every",
        type=flagtypes.seconds,
        default=STATUS_EVERY,
        metavar="S",
        help=f"--rate mode: seconds between status lines (default {STATUS_EVERY:g})",
    )
    master.add_argument(
        "--max-attempts",
        type=flagtypes.count_up_to(MOST_ATTEMPTS),
        default=MAX_ATTEMPTS,
        metavar="N",
        help=f"attempts per task before it fails for good (default {MAX_ATTEMPTS}, at most "
        f"{MOST_ATTEMPTS:,})",
    )
    master.add_argument(
        "--wait-workers",
        type=flagtypes.count,
        metavar="K",
        help="start (and start the clock) once K worker slots are attached",
    )
    master.add_argument(
        "--report", type=Path, metavar="FILE", help="write the job report as JSON to FILE"
    )
    master.add_argument(
        "--connect-timeout",
        type=flagtypes.seconds_or_zero,
        default=0.0,
        metavar="S",
        help="keep trying to reach the broker for S seconds at start, then exit 3 (0: "
        "at once; on manager the master listens, nothing to wait for)",
    )

    worker = roles.add_parser("worker", parents=[common], help="run tasks")
    worker.add_argument(
        "--concurrency",
        "-c",
        type=flagtypes.count_up_to(MAX_CONCURRENCY),
        default=CONCURRENCY,
        metavar="C",
        help=f"tasks run at once, one thread each, 1 to {MAX_CONCURRENCY} (default {CONCURRENCY})",
    )
    worker.add_argument(
        "--exit-when-idle",
        type=flagtypes.seconds,
        metavar="S",
        help="exit after S seconds with nothing to do, counting from when its last retry is due",
    )
    worker.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="register a task function by import path (repeatable)",
    )
    worker.add_argument(
        "--tasks",
        action="append",
        default=[],
        dest="task_modules",
        metavar="MODULE",
        help="register every function of MODULE marked @distq.task (repeatable)",
    )
    worker.add_argument(
        "--connect-timeout",
        type=flagtypes.seconds_or_zero,
        default=CONNECT_TIMEOUT,
        metavar="S",
        help="keep trying to reach the broker for S seconds at start, then exit 3 "
        f"({CONNECT_TIMEOUT:g})",
    )
    worker.add_argument(
        "--worker-id",
        type=flagtypes.name,
        metavar="NAME",
        help="name in results and dead letters (host-pid)",
    )
    add_probe_parser(roles)
    commands.add_parsers(roles, common)
    return parser


def flag_variables(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``DISTQ_*`` variable named after a command's own flag, which
    has no variable (``DISTQ_CONCURRENCY`` for ``--concurrency``): a compose file or a
    ConfigMap that sets one ran with the flag's default, without a word."""
    settings = {entry.variable for entry in SETTINGS}
    commands: dict[str, list[str]] = {}  # variable -> the flag and the commands taking it
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                for option in (o for a in sub._actions for o in a.option_strings):
                    if option.startswith("--") and option != "--help":
                        variable = PREFIX + option[2:].upper().replace("-", "_")
                        commands.setdefault(variable, [option]).append(f"distq {command}")
    return [
        f"{variable} is not a distq setting (ignored); {taken[0]} is a flag of "
        f"{', '.join(taken[1:])}: give it on the command line"
        for variable, taken in sorted(commands.items())
        if variable in environ and variable not in settings
    ]


def main(argv: Sequence[str] | None = None) -> int:
    escaping(sys.stdout, sys.stderr)  # an ASCII locale: escaped, not a failure
    parser = _parser()
    args = parser.parse_args(argv)
    if args.role == "probe":  # no settings but its own
        return probe.run(args)
    flags = {e.variable: getattr(args, e.variable) for e in SETTINGS}
    fields = {}
    if args.role == "worker":  # named now: the JSON lines carry it from the first one
        args.worker_id = fields["worker"] = args.worker_id or default_worker_id()
    # JSON from the first line if asked for, even if another setting turns out wrong
    wanted = (flags["DISTQ_LOG_FORMAT"] or os.environ.get("DISTQ_LOG_FORMAT", "")).strip()
    console = make_console(wanted, args.role, args.quiet, **fields)
    if args.role == "worker":  # from its first line on, a SIGTERM ends it with a line
        _leave_on_signal(console, "worker", 0)
    elif args.role == "master":  # a job not started is not done, but an endless --rate's
        _leave_on_signal(console, "master", 0 if args.rate and args.tasks is None else 1)
    flagged = flag_variables(parser, os.environ)
    named = {warning.split()[0] for warning in flagged}
    for warning in flagged + [w for w in misspelled(os.environ) if w.split()[0] not in named]:
        console.error(f"warning: {warning}")
    if args.role != "worker":
        for variable, flag in WORKERS_ONLY.items():  # a user put it beside --max-attempts
            if flags.get(variable) is not None:  # the flag, given here (a variable may be shared)
                console.error(
                    f"warning: {flag} is a worker's setting: `distq {args.role}` does not "
                    "read it; give it to `distq worker`"
                )
    patience = DEFAULTS.drain_seconds  # how long a worker's exit waits for task threads
    deadline: list[float] = []  # a signal's drain's end: the exit waits no longer
    try:
        settings = Settings.load(os.environ, flags)
        patience = settings.drain_seconds
        registry = Registry()
        for path in getattr(args, "task", []):
            registry.register_path(path)
        for module in getattr(args, "task_modules", []):
            registry.register_module(module)
        if getattr(args, "task", []) or getattr(args, "task_modules", []):
            console.info(f"tasks: {', '.join(registry.names())}")  # what this worker runs
        if args.role in commands.COMMANDS:
            return commands.run(args, settings, console)
        if args.role == "master":
            return _master(args, settings, console)
        with whole_lines():
            code = _worker(args, settings, registry, console, deadline)
    # ConfigError: from a setting, or one only the transport can judge; TransportError:
    # unreachable or refusing at start (mid-job: reconnects)
    except (ConfigError, TransportError) as exc:
        console.error(str(exc))
        code = _exit_code(exc)
    except SignalExit as exc:  # a signal while connecting: said
        if args.role != "worker":
            raise
        code = _exit_code(exc)
    finally:  # a task module's threads may run already (started at its import), its import
        leave_under_way()  # may turn a stop into its error: no alarm cuts their wait
    if args.role == "worker":  # every way out of a worker that ran tasks (exit 2 too)
        said = "DISTQ_DRAIN_SECONDS"
        if deadline:  # stopped by a signal: what is left of its drain, not a new one
            left = math.ceil(max(0.0, deadline[0] - time.monotonic()) * 10) / 10
            if left < patience:
                patience, said = left, "what is left of DISTQ_DRAIN_SECONDS"
        _bound_exit(code, console, patience, said)
    return code


def _master(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    if args.report is not None:
        _check_report(args.report)
    spec = JobSpec(
        tasks=args.tasks if args.tasks is not None else (None if args.rate else TASKS),
        timeout=args.timeout,
        rate=args.rate,
        max_in_flight=args.max_in_flight,
        wait_workers=args.wait_workers,
        status_every=args.status_every,
    )
    squares = Squares(task_delay=args.task_delay, seed=args.seed, max_attempts=args.max_attempts)
    port = settings.manager_address[1]
    if settings.transport == "manager" and settings.metrics_port == port:  # both its own
        raise ConfigError(
            f"DISTQ_METRICS_PORT and DISTQ_MANAGER_ADDRESS name the same port, {port}: a "
            "manager master listens on both; give its metrics endpoint another port"
        )
    fewer_collections()
    observe = MasterObservability(settings, console)
    try:
        transport = _connect(settings, "master", args.connect_timeout, console)
    except BaseException:
        observe.close()
        raise
    stop, hurry = threading.Event(), threading.Event()
    over: list[str] = []  # the job's end, decided once (Master.run)
    for sig in stop_signals():
        signal.signal(sig, partial(_stop_job, console, stop, hurry, over, spec.drain_seconds))
    try:
        leave_if_asked()  # a stop swallowed before these handlers were in place: no job
        observe.attach(transport)
        console.info(f"master {__version__}: {transport.describe()}, queue {settings.queue!r}")
        _notify(console, settings, "master")
        master = Master(
            transport,
            console,
            observe.telemetry,
            Codec.from_settings(settings),
            health=observe.health,
        )
        report = master.run(spec, squares, stop, hurry, over)
    finally:
        _note_signals(console, "master")
        observe.close()
        transport.close()
    written = True
    if args.report is not None:
        try:
            args.report.write_text(report.to_json() + "\n")
        except OSError as exc:  # checked at start, but the disk may fill, the directory go
            console.error(f"--report {args.report}: could not write the job report: {exc}")
            written = False
    console.info("master exit")
    if isinstance(master.refused, TransportError):  # its certificate: as at start
        return EXIT_UNREACHABLE
    if master.refused is not None:
        return EXIT_CONFIG  # said, with the job's report: a setting the broker refused
    # an endless --rate stopped is its end, before its workers came as after (as while
    # connecting: exit 0): a rollout or scale-down before they attach is no failure
    stopped = stop.is_set() and not (over and over[0])  # not a stop once the job was over
    endless_stopped = spec.tasks is None and stopped and not report.problems
    return 0 if (report.succeeded or endless_stopped) and written else EXIT_FAILED


def _check_report(path: Path) -> None:
    """Fail before anything connects if ``--report`` cannot be written: found only after
    the job, it would lose the report (with a traceback) and end a finished job in error."""
    where = path.parent  # Path(".") for a bare file name
    why = None
    if path.is_dir():
        why = "a directory, not a file"
    elif not where.is_dir():
        why = f"its directory {str(where)!r} does not exist"
    elif path.exists() and not os.access(path, os.W_OK):
        why = "not writable by this user"
    elif not path.exists() and not os.access(where, os.W_OK | os.X_OK):
        why = f"its directory {str(where)!r} is not writable by this user"
    if why is not None:
        raise ConfigError(f"--report {str(path)!r}: {why}; name a file the master can write")


def _leave_on_signal(console: Console, role: str, code: int) -> None:
    """Until the master or worker installs its own handlers (once connected), SIGTERM and
    SIGINT end it at once (exit ``code``), with a line: nothing is in hand yet; and as
    PID 1 in a container an unhandled SIGTERM is ignored, so `docker stop` would wait out
    its whole grace period. A signal the entry point held (:mod:`distq.startup`) ends it
    here, the same way."""

    def leave(signum: int, _frame: object) -> None:
        announce(console, f"{signal.Signals(signum).name} while connecting: {role} exit")
        leave_surely(code)  # where Python swallows it (a finalizer's), it ends all the same
        raise SignalExit(code)

    for sig in stop_signals():
        signal.signal(sig, leave)
    early = startup.taken()  # held by the entry point while it imported: as if it came now
    if early is not None:
        leave(early, None)


def _stop_job(
    console: Console,
    stop: threading.Event,
    hurry: threading.Event,
    over: list[str],
    drain: float,
    signum: int,
    _frame: object,
) -> None:
    """The master's first SIGTERM or SIGINT stops the job, giving the results in flight
    ``drain`` s; a second stops it at once. Each says so (they were silent for the
    drain's 5 s, and the second did nothing). A job already over (past its --timeout,
    or every result in) ends as it was ending, without the drain: the first says that
    instead (``over``, Master.run)."""
    name = signal.Signals(signum).name
    if not stop.is_set():
        over.append("")  # the job's end: a stop, unless the job said it was over first
        stop.set()
        if over[0]:
            announce(
                console,
                f"{name}: the job is over ({over[0]}), ending already "
                f"(send {name} again to stop at once)",
            )
            return
        announce(
            console,
            f"{name}: stopping the job; results in flight get up to {drain:g} s "
            f"(send {name} again to stop at once)",
        )
    elif not hurry.is_set():
        hurry.set()
        announce(console, f"{name} again: stopping at once")


def _note_signals(console: Console, role: str) -> None:
    """From here on a SIGTERM or SIGINT only says the stop is under way: the process is
    closing its connections, each bounded, and exits with the code it has."""
    for sig in stop_signals():
        signal.signal(sig, _noted(console, role))


def _noted(console: Console, role: str) -> Callable[[int, FrameType | None], None]:
    """The handler of :func:`_note_signals`."""

    def noted(signum: int, _frame: FrameType | None) -> None:
        announce(console, f"{signal.Signals(signum).name}: the {role} is stopping already")

    return noted


def _worker(
    args: argparse.Namespace,
    settings: Settings,
    registry: Registry,
    console: Console,
    deadline: list[float] | None = None,
) -> int:
    """Run the worker; ``deadline`` gets the end of the drain of a stop by signal."""
    fewer_collections()
    _crashes_said()
    short = descriptors.room_for(args.concurrency, settings.transport)
    if short is not None:  # its slots past the limit would retry for ever, its probes starve
        raise ConfigError(short)
    observe = WorkerObservability(settings, console, args.concurrency, registry.runnable())
    try:
        transport = _connect(settings, "worker", args.connect_timeout, console)
    except BaseException:
        observe.close()
        raise
    observe.attach(transport)
    limit_warning = delivery_limit_warning(settings, args.concurrency, transport.broker_version)
    if limit_warning is not None:
        console.error(limit_warning)
    console.info(f"Connect to {transport.describe()} ..... (queue {settings.queue!r})")
    _notify(console, settings, "worker")
    options = WorkerOptions.from_settings(
        settings,
        concurrency=args.concurrency,
        exit_when_idle=args.exit_when_idle,
        worker_id=args.worker_id or "",
    )
    _say_time_limits(console, options.time_limits, registry)
    worker: Worker | None = None
    try:
        leave_if_asked()  # a stop swallowed since the connect: no task loop to start
        worker = Worker(
            transport,
            registry,
            options,
            console,
            health=observe.health,
            telemetry=observe.telemetry,
            codec=Codec.from_settings(settings),
        )
        _exit_keeps(EXIT_FAILED)  # a task's os._exit(0) as the run ends: 1 until it is known
        code = worker.run(ended=_noted(console, "worker"))  # its summary, said whatever comes
        _exit_keeps(code)  # from here on, as the transport closes
        return code
    except BaseException as exc:
        _exit_keeps(_exit_code(exc))
        raise
    finally:
        if deadline is not None and worker is not None and worker.signal_deadline is not None:
            deadline.append(worker.signal_deadline)
        # a Worker that ended before its loop put back the handler it found (leave():
        # "while connecting"): a signal now would say so, exit 0 and skip the closes
        _note_signals(console, "worker")
        observe.close()
        transport.close()


def _crashes_said() -> None:
    """A task that crashed in C code (a segfault through ``ctypes`` or an extension, an
    abort) ended its worker with no line but its ``Get task`` line, which with more than
    one slot may be another task's: Python's fault handler writes the fatal error and
    where each thread was to stderr, the task's function in the thread that crashed."""
    if faulthandler.is_enabled():  # PYTHONFAULTHANDLER, -X faulthandler: as asked
        return
    with contextlib.suppress(Exception):  # no stderr to write to (closed, not a file)
        faulthandler.enable(all_threads=True)


def _say_time_limits(console: Console, limits: TimeLimits, registry: Registry) -> None:
    """The limits in force, and each name that no task of this worker has: a typo
    (``squre=1``) protected nothing, and a right setting read the same, unsaid. A
    warning, not a refusal: one setting may serve workers that run other tasks."""
    if not limits:
        return
    console.info(f"time limits: {limits.describe()}")
    runs, chunks = registry.names(), registry.runnable()  # the limit of chunks too
    for name, _ in limits.per_name:
        if name not in chunks:
            console.error(
                f"warning: DISTQ_TASK_TIME_LIMIT names {shown(name)!r}, which this worker "
                f"does not run (it runs {', '.join(shown(n) for n in runs)})"
            )


def _bound_exit(
    code: int, console: Console, patience: float, said: str = "DISTQ_DRAIN_SECONDS"
) -> None:
    """Let the worker's exit wait at most ``patience`` seconds for threads its tasks
    left (Python joins every non-daemon thread at exit, then runs ``atexit``): one that
    never ended kept it up after its "worker exit" line, a SIGTERM only saying it was
    stopping already. An idle pool's thread, or one finishing a short job, still ends
    as it would, and ``atexit`` runs; past the wait, or on a signal, it exits ``code``.
    After a stop by signal ``patience`` is what is left of its drain (``said`` names it):
    a drain spent on a task past it was waited for again, 40 s from a SIGTERM."""
    # the process ends from here on: an os._exit(0) says no less, from any thread a task
    # left (a daemon one, or one named distq-*, in a slow atexit too: not only one waited for)
    _exit_keeps(code)
    main = threading.main_thread()
    left = [
        t
        for t in threading.enumerate()
        if t is not main and not t.daemon and t.is_alive() and not t.name.startswith("distq-")
    ]
    if not left:
        return
    names = ", ".join(sorted(shown(t.name) for t in left)[:5]) + (", ..." if len(left) > 5 else "")
    one = len(left) == 1
    threads = (
        "1 thread that tasks started is" if one else f"{len(left)} threads that tasks started are"
    )
    them = "it" if one else "them"
    console.info(
        f"{threads} alive ({names}): the worker waits at most {patience:g} s ({said}) for "
        f"{them} to end, or a signal"
    )

    def leave(*_: object) -> None:
        console.error(f"the worker exits {code} now, without waiting any longer")
        exit_now(code)

    def expire() -> None:
        if any(thread.is_alive() for thread in left):  # ended: atexit may run on, as asked
            leave()

    for sig in stop_signals():
        signal.signal(sig, leave)
    timer = threading.Timer(patience, expire)
    timer.daemon = True  # it must not be one of the threads the exit waits for
    timer.start()


def _exit_code(exc: BaseException) -> int:
    """The exit code of a ``distq worker`` that ``exc`` ended (:func:`main` says it)."""
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, TransportError):
        return EXIT_UNREACHABLE
    if isinstance(exc, SignalExit) and isinstance(exc.code, int):
        return exc.code
    return EXIT_FAILED


class _KeptExit:
    """``os._exit`` in a worker's process, which turns status 0 into :attr:`code`, the
    exit the worker means: a thread a task left that called ``os._exit(0)`` while it meant
    to exit 1, 2 or 3 ended it with 0, which a supervisor takes for a clean stop (a process
    it forks has its own exit). :class:`Worker` puts its own in place while it runs."""

    def __init__(self, code: int) -> None:
        self.code = code
        self._real, self._pid = os._exit, os.getpid()

    def __call__(self, status: int) -> NoReturn:
        self._real(self.code if _exits_0(status) and os.getpid() == self._pid else status)


def _exits_0(status: int) -> bool:
    """Whether ``os._exit(status)`` ends the process with 0 as the system reads it: the
    low 8 bits (``os._exit(256)`` exited 0) of what os._exit takes, ``False`` and a
    numpy int too, as it reads them (judged by ``type(status) is int``, ``os._exit(False)``
    went through and exited 0). What it refuses (1.5, None, past a C int) goes to it, to
    raise there."""
    value = exit_status(status)
    return value is not None and value % 256 == 0


def _exit_keeps(code: int) -> None:
    """From now on, a thread's ``os._exit(0)`` in this process exits ``code``."""
    if isinstance(os._exit, _KeptExit):
        os._exit.code = code
    elif code != 0:
        os._exit = _KeptExit(code)


def _notify(console: Console, settings: Settings, role: Literal["master", "worker"]) -> None:
    for level, line in notices(settings, role):
        if level == "warning":
            console.error(f"warning: {line}")
        else:
            console.info(line)


def _connect(
    settings: Settings, role: Literal["master", "worker"], patience: float, console: Console
) -> Transport:
    """Open the transport, retrying an unreachable broker for ``patience`` seconds (a
    broker that starts beside the process, in compose or Kubernetes), and saying so once
    the wait has lasted :data:`WAIT_SAID_AFTER` (it waited up to 120 s, the Kubernetes
    value, without a line; at the first refusal, a normal start-up race, the line was
    noise). A manager master listens rather than connects: a port it cannot have fails
    at once, as a setting to change (:class:`ConfigError`)."""
    started = time.monotonic()
    deadline = started + patience
    said = False
    while True:
        leave_if_asked()  # a stop swallowed (the alarm would cut what a stop waits for)
        try:
            transport = open_transport(settings, role)
        except AuthenticationFailed:
            raise
        except ConnectionFailed as exc:
            if role == "master" and settings.transport == "manager":
                # the port in use, an address not this machine's: a setting to change
                # (exit 2, as a metrics port's), not a broker out of reach (exit 3)
                raise ConfigError(str(exc)) from None
            if time.monotonic() >= deadline:
                raise
            if not said and time.monotonic() - started >= WAIT_SAID_AFTER:
                said = True
                console.info(
                    f"waiting for the broker: {str(exc).rstrip('.')}; trying again for up "
                    f"to {patience:g} s (--connect-timeout)"
                )
            time.sleep(0.2)
            continue
        try:  # a stop swallowed while this attempt ran: no work starts
            leave_if_asked()
        except SignalExit:
            transport.close()
            raise
        return transport


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
