"""What may travel as a task's arguments: JSON values, checked before anything is sent.

``json`` would turn some Python values into something else silently (a dict's integer
keys into strings) and refuse others only at encoding time, deep in a batch; NaN and
infinity are not JSON at all. :func:`check_arguments` names the first argument that is
not a JSON value, and where inside it, so the caller can fix that call.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from distq.limits import MAX_NESTING

#: Deepest nesting accepted (a cycle is refused as too deep): what fits in a task's
#: envelope, whose object and ``args`` (or ``kwargs``) take two of its levels.
MAX_DEPTH = MAX_NESTING - 2
#: The same in a chunk (``Executor.map(chunksize=N)``), whose ``[name, [call, ...]]``
#: takes two more levels of the envelope.
MAX_CHUNK_DEPTH = MAX_DEPTH - 2

# an int this long or shorter has fewer digits than Python's int-to-text limit allows
_SAFE_INT_BITS = 14_000


# where a value sits inside an argument: (parent link, key), formatted only on error
_Link = tuple[Any, Any] | None


def _where(name: str, link: _Link) -> str:
    keys: list[Any] = []
    while link is not None:
        link, key = link
        keys.append(key)
    keys.reverse()
    shown = "".join(f"[{_key(key)}]" for key in keys[:8])
    return name + shown + ("[...]" if len(keys) > 8 else "")


def _key(key: Any) -> str:
    """A dict key or list index as an error line shows it: short, whatever it is (a
    100 KB key made a 100 KB line; an int past the digit limit, or an object whose repr
    raises, has no repr)."""
    if isinstance(key, str):
        return quoted_ends(key)
    try:
        text = repr(key)
    except Exception:  # an int past the digit limit; an object whose repr raises
        return f"<{type(key).__name__}>"
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text):,} characters)"


def _unsendable(item: str | int) -> str | None:
    """Why a string or an integer cannot be written as JSON text, or None: a lone
    surrogate has no UTF-8, and Python writes no int longer than its digit limit."""
    if isinstance(item, str):
        if item.isascii():
            return None
        try:
            item.encode()
        except UnicodeEncodeError as exc:
            lone = item[exc.start]
            # what Python makes of a byte that is not UTF-8 in argv or a file it decoded
            # with surrogateescape: said as that byte (input17)
            byte = (
                f" (the byte 0x{ord(lone) - 0xDC00:02X}, not UTF-8: give it in UTF-8)"
                if "\udc80" <= lone <= "\udcff"
                else ""
            )
            return (
                f"holds the unpaired surrogate {lone!r} at index {exc.start}{byte}, "
                "which UTF-8, and so the wire, cannot carry"
            )
        return None
    if item.bit_length() <= _SAFE_INT_BITS:
        return None
    try:
        str(int(item))
    except ValueError:
        return (
            f"is an integer of more than {sys.get_int_max_str_digits():,} digits, Python's "
            "limit for writing it as text; send it as a string"
        )
    return None


def problem(value: Any, name: str, max_depth: int = MAX_DEPTH) -> str | None:
    """Why ``value`` (the argument ``name``) is not a JSON value, or None when it is one.

    JSON values: None, booleans, integers, finite floats, strings (with no lone
    surrogate), lists (tuples are sent as lists) and dicts with string keys, nested at
    most ``max_depth`` deep (an argument's :data:`MAX_DEPTH`, by default).
    """
    stack: list[tuple[Any, _Link, int]] = [(value, None, 0)]
    while stack:
        item, link, depth = stack.pop()
        kind = type(item)
        if (kind is str and item.isascii()) or kind is bool or item is None:
            continue  # the common cases first
        if kind is int and item.bit_length() <= _SAFE_INT_BITS:
            continue
        if isinstance(item, (str, int)):  # subclasses too: str and IntEnum members
            why = _unsendable(item)
            if why is not None:
                return f"{_where(name, link)} {why}"
            continue
        if isinstance(item, float):
            if math.isfinite(item):
                continue
            return f"{_where(name, link)} is {item!r}, which JSON cannot carry"
        if depth >= max_depth:
            where = _where(name, link)
            return f"{where} is nested more than {max_depth} levels deep (or contains itself)"
        if isinstance(item, (list, tuple)):
            stack.extend((x, (link, i), depth + 1) for i, x in enumerate(item))
            continue
        if isinstance(item, dict):
            for key, x in item.items():
                if not isinstance(key, str):
                    where = _where(name, link)
                    return f"{where} has the key {_key(key)}; JSON object keys are strings"
                why = _unsendable(key)
                if why is not None:
                    return f"{_where(name, link)} has a key that {why}"
                stack.append((x, (link, key), depth + 1))
            continue
        module = kind.__module__
        shown = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
        return f"{_where(name, link)} is of type {shown}"
    return None


def check_arguments(
    task: str, args: Sequence[Any], kwargs: Mapping[str, Any], max_depth: int = MAX_DEPTH
) -> None:
    """Raise ``TypeError`` naming the first argument of a call of ``task`` that is not a
    JSON value (see :func:`problem`; nested at most ``max_depth`` deep), or naming
    ``task`` itself if the wire cannot carry it (bytes from a shell that are not UTF-8:
    an encoder's traceback before)."""
    why = _unsendable(task) if isinstance(task, str) else None
    if why:
        raise TypeError(f"the task name {quoted_ends(task)} {why}; name a task the workers run")
    for index, value in enumerate(args):
        kind = type(value)
        if (kind is str and value.isascii()) or (kind is int and value.bit_length() < 64):
            continue  # the common cases, without the walk
        found = problem(value, f"argument {index + 1}", max_depth)
        if found is not None:
            raise TypeError(f"{_named(task)}: {found}; {_ALLOWED}")
    for key, value in kwargs.items():
        why = _unsendable(key)
        shown = _key(key)
        found = (
            f"the keyword {shown} {why}"
            if why
            else problem(value, f"keyword argument {shown}", max_depth)
        )
        if found is not None:
            raise TypeError(f"{_named(task)}: {found}; {_ALLOWED}")


def quoted_ends(text: str) -> str:
    """``text`` quoted for an error line: its ends only, and its length, when long (a
    100 KB name or value made a 100 KB line)."""
    if len(text) <= 40:
        return repr(text)
    return f"{f'{text[:20]}...{text[-10:]}'!r} ({len(text):,} characters)"


def _named(task: str) -> str:
    return task if len(task) <= 40 else quoted_ends(task)


_ALLOWED = (
    "task arguments must be JSON values (None, bool, int, finite float, str, "
    "lists and dicts with string keys)"
)
