"""``distq submit``, ``status``, ``dead-letters`` and ``requeue-dead``: operating a queue.

Their output is data (a task id, a result, counts, dead letters) and goes to stdout as
it is; diagnostics go to the console (stderr). Each connects to the configured
transport as a client: with ``manager`` it reaches the
running master (or executor) on ``DISTQ_MANAGER_ADDRESS`` as a worker would, and never
hosts queues itself; with ``rabbitmq`` it creates no queue it only reads (``status``,
``dead-letters``): one it declared would have this caller's
``DISTQ_RABBITMQ_QUEUE_TYPE``, and workers of the other type could not declare it then.
Exit codes as for the rest of ``distq``: 0 done; 1 the task failed or timed out
(``submit --wait``); 2 bad usage; 3 the broker cannot be reached or failed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import math
import re
import signal
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from distq import flagtypes, startup
from distq.codec import Codec
from distq.config import MAX_ATTEMPTS, MOST_ATTEMPTS, Settings
from distq.console import Console, say
from distq.counts import counted
from distq.envelope import NO_REPLY, DeadLetter, Task, new_id, shown
from distq.errors import (
    BrokenExecutor,
    ConfigError,
    EnvelopeError,
    KeyMissing,
    MasterStopped,
    MessageRefused,
    MessageTooLarge,
    OldSignature,
    RemoteError,
    SignatureError,
    TransportError,
    VersionMismatch,
)
from distq.jsonvalue import MAX_DEPTH, check_arguments, quoted_ends
from distq.management import ManagementApi, ManagementError
from distq.signing import newer_format
from distq.transport import QueueStats, Revive, Transport, open_transport

if TYPE_CHECKING:
    from distq.futures import DistqFuture

COMMANDS = ("submit", "status", "dead-letters", "requeue-dead")
EXIT_FAILED, EXIT_CONFIG, EXIT_UNREACHABLE = 1, 2, 3
SHOWN_CHARS = 200  # of a dead letter's arguments, in text output
MAX_LIMIT = 2**31 - 1  # --limit: what every broker's range commands take
_JSON_NEGATIVE = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def add_parsers(roles: Any, common: argparse.ArgumentParser) -> None:
    """Add the commands to the ``distq`` subparsers ``roles``; ``common`` holds the settings."""
    submit = roles.add_parser(
        "submit",
        parents=[common],
        help="enqueue one task; with --wait, print its result",
        description="Enqueue one task and print its id. ARGS are JSON values "
        "(1, 2.5, true, null, '\"text\"', '[1, 2]'); anything else is taken as a string.",
    )
    submit.add_argument(
        "task_name", metavar="TASK", help="a registered task, e.g. mypkg.jobs:resize"
    )
    submit.add_argument("args", metavar="ARGS", nargs="*", help="positional arguments")
    # argparse takes "-1e3" (a JSON number) for an unknown option: its own test of what
    # looks like a negative number has no exponent (readme18). submit has no option that
    # looks like one, so every JSON number is an argument
    submit._negative_number_matcher = _JSON_NEGATIVE
    submit.add_argument(
        "--kwargs", metavar="JSON", help="keyword arguments as a JSON object, e.g. '{\"size\": 64}'"
    )
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument(
        "--timeout",
        type=flagtypes.seconds,
        metavar="S",
        help="with --wait: give up after S seconds (exit 1); the task stays queued, and a "
        "worker dead-letters it unrun as nobody waits any more (requeue-dead runs it)",
    )
    submit.add_argument(
        "--max-attempts",
        type=flagtypes.count_up_to(MOST_ATTEMPTS),
        default=MAX_ATTEMPTS,
        metavar="N",
        help=f"attempts before the task fails for good (default {MAX_ATTEMPTS}, at most "
        f"{MOST_ATTEMPTS:,})",
    )
    status = roles.add_parser(
        "status", parents=[common], help="ready and in-flight tasks, dead letters, workers"
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    dead = roles.add_parser("dead-letters", parents=[common], help="show dead letters and why")
    dead.add_argument(
        "--limit",
        type=flagtypes.count_up_to(MAX_LIMIT),
        default=20,
        metavar="N",
        help="oldest N (20)",
    )
    dead.add_argument("--json", action="store_true", help="print a JSON array")
    requeue = roles.add_parser(
        "requeue-dead", parents=[common], help="put dead letters back on the task queue"
    )
    requeue.add_argument(
        "--limit",
        type=flagtypes.count_up_to(MAX_LIMIT),
        metavar="N",
        help="oldest N (default: every one there now)",
    )


def run(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    """Run the command ``args.role``; ConfigError and ConnectionFailed reach the caller."""
    # SIGTERM (timeout(1), kill, a CI cancel, a container stop) as Ctrl-C, from before
    # the held signals are handed back: it ended a command with exit 143 and no word, a
    # requeue-dead without saying what became of the letters, a submit without saying
    # its task may be queued. Put back after: the handler found before the entry point
    # held SIGTERM, not its holding one (a SIGTERM after would be held for good)
    previous = startup.found(signal.SIGTERM)
    try:  # from the set on: a SIGTERM as it returns is "interrupted" too, not a traceback
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        if args.role == "submit":
            return _submit(args, settings, console)  # it hands back the signals held
        startup.hand_back()  # a Ctrl-C held while distq imported: "interrupted", as later
        with _client(settings) as transport:
            if args.role == "status":
                return _status(args, transport, settings, console)
            if args.role == "dead-letters":
                return _dead_letters(args, transport, settings, console)
            return _requeue_dead(args, transport, settings, console)
    except MessageRefused as exc:  # a message over the broker's limit: input, as one over
        console.error(str(exc))  # DISTQ_MAX_MESSAGE_BYTES is (exit 3 says unreachable)
        return EXIT_CONFIG
    except TransportError as exc:
        console.error(str(exc))
        return EXIT_UNREACHABLE
    except EnvelopeError as exc:  # a message no command expected to be unreadable
        console.error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:  # Ctrl-C on a slow broker: a line, not a traceback
        if args.role == "requeue-dead":
            console.error(
                "interrupted: the letters moved so far are on the task queue, the rest stay "
                "dead letters (a letter leaves only once its task is enqueued)"
            )
        else:
            console.error("interrupted")
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _client(settings: Settings) -> Iterator[Transport]:
    transport = open_transport(settings, "client")  # never hosts the queues
    try:
        yield transport
    finally:
        transport.close()


# -- submit ---------------------------------------------------------------------------
def parse_argument(text: str) -> Any:
    """A command-line argument as a JSON value, or else as the string it is (``NaN``
    and ``Infinity`` too, which Python's json reads and JSON has not, and a number past
    a float's range, ``1e999``, which JSON reads and no float holds)."""
    try:
        return json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except (json.JSONDecodeError, _NotJson):
        return text
    except RecursionError:  # nested past Python's own limit: far past the wire's
        raise ConfigError(f"ARG {quoted_ends(text)} is nested too deep; {_NESTING}") from None
    except ValueError as exc:  # JSON, but an integer past Python's digit limit
        raise ConfigError(
            f"ARG {quoted_ends(text)}: {exc}; to send it as a string, write it as a JSON "
            "string, in double quotes"
        ) from None


class _NotJson(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity``: read by Python's json, not JSON."""


def _not_json(constant: str) -> Any:
    raise _NotJson(f"{constant} is not JSON")


def _finite(text: str) -> float:
    """A JSON number as a float, unless it is past a float's range (``1e999``), which
    JSON reads and no float holds: not a value a task can take, so the text stays text."""
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"{text} is past a float's range")
    return value


_NESTING = f"a task's arguments may nest {MAX_DEPTH} levels at most"


_NOBODY_WAITING = (
    "with nobody waiting, a worker dead-letters it unrun (`distq requeue-dead` runs it)"
)


def _shown_failure(exc: RemoteError) -> str:
    """``exc`` as one error line and its remote traceback, their text from the wire made
    safe for a terminal (:func:`~distq.envelope.shown`): a task's exception message
    cleared the operator's screen and forged lines (input17); the traceback keeps its
    own line breaks, each line escaped."""
    line = (
        f"task {shown(exc.task_name)} [{shown(exc.task_id)}] failed on worker "
        f"{shown(exc.worker)}: {shown(exc.reason)}"
    )
    if exc.remote_traceback:
        lines = exc.remote_traceback.rstrip("\n").split("\n")
        line += "\n\nRemote traceback:\n" + "\n".join(shown(part) for part in lines)
    return line


def _submit(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    if not args.task_name.strip():  # queued, it could only be dead-lettered
        raise ConfigError(
            f"TASK is {args.task_name!r}; name a task the workers run, e.g. "
            "mypkg.jobs:resize or square"
        )
    values = [parse_argument(text) for text in args.args]
    kwargs = _kwargs(args.kwargs)
    if args.timeout is not None and not args.wait:
        raise ConfigError(
            "--timeout is how long --wait waits for the result; without --wait, submit "
            "returns once the task is queued: add --wait, or drop --timeout"
        )
    try:
        check_arguments(args.task_name, values, kwargs)
    except TypeError as exc:  # e.g. NaN: json.loads takes it, JSON does not
        raise ConfigError(str(exc)) from None
    task = Task(
        name=args.task_name,
        args=values,
        kwargs=kwargs,
        reply_to=NO_REPLY,
        max_attempts=args.max_attempts,
    )
    try:
        body = Codec.from_settings(settings).seal_task(task)
    except EnvelopeError as exc:  # too large: before anything connects
        raise ConfigError(str(exc)) from None
    if not args.wait:
        sent = False
        try:
            startup.hand_back()  # a Ctrl-C held while distq imported: said as one now
            with _client(settings) as transport:
                producer = transport.producer(transport.reply_queue(new_id()))
                try:
                    sent = True  # from here on, it may reach the broker
                    producer.submit([body])
                    producer.flush()  # the broker holds it before we say so
                finally:
                    producer.close()
        except KeyboardInterrupt:  # a traceback left a script unsure whether it was queued
            if not sent:
                console.error("interrupted before the task was queued")
            else:
                console.error(
                    f"interrupted while queuing task {task.id}: it may be queued or not "
                    "(`distq status` counts the ready tasks)"
                )
            return EXIT_FAILED
        except TransportError as exc:  # sent, unanswered: it read as nothing queued
            if not sent or isinstance(exc, MessageRefused):  # refused: not queued
                raise
            if isinstance(exc, MasterStopped):  # a manager master: the tasks end with it
                console.error(f"{exc}; submit task {task.id} again once a master runs")
                return EXIT_UNREACHABLE
            console.error(
                f"{exc}; task {task.id} may be queued or not (`distq status` counts the "
                "ready tasks)"
            )
            return EXIT_UNREACHABLE
        say(task.id)
        return 0
    # SIGTERM is Ctrl-C here (run): it ended the wait with exit 143, no word, and the
    # task left queued for a worker to dead-letter
    return _submit_and_wait(args, settings, console, values, kwargs)


def _refused_then(future: DistqFuture[Any]) -> str:
    """What became of ``submit --wait``'s task, refused by a worker for its signature,
    and what runs it."""
    if future.refused_with_keys_alike:  # requeue-dead would put it back as it is
        return (
            "A refused task is dead-lettered (`distq dead-letters`); the keys match "
            "already, so `distq requeue-dead` does not run it: submit it anew, to the "
            "queue its workers read"
        )
    return (
        "A refused task is dead-lettered (`distq dead-letters`); once the keys match, "
        "`distq requeue-dead` runs it"
    )


def _submit_and_wait(
    args: argparse.Namespace,
    settings: Settings,
    console: Console,
    values: list[Any],
    kwargs: dict[str, Any],
) -> int:
    """``submit --wait``: the task through an executor, and its result printed."""
    try:  # SIGTERM is Ctrl-C already (run): one during this import is one before the task
        from distq.executor import Executor  # only here: 0.1 s of every other command's start

        startup.hand_back()  # a signal held while distq imported: as one now (SIGTERM too)
        executor = Executor(settings, host=False, max_attempts=args.max_attempts)
    except KeyboardInterrupt:
        console.error("interrupted before the task was queued")
        return EXIT_FAILED
    stop: Callable[[], None] = executor.shutdown
    future: DistqFuture[Any] | None = None
    try:
        try:
            future = executor.submit(args.task_name, *values, **kwargs)
        except EnvelopeError as exc:  # too large once it names the executor's reply
            raise ConfigError(str(exc)) from None  # queue: input, as checked before (exit 2)
        say(future.task_id)
        value = future.result(args.timeout)
    except RemoteError as exc:  # its text from the wire, escaped as the master's lines are
        console.error(_shown_failure(exc))
        return EXIT_FAILED
    except TimeoutError as exc:
        # exit now, the task left queued as --timeout says (not withdrawn)
        stop = functools.partial(executor.close, cancel_futures=False)
        if future is not None and future.refused is not None:  # not queued: refused
            console.error(f"{exc}. {_refused_then(future)}")
        else:
            console.error(f"{exc}. It stays queued; {_NOBODY_WAITING}")
        return EXIT_FAILED
    except BrokenExecutor as exc:  # the broker stayed away, or refused a setting mid-wait
        # the executor has logged why ("the executor stopped: ..."): not said twice
        if future is None:
            console.error("the task was not queued")
        elif settings.transport == "manager":  # its queue is in the master, gone or not
            console.error(
                f"task {future.task_id} has no result. On the manager transport its queue "
                "lives in the master: if that master has gone, the task went with it "
                "(submit it again once one runs); if it is only unreachable, the task stays "
                f"queued there, and {_NOBODY_WAITING}"
            )
        else:
            console.error(
                f"task {future.task_id} has no result. If it reached the queue, it stays "
                f"there; {_NOBODY_WAITING}"
            )
        cause = exc.__cause__
        if isinstance(cause, ConfigError):
            return EXIT_CONFIG
        return EXIT_UNREACHABLE if isinstance(cause, TransportError) else EXIT_FAILED
    except KeyboardInterrupt:
        stop = executor.close  # the user stopped it: withdrawn where the transport can
        console.error("interrupted")
        return EXIT_FAILED
    finally:
        try:
            stop()
        except KeyboardInterrupt:  # again, while it closes (19 s on a frozen broker)
            console.error("interrupted again: exiting without waiting for the close")
            return EXIT_FAILED  # the second Ctrl-C's exit wins, as asked
    say(json.dumps(value))
    return 0


def _kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except ValueError as exc:
        raise ConfigError(
            f"--kwargs {quoted_ends(text)} is not JSON ({exc}); use e.g. '{{\"size\": 64}}'"
        ) from None
    except RecursionError:
        raise ConfigError(f"--kwargs {quoted_ends(text)} is nested too deep; {_NESTING}") from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"--kwargs {quoted_ends(text)} is not a JSON object; use e.g. '{{\"size\": 64}}'"
        )
    return value


# -- status ---------------------------------------------------------------------------
def _status(
    args: argparse.Namespace, transport: Transport, settings: Settings, console: Console
) -> int:
    stats = transport.stats()
    in_flight, unknown_why = _in_flight(stats, settings)
    if args.json:
        if in_flight is None and ManagementApi.from_settings(settings) is not None:
            # set, and it failed: said on stderr (stdout stays JSON), or null reads as unset
            console.error(f"in_flight is null: {unknown_why}")
        say(
            json.dumps(
                {
                    "transport": transport.name,
                    "queue": settings.queue,
                    "ready": stats.ready,
                    "in_flight": in_flight,
                    "dead": stats.dead,
                    "workers": stats.consumers,
                }
            )
        )
        return 0
    say(f"{transport.describe()}, queue {settings.queue!r}")
    say(f"ready      {stats.ready}")
    say(f"in flight  {in_flight if in_flight is not None else 'unknown: ' + unknown_why}")
    say(f"dead       {stats.dead}")
    say(f"workers    {stats.consumers} (worker slots attached)")
    return 0


def _in_flight(stats: QueueStats, settings: Settings) -> tuple[int | None, str]:
    """Tasks leased to workers, or None and why it is unknown.

    AMQP tells a client only its own unacknowledged deliveries; RabbitMQ's management
    API (``DISTQ_RABBITMQ_MANAGEMENT_URL``) has every consumer's, as the metrics use it.
    """
    if stats.in_flight_known:
        return stats.in_flight, ""
    api = ManagementApi.from_settings(settings)
    if api is None:
        return None, (
            "AMQP reports unacknowledged tasks only to their consumers; set "
            "DISTQ_RABBITMQ_MANAGEMENT_URL to read them from the management API"
        )
    try:
        return api.read().in_flight, ""
    except ManagementError as exc:
        return None, str(exc)


# -- dead letters ---------------------------------------------------------------------
def _dead_letters(
    args: argparse.Namespace, transport: Transport, settings: Settings, console: Console
) -> int:
    letters = transport.dead_letters(args.limit)
    codec = Codec.from_settings(settings)  # signed bodies open with the same keys
    most = transport.most_peeked
    capped = most is not None and args.limit > most and len(letters) >= most
    if capped:  # said where a reader looks, on stderr: --json's stdout stays JSON
        console.error(
            f"{transport.name} lists at most {most:,} dead letters at a time: it holds each "
            "one it shows until all are shown, and puts back more only slowly; "
            "`distq requeue-dead` moves any number"
        )
    if args.json:
        say_array(_letter_json(letter, codec) for letter in letters)
        return 0
    total = transport.stats().dead
    # RabbitMQ counts messages, and a pack it dead-lettered whole is a letter per task:
    # where it dead-letters (no worker's letter), "1 of 2" could be 1 of 5 letters
    by_broker = any(not letter.worker and not letter.unreadable for letter in letters)
    if len(letters) > total or (by_broker and transport.dead_counts_messages):
        where = "the 1 message" if total == 1 else f"the oldest of the {total:,} messages"
        say(
            f"{counted(len(letters), 'dead letter')} in {where} of the dead-letter queue "
            "(a pack of tasks the broker dead-lettered whole is a letter per task), oldest first"
        )
    else:
        say(f"{len(letters):,} of {total:,} dead letters, oldest first")
    for letter in letters:
        when = _when(letter.at)
        if letter.unreadable:  # no time: the raw entry is all there is
            when = "time unknown".ljust(len(when))
        say(f"{when}  worker {shown(letter.worker) or '-'}  {shown(letter.reason)}")
        say(f"    {_describe_body(letter.body, codec)}")
    return 0


def _strict_json(item: Any) -> str:
    """``item`` as JSON (indented), without the bare ``NaN`` or ``Infinity`` that Python
    writes and JSON has not (strict parsers refused the whole listing, input17): a dead
    letter whose task carried them is listed without its decoded ``task``, which its
    ``body`` holds as text."""
    try:
        return json.dumps(item, indent=2, allow_nan=False)
    except ValueError:
        if not (isinstance(item, dict) and "task" in item):
            raise
        return json.dumps({k: v for k, v in item.items() if k != "task"}, indent=2)


def say_array(items: Iterable[Any]) -> None:
    """``json.dumps(list(items), indent=2)``, said an item at a time: the whole text of
    100,000 dead letters took 570 MB at once, each letter's about 4 KB by itself."""
    previous: str | None = None
    for item in items:
        text = textwrap.indent(_strict_json(item), "  ")
        say("[" if previous is None else previous + ",")
        previous = text
    if previous is None:
        say("[]")
    else:
        say(previous)
        say("]")


def _when(at: float) -> str:
    try:
        # UTC, marked, as the log lines are (a shell's TZ shifted the hours unsaid)
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))
    except (OverflowError, OSError, ValueError):  # a letter's own "at", past any clock
        return f"at {at!r:.15}".ljust(20)


