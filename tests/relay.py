"""Test helper: a TCP relay whose connections can go silent, as a vanished peer's."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit


class SilentRelay:
    """A TCP relay on 127.0.0.1 (to a manager master, a Redis) whose connections open
    now can be made silent (:meth:`silence`): nothing passes either way, and nothing
    closes, as with a peer that vanished (a NAT's or a proxy's state lost, a host gone)
    with no RST. Connections made after pass."""

    def __init__(self, to: tuple[str, int]) -> None:
        self._to = to
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.address = ("127.0.0.1", self._listener.getsockname()[1])
        self._silent: set[socket.socket] = set()
        self._open: list[socket.socket] = []
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()
        self.url = ""  # set by to_url

    @classmethod
    def to_url(cls, url: str) -> SilentRelay:
        """A relay to the server of ``url`` (``redis://127.0.0.1:PORT/...``); its ``url``
        names the relay instead."""
        parts = urlsplit(url)
        to = (parts.hostname or "127.0.0.1", parts.port or 6379)
        relay = cls(to)
        netloc = parts.netloc.replace(f":{to[1]}", f":{relay.address[1]}")
        relay.url = parts._replace(netloc=netloc).geturl()
        return relay

    def _accept(self) -> None:
        while not self._done.is_set():
            try:
                near, _ = self._listener.accept()
            except TimeoutError:
                continue
            far = socket.create_connection(self._to)
            self._open += [near, far]
            for a, b in ((near, far), (far, near)):
                thread = threading.Thread(target=self._pump, args=(a, b, near), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket, near: socket.socket) -> None:
        src.settimeout(0.1)
        while not self._done.is_set():
            if near in self._silent:
                time.sleep(0.05)
                continue
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data or near in self._silent:
                return  # data read from a silent link is dropped, as on the way
            with contextlib.suppress(OSError):
                dst.sendall(data)

    def silence(self) -> None:
        """Nothing passes on the connections open now, from now on."""
        self._silent.update(s for s in self._open[::2])

    def deliver_held(self, within: float = 5.0, first: bytes = b"") -> int:
        """What the clients of the silent connections sent meanwhile reaches the server
        now, as on a partition that heals late (a retransmission after others went by on
        new connections); returns once the server answered each (the answer is dropped),
        or after ``within`` s. The connections stay silent. Returns how many delivered.
        ``first``: bytes sent just before the held ones, in the same write (a command of
        the test's, which the server then runs right before them)."""
        delivered = 0
        for near, far in zip(self._open[::2], self._open[1::2], strict=True):
            if near not in self._silent:
                continue
            held = b""
            near.settimeout(0.1)
            with contextlib.suppress(OSError):
                while chunk := near.recv(65536):
                    held += chunk
            if held:
                far.settimeout(within)
                far.sendall(first + held)
                far.recv(65536)
                delivered += 1
        return delivered

    def close(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(5)
        for sock in [self._listener, *self._open]:
            sock.close()
