"""The signals that stop a master or a worker."""

from __future__ import annotations

import signal


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, SIGINT and SIGHUP: each stops a master or worker the same way.

    SIGHUP is what a process gets when its terminal closes (an SSH session that drops):
    unhandled, it ended a worker at once, its tasks back only when their leases lapsed,
    and a master without its report. It is left alone when it is ignored, as
    ``nohup distq worker`` asks: such a process is meant to outlive its terminal.
    """
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        return (signal.SIGTERM, signal.SIGINT)
    return (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