def _letter_json(letter: DeadLetter, codec: Codec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "at": None if letter.unreadable else letter.at,  # an unreadable one has no time
        "queue": letter.queue,
        "worker": None if letter.unreadable else letter.worker,
        "reason": letter.reason,
    }
    try:
        out["body"] = letter.body.decode()
    except UnicodeDecodeError:
        out["body_b64"] = base64.b64encode(letter.body).decode()
    try:
        task = codec.open_task(letter.body)
    except EnvelopeError:
        return out
    out["task"] = {
        "id": task.id,
        "name": task.name,
        "args": task.args,
        "kwargs": task.kwargs,
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
    }
    return out


def _describe_body(body: bytes, codec: Codec) -> str:
    try:
        task = codec.open_task(body)
    except EnvelopeError as exc:
        return f"body {_cut(repr(body))} ({exc})"
    call = ", ".join(
        [json.dumps(a) for a in task.args]
        + [f"{shown(k)}={json.dumps(v)}" for k, v in task.kwargs.items()]  # keys from the wire
    )
    return f"task {shown(task.name)}({_cut(call)}) [{shown(task.id)}]"


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


# -- requeue --------------------------------------------------------------------------
def reviver(
    codec: Codec,
    unopened: Callable[[str], object] | None = None,
    malformed: Callable[[str], object] | None = None,
) -> Revive:
    """How ``requeue-dead`` turns a dead letter into the body it enqueues.

    A task starts over: attempt 1, created now, and with nobody waiting for its result
    (:data:`~distq.envelope.NO_REPLY`), since its submitter had its error result already;
    ``codec`` opens it and seals (signs) it anew. Anything it cannot open (a malformed
    message, a forged signature, one this command lacks the key or the size limit for)
    goes back as it was; ``unopened`` is told why for the last two (:func:`_unopened`),
    ``malformed`` for a task no setting opens (malformed, or cut to its first 64 KiB
    when it was refused for its size).
    """

    def revive(letter: DeadLetter) -> bytes:
        try:
            task = codec.open_task(letter.body)
        except EnvelopeError as exc:
            if letter.unreadable:  # counted by the caller
                return letter.body
            why = _unopened(exc, letter.body, codec)
            told = unopened if why is not None else malformed
            if told is not None:
                told(why if why is not None else str(exc))
            return letter.body
        again = msgspec.structs.replace(task, attempt=1, reply_to=NO_REPLY, created_at=time.time())
        try:
            return codec.seal_task(again)
        except MessageTooLarge:  # it grew past the limit as it started over (cli16)
            if unopened is not None:
                unopened(
                    f"task {shown(task.name)} [{shown(task.id)}] is over the limit of "
                    f"{codec.max_message_bytes:,} bytes once started over (a new creation "
                    "time, attempt 1); it goes back as it was: raise DISTQ_MAX_MESSAGE_BYTES "
                    "for this command and the workers"
                )
            return letter.body

    return revive


