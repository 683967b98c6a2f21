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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Generic, TypeVar, cast

from distq import credentials, signing, tls
from distq.addresses import (
    address,
    host_port,
    listen_host,
    redis_url,
    url,
    utf8,
)
from distq.envelope import MAX_ATTEMPTS as MAX_ATTEMPTS
from distq.envelope import MOST_ATTEMPTS as MOST_ATTEMPTS
from distq.errors import ConfigError
from distq.limits import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_PREFETCH,
    MIN_MESSAGE_BYTES,
)
from distq.ranges import PORT, SHOWN_LINE, cut
from distq.ranges import Number as _Number
from distq.ranges import shown_number as shown_number
from distq.timelimits import TimeLimits
from distq.transport import TRANSPORTS

_T = TypeVar("_T")
_N = TypeVar("_N", int, float)

PREFIX = "DISTQ_"

# -- defaults of the role flags (the settings' defaults are in their entries below) ------
TASKS = 6  # distq master --tasks
# MAX_ATTEMPTS (distq master --max-attempts) is a task's own default, from distq.envelope,
# as is its ceiling, MOST_ATTEMPTS
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
        only is someone's missing key (refused), stripped it read as "signing off". So
        is an authkey of blanks: not "not set", and no key of any bytes. Time limits read
        so name the setting when a task runs past one; a program's own do not. A secret
        over :data:`~distq.credentials.MAX_SECRET_BYTES` is refused, as its file is."""
        if self.variable in credentials.SECRETS:  # as its file is: one limit for both
            credentials.check_secret_size(self.variable, text)
        if self.parse in (signing.parse_keys, signing.parse_key):
            return self.parse(text)
        if self.parse is _authkey and text and not text.strip():
            raise ValueError(
                "holds only whitespace, most likely by mistake (a line end alone); set the "
                "same random value for master and workers, e.g. "
                "$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
            )
        if self.parse == TimeLimits.parse:  # the setting's text: its limits name it
            return cast(_T, _setting_limits(text.strip()))
        return self.parse(text.strip())

    @property
    def numeric(self) -> bool:
        """Whether the setting is a number (or None, where empty means off)."""
        number = self.parse.parse if isinstance(self.parse, _Optional) else self.parse
        return isinstance(number, _Number)

    def check(self, value: object) -> None:
        """Raise ``ValueError`` ("is ...; use ...") unless ``value``, given as it is rather
        than as text, is what ``parse`` could give: for a number, one of its kind in its
        range (None too, where empty means off); for a secret, its bytes, a tuple of keys
        as its variable would hold them, at most as many as its file may (a tuple of keys,
        signing_keys=(key.encode(),), was taken past them). Other settings are checked
        elsewhere."""
        if self.variable in credentials.SECRETS:
            credentials.check_secret_size(self.variable, value)
        optional = isinstance(self.parse, _Optional)
        number = self.parse.parse if isinstance(self.parse, _Optional) else self.parse
        if isinstance(number, _Number) and not (optional and value is None):
            number.check(value)
        elif self.parse is address:  # a port past 65535 failed in bind(): OverflowError
            if not (
                isinstance(value, tuple | list)
                and len(value) == 2
                and isinstance(value[0], str)
                and type(value[1]) is int
                and 0 < value[1] < 65536
            ):
                raise ValueError(
                    f"is {value!r:.60}; use (host, port) with a port from 1 to 65535, e.g. "
                    "('127.0.0.1', 9000)"
                )
            address(host_port(value[0].strip("[]"), value[1]))  # the host, as its text's
        elif self.parse == TimeLimits.parse and not isinstance(value, TimeLimits):
            # taken, a str broke the worker: "'str' object has no attribute ..."
            raise ValueError(
                f"is {value!r:.60}, not TimeLimits; use TimeLimits.parse('30,square=2'), "
                "or Settings.load(...) to read the variable's text"
            )


def _setting_limits(text: str) -> TimeLimits:
    """``DISTQ_TASK_TIME_LIMIT``'s limits, which name it when a task runs past one."""
    return replace(TimeLimits.parse(text), from_setting=True)


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
            raise ValueError(f"is {cut(text)}; set it to one of: {', '.join(choices)}")
        return text

    return parse


