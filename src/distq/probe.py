"""``distq probe healthz|readyz``: ask this machine's distq process how it is, for a healthcheck.

GETs ``/healthz`` or ``/readyz`` from the endpoint on ``DISTQ_METRICS_PORT`` (images
and compose healthchecks run it: no curl needed), prints the JSON body and exits 0 on
200, 1 on anything else, no answer, or one of more than
:data:`MAX_ANSWER_BYTES` (another server's), 2 when no port is known.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from distq import __version__, flagtypes, startup
from distq.addresses import url_host_port
from distq.console import Console, escaping, say
from distq.logs import make_console
from distq.ranges import PORT

EXIT_OK, EXIT_UNHEALTHY, EXIT_CONFIG = 0, 1, 2
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")
_WILDCARDS_V6 = ("::", "[::]")
#: What a connect to ::1 raises on a machine without an IPv6 loopback.
_UNREACHED = (errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EAFNOSUPPORT)


#: Most bytes of an answer :func:`probe` reads (1 MiB): distq's own ``/healthz`` and
#: ``/readyz`` are a line of JSON, well under 1 KiB, and its ``/metrics`` some hundreds
#: of KiB with thousands of series. More is another server's (a large file, a stream
#: that never ends), which the probe held in memory whole.
MAX_ANSWER_BYTES = 1 << 20
_READ = 64 << 10


class AnswerTooLarge(Exception):
    """An endpoint answered a :func:`probe` with more than :data:`MAX_ANSWER_BYTES`."""


def probe(path: str, host: str, port: int, timeout: float) -> tuple[int, str]:
    """GET ``path`` from a local endpoint: (HTTP status, body). Raises OSError if none
    answers, :class:`AnswerTooLarge` past :data:`MAX_ANSWER_BYTES`, read no further."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, _answer(response).decode(errors="replace")
    finally:
        connection.close()


def _answer(response: http.client.HTTPResponse) -> bytes:
    """The body of ``response``, read no further than one byte past the limit."""
    parts: list[bytes] = []
    size = 0
    while size <= MAX_ANSWER_BYTES:
        part = response.read(min(_READ, MAX_ANSWER_BYTES + 1 - size))
        if not part:
            return b"".join(parts)
        parts.append(part)
        size += len(part)
    raise AnswerTooLarge(MAX_ANSWER_BYTES)


def command_parser() -> tuple[argparse.ArgumentParser, Any]:
    """The ``distq`` parser and its subparsers object, no command added yet: the one
    :func:`distq.cli.main` adds every command to, and :func:`main` only ``probe``, so
    their usage lines (said with an argument ``probe`` does not take) are the same."""
    parser = argparse.ArgumentParser(
        prog="distq", description="Distributed master/worker tasks with at-least-once delivery."
    )
    parser.add_argument("--version", action="version", version=f"distq {__version__}")
    roles = parser.add_subparsers(
        dest="role",
        required=True,
        metavar="{master,worker,probe,submit,status,dead-letters,requeue-dead}",
    )
    return parser, roles