def _unopened(exc: EnvelopeError, body: bytes, codec: Codec) -> str | None:
    """Why ``requeue-dead`` could not open ``body`` with its own settings, when a setting
    is why (a signing key it lacks, a size limit below the task's). Then the task goes
    back unchanged (its old master, its old attempt) and, its master long gone, is
    dead-lettered again at once: the command says so and exits 1; so for one unsigned or
    forged, which workers that sign refuse again. None for a malformed task."""
    newer = newer_format(body, "task", codec.queue)  # whatever keys: a newer distq's
    if newer is not None and isinstance(exc, SignatureError):
        return (
            f"{newer}; it goes back as it was, and workers of this distq refuse it again, at "
            "once: `distq requeue-dead` of that distq starts it over"
        )
    if isinstance(exc, KeyMissing):
        return f"{exc}; set the workers' DISTQ_SIGNING_KEYS for this command"
    if isinstance(exc, OldSignature):  # this command is upgraded: no upgrade helps it
        return (
            "task signed by an older distq (format DQSIG1, whose signature does not bind "
            "its queue), which is never started over: workers refuse it again, at once; "
            "submit it anew (`distq dead-letters --json` shows its body)"
        )
    if isinstance(exc, SignatureError):  # unsigned (from before signing), or forged
        return f"{exc}; workers with signing keys refuse it again, at once"
    if isinstance(exc, MessageTooLarge) and len(body) > codec.max_message_bytes:
        return f"{exc}; set the workers' DISTQ_MAX_MESSAGE_BYTES for this command"
    if isinstance(exc, VersionMismatch):  # another distq's: it runs where that one does
        return str(exc)
    return None


