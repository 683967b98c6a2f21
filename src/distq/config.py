"""Settings: environment variables, each also a command-line flag, checked before any I/O.

Every problem is reported as one :class:`~distq.errors.ConfigError` line that names
the variable, what is wrong and what to set instead; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from distq.errors import ConfigError

TransportName = Literal["manager", "redis", "rabbitmq"]
TRANSPORTS: tuple[TransportName, ...] = ("manager", "redis", "rabbitmq")
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

#: Environment variable -> command-line flag. The flag wins over the variable.
VARIABLES: dict[str, str] = {
    "DISTQ_TRANSPORT": "--transport",
    "DISTQ_MANAGER_ADDRESS": "--manager-address",
    "DISTQ_AUTHKEY": "--authkey",
    "DISTQ_REDIS_URL": "--redis-url",
    "DISTQ_AMQP_URL": "--amqp-url",
    "DISTQ_QUEUE": "--queue",
    "DISTQ_LEASE_SECONDS": "--lease-seconds",
    "DISTQ_PREFETCH": "--prefetch",
    "DISTQ_METRICS_PORT": "--metrics-port",
    "DISTQ_METRICS_HOST": "--metrics-host",
    "DISTQ_STALL_SECONDS": "--stall-seconds",
    "DISTQ_STATS_SECONDS": "--stats-seconds",
    "DISTQ_LOG_FORMAT": "--log-format",
    "DISTQ_RABBITMQ_MANAGEMENT_URL": "--rabbitmq-management-url",
}

DEFAULTS: dict[str, str] = {
    "DISTQ_TRANSPORT": "manager",
    "DISTQ_MANAGER_ADDRESS": "127.0.0.1:9000",
    "DISTQ_REDIS_URL": "redis://127.0.0.1:6379/0",
    "DISTQ_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "DISTQ_QUEUE": "distq",
    "DISTQ_LEASE_SECONDS": "5",
    "DISTQ_PREFETCH": "128",
    "DISTQ_METRICS_HOST": "0.0.0.0",
    "DISTQ_STALL_SECONDS": "60",
    "DISTQ_STATS_SECONDS": "5",
    "DISTQ_LOG_FORMAT": "text",
}

_N = TypeVar("_N", int, float)
_Bad = Callable[[str, str], ConfigError]

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class Settings:
    """Validated settings shared by master and worker. ``repr`` hides the secrets."""

    transport: TransportName = "manager"
    manager_address: tuple[str, int] = ("127.0.0.1", 9000)
    authkey: bytes | None = field(default=None, repr=False)
    redis_url: str = field(default=DEFAULTS["DISTQ_REDIS_URL"], repr=False)
    amqp_url: str = field(default=DEFAULTS["DISTQ_AMQP_URL"], repr=False)
    queue: str = "distq"
    lease_seconds: float = 5.0
    prefetch: int = 128
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    stall_seconds: float = 60.0
    stats_seconds: float = 5.0
    log_format: LogFormat = "text"
    rabbitmq_management_url: str | None = field(default=None, repr=False)

    @property
    def heartbeat_interval(self) -> float:
        """How often a worker renews its leases: three times per lease period."""
        return self.lease_seconds / 3

    @classmethod
    def load(
        cls, environ: Mapping[str, str], flags: Mapping[str, str | None] | None = None
    ) -> Settings:
        """Read settings from ``environ`` overridden by ``flags`` (keyed by variable)."""
        given = {k: v for k, v in environ.items() if k in VARIABLES}
        from_flag = {k for k, v in (flags or {}).items() if v is not None}
        given.update({k: v for k, v in (flags or {}).items() if v is not None})

        def raw(var: str) -> str | None:
            value = given.get(var)
            if value is None:
                return DEFAULTS.get(var)
            return value.strip()

        def bad(var: str, problem: str) -> ConfigError:
            origin = f"{VARIABLES[var]} " if var in from_flag else ""
            return ConfigError(f"{var} {origin}{problem}".replace("  ", " "))

        transport = raw("DISTQ_TRANSPORT") or ""
        if transport not in TRANSPORTS:
            raise bad(
                "DISTQ_TRANSPORT",
                f"is {transport!r}; set it to one of: {', '.join(TRANSPORTS)}",
            )
        address = _parse_address(raw("DISTQ_MANAGER_ADDRESS") or "", bad)
        key = given.get("DISTQ_AUTHKEY")
        authkey = key.encode() if key else None
        if transport == "manager" and not authkey:
            raise bad(
                "DISTQ_AUTHKEY",
                "is not set; the manager transport needs a shared secret: set the same "
                "random value for master and workers, e.g. "
                "DISTQ_AUTHKEY=\"$(python3 -c 'import secrets; print(secrets.token_hex(16))')\"",
            )
        redis_url = raw("DISTQ_REDIS_URL") or ""
        _check_url("DISTQ_REDIS_URL", redis_url, ("redis", "rediss", "unix"), bad)
        amqp_url = raw("DISTQ_AMQP_URL") or ""
        _check_url("DISTQ_AMQP_URL", amqp_url, ("amqp", "amqps"), bad)
        queue = raw("DISTQ_QUEUE") or ""
        if not _QUEUE_NAME.match(queue):
            raise bad(
                "DISTQ_QUEUE",
                f"is {queue!r}; use 1-100 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit",
            )
        lease = _parse_number("DISTQ_LEASE_SECONDS", raw("DISTQ_LEASE_SECONDS"), float, bad)
        if not 0.3 <= lease <= 3600:
            raise bad("DISTQ_LEASE_SECONDS", f"is {lease:g}; use a value from 0.3 to 3600 seconds")
        prefetch = _parse_number("DISTQ_PREFETCH", raw("DISTQ_PREFETCH"), int, bad)
        if not 1 <= prefetch <= 10_000:
            raise bad("DISTQ_PREFETCH", f"is {prefetch}; use a whole number from 1 to 10000")
        metrics_raw = raw("DISTQ_METRICS_PORT")
        metrics_port = None
        if metrics_raw:
            metrics_port = _parse_number("DISTQ_METRICS_PORT", metrics_raw, int, bad)
            if not 0 <= metrics_port <= 65535:
                raise bad("DISTQ_METRICS_PORT", f"is {metrics_port}; use a port from 0 to 65535")
        metrics_host = raw("DISTQ_METRICS_HOST") or ""
        if not metrics_host or any(c.isspace() or c in "/@" for c in metrics_host):
            raise bad(
                "DISTQ_METRICS_HOST",
                f"is {metrics_host!r}; use an address to listen on, e.g. 0.0.0.0 or 127.0.0.1",
            )
        stall = _parse_number("DISTQ_STALL_SECONDS", raw("DISTQ_STALL_SECONDS"), float, bad)
        if not 0.1 <= stall <= 86_400:
            raise bad("DISTQ_STALL_SECONDS", f"is {stall:g}; use a value from 0.1 to 86400 seconds")
        stats = _parse_number("DISTQ_STATS_SECONDS", raw("DISTQ_STATS_SECONDS"), float, bad)
        if not 0.1 <= stats <= 3600:
            raise bad("DISTQ_STATS_SECONDS", f"is {stats:g}; use a value from 0.1 to 3600 seconds")
        log_format = raw("DISTQ_LOG_FORMAT") or ""
        if log_format not in LOG_FORMATS:
            raise bad(
                "DISTQ_LOG_FORMAT", f"is {log_format!r}; set it to one of: {', '.join(LOG_FORMATS)}"
            )
        management = raw("DISTQ_RABBITMQ_MANAGEMENT_URL") or None
        if management is not None:
            _check_url("DISTQ_RABBITMQ_MANAGEMENT_URL", management, ("http", "https"), bad)
        return cls(
            transport=transport,
            manager_address=address,
            authkey=authkey,
            redis_url=redis_url,
            amqp_url=amqp_url,
            queue=queue,
            lease_seconds=lease,
            prefetch=prefetch,
            metrics_port=metrics_port,
            metrics_host=metrics_host.strip("[]"),
            stall_seconds=stall,
            stats_seconds=stats,
            log_format=log_format,
            rabbitmq_management_url=management,
        )


def _parse_address(value: str, bad: _Bad) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise bad(
            "DISTQ_MANAGER_ADDRESS",
            f"is {value!r}; use host:port, e.g. 127.0.0.1:9000 "
            "(the master listens there, workers connect there)",
        )
    return host, int(port)


def _check_url(var: str, value: str, schemes: tuple[str, ...], bad: _Bad) -> None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise bad(var, f"is not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        raise bad(
            var,
            f"has scheme {parts.scheme!r}; use one of {', '.join(s + '://' for s in schemes)}",
        )
    if parts.scheme != "unix" and not parts.hostname:
        example = DEFAULTS.get(var, "http://user:password@rabbit-host:15672")
        raise bad(var, f"names no host; use e.g. {example}")


def _parse_number(var: str, value: str | None, kind: type[_N], bad: _Bad) -> _N:
    try:
        return kind(value or "")
    except ValueError:
        word = "a whole number" if kind is int else "a number"
        raise bad(var, f"is {value!r}, not {word}") from None
