"""RabbitMQ: :class:`LocalRabbitMQ`, one node with an epmd of its own."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Self

import pika

from launch import process
from launch.server import (
    HOST,
    LocalServer,
    ServerError,
    TlsFiles,
    free_port,
    http_json,
    port_open,
    program,
    quote,
    tail,
)


class LocalRabbitMQ(LocalServer):
    """One RabbitMQ node on free loopback ports, with its own ``epmd``.

    Node ``distq-<random>@localhost``; Erlang distribution and epmd on 127.0.0.1 only;
    state (Mnesia, plugins, cookie) in ``workdir``, so :meth:`restart` keeps durable queues.
    Debian's ``/usr/lib/rabbitmq/bin/rabbitmq-server`` runs as the calling user (the
    ``/usr/sbin`` wrapper would switch to the ``rabbitmq`` user, who cannot use ``workdir``).
    ``extra_config`` lines are appended to ``rabbitmq.conf``; ``advanced_config`` is the
    node's ``advanced.config`` (Erlang terms), for settings ``rabbitmq.conf`` cannot set
    (``[{rabbit, [{channel_tick_interval, 1000}]}].``). ``plugins`` are enabled;
    ``rabbitmq_management`` listens on ``management_url``, ``rabbitmq_prometheus`` on
    ``prometheus_url``. With ``tls`` an ``ssl`` listener is added and ``url`` uses it;
    ``plain_url`` is the TCP listener.
    """

    name = "rabbitmq"
    grace = 30.0
    port_taken_says = (b"dist_port_already_used", b"eaddrinuse")
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
        advanced_config: str | None = None,
    ) -> None:
        super().__init__(workdir, die_with_parent=die_with_parent)
        self.user = user
        self.password = password or secrets.token_hex(16)
        self.extra_config = tuple(extra_config)
        self.advanced_config = advanced_config
        self.plugins = tuple(plugins)
        self.tls = tls
        self._epmd: subprocess.Popen[bytes] | None = None
        self._pick_ports()

    def _pick_ports(self) -> None:
        """Free ports for each listener, and a node name of its own (Mnesia's directory)."""
        self.node = f"distq-{secrets.token_hex(4)}@localhost"
        self.tcp_port = free_port()
        self.tls_port = free_port() if self.tls else None
        self.port = self.tls_port or self.tcp_port
        self.management_port = free_port() if "rabbitmq_management" in self.plugins else None
        self.prometheus_port = free_port() if "rabbitmq_prometheus" in self.plugins else None
        self._epmd_port = free_port()
        self._dist_port = free_port()

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
        done = subprocess.run(
            [self._rabbitmqctl(), "-n", self.node, *args],
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

    @contextlib.contextmanager
    def bounce_on_cue(self, times: int, pause: float = 1.0) -> Iterator[Callable[[], None]]:
        """What ``rabbitmqctl stop_app``, a ``pause``, ``start_app`` do, on cue, ``times`` times.

        ``rabbitmqctl`` is an Erlang VM of its own: on two busy cores it takes up to 20 s
        to boot, so a bounce run as three commands lands whenever it lands (after a short
        job's end, say). Here one ``rabbitmqctl eval``, booted before the block, runs
        ``rabbit:stop()``, ``timer:sleep``, ``rabbit:start()`` (what ``stop_app`` and
        ``start_app`` call) inside the node each time the yielded ``bounce()`` is
        called; ``bounce()`` returns once the app is started again.
        """
        cues = self.workdir / f"cues-{secrets.token_hex(4)}"
        cues.mkdir()
        if '"' in str(cues) or "\\" in str(cues):
            raise ServerError(f"{cues}: a path rabbitmqctl eval cannot quote")
        wait_s = 300  # for each cue; the command then ends by itself
        program_text = (
            f'Dir = "{cues}", '
            "Wait = fun W(F, 0) -> exit({no_cue, F}); W(F, K) -> "
            "case filelib:is_file(F) of true -> ok; "
            "false -> timer:sleep(20), W(F, K - 1) end end, "
            "Bounce = fun B(I) when I > " + str(times) + " -> done; B(I) -> "
            'N = integer_to_list(I), Wait(Dir ++ "/go-" ++ N, ' + str(wait_s * 50) + "), "
            "ok = rabbit:stop(), timer:sleep(" + str(round(pause * 1000)) + "), "
            'ok = rabbit:start(), ok = file:write_file(Dir ++ "/done-" ++ N, <<>>), '
            "B(I + 1) end, "
            'ok = file:write_file(Dir ++ "/ready", <<>>), '
            "Bounce(1)."
        )
        log = cues / "rabbitmqctl.log"
        proc = self.spawn([self._rabbitmqctl(), "-n", self.node, "eval", program_text], log)
        done = 0

        def wait_for(name: str) -> None:
            deadline = time.monotonic() + 120
            while not (cues / name).exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ServerError(f"rabbitmqctl eval: no {name} in 120 s: {tail(log)}")
                time.sleep(0.02)

        def bounce() -> None:
            nonlocal done
            if done >= times:
                raise ServerError(f"bounce_on_cue({times}): called once too often")
            done += 1
            (cues / f"go-{done}").touch()
            wait_for(f"done-{done}")

        try:
            wait_for("ready")
            yield bounce
        finally:
            process.end(proc, 5)

    @staticmethod
    def _rabbitmqctl() -> str:
        return program("rabbitmqctl", "rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmqctl")

    def _userinfo(self) -> str:
        return f"{quote(self.user)}:{quote(self.password)}"

    def _command(self) -> list[str]:
        return [
            program("rabbitmq-server", "rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server")
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
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.workdir / "advanced.config"),
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
        (self.workdir / "advanced.config").write_text(self.advanced_config or "[].\n")
        cookie = self.workdir / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16))
            cookie.chmod(0o400)
        if self._epmd is None or self._epmd.poll() is not None:
            self._epmd = self._start_epmd()

    def _start_epmd(self) -> subprocess.Popen[bytes]:
        # Our own, on loopback: Erlang would otherwise start a shared one on 0.0.0.0:4369
        # that outlives us.
        epmd = program("epmd", "rabbitmq-server", "/usr/lib/erlang/bin/epmd")
        argv = [epmd, "-port", str(self._epmd_port), "-address", HOST]
        proc = self.spawn(argv, self.workdir / "epmd.log")
        deadline = time.monotonic() + 10
        while not port_open(self._epmd_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                process.end(proc, 5)
                raise ServerError(
                    f"epmd did not listen on {HOST}:{self._epmd_port}: "
                    f"{tail(self.workdir / 'epmd.log')}"
                )
            time.sleep(0.05)
        return proc

    def _stop_helpers(self) -> None:
        process.end(self._epmd, 5)
        self._epmd = None

    def _check(self) -> None:
        self.connect().close()
        if self.management_url is not None:
            http_json(self.management_url, "/api/overview")