def _requeue_dead(
    args: argparse.Namespace, transport: Transport, settings: Settings, console: Console
) -> int:
    # at most those there now (None: counted by the transport once it reads alone): a
    # letter that dies again meanwhile waits for the next run, not moved twice
    limit: int | None = args.limit
    unopened: list[str] = []
    malformed: list[str] = []
    revive = reviver(Codec.from_settings(settings), unopened.append, malformed.append)
    unreadable = 0
    read: list[tuple[int, int, int]] = []  # after each letter read, in order: the counts

    def revive_counting(letter: DeadLetter) -> bytes:
        nonlocal unreadable
        unreadable += letter.unreadable
        body = revive(letter)
        read.append((len(unopened), len(malformed), unreadable))
        return body

    try:
        moved = transport.requeue_dead(limit, revive_counting) if limit is None or limit > 0 else 0
    except TransportError as exc:  # cut off part-way: the error alone read as none moved
        console.error(str(exc))
        if "the rest stay dead letters" not in str(exc):  # else said, with a count (RabbitMQ)
            console.error(
                "any letters moved before that are on the task queue, the rest stay dead "
                "letters (a letter leaves only once its task is enqueued): run "
                "`distq requeue-dead` again to move them"
            )
        # what the letters moved before it were (the first read), as a run to its end
        # says: a setting this command lacks was said only once every letter had moved
        before: int | None = getattr(exc, "moved", None)  # counting_moves's count
        if before and read:
            opened, bad, raw = read[min(before, len(read)) - 1]
            _say_unmoved(before, unopened[:opened], malformed[:bad], raw)
        return EXIT_CONFIG if isinstance(exc, MessageRefused) else EXIT_UNREACHABLE
    say(f"requeued {counted(moved, 'dead letter')} onto queue {settings.queue!r}")
    return 1 if _say_unmoved(moved, unopened, malformed, unreadable) else 0


