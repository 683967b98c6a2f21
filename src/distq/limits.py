"""Limits on what a message may be: its size in bytes and how deeply its JSON nests.

The size limit (``DISTQ_MAX_MESSAGE_BYTES``) is checked before anything else looks at a
body, so a huge message is refused without being decoded. The nesting limit is checked
before the JSON parser runs, so no message can drive the parser's recursion to its end.
"""

from __future__ import annotations

import re
import unicodedata
from array import array
from itertools import accumulate

from distq.errors import MessageTooLarge, NestedTooDeep

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB
MIN_MESSAGE_BYTES = 1024
MAX_MESSAGE_BYTES = 128 << 20  # RabbitMQ's own default ceiling
#: Deepest JSON nesting of a whole message; the envelope itself is one level.
MAX_NESTING = 64
#: Most tasks a worker slot takes at once (DISTQ_PREFETCH's ceiling), and so most results
#: one of its messages packs: a pack of more is no worker's.
MAX_PREFETCH = 10_000
#: A dead letter of an oversized message keeps this much of its body.
OVERSIZED_KEPT_BYTES = 64 << 10
#: Most bytes (UTF-8) of a task's id and of a worker's name. A result over its reader's
#: DISTQ_MAX_MESSAGE_BYTES is answered by its head (both names), looked for in its first
#: OVERSIZED_KEPT_BYTES only: longer, it was dropped, its master waiting to its timeout.
MAX_NAME_BYTES = 4096
assert 2 * 6 * MAX_NAME_BYTES + 256 < OVERSIZED_KEPT_BYTES  # each JSON-escaped, 6 a byte


def worker_name_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a worker's name (None: nothing), the one check of
    ``--worker-id`` and of :class:`~distq.worker.WorkerOptions`' ``worker_id``: text, in
    UTF-8 (a byte that is not becomes a lone surrogate, which no broker protocol sends:
    a worker so named reconnected, its job never run), on one line, and at most
    ``MAX_NAME_BYTES`` (it rides in each result, found by its head)."""
    if not isinstance(name, str):
        return f"must be text, not {type(name).__name__}"
    try:
        size = len(name.encode())
    except UnicodeEncodeError as exc:
        return (
            f"{name[:40]!r} holds bytes that are not UTF-8 (at {exc.start}); give it in "
            "UTF-8, or set a UTF-8 locale"
        )
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        return f"{name[:40]!r} is not a name: use text on one line, without control characters"
    if size <= MAX_NAME_BYTES:
        return None
    return (
        f"{name[:40]!r}... is {size:,} bytes, over the {MAX_NAME_BYTES:,} a worker name may "
        "be: give a shorter name"
    )


_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # linear: no backtracking, unlike a string regex
_STRING = re.compile(rb'"[^"]*"')  # once escapes are gone, a string is quote, non-quotes, quote
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as signed bytes: +1, +1, -1, -1
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def check_size(body: bytes, limit: int, kind: str) -> None:
    """Raise :class:`MessageTooLarge` when ``body`` is over ``limit`` bytes."""
    if len(body) > limit:
        raise MessageTooLarge(
            f"{kind} is {len(body):,} bytes, over the limit of {limit:,} "
            "(DISTQ_MAX_MESSAGE_BYTES); it was not decoded"
        )


def check_nesting(data: bytes, kind: str) -> None:
    """Raise :class:`MessageTooLarge` when the JSON in ``data`` nests over ``MAX_NESTING``.

    One count of the opening brackets for an ordinary message. Otherwise one linear pass in
    C over the brackets outside strings: the parser would recurse once per unclosed bracket.
    """
    if len(data) - len(data.translate(None, b"[{")) <= MAX_NESTING:  # one pass; 2 counts: 2
        return
    outside_strings = _STRING.sub(b"", _ESCAPE.sub(b"", data))
    steps = array("b", outside_strings.translate(_STEP, _NOT_BRACKETS))  # +1 open, -1 close
    if max(accumulate(steps), default=0) > MAX_NESTING:
        raise NestedTooDeep(f"{kind} nests JSON deeper than {MAX_NESTING} levels")