def _secret(text: str) -> bytes | None:
    # surrogateescape: the bytes as the environment holds them (os.environb), UTF-8 or not
    return text.encode(errors="surrogateescape") if text else None


def _authkey(text: str) -> bytes | None:
    """DISTQ_AUTHKEY's bytes; whitespace alone is refused by :meth:`Setting.read` (a
    file's content by :func:`distq.credentials.read_secret`)."""
    return _secret(text)


_QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


#: What the names distq derives from a queue's hold, by the part that marks them
#: (``<queue>.retry.<ms>``, ``<queue>.results.<job>``, ``<queue>.held.<slot>``).
_DERIVED = {".retry.": "delayed retries", ".results.": "results", ".held.": "held tasks"}


def _queue(text: str) -> str:
    if not _QUEUE_NAME.match(text):
        raise ValueError(
            f"is {cut(text, SHOWN_LINE)}; use 1-100 letters, digits, '_', '.' or '-', "
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


def _number(kind: type[_N], low: _N, high: _N, unit: str = "") -> _Number[_N]:
    return _Number(kind, low, high, unit)


@dataclass(frozen=True)
class _Optional(Generic[_T]):
    """``parse``, where an empty value means off (None)."""

    parse: Callable[[str], _T]

    def __call__(self, text: str) -> _T | None:
        return self.parse(text) if text else None


def _optional(parse: Callable[[str], _T]) -> Callable[[str], _T | None]:
    return _Optional(parse)


LOG_FORMATS = ("text", "json")


def _text(text: str) -> str | None:
    return text or None


def _password(text: str) -> str | None:
    return utf8(text) or None


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
        address,
        "where a manager master listens and its workers connect",
        shown_default="127.0.0.1:9000",
    )
    authkey: bytes | None = setting(
        "DISTQ_AUTHKEY",
        "--authkey",
        None,
        _authkey,
        "shared secret of master and workers; prefer the variable (flags show in `ps`)",
        shown_default="(none: required for `manager`)",
        secret=True,
    )
    redis_url: str = setting(
        "DISTQ_REDIS_URL",
        "--redis-url",
        _REDIS_URL,
        redis_url(_REDIS_URL),
        "`redis://` or `rediss://`, password, database",
        secret=True,  # it carries the password
    )
    amqp_url: str = setting(
        "DISTQ_AMQP_URL",
        "--amqp-url",
        _AMQP_URL,
        url(("amqp", "amqps"), _AMQP_URL),
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
        _optional(PORT),  # 0 would be a port no probe can find; `distq probe` reads it so
        "serve /metrics, /healthz and /readyz on this port",
        shown_default="(off)",
    )
    metrics_host: str = setting(
        "DISTQ_METRICS_HOST",
        "--metrics-host",
        "0.0.0.0",
        listen_host,
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
        _optional(url(("http", "https"), "http://user:password@rabbit-host:15672")),
        "RabbitMQ's management API, for the in-flight count and a quorum queue's delivery "
        "limit, which AMQP cannot tell; with no user "
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
                    f"{name} has key {number} of {len(keys)} "
                    f"{signing.length_said(len(key), 'byte')}; "
                    f"use at least {signing.MIN_KEY_LENGTH} random characters, e.g. "
                    "secrets.token_hex(32).encode()"
                )
        ids = [signing.key_id(key) for key in keys]
        for number, (kid, key) in enumerate(zip(ids, keys, strict=True), 1):
            earlier = ids.index(kid) + 1
            if earlier < number and keys[earlier - 1] != key:  # the same key twice is one
                raise ConfigError(
                    f"{name} (DISTQ_{name.upper()}) has keys {earlier} and {number} of "
                    f"{len(keys)} that share the key id {kid} (a signature names its key by "
                    "it; about one pair in 2**32); replace one of them with a new key, e.g. "
                    "secrets.token_hex(32)"
                )
    for name, entry in _entries(type(settings)):  # a program's numbers, as the text's
        try:
            entry.check(getattr(settings, name))
        except ValueError as exc:
            raise ConfigError(f"{name} ({entry.variable}) {exc}") from None
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
