"""RabbitMQ's management HTTP API, for the one count AMQP cannot tell: unacknowledged tasks.

The count is of messages, and a message carries 1 to 32 tasks (a master packs a large
submit, see :mod:`distq.transport.rabbitmq_packs`); lease records hold one task each.

``DISTQ_RABBITMQ_MANAGEMENT_URL=http://USER:PASSWORD@HOST:15672`` (the management
plugin's listener); one that names no user (``http://HOST:15672``) is asked as
``DISTQ_AMQP_URL``'s user (guest if it names none, as pika logs in), with its password
(``DISTQ_AMQP_PASSWORD`` and its file included), and one naming that user without a
password with that password, so that no URL need hold it. Two GETs per sample,
``/api/queues/{vhost}/{queue}`` and one page of the queue's lease records
(``<queue>.held.*``: tasks running past a lease are acknowledged on the task queue and
held there, see :mod:`distq.transport.rabbitmq_holds`), each with a short timeout, no
proxy, credentials in the Authorization header only: the password is never part of a URL
that is printed. A redirect is not followed (the API never answers one, and the password
would go wherever it points, in clear if to ``http://``): it is an error naming its
target. An ``https://`` URL is checked against ``DISTQ_TLS_CA_FILE`` (or the system's
CAs), with the client certificate of ``DISTQ_TLS_CERT_FILE`` if there is one, as the
broker is. The plugin refreshes its counts every 5 s by default
(``collect_statistics_interval``), so they lag by up to that much.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from distq.addresses import host_port
from distq.config import Settings
from distq.counts import counted
from distq.credentials import mask_url
from distq.errors import DistqError
from distq.tls import TlsFiles, failure

TIMEOUT_SECONDS = 2.0
RECORD_QUEUES = 500  # lease-record queues counted (one per worker connection holding one)
#: The next step a message about an answer that is not the management API's gives.
_IS_IT_THE_API = "; is that the management API's address, and does the API run?"


def _count(value: object) -> int:
    """A count of the API's answer: a whole number of 0 or more, else ``ValueError``."""
    if not isinstance(value, int | float | str):
        raise TypeError(f"a count of type {type(value).__name__}")
    count = int(value)
    if count < 0:
        raise ValueError(f"negative count {count}")
    return count


def _in_force(policies: list[dict[str, Any]], queue: str) -> dict[str, Any]:
    """The definition of the policy of ``policies`` (the API's list) that applies to the
    quorum queue ``queue``: of those for queues whose pattern matches its name, the one of
    highest priority; {} when none does. A pattern Python cannot read is passed over."""
    applies = []
    for policy in policies:
        if policy.get("apply-to", "all") not in ("all", "queues", "quorum_queues"):
            continue
        with contextlib.suppress(re.error):
            if re.search(str(policy.get("pattern", "")), queue):
                applies.append(policy)
    if not applies:
        return {}
    definition: dict[str, Any] = max(applies, key=lambda p: int(p.get("priority", 0)))["definition"]
    return definition


def default_delivery_limit(version: str | None) -> int | None:
    """The delivery limit RabbitMQ of ``version`` (as it says at connecting) applies to a
    quorum queue that nothing sets one for: 20 from 4.0, none before (nor for a version
    not said or not read)."""
    major = re.match(r"(\d+)\.", version or "")
    return 20 if major is not None and int(major[1]) >= 4 else None


def limit_in_force(found: list[Any], version: str | None) -> int | None:
    """A quorum queue's delivery limit from what its ``x-delivery-limit`` argument, its
    policy and its operator policy set (None: not set): the smallest (a negative one is
    none), or RabbitMQ ``version``'s default when none is set. ``ValueError`` or
    ``TypeError`` for a value that is no number."""
    limits = [int(value) for value in found if value is not None]
    if not limits:
        return default_delivery_limit(version)
    limits = [limit for limit in limits if limit >= 0]
    return min(limits) if limits else None


class ManagementError(DistqError):
    """The management API did not answer, refused us, or answered something unexpected."""


