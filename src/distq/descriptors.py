"""File descriptors a worker's slots need, against the process's ``ulimit -n``.

Each Redis or RabbitMQ slot has its own connection: a RabbitMQ slot holds about four
descriptors (13 open with one slot, 41 with 8, 73 with 16), a Redis slot one (32 slots
fit in 40, not in 30), manager slots fewer (64 fit in 64, 256 not in 128). A slot
that could not open one failed as if the broker were away ("Too many open files; is it
running?"), retried for ever, and kept ``--exit-when-idle`` from ending the worker; its
retries took every descriptor that came free, so the metrics endpoint could not accept
a probe (``/healthz`` unanswered: a container marked unhealthy, a pod restarted). A
worker whose hard limit is too low for its slots does not start.
"""

from __future__ import annotations

import contextlib
import os
import resource

#: Descriptors per slot, by transport; the transport's own connection (RabbitMQ: about
#: 4, so 41 with 8 slots); and for the rest of the process beyond those open at start
#: (the metrics endpoint and a probe or scrape it serves, a report file).
PER_SLOT, OWN, MARGIN = {"rabbitmq": 4, "redis": 1, "manager": 1}, {"rabbitmq": 4}, 2
#: What a connection that failed for want of a descriptor says to do.
HINT = "this process is out of file descriptors (ulimit -n): raise it, or lower --concurrency"


def out_of_descriptors(error: object) -> bool:
    """Whether ``error`` (an exception, or its text) is EMFILE or ENFILE."""
    text = str(error)
    return "Too many open files" in text or "[Errno 24]" in text or "[Errno 23]" in text


def open_now() -> int:
    """How many descriptors this process has open (12, when it cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 12


def room_for(concurrency: int, transport: str) -> str | None:
    """Raise the soft limit on open files as far as ``concurrency`` slots need (up to
    the hard limit, as any process may); what to tell the user when even that is too
    low (the worker then does not start: a configuration error)."""
    per_slot, others = PER_SLOT.get(transport, 4), open_now() + OWN.get(transport, 1) + MARGIN
    need = others + per_slot * concurrency
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None
    wanted = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if wanted > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    if soft >= need:
        return None
    fit = max(0, (soft - others) // per_slot)
    return (
        f"--concurrency {concurrency} needs about {need} open files and this process may "
        f"have {soft} (ulimit -n; its hard limit: {hard}): lower --concurrency to {fit} "
        "or less, or raise the hard limit (docker run --ulimit nofile=N, a pod's or "
        "service's LimitNOFILE)"
    )
