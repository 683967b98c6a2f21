"""Exceptions as text: what a log line, a dead letter or an error result says of one.

Any exception, whatever its ``__str__`` does (raises, returns text that is not UTF-8,
or megabytes of it): :func:`describe` is ``Type: message``, cut to
:data:`MAX_MESSAGE_CHARS`; :func:`traceback_text` is its traceback, cut in the middle
to :data:`MAX_TRACEBACK_CHARS`. The worker's endings (:mod:`distq.ending`), its lines
and the task registry's errors say exceptions so.
"""

from __future__ import annotations

import traceback

from distq.counts import counted

#: Longest traceback text an error result carries; longer ones keep their start and end.
MAX_TRACEBACK_CHARS = 8000
#: Longest exception message a reason (log line, dead letter, error result) carries;
#: longer ones keep their start. A 5 MB message made a dead letter over the broker's
#: max_message_size, refused, and the task ran again for good.
MAX_MESSAGE_CHARS = 4000


def traceback_text(error: BaseException, limit: int = MAX_TRACEBACK_CHARS) -> str:
    """``error``'s traceback as Python prints it; over ``limit`` characters, its first
    and last halves: the frames where it began, and the innermost with the message (the
    end alone was only the message, when that was long)."""
    try:
        text = printable("".join(traceback.format_exception(error)))
    except Exception:  # a __notes__ (of it or one it chains) that raises when read
        frames = "".join(traceback.format_tb(error.__traceback__))
        text = printable(f"Traceback (most recent call last):\n{frames}{describe(error)}\n")
    if len(text) > limit:
        half = limit // 2
        said = counted(len(text) - 2 * half, "character")
        text = f"{text[:half]}\n... ({said} cut)\n{text[-half:]}"
    return text


def cut(text: str) -> str:
    """``text`` cut to :data:`MAX_MESSAGE_CHARS`, saying how much was cut: how an error's
    message, a wrong value and a ``Get task`` line are kept short."""
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    said = counted(len(text) - MAX_MESSAGE_CHARS, "character")
    return f"{text[:MAX_MESSAGE_CHARS]}... ({said} cut)"


def describe(error: BaseException) -> str:
    """``Type: message`` of ``error``, whatever its ``__str__`` does (raises, returns text
    that is not UTF-8), as text any log or envelope can carry."""
    text = cut(message(error))
    return printable(f"{type(error).__name__}: {text}" if text else type(error).__name__)


def message(error: BaseException) -> str:
    """``str(error)``, or a placeholder when its ``__str__`` raises (even ``SystemExit``)
    or the int it holds is too long to print."""
    try:
        return str(error)
    except BaseException:
        return "<exception str() failed>"


def printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry (unpaired surrogates) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
