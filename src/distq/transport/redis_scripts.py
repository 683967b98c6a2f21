"""The Redis transport's Lua scripts, as the transport sends them to Redis.

Each script is a file of ``redis_lua/`` (package data), which starts with a comment that
says what KEYS and ARGV it takes and what it returns; that comment stays here, and Redis
gets the rest of the file, from the blank line after it. ``prelude.lua`` holds what the
scripts share (the time, pushes in chunks, the sweep): :func:`source` puts before each
script that takes it the definitions it uses, with the constants below filled in where it
names them in braces, and puts :data:`ALLOW_OOM` first if this Redis takes it. The files
are read once, when this module is imported: one missing fails the import.

How the transport uses the scripts, and the keys they touch: :mod:`distq.transport.redis`.
"""

from __future__ import annotations

import re
from importlib import resources

#: A master's result list outlives its master's deadline by this much (ms).
REPLY_GRACE_MS = 60_000
#: How long the time of the last sweep is kept (ms): after a longer silence, every lease
#: that ran out in it is swept as ever.
CLOCK_KEPT_MS = 3_600_000
#: How far apart sweeps write their time at most (ms; an eighth of a shorter lease):
#: each reads it.
CLOCK_STEP_MS = 100
#: How long the shortest lease a sweep's caller had counts (ms), once none has it.
SHORTEST_KEPT_MS = 60_000
#: How far from each end of the ready list a late settle looks for the copy its lapsed
#: lease sent back.
COPY_LOOK = 1000
#: About how many bytes of tasks one claim takes (one task at least, however large): a
#: prefetch of 128 tasks of 1 MB was 128 MB held by Redis's Lua and again in its reply to
#: each worker, past any ``maxmemory`` (checked only before a command), and the shipped
#: Redis (512 MiB) was OOM-killed by a job of 200 such tasks (k8s17).
CLAIM_BYTES = 4 << 20

#: The constants the scripts name in braces (``{CLAIM_BYTES}``), by name.
CONSTANTS: dict[str, int] = {
    "REPLY_GRACE_MS": REPLY_GRACE_MS,
    "CLOCK_KEPT_MS": CLOCK_KEPT_MS,
    "CLOCK_STEP_MS": CLOCK_STEP_MS,
    "SHORTEST_KEPT_MS": SHORTEST_KEPT_MS,
    "COPY_LOOK": COPY_LOOK,
    "CLAIM_BYTES": CLAIM_BYTES,
}

#: The first line of a script Redis 7 may run when it is full (``maxmemory`` reached,
#: ``noeviction``); Redis 6.2 knows no such line (its Lua reads it as an error).
ALLOW_OOM = "#!lua flags=allow-oom\n"

#: The scripts run by EVALSHA (:class:`distq.transport.redis_wire.Script`), by file name
#: without ``.lua``, and whether each starts with the prelude.
SCRIPTS: dict[str, bool] = {
    "claim": True,
    "settle": True,
    "release": True,
    "close": True,
    "sweep": True,
    "leases": True,
    "stats": True,
    "gone": True,
    "renew": True,
    "withdraw": True,
    "tidy": True,
    "ack": False,
    "close_master": False,
    "requeue_dead": False,
    "unlink": False,
}

_PLACEHOLDER = re.compile(r"\{([A-Z_]+)\}")


def _read(name: str) -> str:
    """The text of ``redis_lua/<name>.lua`` after its comment, the constants filled in."""
    text = (
        resources.files("distq.transport").joinpath("redis_lua", f"{name}.lua").read_text("utf-8")
    )
    lines = text.splitlines(keepends=True)
    header = 0
    while header < len(lines) and lines[header].startswith("--"):
        header += 1
    if header == 0 or header == len(lines) or lines[header] != "\n":
        raise ValueError(f"redis_lua/{name}.lua: no comment, then a blank line, at its start")
    return _PLACEHOLDER.sub(lambda m: str(CONSTANTS[m[1]]), "".join(lines[header:]))


def _definitions(prelude: str) -> list[tuple[str, str]]:
    """The prelude's definitions in order, each as (its name, its text with the comment
    lines before it): a ``local NAME = ...`` line, or a ``local function NAME`` to its
    ``end`` at the line's start."""
    out: list[tuple[str, str]] = []
    lines = prelude.splitlines(keepends=True)
    start = at = 0
    while at < len(lines):
        found = _DEFINED.match(lines[at])
        if found is None:
            at += 1
            continue
        if lines[at].startswith("local function "):
            while lines[at] != "end\n":
                at += 1
        at += 1
        out.append((found[1], "".join(lines[start:at])))
        start = at
    return out


def _prelude_for(text: str) -> str:
    """The prelude's definitions that ``text`` uses, and those they use in turn, in the
    prelude's order: Redis runs them all at each call (each function a closure made anew)."""
    wanted: set[str] = set()
    code = [_COMMENT.sub("", text)]
    while code:
        body = code.pop()
        for name, definition in _PRELUDE:
            if name not in wanted and re.search(rf"\b{name}\b", body):
                wanted.add(name)
                code.append(_COMMENT.sub("", definition))
    return "".join(definition for name, definition in _PRELUDE if name in wanted)


_DEFINED = re.compile(r"local (?:function )?([A-Za-z_]\w*)")
_COMMENT = re.compile(r"--[^\n]*")
_PRELUDE = _definitions(_read("prelude"))
_TEXTS = {name: _read(name) for name in SCRIPTS}
_PRELUDES = {name: _prelude_for(_TEXTS[name]) if SCRIPTS[name] else "" for name in SCRIPTS}

#: Submit's count, sent by EVAL as it is, in the submit's transaction (``count_submitted.lua``).
COUNT_SUBMITTED = _read("count_submitted")

#: A lone task's submit and a take's acknowledgement in one script, run by EVALSHA
#: (``submit.lua``, which acknowledges as ``ack.lua``): never flagged allow-oom, so a full
#: Redis refuses it.
SUBMIT_AND_ACK = _read("submit")


def source(name: str, allow_oom: bool) -> str:
    """The source of script ``name`` (a key of :data:`SCRIPTS`) as Redis gets it: the
    prelude's definitions it uses first if it takes the prelude, and :data:`ALLOW_OOM`
    before all if ``allow_oom``."""
    head = ALLOW_OOM if allow_oom else ""
    return head + _PRELUDES[name] + _TEXTS[name]
