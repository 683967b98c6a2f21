"""Redis: :class:`LocalRedis`."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from launch.server import HOST, LocalServer, TlsFiles, free_port, program, quote

NO_RETRY = Retry(NoBackoff(), 0)


class LocalRedis(LocalServer):
    """``redis-server`` on a free loopback port; no persistence unless asked (SAVE works).

    With ``tls`` it listens for TLS only (``--port 0``); clients may send a certificate
    (checked against ``tls.ca``) but need not: ``extra_args=["--tls-auth-clients", "yes"]``
    requires one. ``extra_args`` come last, so they override.
    """

    name = "redis"
    port_taken_says = (b"Address already in use",)

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
        auth = f":{quote(self.password)}@" if self.password else ""
        return f"{scheme}://{auth}{HOST}:{self.port}/0"

    @functools.cached_property
    def version(self) -> str:
        """The server's version, as ``redis-server --version`` says (``7.0.15``)."""
        out = subprocess.run(
            [self._exe(), "--version"], capture_output=True, text=True, check=False
        ).stdout
        return next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())

    def client(self, **options: Any) -> redis.Redis[bytes]:
        """A client of this server (trusting its CA with TLS); the caller closes it.

        It does not retry, so a call to a killed or paused server fails at once.
        """
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            "retry": NO_RETRY,
        }
        if self.tls:
            kwargs["ssl_ca_certs"] = str(self.tls.ca)
        kwargs.update(options)
        client: redis.Redis[bytes] = redis.Redis.from_url(self.url, **kwargs)
        return client

    def _exe(self) -> str:
        return program("redis-server", "redis-server")

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
