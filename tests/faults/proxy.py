"""A TCP proxy on 127.0.0.1 that can cut its connections off, as a network partition does.

Put it between a worker and its broker (or manager master): the worker connects to
``proxy.port``, the proxy to ``target_port``. :meth:`Partition.cut` stops relaying in
both directions without closing anything: bytes wait in the kernel's buffers, as they do
when a network drops packets and TCP keeps retransmitting; new connections wait unanswered
in the listen backlog. :meth:`Partition.heal` relays again, in order, so nothing is lost
or corrupted: whoever gave up meanwhile (a timeout, a heartbeat) finds out then, as over
a real network. Traffic stays on loopback; the relay threads end with :meth:`close`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

_HOST = "127.0.0.1"
_CHUNK = 65536


class Partition:
    """A loopback proxy to ``target_port`` that :meth:`cut` partitions and :meth:`heal` heals."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server((_HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()  # set: relaying; clear: cut off
        self._open.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True, name="partition")]
        self._threads[0].start()

    def cut(self) -> None:
        """Relay nothing more, close nothing: a partition."""
        self._open.clear()

    def heal(self) -> None:
        """Relay again everything that waited."""
        self._open.set()

    def through(self, url: str) -> str:
        """``url`` (its broker's) with this proxy's address in place of the broker's."""
        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{user}@{_HOST}:{self.port}".lstrip("@")))

    def reset(self) -> None:
        """Cut every connection open through it (both ends see it closed); connections
        made after pass."""
        with self._lock:
            opened = list(self._sockets)
            self._sockets.clear()
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close every connection and the listener; the relay threads end."""
        self._closed.set()
        self._open.set()
        with self._lock:
            for sock in [self._listener, *self._sockets]:
                with contextlib.suppress(OSError):
                    sock.close()
        for thread in list(self._threads):
            thread.join(5)

    def __enter__(self) -> Partition:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            self._open.wait()
            try:
                readable, _, _ = select.select([self._listener], [], [], 0.1)
            except (OSError, ValueError):  # closed under it (fileno -1): the proxy ends
                return
            if not readable or not self._open.is_set() or self._closed.is_set():
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection((_HOST, self.target_port), timeout=5)
            except OSError:  # nothing listens there: refused, as it would be directly
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            thread = threading.Thread(
                target=self._relay, args=(client, upstream), daemon=True, name="partition-relay"
            )
            self._threads.append(thread)
            thread.start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while not self._closed.is_set():
                self._open.wait()
                readable, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in readable:
                    if not self._open.is_set():
                        break  # cut while waiting: leave the bytes in the kernel
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # ValueError: closed under select() by close()
            return
        finally:
            for sock in peers:
                with contextlib.suppress(OSError):
                    sock.close()
