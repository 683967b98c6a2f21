"""``DISTQ_TRANSPORT=redis``: Redis >= 6.2 lists, leases in a sorted set, Lua for atomicity.

URL (``DISTQ_REDIS_URL``, parsed by :meth:`redis.Redis.from_url`)::

    redis://[[user]:password@]host:port[/db]      plain TCP
    rediss://[[user]:password@]host:port[/db]     TLS; see distq.tls for the CA and client files
    unix://[[user]:password@]/path/redis.sock?db=0

Ready tasks live in a plain list named after the queue, so ``LLEN <queue>`` is the
queue depth (what KEDA's Redis scaler and ``redis-cli`` read). Every key:

| key (``<q>`` = ``DISTQ_QUEUE``)     | type | written by                       | read by     |
|-------------------------------------|------|----------------------------------|-------------|
| ``<q>``                             | list | submit LPUSH (4); requeue RPUSH (1) | claim, tail |
| ``distq:<q>:inflight:<id>``         | list | claim (with the lease, atomic)   | settle      |
| ``distq:<q>:consumers``             | zset | claim, heartbeat, close          | sweep       |
| ``distq:<q>:consumers:<id>``        | str  | settle by count INCR (5)         | close       |
| ``distq:<q>:consumers:<id>:claims`` | str  | claim, tidy INCR (5)             | settle (6)  |
| ``distq:<q>:delayed``               | zset | settle: retry with a delay       | sweep (1)   |
| ``distq:<q>:redelivered``           | set  | sweep, release, close            | claim       |
| ``distq:<q>:dead``                  | list | settle RPUSH, so oldest first    | LRANGE (2)  |
| ``distq:<q>:masters``               | zset | a master: register, renew, close | settle      |
| ``distq:<q>:results:<job>``         | list | settle LPUSH, if its master lives | take (3)   |
| ``distq:<q>:results:<job>:state``   | hash | submit, take (counts)            | renew, take |
| ``distq:<q>:clock``                 | hash | sweep (its time, shortest lease) | sweep       |

(1) ``withdraw`` LREMs tasks not claimed yet (ZREMs retries waiting out their delay) and
``requeue_dead`` LPUSHes revived tasks.
(2) ``requeue_dead`` LPOPs the oldest letter, in the script that pushes its task.
(3) LRANGE of its tail (the oldest results); the ack script LTRIMs those received.
(4) in a MULTI/EXEC transaction with the count in ``state`` (counted only if pushed); a
lone task's submit that waits for results, in one script with the count and the take's
ack (``submit.lua``).
(5) deleted by the close and by a sweep of the consumer: a settle that had no answer
(Redis stalled past the wait) ran late if its close finds it counted.
(6) a settle by count acks the oldest tasks only if the count is the one the consumer's
last claim returned: one sent before a claim and run after it (late, a partition) did
nothing, not ack the tasks claimed since (``claimed`` in ``redis_lua/prelude.lua``; a claim
Redis refuses the count, full on Redis 6, deletes it).

The transport checks the type of every key above but the per-consumer and per-job ones
when it starts and when a consumer connects (:meth:`RedisTransport.check_types`): a key of
another type (another application's, named like the queue) is a ConfigError naming it,
not a WRONGTYPE reply that workers and masters would retry as an outage.

``<id>`` is a consumer id: the worker's slot name plus a random suffix per connection,
so a worker that reconnects (or restarts under the same name) never renews the lease
of tasks an earlier connection held: those go back to ``<q>`` when that lease runs
out. One whose idle connection died (found by a PING, not by a failed call) keeps its
id: its first call on the new connection puts back what its in-flight list holds and
it does not (``tidy.lua``: Redis may have restored an older snapshot). ``redelivered``
holds bodies put back after a lease expired or a release, so their next delivery says
so. ``consumers`` maps consumer id -> lease deadline, ``delayed`` maps retry body -> due
time and ``masters`` maps result list -> its master's deadline, all in ms of the *Redis
server's* clock (``TIME`` inside Lua), so clocks may drift freely. A claim moves tasks
into the in-flight list and pushes the deadline in one script; ``heartbeat`` pushes it
again. Every claim and heartbeat also sweeps (the producers do too while they wait): the
in-flight list of every consumer past its deadline (behind the tasks queued: a task
that ends its worker each time it runs holds none of them back), and every due retry, go
back into ``<q>``, so an expired lease is reclaimed within about a lease however long the
backlog is. No separate daemon. A sweep over half the shortest lease in use after the
last one (Redis was stopped, or cut off from everyone) first gives each lease that ran
out meanwhile the time it had left, once (see ``resume`` in ``redis_lua/prelude.lua``).

Masters: a master's producer registers its result list (``<job>`` is the job id, one
per master run) in ``masters`` and renews it every few seconds (:meth:`RedisProducer.reconcile`);
it lapses ``Settings.master_ttl`` after the master's last renewal. The settle script
pushes a result only to a registered, live list, and gives the list a TTL of the
master's deadline plus a minute: a late result never re-creates the list of a master
that is gone, and a reply_to no master registered never becomes a key. Workers ask
:meth:`RedisConsumer.gone` before they run a task and dead-letter, unrun, the tasks of
a master that is gone. ``state`` counts the bodies the master submitted (in the same
script as the LPUSH): after a restart from an older snapshot, the count says which of
its tasks Redis lost, and the master submits those again.

An item of a result list is one message: a single result, or the results of a worker's
batch for that master (:meth:`distq.codec.Codec.seal_results`); "results" below count
items. Results reach the master at least once: ``take`` reads the oldest results at the
tail of the list and leaves them there; the master's next ``take`` acknowledges them by
the running count it received (``taken`` in ``state``), which drops them from the tail,
so a reply lost on the way (a timeout while Redis was frozen) is sent again and no
result vanishes with a dropped connection. The count means something only to the Redis
that counted it: a take on a new connection (after any failed call, so after every
restart, and a restart from an older snapshot brings back an older list and count) drops
nothing and reads on from the server's ``taken``, so results received before may come
again (the master keeps the first), but none pushed since is dropped unread.

Not supported: Redis Cluster (scripts build in-flight key names at run time).

The Lua scripts are files of ``redis_lua/``, one per script, each saying what it takes and
returns (:mod:`distq.transport.redis_scripts` reads them); the connections they run on
are :mod:`distq.transport.redis_wire`'s.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import secrets
import shlex
import threading
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    NoScriptError,
    RedisError,
    ResponseError,
)
from redis.retry import Retry

from distq import descriptors, tls
from distq.config import MESSAGE_BATCH, Settings
from distq.counts import counted
from distq.credentials import mask_url
from distq.envelope import DeadLetter, cut_letter
from distq.errors import (
    AuthenticationFailed,
    CertificateRejected,
    ConfigError,
    ConnectionFailed,
    DistqError,
    SettledThenFailed,
    TransportError,
)
from distq.transport.base import (
    ORPHANS_LOOKED_AT,
    ORPHANS_SECONDS,
    Consumer,
    Delivery,
    Producer,
    QueueStats,
    Revive,
    Role,
    Settlement,
    Transport,
    counting_moves,
    is_orphan_of,
    original_body,
    settled_already,
    tags_of,
)
from distq.transport.redis_scripts import (
    ALLOW_OOM,
    COUNT_SUBMITTED,
    REPLY_GRACE_MS,
    SUBMIT_AND_ACK,
    source,
)
from distq.transport.redis_wire import (
    CHECK_ANSWER_SECONDS,
    Arg,
    Commands,
    Fixed,
    Headed,
    Runs,
    Script,
    Wire,
    raise_first,
)

log = logging.getLogger(__name__)

#: Longest single blocking call; long waits loop so leases and sweeps keep running.
MAX_BLOCK_SECONDS = 5.0
#: A consumer's connection idle this long is checked (a PING) before a settle: a slot's
#: lies idle while its tasks run (see :meth:`distq.transport.redis_wire.Wire.check`).
IDLE_CHECK_SECONDS = 1.0
#: After Redis refused a call for its ``maxmemory``, waits poll this long (no BLMOVE).
FULL_SECONDS = 2.0
#: How often a wait polls meanwhile.
FULL_POLL_SECONDS = 0.05
#: About how many bytes of dead letters one call of a look for orphans reads.
ORPHANS_CHUNK_BYTES = 4 << 20
#: The least ``proto-max-bulk-len`` (largest argument) Redis takes: a dead letter up to
#: this size fits any server, without asking its own.
LEAST_BULK_BYTES = 1 << 20
#: Redis's default ``proto-max-bulk-len``: assumed where CONFIG is refused or renamed, as
#: managed Redis services do.
DEFAULT_BULK_BYTES = 512 << 20


def _is_unix(url: str) -> bool:
    """Whether ``url`` names a unix socket (``unix://``), not a TCP address."""
    return url.lower().startswith("unix:")


def _keywords(*classes: type) -> set[str]:
    """The keyword arguments the ``__init__`` of ``classes`` and their bases name."""
    names = set()
    for cls in classes:
        for base in cls.__mro__:
            init = base.__dict__.get("__init__")
            if init is None or not callable(init):
                continue
            for p in inspect.signature(init).parameters.values():
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                    names.add(p.name)
    return names - {"self", "connection_class"}


#: Options of redis-py's connections that are text, which a URL can give as they are;
#: with those redis-py parses (``URL_QUERY_ARGUMENT_PARSERS``), all a URL can give.
_TEXT_OPTIONS = frozenset(
    {
        "username",
        "password",
        "client_name",
        "lib_name",
        "lib_version",
        "protocol",
        "encoding",
        "encoding_errors",
        "decode_responses",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_password",
        "ssl_ciphers",
    }
)


def _option_problem(url: str, client: redis.Redis[bytes]) -> str | None:
    """What is wrong with the first query option of ``url`` redis-py cannot use, or None:
    one neither its pool nor its connection class takes, or one it takes but not from a
    URL (an object or a number it does not parse: ``retry``, ``socket_type``,
    ``credential_provider``...). redis-py passes either on, as text, and every command
    failed with a traceback, exit 1 (input17)."""
    pool = client.connection_pool
    known = _keywords(type(pool), pool.connection_class)
    allowed = _TEXT_OPTIONS.union(redis.connection.URL_QUERY_ARGUMENT_PARSERS)
    for name in parse_qs(urlsplit(url).query):  # as redis-py reads them: blanks dropped
        if name not in known:
            tls_hint = " (for TLS use rediss://)" if name.lower().startswith("ssl") else ""
            return (
                f"has unknown option {name!r}; redis-py's connections take no option by "
                f"that name: remove it or correct its spelling{tls_hint}"
            )
        if name not in allowed:
            why = "distq sets it itself" if name == "retry" else "it is not text"
            return (
                f"has option {name!r}, which a URL cannot give ({why}; redis-py would pass "
                "the text on, and every command fail): remove it"
            )
    return None


def _lower_scheme(url: str) -> str:
    """``url`` with its scheme in lower case: a URL's scheme is case-insensitive (the
    settings take ``REDISS://``), redis-py's ``from_url`` takes lower case only."""
    scheme, sep, rest = url.partition("://")
    return scheme.lower() + sep + rest if sep else url


class RedisTransport(Transport):
    """One connection pool to the Redis in ``settings.redis_url``, for one queue."""

    name = "redis"
    tells_leases = True

    def __init__(self, settings: Settings, role: Role) -> None:
        self.settings, self.role = settings, role
        queue = settings.queue
        self.ready_key = queue
        self.consumers_key = f"distq:{queue}:consumers"
        self.delayed_key = f"distq:{queue}:delayed"
        self.redelivered_key = f"distq:{queue}:redelivered"
        self.dead_key = f"distq:{queue}:dead"
        self.masters_key = f"distq:{queue}:masters"
        self.clock_key = f"distq:{queue}:clock"
        self.inflight_prefix = f"distq:{queue}:inflight:"
        self.lease_ms = max(1, int(settings.lease_seconds * 1000))
        self.master_ttl_ms = int(settings.master_ttl * 1000)
        # below the lease, so a consumer blocked in BLMOVE still holds a fresh lease
        self.block_slice = min(MAX_BLOCK_SECONDS, settings.lease_seconds / 3)
        # how long a consumer's or the keeper's call waits for an answer (a BLMOVE: the
        # socket timeout): a third of the lease, so a renewal that meets a connection
        # gone silent while in use is made again, on a new one, within the lease
        self.answer_within = min(
            self.block_slice + 5.0, max(CHECK_ANSWER_SECONDS, settings.lease_seconds / 3)
        )
        self._full_until = 0.0  # see full()
        self._most_bulk: int | None = None  # see most_bulk()
        # TCP keepalive is a TCP option: redis-py's unix socket connection refuses it
        tcp: dict[str, Any] = {} if _is_unix(settings.redis_url) else {"socket_keepalive": True}
        url = _lower_scheme(settings.redis_url)
        try:
            self.client: redis.Redis[bytes] = redis.Redis.from_url(
                url,
                socket_timeout=self.block_slice + 5.0,  # a blocking call never trips it
                socket_connect_timeout=5.0,
                # no silent retries: a re-sent claim whose reply was lost strands tasks
                retry=Retry(NoBackoff(), 0),
                client_name=f"distq-{role}",
                **tcp,
                **tls.redis_options(url, settings.tls_files),
            )
        except ValueError as exc:
            raise ConfigError(f"DISTQ_REDIS_URL is not a valid Redis URL ({exc})") from None
        problem = _option_problem(url, self.client)
        if problem is not None:
            raise ConfigError(f"DISTQ_REDIS_URL ({mask_url(settings.redis_url)}) {problem}")
        kwargs = self.client.connection_pool.connection_kwargs
        self.address = str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")
        self._keeper: Wire | None = None  # a worker's keeper renews its leases on it
        self.tls = urlsplit(url).scheme == "rediss"
        self._connect()
        with self.errors(), contextlib.closing(self.wire()) as wire:
            self.check_types(wire)
        # Redis 7 runs a script flagged allow-oom when full (maxmemory, noeviction): the
        # scripts drain the queue and free memory. Unflagged, the claim's ZADD was refused,
        # nothing drained, and master and workers waited for good. Submits stay refused.
        oom = self._takes_flags()
        self.claim_script = Script(source("claim", oom))
        self.settle_script = Script(source("settle", oom))
        self.release_script = Script(source("release", oom))
        self.close_script = Script(source("close", oom))
        self.sweep_script = Script(source("sweep", oom))
        self.leases_script = Script(source("leases", oom))
        self.stats_script = Script(source("stats", oom))
        self.gone_script = Script(source("gone", oom))
        self.renew_script = Script(source("renew", oom))
        self.ack_script = Script(source("ack", oom))
        self.submit_script = Script(SUBMIT_AND_ACK)  # never allow-oom: a full Redis refuses
        self.close_master_script = Script(source("close_master", oom))
        self.withdraw_script = Script(source("withdraw", oom))
        self.requeue_dead_script = Script(source("requeue_dead", oom))
        self.unlink_script = Script(source("unlink", oom))
        self.tidy_script = Script(source("tidy", oom))
        with self.errors():
            self.load_scripts(self.client)

    def load_scripts(self, client: Commands) -> None:
        """Load the scripts pipelines run: a pipelined EVALSHA cannot load one on the fly."""
        for script in (self.claim_script, self.settle_script, self.ack_script, self.submit_script):
            client.execute_command("SCRIPT LOAD", script.source)

    def _connect(self) -> None:
        """Ping at start so a wrong password or address fails now, with the fix."""
        try:
            self.client.ping()
        except AuthenticationError as exc:
            raise self._refused(exc) from None
        except ResponseError as exc:
            if "AUTH" in str(exc).upper():  # e.g. a password sent to a server without one
                raise self._refused(exc) from None
            if "DB index" in str(exc):  # a database above the server's `databases`
                db = self.client.connection_pool.connection_kwargs.get("db", 0)
                raise ConfigError(
                    f"DISTQ_REDIS_URL ({mask_url(self.settings.redis_url)}) names database "
                    f"{db}, which Redis at {self.address} does not have ({exc}); use one "
                    "from 0 to its `databases` setting minus 1 (0 to 15 by default)"
                ) from None
            raise ConnectionFailed(
                f"Redis at {self.address} failed at start: {exc}; is DISTQ_REDIS_URL a Redis "
                "server that takes writes (not loading its data, not a read-only replica)?"
            ) from None
        except RedisError as exc:
            raise self._unreachable(exc) from None
        info: Mapping[str, Any] = {}
        with contextlib.suppress(RedisError):  # an ACL may forbid INFO; then trust the server
            info = self.client.info()  # its default sections: server and memory, one call
        version = str(info.get("redis_version", "99"))
        if tuple(int(p) for p in version.split(".")[:2]) < (6, 2):
            raise ConnectionFailed(
                f"Redis at {self.address} is version {version}; distq needs Redis >= 6.2 "
                "(LMOVE, BLMOVE, RPOP with a count)"
            )
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if int(info.get("maxmemory", 0) or 0) > 0 and policy != "noeviction":
            log.warning(
                "Redis at %s evicts keys when full (maxmemory-policy %s, maxmemory %s): "
                "distq's tasks and results are keys like any other, and one evicted is lost "
                "(a master then waits for it until --timeout); set maxmemory-policy "
                "noeviction, or give distq a Redis of its own",
                self.address,
                policy,
                info.get("maxmemory_human", info.get("maxmemory")),
            )

    def _takes_flags(self) -> bool:
        """Whether this Redis runs a script flagged allow-oom (Redis 7: its version may
        be hidden, INFO being @dangerous; 6.2's Lua reads the flags line as an error).
        Only an error reply says no: a Redis that did not answer (a timeout, a dropped
        connection) is unreachable, as at the ping, not a Redis 6.2."""
        try:
            self.client.execute_command("EVAL", ALLOW_OOM + "return 1", 0)
        except ResponseError:
            return False
        except AuthenticationError as exc:
            raise self._refused(exc) from None
        except RedisError as exc:
            raise self._unreachable(exc) from None
        return True

    def most_bulk(self, client: Commands) -> int:
        """The largest argument this Redis takes (its ``proto-max-bulk-len``), asked once:
        Redis drops the connection on a larger one (redis-py sees only a reset), so a dead
        letter over it failed its settle and its task ran again at each lease, for ever.
        :data:`DEFAULT_BULK_BYTES` when CONFIG is refused (an ACL) or renamed."""
        if self._most_bulk is None:
            with self.errors():
                try:
                    reply = client.execute_command("CONFIG", "GET", "proto-max-bulk-len")
                except ResponseError as exc:  # refused (an ACL) or renamed: Redis's default
                    log.info("Redis at %s: no CONFIG GET (%s): 512 MiB assumed", self.address, exc)
                    reply = []
            values = list(reply.values()) if isinstance(reply, dict) else list(reply)[1:]
            self._most_bulk = int(values[0]) if values else DEFAULT_BULK_BYTES
        return self._most_bulk

    def full(self) -> bool:
        """Whether Redis refused a call for its ``maxmemory`` lately: then waits poll (a
        BLMOVE is refused when full, whatever the scripts may do)."""
        return time.monotonic() < self._full_until

    def refused_for_memory(self, reply: object) -> bool:
        """Whether ``reply`` is Redis's refusal for its ``maxmemory`` (noeviction); if so,
        waits poll for :data:`FULL_SECONDS` (:meth:`full`)."""
        if isinstance(reply, ResponseError) and "used memory > 'maxmemory'" in str(reply):
            self._full_until = time.monotonic() + FULL_SECONDS
            return True
        return False

    def check_types(self, wire: Wire) -> None:
        """Raise :class:`ConfigError` naming the first of the queue's keys (see the key
        table) that exists as another type than distq's: the ready list is named after
        the queue itself, so another application's key (or a ``SET`` by mistake) may have
        its name. Without this, every call would fail with WRONGTYPE, which workers and
        masters take for an outage and retry for ever. One round trip, at start and when
        a consumer connects."""
        keys = self._typed_keys()
        replies = wire.pipeline([("TYPE", key) for key, _, _ in keys])
        for (key, want, what), found in zip(keys, replies, strict=True):
            if isinstance(found, NoPermissionError) and "key" in str(found):
                raise self._forbidden(found, key)
            if isinstance(found, Exception):  # an ACL may forbid TYPE: the calls will tell
                continue
            kind = found.decode() if isinstance(found, bytes) else str(found)
            if kind not in ("none", want):
                raise self._wrong_type(key, kind, want, what)

    def leased(self, wire: Wire) -> int:
        """Tasks of the queue leased to workers now (the in-flight lists of live leases):
        two round trips, without the ready list, which may be of another type. A lapsed
        lease's list is no worker's (one SIGKILLed): with the ready list of another type
        no sweep moves it back, and a master that waited for it waited for ever."""
        now, leases = wire.pipeline(
            [("TIME",), ("ZRANGE", self.consumers_key, 0, -1, "WITHSCORES")]
        )
        if isinstance(leases, Exception) or not leases:
            return 0
        # as now_ms() in prelude.lua. TIME refused (an ACL of commands): every lease counts,
        # as before; no user without TIME runs distq's scripts, each of which calls it
        now_ms = -1 if isinstance(now, Exception) else int(now[0]) * 1000 + int(now[1]) // 1000
        live = [leases[i] for i in range(0, len(leases), 2) if float(leases[i + 1]) > now_ms]
        if not live:
            return 0
        prefix = self.inflight_prefix.encode()
        lengths = wire.pipeline([("LLEN", prefix + consumer) for consumer in live])
        return sum(n for n in lengths if isinstance(n, int))

    def _typed_keys(self) -> list[tuple[str, str, str]]:
        """The queue's keys (not those per consumer or job), their type, what they hold."""
        return [
            (self.ready_key, "list", "ready tasks"),
            (self.consumers_key, "zset", "worker leases"),
            (self.delayed_key, "zset", "delayed retries"),
            (self.redelivered_key, "set", "redelivered tasks"),
            (self.dead_key, "list", "dead letters"),
            (self.masters_key, "zset", "live masters"),
            (self.clock_key, "hash", "the last sweep's time"),
        ]

    def _wrong_type_behind(self, exc: ResponseError) -> DistqError:
        """What a WRONGTYPE reply means: the :class:`ConfigError` naming the queue's key of
        the wrong type, or (none is: a per-consumer or per-job key) a TransportError."""
        try:
            with contextlib.closing(self.wire()) as wire:
                self.check_types(wire)
        except ConfigError as wrong:
            return wrong
        except RedisError:
            pass
        return TransportError(
            f"Redis at {self.address}: {exc}; a key of DISTQ_QUEUE={self.settings.queue!r} "
            "holds another type than distq's: look for it with "
            f"redis-cli --scan --pattern {shlex.quote(f'distq:{self.settings.queue}:*')}"
        )

    def _wrong_type(self, key: str, found: str, want: str, what: str) -> ConfigError:
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        delete = f"redis-cli -n {db} DEL {shlex.quote(key)}"
        if key == self.ready_key:
            fix = (
                "set DISTQ_QUEUE to a name no other key has, or delete that key if nothing "
                f"else needs it ({delete})"
            )
        else:
            fix = (
                f"delete that key if nothing else needs it ({delete}), or set DISTQ_QUEUE "
                "to another name"
            )
        return ConfigError(
            f"Redis key {key!r} at {self.address} (db {db}) holds a {found}, not the {want} "
            f"of {what} distq keeps there for DISTQ_QUEUE={self.settings.queue!r}: another "
            f"application (or a hand edit) uses that name; {fix}"
        )

    def _forbidden(self, exc: NoPermissionError, key: str | None = None) -> ConfigError:
        """A NOPERM reply: the Redis user's ACL leaves out a key or a command distq uses.
        Not an outage to retry: it fails the same way until the ACL changes."""
        queue = self.settings.queue
        user = self.client.connection_pool.connection_kwargs.get("username") or "default"
        what = f"key {key!r}" if key else "a key or a command"
        return ConfigError(
            f"Redis at {self.address} refused user {user!r} access to {what} of "
            f"DISTQ_QUEUE={queue!r}: {exc}; its ACL must allow distq's keys ({queue} and "
            f"distq:{queue}:*) and commands, for example: ACL SETUSER {user} "
            f"{shlex.quote('~' + queue)} {shlex.quote(f'~distq:{queue}:*')} +@all"
        )

    def _unreachable(self, exc: RedisError) -> ConnectionFailed:
        where = f"Redis at {self.address} (DISTQ_REDIS_URL)"
        problem = tls.failure(exc)
        if problem is not None:
            error = CertificateRejected if problem.refused else ConnectionFailed
            return error(problem.line(where))
        hint = "is it running?"
        if descriptors.out_of_descriptors(exc):
            hint = descriptors.HINT
        elif _is_unix(self.settings.redis_url):
            hint = "is it running, with that --unixsocket path, and may this user open it?"
        elif self.tls and "refused" not in str(exc):  # a plain port stalls the handshake
            hint = "is it running? If that port is plain TCP (no TLS), use redis://"
        elif 'got "A" as reply type byte' in str(exc):  # AMQP's "AMQP" protocol header
            hint = (
                "is that port Redis's? It answers as an AMQP broker (RabbitMQ) does: check "
                "DISTQ_TRANSPORT and DISTQ_REDIS_URL"
            )
        elif "refused" not in str(exc):
            hint = "is it running? If that port expects TLS, use rediss://"
        return ConnectionFailed(f"cannot reach {where}: {str(exc).rstrip('.')}; {hint}")

    def _refused(self, exc: Exception) -> AuthenticationFailed:
        return AuthenticationFailed(
            f"Redis at {self.address} refused the credentials in DISTQ_REDIS_URL "
            f"(or DISTQ_REDIS_PASSWORD[_FILE]): {exc}; check the password"
        )

    def errors(self) -> _Errors:
        """Translate redis-py errors raised mid-operation into distq's error tree: a
        context manager (a class, not a generator's: each call of a lone task's round
        trip makes one)."""
        return _Errors(self)

    def translate(self, error: RedisError) -> NoReturn:
        """Raise ``error`` as distq's error tree has it (see :meth:`errors`)."""
        try:
            raise error
        except AuthenticationError as exc:
            raise self._refused(exc) from None
        except NoPermissionError as exc:  # the user's ACL: not an outage to wait out
            raise self._forbidden(exc) from None
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):  # a key was made another type since start
                raise self._wrong_type_behind(exc) from None
            if "nknown command" in str(exc) or "nknown Redis command" in str(exc):
                # rename-command, at the top or inside a script: no outage, for good
                raise ConfigError(
                    f"Redis at {self.address} does not know a command distq uses ({exc}): "
                    "renamed or disabled with rename-command? distq needs BLMOVE, EVAL, "
                    "EVALSHA, SCRIPT, TIME and the list, hash, set and sorted-set commands"
                ) from None
            self.refused_for_memory(exc)
            raise TransportError(f"Redis at {self.address}: {exc}") from None
        except RedisError as exc:
            # a certificate refused as a connection is made again (a broker restarted
            # with another one, a man in the middle): no retry mends it, as at start
            problem = tls.failure(exc) if self.tls else None
            if problem is not None and problem.refused:
                raise CertificateRejected(
                    problem.line(f"Redis at {self.address} (DISTQ_REDIS_URL)")
                ) from None
            raise TransportError(f"Redis at {self.address}: {exc}") from None

    def describe(self) -> str:
        tls = " over TLS" if self.tls else ""
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        where = f"{self.address}{tls}" + (f" (db {db})" if db else "")  # a drift shows
        if self.role == "master":
            return f"redis transport at {where}"
        return f"redis at {where}"

    def reply_queue(self, job_id: str) -> str:
        return f"distq:{self.settings.queue}:results:{job_id}"

    def keys(self, inflight: str = "") -> list[str]:
        """KEYS as every consumer script expects them (see ``redis_lua/prelude.lua``).

        Without a consumer's ``inflight`` key (``stats``, ``sweep``), the in-flight prefix
        stands in, a key those scripts never touch: an empty name would fall outside the
        ACL key patterns the README gives (``~<queue> ~distq:<queue>:*``), and Redis
        refuses a script any of whose declared keys its user may not access."""
        return [
            self.ready_key,
            self.consumers_key,
            self.delayed_key,
            self.redelivered_key,
            inflight or self.inflight_prefix,
            self.dead_key,
            self.masters_key,
            self.clock_key,
        ]

    def wire(self, answer_within: float | None = None) -> Wire:
        """A connection of the shared pool, for one producer or consumer; its calls wait
        ``answer_within`` s for an answer (see :class:`Wire`), the socket timeout if None.
        A call that waited so long says the lease sets that wait: a Redis that is up but
        slow (a long command, a slow disk under ``appendfsync always``) fails the calls of
        a short lease, and the worker said only "no answer in 1.0 s; reconnecting"."""
        if answer_within is None:
            return Wire(self.client.connection_pool)
        lease = f"{self.settings.lease_seconds:g}"
        why = (
            f"the wait DISTQ_LEASE_SECONDS={lease} allows: Redis stalled (a long command, a "
            "slow disk under appendfsync always) or the connection went silent; if Redis is "
            "often this slow, raise DISTQ_LEASE_SECONDS"
        )
        return Wire(self.client.connection_pool, answer_within, why)

    def producer(self, reply_to: str) -> RedisProducer:
        return RedisProducer(self, reply_to)

    def consumer(self, consumer_id: str) -> RedisConsumer:
        return RedisConsumer(self, consumer_id)

    renews_apart = True

    def heartbeat(self, consumers: Sequence[Consumer]) -> None:
        ids = [c.consumer_id for c in consumers if isinstance(c, RedisConsumer)]
        if not ids:
            return
        if self._keeper is None:  # the keeper's own connection: no slot waits for it
            self._keeper = self.wire(self.answer_within)
        # it lies idle between long batches: one closed meanwhile (Redis's ``timeout``, a
        # proxy's) failed the renewal, a lost broker and a reconnect said for nothing. Not
        # between renewals of a batch (each would wait on a frozen Redis twice as long)
        self._keeper.check(max(IDLE_CHECK_SECONDS, 1.5 * self.settings.heartbeat_interval))
        with self.errors():
            self.leases_script(
                self._keeper, self.keys(), [self.lease_ms, self.inflight_prefix, *ids]
            )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []  # LRANGE 0 -1 would be all of them
        with self.errors():
            bodies: list[bytes] = self.client.lrange(self.dead_key, 0, limit - 1)
        return [DeadLetter.read(body, self.settings.queue) for body in bodies]

    def requeue_dead(self, limit: int | None, revive: Revive = original_body) -> int:
        moved = [0, 0]
        with counting_moves(moved):  # cut off part-way: say how many moved, as RabbitMQ
            self._requeue_dead(self.dead_there(limit), revive, moved)
        return moved[0]

    def _requeue_dead(self, limit: int, revive: Revive, done: list[int]) -> None:
        """Move up to ``limit`` letters, a batch at a time; ``done[0]``: how many moved,
        ``done[1]``: how many the call under way moves (0: none is)."""
        moved = 0
        while moved < limit:
            with self.errors():
                letters: list[bytes] = self.client.lrange(
                    self.dead_key, 0, min(MESSAGE_BATCH, limit - moved) - 1
                )
            if not letters:
                break
            pairs: list[Arg] = []
            for letter in letters:
                pairs += [letter, revive(DeadLetter.read(letter, self.settings.queue))]
            done[1] = len(letters)
            with self.errors():
                count = int(
                    self.requeue_dead_script(self.client, [self.dead_key, self.ready_key], pairs)
                )
            moved += count  # fewer than asked: another caller took some; read again
            done[:] = [moved, 0]

    def forget_orphans(self, reply_to: str) -> int:
        """Reads the dead letters from the newest, a chunk at a time, each chunk about
        :data:`ORPHANS_CHUNK_BYTES` long (a thousand letters of 900 KB held Redis 12 s in
        one call: diff16b). Those that name ``reply_to`` are decoded, and the chunk's
        orphans removed in one step (``redis_lua/unlink.lua``), by their places: one LREM each from
        the tail went past every newer letter, quadratic with other masters' letters in
        between (diff16b). Within :data:`ORPHANS_SECONDS`: the master's loop waits for
        it, and a job's next look (as it ends) takes up what is left."""
        queue, needle = self.settings.queue, reply_to.encode()
        budget, looked, removed, end, chunk = time.monotonic() + ORPHANS_SECONDS, 0, 0, -1, 100
        mark = b"\0distq unlink " + secrets.token_hex(8).encode()  # never a letter's bytes
        with self.errors():
            while looked < ORPHANS_LOOKED_AT and time.monotonic() < budget:
                letters: list[bytes] = self.client.lrange(self.dead_key, end - chunk + 1, end)
                first = end - len(letters) + 1  # letters[0]'s place, counted from the tail
                places: list[Arg] = [mark]
                for at, raw in enumerate(letters, first):
                    if needle in raw and is_orphan_of(DeadLetter.read(raw, queue), reply_to, queue):
                        places += [at, raw]
                unlinked = (
                    int(self.unlink_script(self.client, [self.dead_key], places))
                    if len(places) > 1
                    else 0
                )
                removed += unlinked
                if len(letters) < chunk:
                    break
                # the letters before the chunk came closer to the tail by those unlinked
                looked, end = looked + len(letters), end - len(letters) + unlinked
                size = max(1, sum(map(len, letters)))  # the next chunk: about the bytes
                chunk = max(1, min(MESSAGE_BATCH, 2 * chunk, chunk * ORPHANS_CHUNK_BYTES // size))
        return removed

    def stats(self) -> QueueStats:
        """``ready`` counts ``<queue>`` plus delayed retries and the tasks of lapsed leases
        (a worker killed: they wait to run again, until a sweep moves them back);
        ``in_flight`` the tasks of live leases; ``consumers`` the slots whose lease is live
        (see ``redis_lua/stats.lua``); ``redelivered`` the tasks queued again after a
        worker had them, and those of lapsed leases; ``lease_left`` by the consumers'
        deadlines."""
        with self.errors():
            ready, in_flight, dead, consumers, again, left_ms = self.stats_script(
                self.client, self.keys(), ["", 0, self.inflight_prefix]
            )
        return QueueStats(
            ready=int(ready),
            in_flight=int(in_flight),
            dead=int(dead),
            consumers=int(consumers),
            redelivered=int(again),
            lease_left=int(left_ms) / 1000 if int(left_ms) > 0 else None,
        )

    def sweep(self, client: Commands) -> None:
        """Requeue expired leases and due retries (consumers also do it on every claim)."""
        self.sweep_script(client, self.keys(), ["", self.lease_ms, self.inflight_prefix])

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.close()
        self.client.close()


class _Errors:
    """:meth:`RedisTransport.errors`: redis-py's errors raised in its block, translated."""

    __slots__ = ("_transport",)

    def __init__(self, transport: RedisTransport) -> None:
        self._transport = transport

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, RedisError):
            self._transport.translate(exc)


class RedisProducer(Producer):
    """LPUSHes tasks onto ``<queue>``; takes results from ``reply_to`` (see the key table)."""

    takes_back = True

    def __init__(self, transport: RedisTransport, reply_to: str) -> None:
        self.reply_to = reply_to
        self._t = transport
        self._w = transport.wire()
        self._keys = [
            transport.ready_key,
            transport.masters_key,
            reply_to,
            f"{reply_to}:state",
        ]
        self._args: list[Arg] = [reply_to, transport.master_ttl_ms]
        # the take's script commands up to their count, made once (see _take_commands)
        self._acked = Fixed(transport.ack_script.command(self._keys, self._args))
        self._submitted_by = Fixed(transport.submit_script.command(self._keys, self._args))
        # a wait for one result (a block slice at most): its command, but for the seconds
        self._wait_for = ("BLMOVE", reply_to, reply_to, "RIGHT", "RIGHT")
        self._waits: tuple[float, Fixed] | None = None  # the last wait's block and command
        self._received = 0  # results taken and returned so far: the acknowledgement
        # the wire's connection that counted them (see _take_commands); None: none yet
        self._counted_on: int | None = None
        self._renew_every = transport.master_ttl_ms / 4000
        self._renew_at = 0.0
        self._count = 0  # bodies the broker counts as submitted (``submitted`` in state)
        self._lapsed = False  # a renewal from a call found the registration lapsed
        self._refused_said = False  # the queue's key of another type: said once
        self.reconcile()  # register: workers run only the tasks of registered masters

    def submit(self, bodies: Sequence[bytes]) -> None:
        """LPUSH the bodies and count them in ``state`` in one step: a transaction
        (MULTI/EXEC) rather than one script, so no body is copied into Lua and back.
        A transaction does not stop at a failed command: the count (a small script,
        ``count_submitted.lua``) is made only if the queue is a list, that is, only if the
        LPUSHes before it succeeded."""
        if not bodies:
            return
        self._renew_when_due()
        with self._t.errors():
            _submitted(self._w.pipeline(self._submit_commands(bodies)))
        self._count += len(bodies)

    def submit_then_results(
        self, bodies: Sequence[bytes], max_count: int, timeout: float
    ) -> list[bytes]:
        """The submit's transaction, then a take that waits up to ``timeout`` (a block
        slice at most) for the first result, or does not wait, pipelined: one round
        trip. A lone body (one task at a time) is pushed and counted by the take's own
        script (``submit.lua``): 3 commands, where the transaction made it 7."""
        if not bodies:
            return self.results(max_count, timeout)
        self._renew_when_due()
        block = min(timeout, self._t.block_slice) if timeout > 0 else None
        if len(bodies) == 1:
            take = self._take_commands(block, max_count, bodies[0])
            with self._t.errors():
                replies = self._w.pipeline(take)
                taken, last = replies[0], replies[-1]
                if (
                    len(take) == 2
                    and take[1][0] == "BLMOVE"
                    and not isinstance(taken, Exception)
                    and not isinstance(last, Exception)
                ):  # the usual (issue 16): pushed and counted, and the wait's reply is
                    # the result, or none: what _taken makes of it, without its questions
                    got = [] if last is None else [last]
                    self._count += 1
                    self._received = int(taken) + len(got)
                    self._counted_on = self._w.link
                    return got
                return self._taken(take, replies, submitted=1)
        submit = self._submit_commands(bodies)
        take = self._take_commands(block, max_count)
        with self._t.errors():
            replies = self._w.pipeline([*submit, *take])
            _submitted(replies[: len(submit)])
            self._count += len(bodies)
            return self._taken(take, replies[len(submit) :])

    def _submit_commands(self, bodies: Sequence[bytes]) -> list[Sequence[Arg]]:
        ready, state = self._keys[0], self._keys[3]
        commands: list[Sequence[Arg]] = [("MULTI",)]
        for start in range(0, len(bodies), MESSAGE_BATCH):
            commands.append(("LPUSH", ready, *bodies[start : start + MESSAGE_BATCH]))
        ttl = self._t.master_ttl_ms + REPLY_GRACE_MS
        commands.append(("EVAL", COUNT_SUBMITTED, 2, ready, state, len(bodies), ttl))
        commands.append(("EXEC",))
        return commands

    def withdraw(self, bodies: Sequence[bytes], redelivered: bool = True) -> list[bool]:
        if not bodies:
            return []
        keys = [self._t.ready_key, self._t.redelivered_key, self._t.delayed_key]
        leave = b"0" if redelivered else b"1"
        with self._t.errors():
            found = self._t.withdraw_script(self._w, keys, [leave, *bodies])
        return [n == 1 for n in found]  # -1: queued redelivered, left

    def reconcile(self) -> int:
        """See :meth:`Producer.reconcile`. After a lapse that a call's own renewal found
        (:meth:`_renew_when_due`), none is held: the count restarted then, so what it
        counts since is not the first bodies of the sequence; it restarts from 0 here,
        and the caller sends again everything it still waits for.

        It checks the queue's key types too: a master waiting for its results touches
        none of them, and would not learn that its tasks went with a key made another
        type (it waited until its timeout, or for ever). Such a key stops it once no
        task of the queue is leased any more: the workers finish theirs and send their
        results (they stop warm), which it still collects."""
        with self._t.errors():
            try:
                self._t.check_types(self._w)
            except ConfigError as wrong:
                leased = self._t.leased(self._w)
                if not leased:
                    raise
                if not self._refused_said:
                    self._refused_said = True
                    them = f"the {counted(leased, 'task')}"
                    whom = "a worker" if leased == 1 else "workers"
                    log.warning("%s; waiting for %s leased to %s", wrong, them, whom)
        held = self._register()
        # the registration gone (the renew script counts none held then), found by this
        # renewal or by a call's own since the last reconcile
        self.lapsed = self._lapsed or (held == 0 < self._count)
        if self._lapsed:  # the state may be gone since (evicted): made again, it expires
            state, ttl = self._keys[3], self._t.master_ttl_ms + REPLY_GRACE_MS
            with self._t.errors():
                self._w.pipeline([("HSET", state, "submitted", 0), ("PEXPIRE", state, ttl)])
            held, self._lapsed = 0, False
        self._count = held
        return held

    def _register(self) -> int:
        """Renew the registration (re-register a lapsed one); the bodies held."""
        with self._t.errors():
            held = int(self._t.renew_script(self._w, self._keys, self._args))
        self._renew_at = time.monotonic() + self._renew_every
        return held

    def _renew_when_due(self) -> None:
        """Renew the registration from the calls themselves too, between a caller's
        reconciles: a quarter of the master's time to live at the latest. Fewer held than
        counted means the registration had lapsed (or the broker lost tasks): the next
        :meth:`reconcile` says so."""
        if time.monotonic() >= self._renew_at and self._register() < self._count:
            self._lapsed = True

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        self._renew_when_due()
        with self._t.errors():
            if timeout <= 0:
                return self._take(None, max_count)
            while True:  # blocking from the first read: it returns at once if results wait
                remaining = max(0.0, deadline - time.monotonic())
                got = self._take(min(remaining, self._t.block_slice), max_count)
                if got:
                    return got
                if self._t.full():  # the take did not wait (no BLMOVE): a short sleep
                    time.sleep(min(remaining, FULL_POLL_SECONDS))
                self._t.sweep(self._w)  # idle: bring back a dead worker's tasks meanwhile
                if time.monotonic() >= deadline:
                    return []

    def _take(self, block: float | None, max_count: int) -> list[bytes]:
        """One round trip: acknowledge the results received so far (the ack script), then
        read the oldest ``max_count`` of the rest (LRANGE of the list's tail), after a
        wait for the first of them if ``block``.

        The wait is a BLMOVE of the list onto itself: it blocks until a result is there
        and moves nothing. The list's tail changes only here (workers push at its head),
        so the LRANGE reads exactly the results after those the script counts. A take of
        one result that waits sends no LRANGE: the BLMOVE's reply is that result (a lone
        task's round trip, issue 16).
        """
        commands = self._take_commands(block, max_count)
        return self._taken(commands, self._w.pipeline(commands))

    def _take_commands(
        self, block: float | None, max_count: int, body: bytes | None = None
    ) -> list[Sequence[Arg]]:
        # the ack first: a wait behind it finds only results not received yet (the ones
        # received stay in the list until this ack trims them). The count acks only on the
        # connection that counted it: one Redis, alive all along. A new connection may
        # reach a Redis restarted from an older snapshot, whose list holds results pushed
        # since at the tail: -1 drops nothing and reads on from the server's count.
        # ``body``: a lone task, submitted by the same script (see submit_then_results).
        received = self._received
        if self._counted_on is None or self._w.link != self._counted_on:
            received = -1
        if body is None:
            first: tuple[Arg, ...] = Headed.of(self._acked, (received,))
        else:
            first = Headed.of(self._submitted_by, (received, body))
            if received == -1:  # by EVAL: a restarted Redis lost it, and the task would
                first = ("EVAL", self._t.submit_script.source, *first[2:])  # wait out a BLMOVE
        commands: list[Sequence[Arg]] = [first]
        if block is not None and not self._t.full():  # full, BLMOVE is refused: results() polls
            if self._waits is None or self._waits[0] != block:  # a block slice each time
                self._waits = (block, Fixed((*self._wait_for, _seconds(block))))
            commands.append(self._waits[1])
            if max_count == 1:  # its reply is the oldest result, as LRANGE -1 -1 would read
                return commands
        commands.append(("LRANGE", self.reply_to, -max_count, -1))
        return commands

    def _taken(
        self, commands: list[Sequence[Arg]], replies: list[Any], submitted: int = 0
    ) -> list[bytes]:
        """The results of a take (:meth:`_take_commands`) from its replies; ``submitted``:
        the bodies its script pushes (and counts) first, if it succeeded."""
        waited = commands[-1][0] == "BLMOVE"
        last = replies[-1]
        if waited:  # a take of one result: the wait's reply is the read
            if not isinstance(last, Exception):
                replies[-1] = [] if last is None else [last]
            elif self._t.refused_for_memory(last):  # full: read at the next take
                replies[-1] = []
        if len(replies) == 3 and self._t.refused_for_memory(replies[1]):  # full: no wait
            replies = [replies[0], replies[2]]
        taken, bodies = replies[0], replies[-1]
        if isinstance(taken, NoScriptError):  # Redis lost its scripts: the read ran first
            script = self._t.submit_script if submitted else self._t.ack_script
            taken = script.evaluate(self._w, commands[0])
            read = ("LRANGE", self.reply_to, -1, -1) if waited else commands[-1]
            bodies = self._w.execute_command(*read)
        if not isinstance(taken, Exception):
            self._count += submitted
        for reply in replies:  # the first error, but a lost script's (read again above)
            if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                raise reply
        got: list[bytes] = bodies
        self._received = int(taken) + len(got)
        self._counted_on = self._w.link
        got.reverse()  # the list holds the newest first
        return got

    def close(self) -> None:
        try:
            self._t.close_master_script(self._w, self._keys, self._args)
        except RedisError as exc:  # closing must not mask the caller's own error
            log.warning("could not delete result list %s: %s", self.reply_to, exc)
        self._w.close()

    def close_answered(self) -> None:
        """Every task has its result: no script, as :meth:`abandon`, so a copy of one
        that a worker reaches while the registration lives (a snapshot's restore put back
        an in-flight list under a consumer gone since, its lease lapsed) runs, its result
        pushed to a list that expires after it, not dead-lettered "its master is gone"
        (test_a_copy_a_snapshot_restores_after_a_job_with_every_result_in_runs...)."""
        self._w.close()

    def abandon(self) -> None:
        # no script: the registration lapses master_ttl after its last renewal, the
        # result list a minute after that (see the key table)
        self._w.close()

    def stop_waiting_on(self, stop: threading.Event) -> None:
        """A call under way when ``stop`` is set gives up a second past its own wait
        (:meth:`Wire.stop_waiting_on`): on a Redis gone silent, not the socket timeout."""
        self._w.stop_waiting_on(stop)


class RedisConsumer(Consumer):
    """Leases tasks into ``distq:<queue>:inflight:<id>``, one deadline for all of them.

    It keeps the bodies it holds in the order it got them, which is the in-flight list's
    from its tail: a batch settled in order is acked by count, without sending its
    bodies back (see ``redis_lua/settle.lua``).
    """

    resettles = True  # in-flight lists outlive a connection

    def __init__(self, transport: RedisTransport, consumer_id: str) -> None:
        # a suffix per connection: an earlier connection's leases are never renewed by this one
        self.consumer_id = f"{consumer_id}.{secrets.token_hex(3)}"
        self._t = transport
        self._w = transport.wire(transport.answer_within)  # a BLMOVE waits its slice
        self.inflight_key = transport.inflight_prefix + self.consumer_id
        self._keys = transport.keys(self.inflight_key)
        self._args: list[Arg] = [self.consumer_id, transport.lease_ms, transport.inflight_prefix]
        self._held: list[bytes] = []  # oldest first, as the in-flight list from its tail
        # whether the last claim emptied the ready list (or was a wait's claim of none),
        # and then when the next delayed retry is due (time.monotonic(); None: none is),
        # as its reply says
        self._drained, self._retry_due = False, None
        # the last claim found nothing, and nothing was settled or released since: the next
        # fetch blocks at once instead of claiming again first (one round trip less a wait)
        self._found_nothing = False
        # its settles by count Redis said it ran, and the tags of each it sent but had no
        # answer to (a stall past the wait): the close finds whether those ran after all
        self._ran, self._unanswered = 0, list[list[bytes]]()
        # the tags of those found to have run after all (``_unsettled``), for the close
        self._ran_late = frozenset[bytes]()
        # the count of claims the last claim or tidy returned, which a settle by count sends
        # for Redis to check (``claimed`` in redis_lua/prelude.lua); None: not known
        self._claims: int | None = None
        self._settles_key = f"{transport.consumers_key}:{self.consumer_id}"  # settles_of
        # the claim script's commands by (count, moved): made once each (see _claim)
        self._claim_commands: dict[tuple[int, int], tuple[Arg, ...]] = {}
        self._blmove_for: tuple[float, tuple[Arg, ...]] | None = None  # see _blmove
        # the settle script's command up to its counts, for the result lists' keys after
        # the consumer's own (see _settle_command)
        self._settle_head: tuple[list[str], Fixed] | None = None
        with transport.errors():  # reachable now, so "reconnected" means it
            transport.check_types(self._w)  # and its keys are distq's: one round trip
        self._link = self._w.link  # the connection its in-flight list is known on

    def _relink(self) -> None:
        """Before a call that goes out on a new connection (the one before failed, or
        :meth:`Wire.check` found it dead), the in-flight list is made what the consumer
        holds (``redis_lua/tidy.lua``): Redis may have restarted from a snapshot meanwhile,
        which restores the list as it was, with tasks settled since. The consumer keeps
        its name (a worker drops a consumer whose call failed, not one whose idle link
        died): those were acked by count in place of the batch it held, or kept leased
        while it lived, and their results, pushed after the snapshot, were lost with it."""
        if self._w.link is not None and self._w.link == self._link:
            return
        self._claims = self._t.tidy_script(self._w, self._keys, [*self._args, *self._held])
        self._link = self._w.link

    def fetch(self, max_count: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        found_nothing, self._found_nothing = self._found_nothing, False
        with self._t.errors():
            self._relink()
            out: list[Delivery] = []
            if not found_nothing or timeout <= 0:
                reply = self._t.claim_script(self._w, self._keys, [*self._args, max_count, 0])
                out = self._claimed(reply, max_count)
            while not out:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._found_nothing = True
                    return []
                block = min(remaining, self._t.block_slice)
                if self._retry_due is not None:  # wake up when the next delayed retry is due
                    block = min(block, self._retry_due - time.monotonic())
                out = self._block_then_claim(block, max_count)
        self._held += [d.body for d in out]
        return out

    def _block_then_claim(self, block: float, max_count: int) -> list[Delivery]:
        """One round trip: BLMOVE one task, then the claim script for the rest + the lease;
        while Redis is full, a short sleep and a claim that does not wait."""
        if self._t.full():
            time.sleep(max(0.0, min(block, FULL_POLL_SECONDS)))  # a retry due already: < 0
            reply = self._t.claim_script(self._w, self._keys, [*self._args, max_count, 0])
            return self._claimed(reply, max_count)
        claim = self._t.claim_script
        command = self._claim(max_count - 1, 1)
        first, reply = self._w.pipeline([self._blmove(block), command])
        if self._t.refused_for_memory(first):  # full: the claim ran all the same; poll on
            first = None
        if isinstance(reply, NoScriptError):  # Redis lost its scripts; EVAL caches it again
            reply = claim.evaluate(self._w, command)
        raise_first([first, reply])
        return self._claimed(reply, max_count, first)

    def _claim(self, count: int, moved: int) -> tuple[Arg, ...]:
        """The claim script's command, for a pipeline, leasing up to ``count`` tasks and
        the ``moved`` (0 or 1) a BLMOVE before it took: made once for each, its keys and
        the consumer's arguments being the same for its life (a lone task's round trip
        made it afresh each time)."""
        command = self._claim_commands.get((count, moved))
        if command is None:
            args = [*self._args, count, moved]
            command = self._claim_commands[count, moved] = Fixed(
                self._t.claim_script.command(self._keys, args)
            )
        return command

    def _blmove(self, block: float) -> tuple[Arg, ...]:
        """Wait up to ``block`` s for a task and move it into the in-flight list: the claim
        script that follows it (its ARGV[5] = 1) leases it with the rest. Made again only
        for another ``block`` (a lone task's settle waits a block slice each time)."""
        if self._blmove_for is None or block != self._blmove_for[0]:
            command = ("BLMOVE", self._t.ready_key, self.inflight_key, "RIGHT", "LEFT")
            self._blmove_for = (block, Fixed((*command, _seconds(block))))
        return self._blmove_for[1]

    def heartbeat(self) -> None:
        with self._t.errors():
            self._relink()
            self._t.claim_script(self._w, self._keys, [*self._args, 0, 0])

    def gone(self, reply_to: Collection[str]) -> set[str]:
        names = list(reply_to)
        if not names:
            return set()
        self._w.check(IDLE_CHECK_SECONDS)  # asked mid-batch, the link idle while tasks ran
        with self._t.errors():
            self._relink()
            flags = self._t.gone_script(self._w, self._keys, [*self._args, *names])
        return {name for name, flag in zip(names, flags, strict=True) if flag == 1}

    def settle(self, settlements: Sequence[Settlement]) -> None:
        self._found_nothing = False  # it may publish retries: the next fetch claims first
        self.late = frozenset()
        settlements = self._unsettled(settlements)
        if not settlements:
            return
        self._w.check(IDLE_CHECK_SECONDS)
        tags = tags_of((s.delivery for s in settlements), bytes, "redis")
        keys, publish = self._publish(settlements)
        held, count = self._held, len(tags)
        with self._t.errors():
            self._relink()
            if tags == held[:count]:  # the oldest, in order: ack by count
                args = [*self._args, len(held), count, self._claims or "", *publish]
                try:
                    settled = self._t.settle_script(self._w, keys, args)
                except RedisError as exc:
                    if not isinstance(exc, ResponseError):  # no answer: it may run late
                        self._unanswered.append(tags)
                    raise
                if settled == 1:
                    self._ran += 1
                    del held[:count]
                    return
            self._settle_by_body(settlements, tags)

    def settle_then_fetch(
        self, settlements: Sequence[Settlement], max_count: int, timeout: float = 0.0
    ) -> list[Delivery]:
        """A batch settled in order (acked by count) and the next claim, pipelined: one
        round trip. The claim runs after the settle, as if fetched right after it. With
        ``timeout``, a BLMOVE between them waits (up to ``timeout``, and not past the next
        delayed retry) for a task when none is ready, as :meth:`fetch` would in a round
        trip of its own; not after a batch with retries (the next one may be due first).

        If the in-flight list is not what the consumer holds (a sweep took it back), the
        settle by count does nothing and the acks by body follow the claim, which may
        have taken a lapsed body back (the copy its sweep queued behind the tasks then
        queued). A body whose task is done (a result, no retry nor dead letter) is then
        acked in its new delivery too and not handed out: the worker ran it again, and a
        task that held the GIL past its lease at each run ran without end (48 times, the
        tasks behind it never, lease17). One that failed runs again (the copy decides)."""
        settlements = self._unsettled(settlements)
        if not settlements or max_count <= 0:
            self.settle(settlements)
            return []
        self.late = frozenset()
        self._w.check(IDLE_CHECK_SECONDS)
        tags = tags_of([s.delivery for s in settlements], bytes, "redis")
        held, count = self._held, len(tags)
        if tags != held[:count]:  # not the oldest, in order: acks by body, then a fetch
            self.settle(settlements)
            with settled_already():
                return self.fetch(max_count, 0)
        keys, publish = self._publish(settlements)
        block = self._block_for(timeout, settlements)
        if block > 0:  # wait for the first task, then claim the rest (as _block_then_claim)
            claim = self._claim(max_count - 1, 1)
            commands: list[Sequence[Arg]] = [self._blmove(block), claim]
        else:
            claim = self._claim(max_count, 0)
            commands = [claim]
        with self._t.errors():
            self._relink()  # first: a tidy counts a claim (the settle sends the count)
            settle = self._settle_command(keys, [len(held), count, self._claims or "", *publish])
            commands.insert(0, settle)
            replies: list[Any] = []
            said = self._said_settled if block > 0 and self.on_settled is not None else None
            try:
                self._w.pipeline(commands, replies, said)
            except RedisError as exc:  # the connection is gone: did the settle go through?
                if replies and replies[0] == 1:  # its reply came in before the wait failed
                    self._ran += 1
                    del held[:count]
                    raise SettledThenFailed(f"Redis at {self._t.address}: {exc}") from None
                if not replies:  # no answer: it may run late (see close)
                    self._unanswered.append(tags)
                raise
            settled, first, reply = replies[0], replies[1] if block > 0 else None, replies[-1]
            if isinstance(first, ResponseError) and self._t.refused_for_memory(first):
                # full: the claim ran all the same
                first = None
            if isinstance(settled, NoScriptError):  # not run: by body, below, after the claim
                # not by count, run now: the wait's BLMOVE took a task into the in-flight
                # list since, which the count would ack unrun (a list one short, a Redis
                # restarted from a snapshot: the task then ran in no list, or was lost)
                settled = 0
            if isinstance(reply, NoScriptError):
                reply = self._t.claim_script.evaluate(self._w, claim)
            if isinstance(settled, Exception):  # as raise_first, without its lists
                raise settled
            failed = isinstance(first, Exception) or isinstance(reply, Exception)
            if settled == 1:
                self._ran += 1
                del held[:count]
                if failed:
                    _settled_then_raise_first(self._t, [first, reply])  # not on the way
            if failed:
                raise_first([first, reply])
            out = self._claimed(reply, max_count, first)
            for delivery in out:
                held.append(delivery.body)
            if settled != 1:  # the in-flight list was not what it holds: ack by body
                done = self._settle_by_body(settlements, tags, {d.body for d in out})
                if done:  # done: not run again (see the docstring)
                    out = [d for d in out if d.body not in done]
            self._found_nothing = settled == 1 and not out
        return out

    def _settle_command(self, keys: list[str], tail: Sequence[Arg]) -> Headed:
        """The settle script's command, for a pipeline: its keys and the consumer's
        arguments packed once for the same result lists (a lone task's master's), the
        counts and the runs (``tail``) at each call."""
        head, extra = self._settle_head, keys[len(self._keys) :]
        if head is None or head[0] != extra:
            fixed = Fixed(self._t.settle_script.command(keys, self._args))
            head = self._settle_head = (extra, fixed)
        return Headed.of(head[1], tail)

    def _said_settled(self, replies: list[Any]) -> None:
        """A settle then a wait for tasks (settle_then_fetch): the settle's answer is read,
        and the BLMOVE waits; if the settle went through by count, say so now."""
        if replies[0] == 1 and self.on_settled is not None:
            self.on_settled()

    def _unsettled(self, settlements: Sequence[Settlement]) -> Sequence[Settlement]:
        """``settlements`` but those a settle that had no answer settled all the same
        (Redis stalled past the wait, then ran it: the keeper's, whose endings the slot
        settles again). Sent again, their results reached the master twice, and a retry
        or dead letter was found late ("not retried"), though it had gone. Asked of
        Redis (the count ``close.lua`` reads) once after such a settle: if all of them
        ran, they are forgotten, and the close names them (:attr:`settled_late`: the
        worker counted them handed back when this settle failed too); else all are sent
        again (one that runs later still finds the in-flight list changed, and does
        nothing)."""
        if not self._unanswered or not settlements:
            return settlements
        with self._t.errors():
            self._relink()
            counted = int(self._w.execute_command("GET", self._settles_key) or 0)
        done = [tag for tags in self._unanswered for tag in tags]
        ran_all = counted - self._ran == len(self._unanswered)
        self._ran, self._unanswered = counted, []
        self._ran_late = frozenset(done if ran_all else ())
        if not ran_all:
            return settlements
        self._forget(done)
        kept = set(done)
        return [s for s in settlements if tags_of([s.delivery], bytes, "redis")[0] not in kept]

    def _block_for(self, timeout: float, settlements: Sequence[Settlement]) -> float:
        """How long a settle may wait for the next task: up to ``timeout``, a block slice
        and the next delayed retry; 0 (no wait) after a batch with retries, or when the last
        claim filled (the ready list may hold more, and its reply says nothing of retries)
        but for a wait's claim of none (one asked), whose reply says (see claim.lua)."""
        if timeout <= 0 or not self._drained:
            return 0.0
        for s in settlements:  # a loop, not any() of a generator: a frame less per settle
            if s.retry is not None:
                return 0.0
        if self._t.full():  # no BLMOVE: the fetch after polls
            return 0.0
        block = min(timeout, self._t.block_slice)
        if self._retry_due is not None:
            block = min(block, self._retry_due - time.monotonic())
        return block if block > 0.001 else 0.0

    def _claimed(self, reply: Any, asked: int, first: bytes | None = None) -> list[Delivery]:
        """The deliveries of a claim of ``asked`` tasks, after ``first`` (what a BLMOVE
        before the script moved) if any; notes whether it emptied the ready list and, if
        so, when the next delayed retry is due (the script says only then: see claim.lua)."""
        out = _deliveries(reply)
        self._claims = reply[3]
        if first is not None:
            out.insert(0, Delivery(body=first, tag=first, redelivered=reply[1] == 1))
        # a claim of none after the wait (one asked) says when the next retry is due too:
        # a slot fetching one at a time that waited waits in its next settle again
        self._drained = len(out) < asked or (first is not None and asked == 1)
        self._retry_due = None if reply[0] < 0 else time.monotonic() + reply[0] / 1000
        return out

    def _settle_by_body(
        self,
        settlements: Sequence[Settlement],
        tags: list[bytes],
        reclaimed: Collection[bytes] = (),
    ) -> set[bytes]:
        """Publish, then ack these deliveries by body (wherever they are in the in-flight
        list), and forget them; a retry or dead letter only if its delivery is still
        held (see ``settle.lua``). ``reclaimed``: bodies the claim in the same round trip
        took again, after their lease had lapsed (``settle_then_fetch``): the in-flight
        list holds the new delivery, the copy. Of a task that failed only a result is
        published, and nothing is acked: the copy decides (the gate let a late dead letter
        through: a task that succeeded failed for good). A task done (a result or none,
        no retry nor dead letter) is acked in that new delivery, which is forgotten too:
        those bodies are returned, for the caller to drop from what it hands out. Those
        whose retry or dead letter was not published are :attr:`late`."""
        acked, done, dropped = tags, set(), []
        if reclaimed:
            pairs = list(zip(settlements, tags, strict=True))
            done = {
                tag
                for s, tag in pairs
                if tag in reclaimed and s.retry is None and s.dead_letter is None
            }
            kept = [(s, tag) for s, tag in pairs if tag not in reclaimed or tag in done]
            dropped = [tag for _, tag in pairs if tag in reclaimed and tag not in done]
            settlements, acked = [s for s, _ in kept], [tag for _, tag in kept]
        keys, publish = self._publish(settlements, gated=True)
        acks: list[Arg] = ["a", 0, len(acked), *acked]
        args = [*self._args, -1, 0, "", *publish, *acks]
        unsent = self._t.settle_script(self._w, keys, args)
        self.late = frozenset([*dropped, *unsent])
        self._forget(tags)  # the oldest entry of each: a reclaimed body's new one stays
        if done:
            self._forget(list(done))  # and the new one of a done task, acked
        return done

    def _publish(
        self, settlements: Sequence[Settlement], gated: bool = False
    ) -> tuple[list[str], list[Arg]]:
        """The settle script's KEYS and its publishing runs (see ``settle.lua``): results
        for one master in a row are one run, ``('r', key, n, result 1, ..., result n)``
        (a worker's batch has one message of results per master: see
        :meth:`distq.ending.Endings.settlements`). ``gated`` (acks by body): a retry or
        dead letter, and its result, after a ``('g', runs, 1, body)`` of its delivery."""
        if len(settlements) == 1:  # a lone task's result: one run, made at once
            s = settlements[0]
            reply_to, result = s.reply_to, s.result
            if s.retry is None and s.dead_letter is None and reply_to and result is not None:
                one = [*self._keys, reply_to]
                return one, ["r", len(one), 1, result]
        keys = list(self._keys)
        index: dict[str, int] = {}  # reply_to -> its position in KEYS (1-based, for Lua)
        runs = Runs()
        for s in settlements:
            if gated and (s.retry is not None or s.dead_letter is not None):
                ops = (s.result is not None and s.reply_to is not None) + (s.retry is not None)
                ops += s.dead_letter is not None
                runs.add("g", ops, tags_of([s.delivery], bytes, "redis")[0])
            if s.result is not None and s.reply_to is not None:
                key = index.get(s.reply_to)
                if key is None:
                    keys.append(s.reply_to)
                    key = index[s.reply_to] = len(keys)
                runs.add("r", key, s.result)
            if s.retry is not None:
                runs.add("t", max(0, round(s.retry_delay * 1000)), s.retry)
            if s.dead_letter is not None:
                runs.add("d", 0, self._fitted(s.dead_letter))
        return keys, runs.args()

    def _fitted(self, letter: bytes) -> bytes:
        """``letter``, or, over the largest argument Redis takes (:meth:`most_bulk`), the
        letter keeping the start of its task, saying why (:func:`cut_letter`)."""
        if len(letter) <= LEAST_BULK_BYTES or len(letter) <= self._t.most_bulk(self._w):
            return letter
        most = self._t.most_bulk(self._w)
        cut, why = cut_letter(
            letter,
            f"over the {most:,} bytes Redis at {self._t.address} takes in one argument (its "
            "proto-max-bulk-len)",
        )
        log.error("a dead letter too large for Redis: %s", why)
        return cut

    def _forget(self, tags: Sequence[bytes]) -> None:
        """Forget one delivery per tag, the oldest: a body claimed again after its lease
        lapsed is held twice for a moment (``settle_then_fetch``), the later one live."""
        gone = Counter(tags)
        kept: list[bytes] = []
        for body in self._held:
            if gone[body] > 0:
                gone[body] -= 1
            else:
                kept.append(body)
        self._held = kept

    def release(self, deliveries: Sequence[Delivery]) -> int:
        self._found_nothing = False
        if not deliveries:
            return 0
        # RPUSH in reverse so the first delivery ends up at the tail: it runs next
        tags = tags_of(reversed(deliveries), bytes, "redis")
        self._w.check(IDLE_CHECK_SECONDS)  # the keeper's hand-back: idle while tasks ran
        with self._t.errors():
            self._relink()
            self._t.release_script(self._w, self._keys, [*self._args, *tags])
        self._forget(tags)
        return len(tags)

    def close(self) -> None:
        """Hand back what the in-flight list holds. Settles by count that had no answer
        (:attr:`settled_late`) ran if Redis counted them all (``close.lua``): Redis runs a
        command a stalled connection sent before this close's, on a connection made
        afresh. Any other count (a settle of them ran, another not; a Redis restarted from
        an older snapshot; a sweep forgot the count) says none: they go back uncounted.
        Those a settle before found had run (``_unsettled``) are named too."""
        self._w.check(IDLE_CHECK_SECONDS)  # a cold stop's, under a batch: idle while it ran
        try:
            counted = self._t.close_script(self._w, self._keys, self._args)
        except RedisError as exc:  # the lease expires instead, so nothing is lost
            log.debug("consumer %s could not hand back its tasks: %s", self.consumer_id, exc)
        else:
            late = int(counted or 0) - self._ran
            if self._unanswered and late == len(self._unanswered):
                self._ran_late |= {tag for tags in self._unanswered for tag in tags}
        self.settled_late = self._ran_late
        self._held.clear()
        self._w.close()


def _submitted(replies: list[Any]) -> None:
    """Raise the first error among a submit's replies (MULTI ... EXEC), its transaction's
    own included (a command that failed inside it)."""
    raise_first(replies)
    raise_first(replies[-1])


def _settled_then_raise_first(transport: RedisTransport, replies: list[Any]) -> None:
    """Raise the first error among the replies after a settle that went through, as
    :class:`SettledThenRefused` or :class:`SettledThenFailed`: the caller counts the
    batch settled (it was: its results are out), not handed back."""
    with settled_already(), transport.errors():
        raise_first(replies)


def _deliveries(reply: list[Any]) -> list[Delivery]:
    """The deliveries in a claim script's reply (see ``claim.lua``); tag = body."""
    bodies = reply[4:]
    out = [Delivery(body, body) for body in bodies]
    for i in reply[2]:  # the positions (1-based) of the redeliveries, usually none
        out[i - 1] = Delivery(bodies[i - 1], bodies[i - 1], True)
    return out


def _seconds(value: float) -> float:
    """A blocking timeout for Redis, to the nearest millisecond: 0 would mean forever, so
    1 ms at least. Not by ``round(value, 3)``, which goes through a decimal string (6 % of
    a lone task's settle_then_fetch in instructions)."""
    return max(1, int(value * 1000 + 0.5)) / 1000
