"""Settings: environment variables, each also a command-line flag, checked before any I/O.

Every setting is one declarative entry: a field of :class:`Settings` made by
:func:`setting`, which names the variable, the flag, the default, the parser and the
help line. Adding a setting is adding one such field; ``distq --help``, the loader and
the misspelling check all read the entries.

Every problem is reported as one :class:`~distq.errors.ConfigError` line that names
the variable, what is wrong and what to set instead; the CLI turns it into exit code 2.
This module also holds most defaults of the master's and worker's own flags (not yet
the master's ``--connect-timeout`` and ``--task-delay``, nor ``distq probe``'s
``--timeout``, which are set at their flags).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs, urlsplit

from distq import credentials, signing, tls
from distq.envelope import MAX_ATTEMPTS as MAX_ATTEMPTS
from distq.errors import ConfigError
from distq.limits import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_PREFETCH,
    MIN_MESSAGE_BYTES,
)
from distq.timelimits import TimeLimits
from distq.transport import TRANSPORTS

_T = TypeVar("_T")
_N = TypeVar("_N", int, float)

PREFIX = "DISTQ_"

# -- defaults of the role flags (the settings' defaults are in their entries below) ------
TASKS = 6  # distq master --tasks
# MAX_ATTEMPTS (distq master --max-attempts) is a task's own default, from distq.envelope
STATUS_EVERY = 10.0  # distq master --status-every; seconds between status lines in --rate mode
MASTER_DRAIN_SECONDS = 5.0  # how long a stopping master waits for results in flight
CONCURRENCY = 1  # distq worker --concurrency
#: Most slots one worker runs: each is a thread and a broker connection (more: more workers).
MAX_CONCURRENCY = 1024
CONNECT_TIMEOUT = 10.0  # distq worker --connect-timeout
#: Seconds between a master's (or executor's) reconciles: renew its reply queue, find
#: the tasks the broker lost (:meth:`distq.transport.Producer.reconcile`).
RECONCILE_SECONDS = 2.0
#: Most messages one call carries: a master's submit and results, a transport's chunks.
MESSAGE_BATCH = 1000
#: Shortest time a master's reply queue outlives the master (``Settings.master_ttl``).
MASTER_TTL_MIN_SECONDS = 10.0


@dataclass(frozen=True)
class Setting(Generic[_T]):
    """One setting: its variable and flag, default, parser and help line.

    ``parse`` turns the text of the variable or flag into the value, or raises
    ``ValueError`` whose message says what is wrong and what to use, phrased to follow
    the variable's name ("is 'x'; use ..."). Values of variables and flags are stripped
    of surrounding whitespace first; a secret read from its ``_FILE`` is not (only its
    trailing newline goes, see :func:`distq.credentials.read_secret`; a signing key's
    blanks go when the key is parsed). ``repr`` never shows a secret.
    """

    variable: str
    flag: str
    default: _T
    parse: Callable[[str], _T]
    help: str
    shown_default: str
    secret: bool = False

    def read(self, text: str) -> _T:
        """``parse`` the stripped ``text``; signing keys unstripped: a value of blanks
        only is someone's missing key (refused), stripped it read as "signing off"."""
        unstripped = self.parse in (signing.parse_keys, signing.parse_key)
        return self.parse(text if unstripped else text.strip())


def setting(
    variable: str,
    flag: str,
    default: _T,
    parse: Callable[[str], _T],
    help: str,
    *,
    shown_default: str | None = None,
    secret: bool = False,
) -> _T:
    """A :class:`Settings` field declared by its :class:`Setting` entry."""
    entry = Setting(
        variable,
        flag,
        default,
        parse,
        help,
        str(default) if shown_default is None else shown_default,
        secret,
    )
    return field(default=default, repr=not secret, metadata={"setting": entry})


