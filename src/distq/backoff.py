"""Waiting between reconnection attempts, and telling the operator about an outage once.

:class:`Backoff` is capped exponential backoff with full jitter (the delay is drawn
uniformly from zero to the current cap), so that many workers cut off by one broker
restart do not all knock again in the same instant. :class:`Outage` turns the attempts
of several threads into two lines: one when the broker is lost, one when it is back.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable

from distq.errors import AuthenticationFailed

#: First cap, and the largest: 0.1 s, 0.2 s, 0.4 s ... 5 s.
BASE_SECONDS = 0.1
CAP_SECONDS = 5.0


class Backoff:
    """Delays before the next attempt: random up to ``base * 2**n``, capped at ``cap``."""

    def __init__(
        self,
        base: float = BASE_SECONDS,
        cap: float = CAP_SECONDS,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base, self.cap, self._rng = base, cap, rng
        self.attempts = 0
        self._reconnected = -math.inf  # when the last reconnect went through (a clock's)

    def next(self) -> float:
        """The delay before the next attempt (seconds); each call doubles the ceiling."""
        ceiling = min(self.cap, self.base * 2**self.attempts)
        self.attempts = min(self.attempts + 1, 62)  # 2**62 s is past any cap
        return float(ceiling * self._rng())

    def reset(self) -> None:
        """An attempt succeeded: start again from ``base``."""
        self.attempts = 0

    def reconnected(self, now: float) -> None:
        """A reconnect went through at ``now``: the delays go on growing until
        :meth:`through` says the calls after it went through for a while."""
        self._reconnected = now

    def through(self, now: float) -> bool:
        """The calls went through at ``now`` (on :meth:`reconnected`'s clock): whether they
        have for ``cap`` seconds since the reconnect, which ends the outage and starts the
        delays again from ``base``. Not at the first call through: a broker that takes the
        reconnect but refuses the calls may say so a call or a few later (a RabbitMQ nack
        read after one result), and each cycle started again from 0.1 s."""
        if now - self._reconnected < self.cap:
            return False
        self.attempts = 0
        return True


class Outage:
    """One broker outage as seen by all of a process's threads: a start and an end.

    :meth:`lost` returns True for the first thread to report the outage (it prints the
    line), :meth:`back` returns the outage's length to the first thread to reconnect
    (it prints that line) and None to the others. Thread-safe.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._refusal = ""  # the refusal last said in this outage

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def lost(self, exc: Exception | None = None) -> bool:
        """True for the first thread to report the outage, ``exc`` its cause: it says it
        (a refusal of the credentials among them, not said again by :meth:`refused`)."""
        with self._lock:
            if self._since is not None:
                return False
            self._since, self._refusal = self._clock(), _refusal(exc)
            return True

    def refused(self, exc: Exception) -> str | None:
        """The line to print when ``exc``, met while reconnecting, is the broker refusing
        the credentials, for the first thread to see that refusal in this outage (None
        otherwise): a broker that came back with another password, key or certificate is
        said once, not retried in silence. Thread-safe."""
        reason = _refusal(exc)
        if not reason:
            return None
        with self._lock:
            if self._since is None or reason == self._refusal:
                return None
            self._refusal = reason
        return f"{reason}; still reconnecting, with these credentials"

    def back(self) -> float | None:
        with self._lock:
            if self._since is None:
                return None
            lasted, self._since, self._refusal = self._clock() - self._since, None, ""
            return lasted


def _refusal(exc: Exception | None) -> str:
    """The reason in ``exc`` if it is the broker refusing the credentials, else ""."""
    return str(exc).rstrip(".") if isinstance(exc, AuthenticationFailed) else ""
