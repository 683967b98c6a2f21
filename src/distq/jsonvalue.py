"""What may travel as a task's arguments: JSON values, checked before anything is sent.

``json`` would turn some Python values into something else silently (a dict's integer
keys into strings) and refuse others only at encoding time, deep in a batch; NaN and
infinity are not JSON at all. :func:`check_arguments` names the first argument that is
not a JSON value, and where inside it, so the caller can fix that call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Deepest nesting accepted (a cycle is refused as too deep).
MAX_DEPTH = 100

_SCALARS = frozenset({str, int, bool, type(None)})


# where a value sits inside an argument: (parent link, key), formatted only on error
_Link = tuple[Any, Any] | None


def _where(name: str, link: _Link) -> str:
    keys: list[Any] = []
    while link is not None:
        link, key = link
        keys.append(key)
    keys.reverse()
    shown = "".join(f"[{key!r}]" for key in keys[:8])
    return name + shown + ("[...]" if len(keys) > 8 else "")


def problem(value: Any, name: str) -> str | None:
    """Why ``value`` (the argument ``name``) is not a JSON value, or None when it is one.

    JSON values: None, booleans, integers, finite floats, strings, lists (tuples are sent
    as lists) and dicts with string keys, nested at most :data:`MAX_DEPTH` deep.
    """
    stack: list[tuple[Any, _Link, int]] = [(value, None, 0)]
    while stack:
        item, link, depth = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if isinstance(item, float):
            if math.isfinite(item):
                continue
            return f"{_where(name, link)} is {item!r}, which JSON cannot carry"
        if isinstance(item, (str, int)):  # subclasses: str and IntEnum members, for example
            continue
        if depth >= MAX_DEPTH:
            where = _where(name, link)
            return f"{where} is nested more than {MAX_DEPTH} levels deep (or contains itself)"
        if isinstance(item, (list, tuple)):
            stack.extend((x, (link, i), depth + 1) for i, x in enumerate(item))
            continue
        if isinstance(item, dict):
            for key, x in item.items():
                if not isinstance(key, str):
                    return f"{_where(name, link)} has the key {key!r}; JSON object keys are strings"
                stack.append((x, (link, key), depth + 1))
            continue
        module = kind.__module__
        shown = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
        return f"{_where(name, link)} is of type {shown}"
    return None


def check_arguments(task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` naming the first argument of a call of ``task`` that is not a
    JSON value (see :func:`problem`)."""
    for index, value in enumerate(args):
        if type(value) in _SCALARS:
            continue  # the common case, without the walk
        found = problem(value, f"argument {index + 1}")
        if found is not None:
            raise TypeError(f"{task}: {found}; {_ALLOWED}")
    for key, value in kwargs.items():
        found = problem(value, f"keyword argument {key!r}")
        if found is not None:
            raise TypeError(f"{task}: {found}; {_ALLOWED}")


_ALLOWED = (
    "task arguments must be JSON values (None, bool, int, finite float, str, "
    "lists and dicts with string keys)"
)
