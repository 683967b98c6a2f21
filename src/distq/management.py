"""RabbitMQ's management HTTP API, for the one count AMQP cannot tell: unacknowledged tasks.

The count is of messages, and a message carries 1 to 32 tasks (a master packs a large
submit, see :mod:`distq.transport.rabbitmq_packs`); lease records hold one task each.

``DISTQ_RABBITMQ_MANAGEMENT_URL=http://USER:PASSWORD@HOST:15672`` (the management
plugin's listener). Two GETs per sample, ``/api/queues/{vhost}/{queue}`` and one page
of the queue's lease records (``<queue>.held.*``: tasks running past a lease are
acknowledged on the task queue and held there, see :mod:`distq.transport.rabbitmq_holds`),
each with a short timeout, no proxy, credentials in the Authorization header only: the
password is never part of a URL that is printed. A redirect is not followed (the API
never answers one, and the password would go wherever it points, in clear if to
``http://``): it is an error naming its target. An ``https://`` URL is checked against
``DISTQ_TLS_CA_FILE`` (or the system's CAs), with the client certificate of
``DISTQ_TLS_CERT_FILE`` if there is one, as the broker is. The plugin refreshes its
counts every 5 s by default (``collect_statistics_interval``), so they lag by up to that
much.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

import pika

from distq.config import Settings, host_port
from distq.credentials import mask_url
from distq.errors import DistqError
from distq.tls import TlsFiles, failure

TIMEOUT_SECONDS = 2.0
RECORD_QUEUES = 500  # lease-record queues counted (one per worker connection holding one)


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
        vhost = pika.URLParameters(amqp_url).virtual_host
        self.queue = queue
        self.vhost = vhost
        self.url = f"{base}/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}"
        # the lease records: one page of up to RECORD_QUEUES, their message counts only
        records = quote("^" + re.escape(f"{queue}.held."), safe="")
        self.records_url = (
            f"{base}/api/queues/{quote(vhost, safe='')}?page=1&page_size={RECORD_QUEUES}"
            f"&use_regex=true&name={records}&columns=name,messages"
        )
        self._where = f"RabbitMQ management API at {self.shown} (DISTQ_RABBITMQ_MANAGEMENT_URL)"
        credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        self._headers = {
            "Accept": "application/json",
            "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
        }
        self.timeout = timeout
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

    def read(self) -> ManagedQueue:
        """The queue's counts; :class:`ManagementError` (naming the fix) on any failure."""
        data = self._get(self.url)
        try:
            queue = ManagedQueue(
                ready=int(data.get("messages_ready", 0)),
                unacknowledged=int(data.get("messages_unacknowledged", 0)),
                consumers=int(data.get("consumers", 0)),
            )
        except (AttributeError, TypeError, ValueError):
            raise ManagementError(f"{self._where} answered an unexpected document") from None
        page = self._get(self.records_url)
        try:
            held = sum(int(item.get("messages", 0)) for item in page["items"])
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ManagementError(f"{self._where} answered an unexpected page of queues") from None
        return dataclasses.replace(queue, held=held)

    def _get(self, url: str) -> Any:
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
                to = f" to {mask_url(shown)[:300]}" if target else ""
                raise ManagementError(
                    f"{where} answered a redirect (HTTP {exc.code}){to}, which is not followed "
                    "(the password would go with it); point DISTQ_RABBITMQ_MANAGEMENT_URL at "
                    "the API itself"
                ) from None
            if exc.code == 404:
                raise ManagementError(
                    f"{where} has no queue {self.queue!r} in vhost {self.vhost!r} (HTTP 404)"
                ) from None
            raise ManagementError(f"{where} answered HTTP {exc.code}") from None
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