# -- parsers: text -> value, or ValueError("is ...; use ...") -----------------------------
def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"is {text!r}; set it to one of: {', '.join(choices)}")
        return text

    return parse


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if "://" in text:
        raise ValueError(f"is {text!r}; use host:port without a scheme, e.g. 127.0.0.1:9000")
    bare_ipv6 = _is_ipv6(text)
    if bare_ipv6 or (":" in host and not bracketed):  # ::1 read as host ':', port 1
        example = f"[{text}]:PORT" if bare_ipv6 else "[ADDRESS]:PORT"
        raise ValueError(
            f"is {text!r}, not host:port; write an IPv6 address in brackets, then its port: "
            f"{example}, e.g. [::1]:9000"
        )
    if not sep or not host or "[" in host or "]" in host:
        port = ""  # refused below
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"is {text!r}; use host:port, e.g. 127.0.0.1:9000 "
            "(the master listens there, workers connect there)"
        )
    if problem := host_problem(host):
        raise ValueError(f"is {text!r}: {host!r} is {problem}")
    return host, int(port)


def host_problem(host: str) -> str | None:
    """Why ``host`` is no name or address a connection can look up, or None.

    Python turns a host name into its ASCII form before any lookup; a name it cannot
    (an empty label, as in ``redis..local``, a label over 63 characters, bytes that are
    not UTF-8) failed there with a traceback, at the first connect.
    """
    if _is_ip(host):
        return None
    try:
        host.encode("idna")
    except UnicodeError:
        return (
            "not a host name (an empty label between dots, a label over 63 characters, or "
            "bytes that are not UTF-8); use a name such as host.example, or an address"
        )
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.partition("%")[0])  # fe80::1%eth0: a scoped address
    except ValueError:
        return False
    return True


def _utf8(text: str, hint: str = "give it in UTF-8") -> str:
    """``text`` if it is UTF-8 text; a byte that is not becomes a lone surrogate in Python,
    which no broker protocol can send (a traceback at the first connect)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"holds bytes that are not UTF-8 (at character {exc.start + 1}); {hint}"
        ) from None
    return text


def host_port(host: str, port: int | None = None) -> str:
    """``host`` and ``port`` as an address or a URL's netloc has them: an IPv6 address in
    brackets (``[::1]:9000``), the port left out when None."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def _secret(text: str) -> bytes | None:
    # surrogateescape: the bytes as the environment holds them (os.environb), UTF-8 or not
    return text.encode(errors="surrogateescape") if text else None


def _url(schemes: tuple[str, ...], example: str) -> Callable[[str], str]:
    """A broker URL: one of ``schemes``, a host and a port (a number), except ``unix://``."""

    def parse(text: str) -> str:
        _utf8(text, "give it in UTF-8, or percent-encode those bytes (%E9)")
        try:
            parts = urlsplit(text)
            port = parts.port  # raises ValueError on a port not a number, or above 65535
        except ValueError:  # its message may quote part of the password: not shown
            digits = _port_text(text)
            if digits.isdigit():
                raise ValueError(
                    f"({credentials.mask_url(text)}) has port {int(digits)}; use 1 to 65535, "
                    f"e.g. {example}"
                ) from None
            raise ValueError(
                f"({credentials.mask_url(text)}) is not a valid URL: its port is not a "
                "number; percent-encode '/', '@' and ':' in a password (%2F, %40, %3A)"
            ) from None
        if parts.scheme not in schemes:
            raise ValueError(
                f"has scheme {parts.scheme!r}; use one of {', '.join(s + '://' for s in schemes)}"
            )
        _options(text, parts.query)
        if parts.scheme == "unix":
            if parts.hostname or parts.path in ("", "/"):  # unix://tmp/r.sock: /r.sock
                raise ValueError(
                    f"({credentials.mask_url(text)}) names no socket path after three "
                    "slashes; use e.g. unix:///run/redis/redis.sock"
                )
            return text
        if not parts.hostname:
            raise ValueError(f"names no host; use e.g. {example}")
        if problem := host_problem(parts.hostname):
            raise ValueError(
                f"({credentials.mask_url(text)}) has host {parts.hostname!r}: {problem}"
            )
        if port is None:  # absent, or empty after the colon: never guess one
            raise ValueError(f"names no port after the host; use e.g. {example}")
        if not 0 < port < 65536:
            raise ValueError(f"has port {port}; use 1 to 65535, e.g. {example}")
        if parts.scheme.startswith("amqp") and "/" in parts.path[1:].rstrip("/"):
            # pika takes the first segment as the vhost, without a word (input17)
            raise ValueError(
                f"({credentials.mask_url(text)}) has path {parts.path!r}: a vhost is one "
                "segment; percent-encode a '/' in its name (/a%2Fb for vhost 'a/b'; /%2F "
                "for '/')"
            )
        return text

    return parse