def _say_unmoved(moved: int, unopened: list[str], malformed: list[str], unreadable: int) -> bool:
    """Say which of the ``moved`` letters went back as they were; whether any could not be
    started over or is malformed (exit 1)."""
    # revived more than once only when another requeue-dead took a letter first: at most
    # as many as moved (none moved: another took them all, nothing to say)
    unreadable = min(unreadable, moved)
    unopened, malformed = unopened[:moved], malformed[:moved]
    if unopened:  # a wrong setting here, most likely: said, and exit 1, not "done"
        they, their, them = ("it", "its", "it") if len(unopened) == 1 else ("they", "their", "them")
        say(
            f"{len(unopened):,} of them could not be started over: {they} went back "
            f"unchanged, with {their} old master and attempt, and a worker dead-letters {them} "
            f"again unless it can run {them}; the first: {unopened[0]}"
        )
    if malformed:  # no setting cures them: each dies again at once, now "malformed"
        are, went, them = (
            ("is not a task", "it went back as it was", "it")
            if len(malformed) == 1
            else ("are not tasks", "they went back as they were", "them")
        )
        say(
            f"{len(malformed):,} of them {are} any worker can run: {went}, and a worker "
            f"dead-letters {them} again at once (with that reason: see `distq dead-letters`); "
            f"the first: {malformed[0]}"
        )
    if unreadable:
        their, tasks = ("its", "a task") if unreadable == 1 else ("their", "tasks")
        say(
            f"{unreadable:,} of them unreadable (not a distq dead letter): {their} raw bytes "
            f"went back as {tasks}, which a worker dead-letters again as malformed, with the "
            "reason and the bytes kept (see `distq dead-letters`)"
        )
    return bool(unopened or malformed)