def add_probe_parser(roles: Any) -> None:
    """Add ``probe`` to the subcommands (``roles`` is argparse's subparsers object)."""
    parser = roles.add_parser(
        "probe", help="ask the local distq process: healthz (alive?) or readyz (connected?)"
    )
    parser.add_argument("check", choices=("healthz", "readyz"), help="which probe")
    parser.add_argument(
        "--port", type=flagtypes.port, help="endpoint port (default $DISTQ_METRICS_PORT)"
    )
    parser.add_argument(
        "--host",
        type=flagtypes.host,
        help="endpoint address (default $DISTQ_METRICS_HOST, or 127.0.0.1 for any)",
    )
    parser.add_argument(
        "--timeout",
        type=flagtypes.seconds,
        default=5.0,
        metavar="S",
        help="give up after S seconds (5)",
    )
    parser.add_argument(  # as every command takes it; the answer is all a probe prints
        "--quiet", "-q", action="store_true", help="print only summaries (a probe's answer is one)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``distq probe ...`` on its own (:func:`distq.startup.main` sends it here): the
    parser :func:`distq.cli.main` builds for it, without the other commands' imports."""
    escaping(sys.stdout, sys.stderr)  # an ASCII locale: escaped, not a failure
    parser, roles = command_parser()
    add_probe_parser(roles)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """``distq probe`` of the parsed ``args``, as :func:`main` and :func:`distq.cli.main`
    run it: the signals held while distq imported handed back (Python's defaults take
    them), no setting read but its own, its errors as the other commands' lines."""
    startup.hand_back()
    wanted = os.environ.get("DISTQ_LOG_FORMAT", "").strip()
    return run_probe(args, os.environ, make_console(wanted, "probe", args.quiet))


def run_probe(args: argparse.Namespace, environ: Mapping[str, str], console: Console) -> int:
    """Run ``distq probe``; return its exit code. Its errors go through ``console`` (a
    JSON line each under ``DISTQ_LOG_FORMAT=json``); the answer is printed as it came."""
    port = args.port
    if port is None:
        try:  # as the process read it: its 5,000 digits were a ValueError traceback
            text = environ.get("DISTQ_METRICS_PORT", "").strip()  # as its setting reads it
            port = PORT(text) if text else None
        except ValueError as exc:  # "is 70000; use a whole number from 1 to 65535"
            port, problem = None, str(exc)
        else:
            problem = "is not set"
        if port is None:
            console.error(
                f"DISTQ_METRICS_PORT {problem}; pass --port or set it to the port the "
                "process serves /healthz and /readyz on"
            )
            return EXIT_CONFIG
    host = args.host or environ.get("DISTQ_METRICS_HOST", "").strip()
    # an endpoint on :: takes IPv4 too, unless the machine's bindv6only is 1: then only
    # ::1 reaches it (127.0.0.1 was refused: "no answer" from a healthy process)
    also = "::1" if host in _WILDCARDS_V6 else None
    if host in _WILDCARDS:
        host = "127.0.0.1"
    try:
        flagtypes.host(host)
    except argparse.ArgumentTypeError as exc:  # only the variable's can be wrong here
        console.error(f"DISTQ_METRICS_HOST {exc}; pass --host")
        return EXIT_CONFIG
    asked = host.strip("[]")  # the address the line names: the one that answered, if any
    try:
        with _within(args.timeout):
            try:
                status, body = probe(f"/{args.check}", asked, port, args.timeout)
            except ConnectionRefusedError as refused:
                if also is None:
                    raise
                asked = also  # what fails from now on is its answer (not HTTP, too slow)
                try:
                    status, body = probe(f"/{args.check}", also, port, args.timeout)
                except OSError as exc:
                    if isinstance(exc, ConnectionRefusedError) or exc.errno in _UNREACHED:
                        asked = host.strip("[]")  # no one there either, or no IPv6
                        raise refused from None  # loopback: the first refusal says it
                    raise
    except AnswerTooLarge:  # the wrong port: a large file, a stream without end
        url = f"http://{url_host_port(asked, port)}/{args.check}"
        console.error(
            f"{url} answered more than {MAX_ANSWER_BYTES:,} bytes (1 MiB), read no further: "
            f"is {url} a distq endpoint? one answers with a line of JSON; pass --port "
            "(or set DISTQ_METRICS_PORT to) the port the process serves /healthz and /readyz on"
        )
        return EXIT_UNHEALTHY
    except (OSError, http.client.HTTPException) as exc:  # no answer, or not HTTP's
        said = str(exc)  # a peer that is not HTTP: its first line, raw (escapes, a CR)
        console.error(
            f"no answer from http://{url_host_port(asked, port)}/{args.check}: "
            f"{said if said.isprintable() else repr(said)}; "
            "is a distq process with DISTQ_METRICS_PORT running here?"
        )
        return EXIT_UNHEALTHY
    say(body.rstrip("\n"))  # a reader that left (| grep -q) is no failure of the process
    return EXIT_OK if status == 200 else EXIT_UNHEALTHY


@contextlib.contextmanager
def _within(seconds: float) -> Iterator[None]:
    """Bound the whole exchange, not each read (the socket's timeout): a peer that
    trickles its answer a byte at a time held the probe far past ``--timeout``. The
    command's main thread only: SIGALRM raises TimeoutError (an OSError) in it."""

    def expired(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"no whole answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