#: Options of a broker URL that are seconds: each must be a number above 0 (NaN made a
#: connect wait for good, -1 a traceback at the first connect).
_SECONDS_OPTIONS = ("socket_timeout", "socket_connect_timeout", "stack_timeout")
#: The longest of them: a socket's timeout of 1e10 s overflowed at the first connect.
_MOST_SECONDS = 1_000_000


def _options(url: str, query: str) -> None:
    """Refuse a URL's timeout options that are not seconds above 0, Redis's
    ``socket_timeout``, which distq sets itself (the URL's would win), and an
    ``ssl_cert_reqs`` redis-py does not take (it failed at each connect, an outage)."""
    options = parse_qs(query)
    for value in options.get("ssl_cert_reqs", []) if url.lower().startswith("rediss") else []:
        if value not in ("none", "optional", "required"):
            raise ValueError(
                f"({credentials.mask_url(url)}) has ssl_cert_reqs={value!r}; use required, "
                "optional or none, in lower case"
            )
    # redis-py reads 0, no, f, n... as false too: a check turned off by a spelling the
    # README does not name (sec16); one spelling each way
    for value in options.get("ssl_check_hostname", []) if url.lower().startswith("rediss") else []:
        if value not in ("true", "false"):
            raise ValueError(
                f"({credentials.mask_url(url)}) has ssl_check_hostname={value!r}; use true or "
                "false, in lower case"
            )
    redis = url.lower().startswith(("redis", "unix"))
    for name in ("decode_responses", "encoding", "encoding_errors") if redis else ():
        if name in options:  # every reply a str, or names encoded unlike other processes
            raise ValueError(
                f"({credentials.mask_url(url)}) sets {name}, which distq cannot work with "
                "(it reads and writes bytes, alike in every process): remove it"
            )
    for value in options.get("protocol", []) if redis else []:
        if value not in ("2", "3"):
            raise ValueError(
                f"({credentials.mask_url(url)}) has protocol={value!r}; use 2 or 3, or leave "
                "the option out"
            )
    for value in options.get("client_name", []) if redis else []:
        if any(c.isspace() or not c.isprintable() for c in value):  # Redis refuses them
            raise ValueError(
                f"({credentials.mask_url(url)}) has client_name={value!r}; use a name "
                "without spaces or control characters, or leave the option out"
            )
    if redis and "socket_timeout" in options:
        raise ValueError(
            f"({credentials.mask_url(url)}) sets socket_timeout, which distq sets itself "
            "(a blocking read waits up to a third of DISTQ_LEASE_SECONDS, and a shorter "
            "timeout reads as an outage): remove it"
        )
    for name in _SECONDS_OPTIONS:
        for value in options.get(name, []):
            try:
                seconds = float(value)
            except ValueError:
                seconds = math.nan
            if not (math.isfinite(seconds) and 0 < seconds <= _MOST_SECONDS):
                raise ValueError(
                    f"({credentials.mask_url(url)}) has {name}={value!r}; use a number of "
                    f"seconds above 0 and at most {_MOST_SECONDS:,}, or leave the option out"
                )


_DATABASE_PATH = re.compile(r"(/[0-9]*)?/?")