@dataclass(frozen=True)
class ManagedQueue:
    ready: int
    unacknowledged: int
    consumers: int
    #: messages in the queue's lease records (``<queue>.held.<consumer>``): tasks running
    #: past a lease, acknowledged on the task queue and held there instead
    held: int = 0

    @property
    def in_flight(self) -> int:
        return self.unacknowledged + self.held


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx stays an answer (an ``HTTPError``): urllib's own handler follows it to any
    host, the Authorization header with it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class ManagementApi:
    """Reads one queue's counts from RabbitMQ's management API; ``tls_files`` (the
    settings') check an ``https://`` one's certificate, as the broker's."""

    def __init__(
        self,
        url: str,
        amqp_url: str,
        queue: str,
        timeout: float = TIMEOUT_SECONDS,
        tls_files: TlsFiles | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.shown = mask_url(url)
        netloc = host_port(parts.hostname or "", parts.port)
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        import pika  # here, not at import: every command imports this module, few use it

        vhost = pika.URLParameters(amqp_url).virtual_host
        self.queue = queue
        self.vhost = vhost
        self.url = f"{base}/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}"
        # the vhost's policies and operator policies (see delivery_limit)
        self.policies_urls = [
            f"{base}/api/{kind}/{quote(vhost, safe='')}"
            for kind in ("policies", "operator-policies")
        ]
        # the lease records: one page of up to RECORD_QUEUES, their message counts only
        records = quote("^" + re.escape(f"{queue}.held."), safe="")
        self.records_url = (
            f"{base}/api/queues/{quote(vhost, safe='')}?page=1&page_size={RECORD_QUEUES}"
            f"&use_regex=true&name={records}&columns=name,messages"
        )
        self._where = f"RabbitMQ management API at {self.shown} (DISTQ_RABBITMQ_MANAGEMENT_URL)"
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        # no user of its own: the AMQP connection's, as pika logs in (guest without one);
        # that user without a password: its password, from the AMQP URL
        broker = pika.URLParameters(amqp_url).credentials
        if parts.username is None or (parts.password is None and user == broker.username):
            user, password = broker.username, broker.password
        credentials = f"{user}:{password}"
        self._headers = {
            "Accept": "application/json",
            "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
        }
        self.timeout = timeout
        self._late: threading.Thread | None = None  # a request still running past timeout
        # the API sits next to the broker: an HTTP(S)_PROXY of the environment is not the way
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.ProxyHandler({}),
            _NoRedirects(),
        ]
        if parts.scheme == "https" and tls_files:  # a private CA, a client certificate
            handlers.append(urllib.request.HTTPSHandler(context=tls_files.context()))
        self._opener = urllib.request.build_opener(*handlers)

    @classmethod
    def from_settings(cls, settings: Settings) -> ManagementApi | None:
        """The API of ``DISTQ_RABBITMQ_MANAGEMENT_URL`` for the settings' queue, with their
        TLS files; None when it is not set."""
        if not settings.rabbitmq_management_url:
            return None
        return cls(
            settings.rabbitmq_management_url,
            settings.amqp_url,
            settings.queue,
            tls_files=settings.tls_files,
        )

    def delivery_limit(self, version: str | None = None) -> int | None:
        """The queue's delivery limit if it is a quorum queue with one: the smallest of its
        ``x-delivery-limit`` argument, its policy's and its operator policy's
        ``delivery-limit`` (a negative one is none), or the default of RabbitMQ
        ``version`` when none is set (:func:`limit_in_force`); None otherwise.
        :class:`ManagementError` on any failure.

        The policies are read as they are and matched here (the one of highest priority
        whose pattern matches the queue's name, for queues): the queue's own document shows
        the policy in force only after the API's next statistics round, up to 5 s after the
        queue was declared, and a worker asks as it starts."""
        data = self._get(self.url)
        try:
            if data.get("type") != "quorum":
                return None
            found = [(data.get("arguments") or {}).get("x-delivery-limit")]
            for url in self.policies_urls:
                found.append(_in_force(self._get(url), self.queue).get("delivery-limit"))
            return limit_in_force(found, version)
        except (AttributeError, TypeError, ValueError, OverflowError):
            raise ManagementError(
                f"{self._where} answered an unexpected document{_IS_IT_THE_API}"
            ) from None

    def read(self) -> ManagedQueue:
        """The queue's counts; :class:`ManagementError` (naming the fix) on any failure."""
        data = self._get(self.url)
        try:
            queue = ManagedQueue(
                ready=_count(data.get("messages_ready", 0)),
                unacknowledged=_count(data.get("messages_unacknowledged", 0)),
                consumers=_count(data.get("consumers", 0)),
            )
        except (AttributeError, TypeError, ValueError, OverflowError):  # 1e400: OverflowError
            raise ManagementError(
                f"{self._where} answered an unexpected document{_IS_IT_THE_API}"
            ) from None
        page = self._get(self.records_url)
        prefix = f"{self.queue}.held."  # the API's name filter ignores case: JOBS.held.* too
        try:
            held = sum(
                _count(item.get("messages", 0))
                for item in page["items"]
                if str(item.get("name", "")).startswith(prefix)
            )
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
            raise ManagementError(
                f"{self._where} answered an unexpected page of queues{_IS_IT_THE_API}"
            ) from None
        return dataclasses.replace(queue, held=held)

    def _get(self, url: str) -> Any:
        """The JSON document at ``url``, within :attr:`timeout` in all: the socket's own
        timeout bounds each read only, and an API that trickled its answer a byte at a
        time held ``distq status`` and a master's queue-depth samples for good. The
        request runs on a thread of its own, left to end by itself if it is late; while
        it has not, the next request fails at once."""
        if self._late is not None and self._late.is_alive():
            raise ManagementError(
                f"{self._where} has not finished answering a request of over {self.timeout:g} s ago"
            )
        answer: list[tuple[bool, Any]] = []

        def fetch() -> None:
            try:
                answer.append((True, self._fetch(url)))
            except BaseException as exc:  # handed to the caller
                answer.append((False, exc))

        thread = threading.Thread(target=fetch, name="distq-management", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if not answer:
            self._late = thread
            raise ManagementError(f"{self._where} did not answer within {self.timeout:g} s")
        ok, value = answer[0]
        if not ok:
            raise value
        return value

    def _fetch(self, url: str) -> Any:
        where = self._where
        request = urllib.request.Request(url, headers=self._headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                data: Any = json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise ManagementError(
                    f"{where} refused the user (HTTP {exc.code}); check the user and password "
                    "and that the user has the 'monitoring' tag"
                ) from None
            if 300 <= exc.code < 400:
                target = exc.headers.get("Location") if exc.headers else None
                shown = "".join(c if c.isprintable() else "?" for c in urljoin(url, target or ""))
                to = f" to {mask_url(shown)}" if target else ""  # cut past 300 by mask_url
                raise ManagementError(
                    f"{where} answered a redirect (HTTP {exc.code}){to}, which is not followed "
                    "(the password would go with it); point DISTQ_RABBITMQ_MANAGEMENT_URL at "
                    "the API itself"
                ) from None
            if exc.code == 404:
                raise ManagementError(
                    f"{where} has no queue {self.queue!r} in vhost {self.vhost!r} (HTTP 404)"
                ) from None
            raise ManagementError(f"{where} answered HTTP {exc.code}{_IS_IT_THE_API}") from None
        except http.client.HTTPException as exc:  # BadStatusLine, IncompleteRead, ...
            raise ManagementError(
                f"{where} answered a broken HTTP response ({type(exc).__name__}); is "
                "DISTQ_RABBITMQ_MANAGEMENT_URL the management API's address?"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, BaseException) and (problem := failure(reason)):
                raise ManagementError(problem.line(f"the {where}")) from None
            raise ManagementError(f"cannot reach the {where}: {reason}") from None
        except ValueError as exc:
            raise ManagementError(f"{where} answered something that is not JSON: {exc}") from None
        return data


def delivery_limit_warning(
    settings: Settings, concurrency: int, version: str | None = None
) -> str | None:
    """A worker's warning when its task queue is a RabbitMQ quorum queue whose delivery
    limit the worker's own crash can reach: RabbitMQ before 4.3 counts a delivery for each
    consumer connection that goes down holding a message, and passes a message one of
    them returned to another going down with it, before it has seen that one go. A worker
    has a connection per slot, so its crash (or a network cut) counts a task it ran up to
    ``concurrency`` times: a limit below that dead-lettered such tasks, though each ran
    once and its result came, and one of that does if a consumer's cancel
    counted the task once before (see the README). None when the limit is above, or unknown
    (no ``DISTQ_RABBITMQ_MANAGEMENT_URL``, which AMQP cannot replace: it has no way to read
    a policy). ``version``: RabbitMQ's, whose default applies where nothing sets a limit."""
    api = ManagementApi.from_settings(settings) if settings.transport == "rabbitmq" else None
    if api is None:
        return None
    try:
        limit = api.delivery_limit(version)
    except ManagementError as exc:
        return f"warning: could not check the delivery-limit of queue {settings.queue!r}: {exc}"
    return limit_warning(settings.queue, limit, concurrency, version)


def limit_warning(
    queue: str, limit: int | None, concurrency: int, version: str | None
) -> str | None:
    """:func:`delivery_limit_warning`'s line for a quorum queue ``queue`` whose limit in
    force is ``limit`` (None: none), on RabbitMQ ``version``."""
    if limit is None or limit > concurrency:
        return None
    default = default_delivery_limit(version)
    whose = f" (RabbitMQ {version}'s default where nothing sets one)" if limit == default else ""
    slots = counted(concurrency, "slot")
    each = "" if concurrency == 1 else "each "  # "1 slot (...), each on" spoke of several
    return (
        f"warning: RabbitMQ quorum queue {queue!r} has a delivery-limit of {limit}{whose}, "
        f"and this worker {slots} (--concurrency {concurrency}), {each}on a connection of its "
        "own: RabbitMQ before 4.3 counts a delivery for each connection lost holding a "
        "task, so a crash of this worker or a network cut can dead-letter tasks it ran. "
        "Set the queue's delivery-limit (a policy) "
        f"to at least {concurrency + 1}, and above the slots of all workers that can lose "
        "their connections at once (README: Long tasks on RabbitMQ)"
    )
