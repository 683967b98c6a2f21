"""What every local server shares: the :class:`LocalServer` life cycle and its helpers."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from launch import process

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A local server is not installed, did not start or answer in time, or refused a call."""


@dataclass(frozen=True)
class TlsFiles:
    """A server's TLS files (PEM): the CA clients trust (it also checks client
    certificates, when a client sends one), the server's certificate and its key."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client-side context that trusts ``ca`` and checks the server's name."""
        return ssl.create_default_context(cafile=str(self.ca))


class LocalServer:
    """One server process on 127.0.0.1 in a process group of its own.

    Subclasses say how to run it (:meth:`_command`), when it answers (:meth:`_check`)
    and what to prepare or end around it (:meth:`_prepare`, :meth:`_stop_helpers`).
    """

    name: ClassVar[str]
    #: Seconds between SIGTERM and SIGKILL in :meth:`stop`.
    grace: ClassVar[float] = 10.0
    #: What the server's log says when a port of its was in use (see :meth:`start`).
    port_taken_says: ClassVar[tuple[bytes, ...]] = ()
    port: int

    def __init__(self, workdir: Path, *, die_with_parent: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False  # once: its ports are the server's from then on

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs (paused too); None before start, after stop or kill."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        """Where the server's output goes (stdout and stderr)."""
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 30) -> Self:
        """Start the server and return once it answers; on failure nothing is left running.

        free_port() saw each port free, but with several test runs on one host another
        process may take one before the server does: a first start whose log says so
        (:attr:`port_taken_says`) goes again on new ports (:meth:`_pick_ports`), up to
        :data:`PORT_TRIES` times. A restart keeps its ports (its clients' URLs name them).
        """
        if self.pid is not None:
            raise ServerError(f"{self.name} already runs (pid {self.pid})")
        tries = 1
        while True:
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._prepare()
                self._proc = self.spawn(self._command(), self.log_path)
                self._wait_until_answers(self._proc, timeout)
            except BaseException as exc:
                self.stop()
                if (
                    not isinstance(exc, ServerError)
                    or self._started
                    or tries >= PORT_TRIES
                    or not self._port_taken(logged)
                ):
                    raise
                tries += 1
                self._pick_ports()
            else:
                self._started = True
                return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its process group after ``grace`` seconds; idempotent."""
        process.end(self._proc, self.grace)
        self._stop_helpers()

    def kill(self) -> None:
        """SIGKILL its process group at once, like a crash (nothing is saved)."""
        process.kill_group(self._running("kill"))

    def pause(self) -> None:
        """SIGSTOP its process group: connections stay open, nothing answers."""
        process.signal_group(self._running("pause"), signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT its process group after :meth:`pause`."""
        process.signal_group(self._running("resume"), signal.SIGCONT)

    def restart(self, timeout: float = 30) -> None:
        """Start it again on the same port, in the same directory (stopping it first if it runs)."""
        process.end(self._proc, self.grace)
        self.start(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start a process of this server (the server itself, or a helper) in ``workdir``."""
        return process.spawn(argv, log, self._environment(), die_with_parent=self.die_with_parent)

    # --- what a subclass says ---------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _check(self) -> None:
        """Return when the server answers; raise anything while it does not yet."""
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _prepare(self) -> None:
        """Write configuration, start helpers: before each start."""

    def _pick_ports(self) -> None:
        """New free ports for a first start again (:meth:`start`)."""
        self.port = free_port()

    def _port_taken(self, logged: int) -> bool:
        """Whether the start whose log began at byte ``logged`` failed on a port in use."""
        with self.log_path.open("rb") as log:
            log.seek(logged)
            said = log.read()
        return any(words in said for words in self.port_taken_says)

    def _stop_helpers(self) -> None:
        """End what :meth:`_prepare` started: on stop."""

    # ----------------------------------------------------------------------------

    def _running(self, action: str) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise ServerError(f"cannot {action} {self.name}: it is not running")
        return self._proc

    def _wait_until_answers(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._check()
                return
            except Exception as exc:  # anything while the server starts: try again
                last = exc
            if proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {proc.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.name} on {HOST}:{self.port} did not answer within {timeout:.0f} s "
                    f"(last error: {last!r}); last lines of {self.log_path}:\n"
                    f"{tail(self.log_path)}"
                )
            time.sleep(0.1)


#: How many sets of ports a server's first start tries (see :meth:`LocalServer.start`).
PORT_TRIES = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, below the kernel's ephemeral
    range: no outgoing connection takes it as its source port while a server restarts on it
    (with a port from that range, a killed broker's restart failed with EADDRINUSE).
    Never one it returned before in this process: what a test left of a server on it
    (a client's cached connection to that address) must not meet the next test's."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(_LOWEST_PORT, low) if low > _LOWEST_PORT + 1000 else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        _HANDED_OUT.add(port)
        return port
    raise ServerError(f"no free port on {HOST} from {_LOWEST_PORT} to {low - 1}")


_HANDED_OUT: set[int] = set()  # the ports free_port() returned in this process
_LOWEST_PORT = 20_000  # above the well-known and the usual service ports


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
        return True
    return False


def program(name: str, package: str, *candidates: str) -> str:
    """The path of an installed program, or ServerError naming the package to install."""
    for path in (*candidates, shutil.which(name)):
        if path and os.access(path, os.X_OK):
            return path
    raise ServerError(
        f"{name} is not installed: Debian/Ubuntu: apt-get install {package}; macOS: brew "
        f"install {package.removesuffix('-server')} (`make test` installs it as root on Debian)"
    )


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def quote(text: str) -> str:
    """``text`` escaped for the user or password part of a URL."""
    return urllib.parse.quote(text, safe="")


def http_json(base_url: str, path: str, **params: str) -> Any:
    """GET ``base_url + path?params`` and parse its JSON; a user:password in ``base_url``
    becomes basic auth. An HTTP error raises ServerError with the body's start."""
    parts = urllib.parse.urlsplit(base_url)
    netloc = parts.netloc.rpartition("@")[2]
    url = urllib.parse.urlunsplit((parts.scheme, netloc, path, urllib.parse.urlencode(params), ""))
    request = urllib.request.Request(url)
    if parts.username is not None:
        userinfo = f"{parts.username}:{parts.password or ''}"
        token = base64.b64encode(urllib.parse.unquote(userinfo).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise ServerError(f"GET {url} answered {exc.code}: {detail}") from None