def _redis_url(text: str) -> str:
    """A Redis URL whose path, if any, is a database number: redis-py reads any other
    path as database 0 without a word (``redis://h:6379/abc``)."""
    url = _url(("redis", "rediss", "unix"), _REDIS_URL)(text)
    parts = urlsplit(url)
    if parts.scheme != "unix" and not _DATABASE_PATH.fullmatch(parts.path):
        raise ValueError(
            f"({credentials.mask_url(url)}) has path {parts.path!r}, not a database number; "
            f"end it with the database, e.g. {_REDIS_URL} (or no path: database 0)"
        )
    return url


def _port_text(url: str) -> str:
    """What stands after the host's ``:`` in ``url``; ``""`` if nothing does, or if an
    ``@`` after the host part says that part is a password's (``redis://:12/3@h``)."""
    netloc = url.partition("://")[2]
    for stop in "/?#":
        netloc = netloc.partition(stop)[0]
    if netloc.count("@") != url.count("@"):
        return ""
    host, colon, port = netloc.rpartition("@")[2].rpartition(":")
    return port if colon and (host.endswith("]") or not host.startswith("[")) else ""


_QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


#: What the names distq derives from a queue's hold, by the part that marks them
#: (``<queue>.retry.<ms>``, ``<queue>.results.<job>``, ``<queue>.held.<slot>``).
_DERIVED = {".retry.": "delayed retries", ".results.": "results", ".held.": "held tasks"}


