"""Local servers for tests and the benchmark: Redis, RabbitMQ and Prometheus.

Each server is a child process of this one that listens on 127.0.0.1 only, on a free
port, with all of its state in the directory the caller gives; it is ended by its PID
(its process group), never by name. A test that kills, pauses or restarts a broker
starts a private one here::

    with LocalRedis(tmp_path, password="pw").start() as server:
        server.pause(); ...; server.resume()     # SIGSTOP / SIGCONT
        server.kill(); server.restart()          # a crash, then the same port and dir

The programs are Debian's ``redis-server``, ``rabbitmq-server`` (with ``epmd``) and
``prometheus``; ``make test`` installs them. A missing one raises :class:`ServerError`
saying what to install. :class:`TlsFiles` turns TLS on (``certs.py`` makes throw-away
ones). Start servers from a thread that outlives them: with ``die_with_parent=True``
the kernel ends a server when the thread that started it ends.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import pika
import redis

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
        return True
    return False


def _set_parent_death_signal() -> None:
    """In the child before exec: SIGTERM when the starting thread ends (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _program(name: str, package: str, *candidates: str) -> str:
    """The path of an installed program, or ServerError naming the package to install."""
    for path in (*candidates, shutil.which(name)):
        if path and os.access(path, os.X_OK):
            return path
    raise ServerError(
        f"{name} is not installed: Debian/Ubuntu: apt-get install {package}; macOS: brew "
        f"install {package.removesuffix('-server')} (`make test` installs it as root on Debian)"
    )


def _stat(path: Path) -> tuple[str, int]:
    """(state, process group) from a ``/proc/.../stat`` file; ("", -1) when it is gone."""
    try:
        state, _ppid, pgrp = path.read_text().rpartition(")")[2].split()[:3]
        return state, int(pgrp)
    except (OSError, ValueError):
        return "", -1


def _live_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` with a thread that has not exited; [] without /proc.

    A multi-threaded server's main thread may be a zombie while its other threads, which
    still hold its sockets, are exiting: every thread counts.
    """
    members = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or _stat(Path(entry.path, "stat"))[1] != pgid:
                continue
            threads = Path(entry.path, "task").glob("*/stat")
            if any(_stat(thread)[0] not in ("", "Z", "X") for thread in threads):
                members.append(int(entry.name))
    return members


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


class LocalServer:
    """One server process on 127.0.0.1 in a process group of its own.

    Subclasses say how to run it (:meth:`_command`), when it answers (:meth:`_check`)
    and what to prepare or end around it (:meth:`_prepare`, :meth:`_stop_helpers`).
    """

    name: ClassVar[str]
    #: Seconds between SIGTERM and SIGKILL in :meth:`stop`.
    grace: ClassVar[float] = 10.0
    port: int

    def __init__(self, workdir: Path, *, die_with_parent: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

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
        """Start the server and return once it answers; on failure nothing is left running."""
        if self.pid is not None:
            raise ServerError(f"{self.name} already runs (pid {self.pid})")
        try:
            self._prepare()
            self._proc = self._spawn(self._command(), self.log_path, self._environment())
            self._wait_until_answers(self._proc, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its process group after ``grace`` seconds; idempotent."""
        self._end(self._proc, self.grace)
        self._stop_helpers()

    def kill(self) -> None:
        """SIGKILL its process group at once, like a crash (nothing is saved)."""
        proc = self._running("kill")
        self._kill_group(proc)

    def pause(self) -> None:
        """SIGSTOP its process group: connections stay open, nothing answers."""
        proc = self._running("pause")
        os.killpg(proc.pid, signal.SIGSTOP)
        self._wait_state(proc.pid, stopped=True)

    def resume(self) -> None:
        """SIGCONT its process group after :meth:`pause`."""
        proc = self._running("resume")
        os.killpg(proc.pid, signal.SIGCONT)
        self._wait_state(proc.pid, stopped=False)

    def restart(self, timeout: float = 30) -> None:
        """Start it again on the same port, in the same directory (stopping it first if it runs)."""
        self._end(self._proc, self.grace)
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

    def _stop_helpers(self) -> None:
        """End what :meth:`_prepare` started: on stop."""

    # --- processes --------------------------------------------------------------

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,  # a process group of its own, ended by its id
                preexec_fn=_set_parent_death_signal if self.die_with_parent else None,
            )

    @staticmethod
    def _end(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)  # a paused server must run to shut down
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            LocalServer._kill_group(proc)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the process group and wait until it is gone, grandchildren too."""
        # Not reaped yet, so the group id is still the one start_new_session gave it.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # A grandchild (RabbitMQ's beam.smp under its start script) may still be exiting,
        # its ports still open, when the leader is reaped.
        deadline = time.monotonic() + 10
        while _live_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _running(self, action: str) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise ServerError(f"cannot {action} {self.name}: it is not running")
        return self._proc

    @staticmethod
    def _wait_state(pid: int, *, stopped: bool, limit: float = 5) -> None:
        """Wait until /proc shows ``pid`` stopped (state T) or not; no-op without /proc."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            state = _stat(Path(f"/proc/{pid}/stat"))[0]
            if not state or (state == "T") == stopped:
                return
            time.sleep(0.01)

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
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.name} on {HOST}:{self.port} did not answer within {timeout:.0f} s "
                    f"(last error: {last!r}); last lines of {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            time.sleep(0.1)


class LocalRedis(LocalServer):
    """``redis-server`` on a free loopback port; no persistence unless asked (SAVE works).

    With ``tls`` it listens for TLS only (``--port 0``); clients may send a certificate
    (checked against ``tls.ca``) but need not: ``extra_args=["--tls-auth-clients", "yes"]``
    requires one. ``extra_args`` come last, so they override.
    """

    name = "redis"

    def __init__(
        self,
        workdir: Path,
        *,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        tls: TlsFiles | None = None,
        die_with_parent: bool = False,
    ) -> None:
        super().__init__(workdir, die_with_parent=die_with_parent)
        self.password = password
        self.extra_args = tuple(extra_args)
        self.tls = tls
        self.port = free_port()

    @property
    def url(self) -> str:
        """``redis://:PASSWORD@127.0.0.1:PORT/0`` (``rediss://`` with TLS)."""
        scheme = "rediss" if self.tls else "redis"
        auth = f":{_quote(self.password)}@" if self.password else ""
        return f"{scheme}://{auth}{HOST}:{self.port}/0"

    @functools.cached_property
    def version(self) -> str:
        """The server's version, as ``redis-server --version`` says (``7.0.15``)."""
        out = subprocess.run(
            [self._exe(), "--version"], capture_output=True, text=True, check=False
        ).stdout
        return next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())

    def client(self, **options: Any) -> redis.Redis[bytes]:
        """A client of this server (trusting its CA with TLS); the caller closes it."""
        kwargs: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 5}
        if self.tls:
            kwargs["ssl_ca_certs"] = str(self.tls.ca)
        kwargs.update(options)
        client: redis.Redis[bytes] = redis.Redis.from_url(self.url, **kwargs)
        return client

    def _exe(self) -> str:
        return _program("redis-server", "redis-server")

    def _command(self) -> list[str]:
        argv = [self._exe(), "--bind", HOST, "--dir", str(self.workdir), "--daemonize", "no"]
        argv += ["--save", "", "--appendonly", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.tls:
            argv += ["--port", "0", "--tls-port", str(self.port)]
            argv += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            argv += ["--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "optional"]
        else:
            argv += ["--port", str(self.port)]
        return argv + list(self.extra_args)

    def _check(self) -> None:
        client = self.client(socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()


class LocalRabbitMQ(LocalServer):
    """One RabbitMQ node on free loopback ports, with its own ``epmd``.

    Node ``distq-<random>@localhost``; Erlang distribution and epmd on 127.0.0.1 only;
    state (Mnesia, plugins, cookie) in ``workdir``, so :meth:`restart` keeps durable queues.
    Debian's ``/usr/lib/rabbitmq/bin/rabbitmq-server`` runs as the calling user (the
    ``/usr/sbin`` wrapper would switch to the ``rabbitmq`` user, who cannot use ``workdir``).
    ``extra_config`` lines are appended to ``rabbitmq.conf``. ``plugins`` are enabled;
    ``rabbitmq_management`` listens on ``management_url``, ``rabbitmq_prometheus`` on
    ``prometheus_url``. With ``tls`` an ``ssl`` listener is added and ``url`` uses it;
    ``plain_url`` is the TCP listener.
    """

    name = "rabbitmq"
    grace = 30.0
    #: Erlang VM flags: no busy-waiting schedulers (on 2 cores their spinning takes CPU
    #: from everything else); distribution on loopback; epmd is ours.
    ERL_ARGS = (
        "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1} "
        "+sbwt none +sbwtdcpu none +sbwtdio none"
    )

    def __init__(
        self,
        workdir: Path,
        *,
        user: str = "distq",
        password: str | None = None,
        extra_config: Sequence[str] = (),
        plugins: Sequence[str] = (),
        tls: TlsFiles | None = None,
        die_with_parent: bool = False,
    ) -> None:
        super().__init__(workdir, die_with_parent=die_with_parent)
        self.user = user
        self.password = password or secrets.token_hex(16)
        self.extra_config = tuple(extra_config)
        self.plugins = tuple(plugins)
        self.tls = tls
        self.node = f"distq-{secrets.token_hex(4)}@localhost"
        self.tcp_port = free_port()
        self.tls_port = free_port() if tls else None
        self.port = self.tls_port or self.tcp_port
        self.management_port = free_port() if "rabbitmq_management" in self.plugins else None
        self.prometheus_port = free_port() if "rabbitmq_prometheus" in self.plugins else None
        self._epmd_port = free_port()
        self._dist_port = free_port()
        self._epmd: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Self:
        """Start the node (and its epmd); return once AMQP (and management) answer."""
        return super().start(timeout)

    def restart(self, timeout: float = 60) -> None:
        """Start the node again: same ports, node name and Mnesia (durable queues stay)."""
        super().restart(timeout)

    @property
    def url(self) -> str:
        """``amqp://USER:PASSWORD@127.0.0.1:PORT/%2F`` (``amqps://`` on the TLS port)."""
        if self.tls_port is None:
            return self.plain_url
        return f"amqps://{self._userinfo()}@{HOST}:{self.tls_port}/%2F"

    @property
    def plain_url(self) -> str:
        """The plain TCP listener, TLS or not."""
        return f"amqp://{self._userinfo()}@{HOST}:{self.tcp_port}/%2F"

    @property
    def management_url(self) -> str | None:
        """``http://USER:PASSWORD@127.0.0.1:PORT`` with ``rabbitmq_management``, else None."""
        if self.management_port is None:
            return None
        return f"http://{self._userinfo()}@{HOST}:{self.management_port}"

    @property
    def prometheus_url(self) -> str | None:
        """``http://127.0.0.1:PORT`` (``/metrics``) with ``rabbitmq_prometheus``, else None."""
        if self.prometheus_port is None:
            return None
        return f"http://{HOST}:{self.prometheus_port}"

    @functools.cached_property
    def version(self) -> str:
        """The installed package's version (Debian), else ``unknown``."""
        with contextlib.suppress(OSError):
            out = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            return out or "unknown"
        return "unknown"

    def parameters(self) -> pika.URLParameters:
        """Connection parameters for ``url`` (trusting the CA with TLS); one attempt."""
        params = pika.URLParameters(self.url)
        if self.tls:
            params.ssl_options = pika.SSLOptions(self.tls.client_context(), server_hostname=HOST)
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.blocked_connection_timeout = 10
        return params

    def connect(self) -> pika.BlockingConnection:
        """A blocking connection to ``url``; the caller closes it."""
        return pika.BlockingConnection(self.parameters())

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` (``ctl("stop_app")``); its output.

        Raises ServerError with rabbitmqctl's output when it fails.
        """
        ctl = _program("rabbitmqctl", "rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmqctl")
        done = subprocess.run(
            [ctl, "-n", self.node, *args],
            env=self._environment(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise ServerError(
                f"rabbitmqctl {' '.join(args)} exited with {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-1500:]}"
            )
        return done.stdout

    def _userinfo(self) -> str:
        return f"{_quote(self.user)}:{_quote(self.password)}"

    def _command(self) -> list[str]:
        return [
            _program("rabbitmq-server", "rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server")
        ]

    def _environment(self) -> dict[str, str]:
        # The machine's RABBITMQ_*/ERL_* settings are not this node's.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.workdir),  # the Erlang cookie, shared with rabbitmqctl
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
            ERL_EPMD_ADDRESS=HOST,
            ERL_EPMD_PORT=str(self._epmd_port),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_DIST_PORT=str(self._dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=self.ERL_ARGS,
            RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_CONFIG_FILE=str(self.workdir / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.workdir / "log"),
            RABBITMQ_PID_FILE=str(self.workdir / "rabbitmq.pid"),
        )
        return env

    def _config(self) -> str:
        lines = [
            f"listeners.tcp.default = {HOST}:{self.tcp_port}",
            "loopback_users = none",
            f"default_user = {self.user}",
            f"default_pass = {self.password}",
            "log.console = true",
            "log.console.level = info",
            "log.file = false",
        ]
        if self.tls:
            lines += [
                f"listeners.ssl.default = {HOST}:{self.tls_port}",
                f"ssl_options.cacertfile = {self.tls.ca}",
                f"ssl_options.certfile = {self.tls.cert}",
                f"ssl_options.keyfile = {self.tls.key}",
                "ssl_options.verify = verify_peer",  # a client certificate, if sent, must check
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        if self.management_port is not None:
            lines += [
                f"management.tcp.ip = {HOST}",
                f"management.tcp.port = {self.management_port}",
            ]
        if self.prometheus_port is not None:
            lines += [
                f"prometheus.tcp.ip = {HOST}",
                f"prometheus.tcp.port = {self.prometheus_port}",
            ]
        return "\n".join([*lines, *self.extra_config]) + "\n"

    def _prepare(self) -> None:
        (self.workdir / "rabbitmq.conf").write_text(self._config())
        (self.workdir / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")  # not the machine's
        cookie = self.workdir / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16))
            cookie.chmod(0o400)
        if self._epmd is None or self._epmd.poll() is not None:
            self._epmd = self._start_epmd()

    def _start_epmd(self) -> subprocess.Popen[bytes]:
        # Our own, on loopback: Erlang would otherwise start a shared one on 0.0.0.0:4369
        # that outlives us.
        epmd = _program("epmd", "rabbitmq-server", "/usr/lib/erlang/bin/epmd")
        argv = [epmd, "-port", str(self._epmd_port), "-address", HOST]
        proc = self._spawn(argv, self.workdir / "epmd.log", self._environment())
        deadline = time.monotonic() + 10
        while not _port_open(self._epmd_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                self._end(proc, 5)
                raise ServerError(
                    f"epmd did not listen on {HOST}:{self._epmd_port}: "
                    f"{_tail(self.workdir / 'epmd.log')}"
                )
            time.sleep(0.05)
        return proc

    def _stop_helpers(self) -> None:
        self._end(self._epmd, 5)
        self._epmd = None

    def _check(self) -> None:
        self.connect().close()
        if self.management_url is not None:
            _http_json(self.management_url, "/api/overview")


class LocalPrometheus(LocalServer):
    """Debian's ``prometheus`` on a free loopback port, its TSDB in ``workdir/data``.

    ``config_yaml`` is the body of ``prometheus.yml`` (``scrape_configs:``, ``rule_files:``
    ...); a ``global:`` block with ``scrape_interval`` and ``evaluation_interval`` is put
    before it unless it has its own.
    """

    name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        config_yaml: str,
        *,
        scrape_interval: str = "1s",
        die_with_parent: bool = False,
    ) -> None:
        super().__init__(workdir, die_with_parent=die_with_parent)
        self.config_yaml = config_yaml
        self.scrape_interval = scrape_interval
        self.port = free_port()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query (``/api/v1/query``): a vector's samples.

        Raises ServerError with Prometheus's message when the query is refused.
        """
        result: list[dict[str, Any]] = self._api("/api/v1/query", query=expr)["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (``/api/v1/targets``), with ``health`` and ``lastError``."""
        active: list[dict[str, Any]] = self._api("/api/v1/targets")["activeTargets"]
        return active

    def _api(self, path: str, **params: str) -> dict[str, Any]:
        body = _http_json(self.url, path, **params)
        if body.get("status") != "success":
            raise ServerError(f"{path}: {body.get('errorType')}: {body.get('error')}")
        data: dict[str, Any] = body["data"]
        return data

    def _command(self) -> list[str]:
        return [
            _program("prometheus", "prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
        ]

    def _prepare(self) -> None:
        config = self.config_yaml
        if not any(line.startswith("global:") for line in config.splitlines()):
            config = (
                f"global:\n  scrape_interval: {self.scrape_interval}\n"
                f"  evaluation_interval: {self.scrape_interval}\n{config}"
            )
        self.config_path.write_text(config)

    def _check(self) -> None:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
            response.read()


def _http_json(base_url: str, path: str, **params: str) -> Any:
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