def _queue(text: str) -> str:
    if not _QUEUE_NAME.match(text):
        raise ValueError(
            f"is {text!r}; use 1-100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    part = ".dead" if text.endswith(".dead") else next((p for p in _DERIVED if p in text), None)
    if part is not None:  # a worker on "distq.dead" took distq's dead letters as tasks
        what = _DERIVED.get(part, "dead letters")
        raise ValueError(
            f"is {text!r}: distq names the queues of another queue's {what} so; pick a "
            f"name without {part!r}"
        )
    return text


def _number(kind: type[_N], low: _N, high: _N, unit: str = "") -> Callable[[str], _N]:
    word = "a whole number" if kind is int else "a number"

    def parse(text: str) -> _N:
        try:
            # whole numbers in ASCII digits only, as `distq probe` reads the metrics port:
            # int() also takes "+9_100" and other scripts' digits
            if kind is int and not re.fullmatch(r"-?[0-9]+", text):
                raise ValueError
            value = kind(text)
        except ValueError:
            raise ValueError(f"is {text!r}, not {word}") from None
        if not low <= value <= high:
            shown, span = _shown(value), f"{_shown(low)} to {_shown(high)}{unit}"
            if unit == " bytes" and high % _MIB == 0:
                span += f" ({high // _MIB} MiB)"
            raise ValueError(f"is {shown}; use {word} from {span}")
        return value

    return parse


_MIB = 1 << 20


def _shown(value: float) -> str:
    """A number as a user would write it, every digit kept: ``134217729``, ``0.3``,
    ``3600`` (``:g`` rounds to 6 digits, ``134217729`` to ``1.34218e+08``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)


def _optional(parse: Callable[[str], _T]) -> Callable[[str], _T | None]:
    """An empty value means off."""
    return lambda text: parse(text) if text else None


def unusable_as_a_host(text: str) -> bool:
    """Whether ``text`` is empty or holds what no host has: a blank, a control
    character, '/' or '@' (a setting's and a flag's check alike)."""
    return not text or any(c.isspace() or not c.isprintable() or c in "/@" for c in text)


def _host(text: str) -> str:
    if unusable_as_a_host(text):
        raise ValueError(f"is {text!r}; use an address to listen on, e.g. 0.0.0.0 or 127.0.0.1")
    if problem := host_problem(text.strip("[]")):
        raise ValueError(f"is {text!r}, {problem}")
    return text.strip("[]")


LOG_FORMATS = ("text", "json")


def _text(text: str) -> str | None:
    return text or None


def _password(text: str) -> str | None:
    return _utf8(text) or None


def _file(secret: str) -> Any:
    """A ``*_FILE`` entry: read before parsing (see :mod:`distq.credentials`); here for
    the flag, ``--help`` and the misspelling check."""
    return setting(
        f"{secret}_FILE",
        f"--{secret.removeprefix(PREFIX).lower().replace('_', '-')}-file",
        None,
        _text,
        f"file holding {secret} (a mounted secret), its trailing newline stripped"
        + (" and the blanks around each key" if "SIGNING" in secret else ""),
        shown_default="(none)",
    )


NO_TIME_LIMITS = TimeLimits()

_REDIS_URL = "redis://127.0.0.1:6379/0"
_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@dataclass(frozen=True)
class Settings:
    """Validated settings shared by master and worker. ``repr`` hides the secrets."""

    transport: str = setting(
        "DISTQ_TRANSPORT",
        "--transport",
        "manager",
        _one_of(TRANSPORTS),
        f"{', '.join(TRANSPORTS[:-1])} or {TRANSPORTS[-1]}",
    )
    manager_address: tuple[str, int] = setting(
        "DISTQ_MANAGER_ADDRESS",
        "--manager-address",
        ("127.0.0.1", 9000),
        _address,
        "where a manager master listens and its workers connect",
        shown_default="127.0.0.1:9000",
    )
    authkey: bytes | None = setting(
        "DISTQ_AUTHKEY",
        "--authkey",
        None,
        _secret,
        "shared secret of master and workers; prefer the variable (flags show in `ps`)",
        shown_default="(none: required for `manager`)",
        secret=True,
    )
    redis_url: str = setting(
        "DISTQ_REDIS_URL",
        "--redis-url",
        _REDIS_URL,
        _redis_url,
        "`redis://` or `rediss://`, password, database",
        secret=True,  # it carries the password
    )
    amqp_url: str = setting(
        "DISTQ_AMQP_URL",
        "--amqp-url",
        _AMQP_URL,
        _url(("amqp", "amqps"), _AMQP_URL),
        "`amqp://` or `amqps://`, user, password, vhost",
        secret=True,
    )
    queue: str = setting(
        "DISTQ_QUEUE",
        "--queue",
        "distq",
        _queue,
        "task queue name: letters, digits, _ . -; not ending in .dead nor holding .retry. "
        ".results. or .held. (the names of a queue's own queues)",
    )
    lease_seconds: float = setting(
        "DISTQ_LEASE_SECONDS",
        "--lease-seconds",
        5.0,
        _number(float, 0.3, 3600.0, " seconds"),
        "lease length; workers renew it every third of that",
        shown_default="5",
    )
    prefetch: int = setting(
        "DISTQ_PREFETCH",
        "--prefetch",
        128,
        _number(int, 1, MAX_PREFETCH),
        "most tasks a worker slot takes at once (adapts down for slow tasks)",
    )
    drain_seconds: float = setting(
        "DISTQ_DRAIN_SECONDS",
        "--drain-seconds",
        20.0,
        _number(float, 0.0, 3600.0, " seconds"),
        "after SIGTERM a worker finishes running tasks for at most this long, then hands "
        "them back and exits 0",
        shown_default="20",
    )
    task_time_limit: TimeLimits = setting(  # noqa: RUF009 - frozen, so shared safely
        "DISTQ_TASK_TIME_LIMIT",
        "--task-time-limit",
        NO_TIME_LIMITS,
        TimeLimits.parse,
        "seconds a task may run before that attempt fails (retried): `30`, "
        "`square=2,mod:fn=600` or both",
        shown_default="(off)",
    )
    rabbitmq_queue_type: str = setting(
        "DISTQ_RABBITMQ_QUEUE_TYPE",
        "--rabbitmq-queue-type",
        "classic",
        _one_of(("classic", "quorum")),
        "`quorum`: task, retry and dead-letter queues replicated, dead-lettered at least once",
    )
    metrics_port: int | None = setting(
        "DISTQ_METRICS_PORT",
        "--metrics-port",
        None,
        _optional(_number(int, 1, 65535)),  # 0 would be a port no probe can find
        "serve /metrics, /healthz and /readyz on this port",
        shown_default="(off)",
    )
    metrics_host: str = setting(
        "DISTQ_METRICS_HOST",
        "--metrics-host",
        "0.0.0.0",
        _host,
        "address that endpoint listens on",
    )
    stall_seconds: float = setting(
        "DISTQ_STALL_SECONDS",
        "--stall-seconds",
        60.0,
        _number(float, 0.1, 86_400.0, " seconds"),
        "/healthz answers 503 once a loop of the process has not iterated for this long",
        shown_default="60",
    )
    stats_seconds: float = setting(
        "DISTQ_STATS_SECONDS",
        "--stats-seconds",
        5.0,
        _number(float, 0.1, 3600.0, " seconds"),
        "how often a master samples the queue's counts from the broker",
        shown_default="5",
    )
    log_format: str = setting(
        "DISTQ_LOG_FORMAT",
        "--log-format",
        "text",
        _one_of(LOG_FORMATS),
        "text (the tutorial's lines) or json (one JSON object per line)",
    )
    rabbitmq_management_url: str | None = setting(
        "DISTQ_RABBITMQ_MANAGEMENT_URL",
        "--rabbitmq-management-url",
        None,
        _optional(_url(("http", "https"), "http://user:password@rabbit-host:15672")),
        "RabbitMQ's management API, for the in-flight count AMQP cannot tell; with no user "
        "in it, asked as DISTQ_AMQP_URL's user with its password",
        shown_default="(none)",
        secret=True,  # it carries the password
    )

    signing_keys: tuple[bytes, ...] = setting(
        "DISTQ_SIGNING_KEYS",
        "--signing-keys",
        (),
        signing.parse_keys,
        "keys (comma-separated, 16+ characters each) to sign and check every task and "
        "result; the first signs, any verifies",
        shown_default="(off)",
        secret=True,
    )
    signing_key: tuple[bytes, ...] = setting(
        "DISTQ_SIGNING_KEY",
        "--signing-key",
        (),
        signing.parse_key,
        "one key (16+ characters; a comma is part of it), instead of DISTQ_SIGNING_KEYS",
        shown_default="(off)",
        secret=True,
    )
    redis_password: str | None = setting(
        "DISTQ_REDIS_PASSWORD",
        "--redis-password",
        None,
        _password,
        "Redis password, put into DISTQ_REDIS_URL (which must then hold none)",
        shown_default="(none)",
        secret=True,
    )
    amqp_password: str | None = setting(
        "DISTQ_AMQP_PASSWORD",
        "--amqp-password",
        None,
        _password,
        "RabbitMQ password for the user in DISTQ_AMQP_URL (which must then hold none)",
        shown_default="(none)",
        secret=True,
    )
    authkey_file: str | None = _file("DISTQ_AUTHKEY")
    signing_keys_file: str | None = _file("DISTQ_SIGNING_KEYS")
    signing_key_file: str | None = _file("DISTQ_SIGNING_KEY")
    redis_password_file: str | None = _file("DISTQ_REDIS_PASSWORD")
    amqp_password_file: str | None = _file("DISTQ_AMQP_PASSWORD")
    tls_ca_file: str | None = setting(
        "DISTQ_TLS_CA_FILE",
        "--tls-ca-file",
        None,
        _text,
        "PEM file of the CAs that may sign the broker's certificate (rediss://, amqps://)",
        shown_default="(the system's CAs)",
    )
    tls_cert_file: str | None = setting(
        "DISTQ_TLS_CERT_FILE",
        "--tls-cert-file",
        None,
        _text,
        "client certificate (PEM) for brokers that ask for one; with DISTQ_TLS_KEY_FILE",
        shown_default="(none)",
    )
    tls_key_file: str | None = setting(
        "DISTQ_TLS_KEY_FILE",
        "--tls-key-file",
        None,
        _text,
        "the client certificate's private key (PEM)",
        shown_default="(none)",
    )
    max_message_bytes: int = setting(
        "DISTQ_MAX_MESSAGE_BYTES",
        "--max-message-bytes",
        DEFAULT_MAX_MESSAGE_BYTES,
        _number(int, MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES, " bytes"),
        "largest task or result on the wire; a larger task is refused at submit, a "
        "larger delivery dead-lettered undecoded",
    )

    @property
    def tls_files(self) -> tls.TlsFiles:
        """The TLS client files, for the transports."""
        return tls.TlsFiles(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)

    @property
    def heartbeat_interval(self) -> float:
        """How often a worker renews its leases: three times per lease period."""
        return self.lease_seconds / 3

    @property
    def master_ttl(self) -> float:
        """How long a master's reply queue outlives the master's last sign of life.

        Its tasks still queued after that are dead-lettered as its master's, unrun;
        results for it are dropped. The master renews it every few seconds while it runs.
        """
        return max(MASTER_TTL_MIN_SECONDS, 3 * self.lease_seconds)

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str],
        flags: Mapping[str, str | None] | None = None,
        flag_names: Mapping[str, str] | None = None,
    ) -> Settings:
        """Read settings from ``environ`` overridden by ``flags`` (keyed by variable).

        An error in a flag's value names it as ``VARIABLE --flag``, or as
        ``flag_names[VARIABLE]`` when the caller's flags are not the command's."""
        named = flag_names or {}
        labels = {  # how a flag is named in an error
            entry.variable: named.get(entry.variable, f"{entry.variable} {entry.flag}")
            for _, entry in _entries(cls)
        }
        environ = _one_spelling_of_the_keys(environ, flags or {})
        environ, flags, files = credentials.read_secret_files(environ, flags or {}, labels)
        values: dict[str, Any] = {}
        for name, entry in _entries(cls):
            text, label = environ.get(entry.variable), entry.variable
            flag = (flags or {}).get(entry.variable)
            if flag is not None:
                text = flag
                label = labels[entry.variable]
            if text is None:
                values[name] = entry.default
                continue
            path = files.get(entry.variable)
            if path is not None:  # a file's content, as read_secret left it
                file_variable = entry.variable + credentials.FILE_SUFFIX
                label = f"{entry.variable} (read from {file_variable} {path!r})"
            try:
                values[name] = entry.parse(text) if path is not None else entry.read(text)
            except ValueError as exc:
                raise ConfigError(f"{label} {exc}") from None
        settings = secured(cls(**values))
        if settings.transport == "manager" and not settings.authkey:
            raise ConfigError(AUTHKEY_MISSING)
        return settings


#: Why the manager transport refuses settings without an authkey, and what to do.
AUTHKEY_MISSING = (
    "DISTQ_AUTHKEY is not set; the manager transport needs a shared secret: set the same "
    "random value for master and workers, e.g. "
    "DISTQ_AUTHKEY=\"$(python3 -c 'import secrets; print(secrets.token_hex(16))')\""
)


def _one_spelling_of_the_keys(
    environ: Mapping[str, str], flags: Mapping[str, str | None]
) -> Mapping[str, str]:
    """``environ`` without the other spelling of the signing keys when a flag gives one:
    the flag wins, as every flag does; ``--signing-key`` with ``DISTQ_SIGNING_KEYS`` in
    the environment (the compose stack's, the manifests') was refused as both set."""
    given = {name for name, value in flags.items() if value is not None and value.strip()}
    spellings = ("DISTQ_SIGNING_KEY", "DISTQ_SIGNING_KEYS")
    for one, other in (spellings, spellings[::-1]):
        if given & {one, one + credentials.FILE_SUFFIX}:
            gone = {other, other + credentials.FILE_SUFFIX}
            environ = {name: value for name, value in environ.items() if name not in gone}
    return environ


def secured(settings: Settings) -> Settings:
    """``settings`` with their secrets in place, checked as :meth:`Settings.load` checks
    them: ``signing_key`` moved into ``signing_keys`` (which the codec signs with), the
    passwords moved into the URLs, TLS files that will be used and can be.

    Raises :class:`ConfigError` otherwise. Secured settings come out the same, so a
    program may secure settings that :meth:`Settings.load` made.
    """
    if settings.signing_key and settings.signing_keys:
        raise ConfigError(
            "DISTQ_SIGNING_KEY and DISTQ_SIGNING_KEYS are both set; use DISTQ_SIGNING_KEYS "
            "(a list whose first key signs) or DISTQ_SIGNING_KEY (one key), not both"
        )
    for name in ("signing_key", "signing_keys"):  # parsed keys are; a program's may not be
        keys = getattr(settings, name)
        if not isinstance(keys, tuple) or not all(isinstance(key, bytes) for key in keys):
            what = f"a {type(keys).__name__}" + (" of other things" * isinstance(keys, tuple))
            raise ConfigError(
                f"{name} is {what}; give a tuple of keys as bytes, e.g. "
                f"{name}=(key.encode(),), or a string as the variable takes"
            )
        for number, key in enumerate(keys, 1):
            if len(key) < signing.MIN_KEY_LENGTH:
                raise ConfigError(
                    f"{name} has key {number} of {len(keys)} {len(key)} bytes long; use at "
                    f"least {signing.MIN_KEY_LENGTH} random characters, e.g. "
                    "secrets.token_hex(32).encode()"
                )
    changes: dict[str, Any] = {}
    if settings.signing_key:
        changes.update(signing_keys=settings.signing_key, signing_key=())
    # The password settings stay as they are, so an override of the URL alone (a
    # program's Executor(settings, redis_url=...)) gets the password too, as the variable
    # would; add_password leaves a URL that holds that very password as it is.
    if settings.redis_password:
        changes["redis_url"] = credentials.add_password(
            settings.redis_url, settings.redis_password, "DISTQ_REDIS_URL"
        )
    if settings.amqp_password:
        if not credentials.url_user(settings.amqp_url):
            raise ConfigError(
                "DISTQ_AMQP_PASSWORD is set but DISTQ_AMQP_URL names no user; put the user "
                "in the URL, e.g. amqp://distq@rabbit-host:5672/%2F"
            )
        changes["amqp_url"] = credentials.add_password(
            settings.amqp_url, settings.amqp_password, "DISTQ_AMQP_URL"
        )
    settings = replace(settings, **changes) if changes else settings
    url = settings.redis_url if settings.transport == "redis" else settings.amqp_url
    tls.check(settings.transport, url, settings.tls_files, settings.rabbitmq_management_url)
    return settings


def _entries(cls: type[Settings] = Settings) -> list[tuple[str, Setting[Any]]]:
    return [(f.name, f.metadata["setting"]) for f in fields(cls)]


#: Every setting, in the order ``--help`` and the README list them.
SETTINGS: tuple[Setting[Any], ...] = tuple(entry for _, entry in _entries())

#: Every setting at its default (the master's and worker's options start from these).
DEFAULTS = Settings()

_MISSPELLING = 0.8  # difflib similarity above which an unknown name is taken as a typo


#: Settings only ``distq worker`` reads, with their flags: a master, another command or
#: an Executor takes them, as every setting, and says that it does not read them.
WORKERS_ONLY = {
    "DISTQ_PREFETCH": "--prefetch",
    "DISTQ_DRAIN_SECONDS": "--drain-seconds",
    "DISTQ_TASK_TIME_LIMIT": "--task-time-limit",
}


def misspelled(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``DISTQ_*`` variable that looks like a misspelled setting.

    Such a variable would be ignored without a word: ``DISTQ_TRANSPRT`` is named as a
    likely misspelling of ``DISTQ_TRANSPORT`` (its value is not used). Names far from
    every setting, and the test harness's ``DISTQ_TEST_*``, are other tools' and pass
    silently.
    """
    known = [entry.variable for entry in SETTINGS]
    warnings = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in known or name.startswith("DISTQ_TEST_"):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=_MISSPELLING)
        if close:
            warnings.append(f"{name} is not a distq setting (ignored); did you mean {close[0]}?")
    return warnings
