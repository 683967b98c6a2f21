"""The Redis transport's Lua scripts as package data (``distq/transport/redis_lua/``): every
script the transport runs has its file, and the constants the prelude names are filled in."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from distq.transport import redis_scripts
from distq.transport.redis_scripts import (
    ALLOW_OOM,
    CONSTANTS,
    COUNT_SUBMITTED,
    SCRIPTS,
    SUBMIT_AND_ACK,
    source,
)

#: Every constant the scripts take from Python: a placeholder left or a name missing fails.
NAMES = (
    "REPLY_GRACE_MS",
    "CLOCK_KEPT_MS",
    "CLOCK_STEP_MS",
    "SHORTEST_KEPT_MS",
    "COPY_LOOK",
    "CLAIM_BYTES",
)


def _sources() -> dict[str, str]:
    out = {"count_submitted": COUNT_SUBMITTED, "submit": SUBMIT_AND_ACK}
    for name in SCRIPTS:
        out[name] = source(name, allow_oom=False)
        out[f"{name} (allow-oom)"] = source(name, allow_oom=True)
    return out


def test_the_package_holds_a_file_for_each_script_and_no_other() -> None:
    folder = resources.files("distq.transport").joinpath("redis_lua")
    files = {entry.name for entry in folder.iterdir() if entry.name.endswith(".lua")}
    others = ("prelude", "count_submitted", "submit")
    assert files == {f"{name}.lua" for name in (*SCRIPTS, *others)}


def test_the_transport_runs_every_script() -> None:
    assert set(SCRIPTS) == {
        *("claim", "settle", "release", "close", "sweep", "leases", "stats", "gone"),
        *("renew", "withdraw", "ack", "close_master", "requeue_dead", "unlink", "tidy"),
    }


@pytest.mark.parametrize("name", sorted(_sources()))
def test_no_placeholder_is_left_in_a_source(name: str) -> None:
    text = _sources()[name]
    assert text.strip(), name
    for constant in NAMES:
        assert "{" + constant + "}" not in text, (name, constant)


def test_the_constants_are_the_python_ones() -> None:
    assert {name: getattr(redis_scripts, name) for name in NAMES} == CONSTANTS


def test_a_lone_submit_is_never_flagged_allow_oom() -> None:
    """A full Redis must refuse a submit (Redis 7 lets a flagged script write when full).
    It acknowledges as ack.lua does: tests/integration/test_redis_transport.py runs both."""
    assert "allow-oom" not in SUBMIT_AND_ACK
    assert f"+ {CONSTANTS['REPLY_GRACE_MS']})" in SUBMIT_AND_ACK


@pytest.mark.parametrize("name", [name for name, prelude in SCRIPTS.items() if prelude])
def test_a_script_with_the_prelude_has_each_constant_it_names_with_its_value(name: str) -> None:
    text = source(name, allow_oom=False)
    for constant in NAMES:
        if re.search(rf"\b{constant}\b", text):
            line = rf"^local {constant} = {CONSTANTS[constant]}$"
            assert re.search(line, text, re.M), (name, constant)


def _code(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


@pytest.mark.parametrize("name", [name for name, prelude in SCRIPTS.items() if prelude])
def test_a_script_gets_the_prelude_s_definitions_it_uses_and_no_other(name: str) -> None:
    """Redis runs the whole source at each call: each of the prelude's functions is a closure
    made again (a lone task's settle.lua made 5 it never called: 6 % of its instructions,
    issue 16). Each definition it sends is named by the script or by another one sent."""
    sent = _code(source(name, allow_oom=False))
    defined = re.findall(r"^local (?:function )?(\w+)", sent, re.M)
    for definition in defined:
        uses = len(re.findall(rf"\b{definition}\b", sent))
        assert uses > 1, f"{name}.lua gets {definition} from the prelude, and never uses it"


#: The names a script may use that it does not define: Lua's words, Redis's and Lua's own.
LUA_NAMES = {"redis", "KEYS", "ARGV", "math", "string", "tonumber", "type", "pairs", "ipairs"}
LUA_NAMES |= {"unpack", "and", "break", "do", "else", "elseif", "end", "false", "for", "if"}
LUA_NAMES |= {"function", "in", "local", "nil", "not", "or", "return", "then", "true", "while"}


def _undefined(text: str) -> set[str]:
    """The names ``text`` uses that neither it defines (``local``, a function's parameters,
    a ``for``'s variables) nor Lua or Redis does: each would fail only once the branch
    that names it runs (Redis 7 refuses a global it does not know)."""
    code = re.sub(r"'(?:\\.|[^'\\])*'", "''", _code(text.removeprefix(ALLOW_OOM)))
    defined = set(LUA_NAMES)
    for names in re.findall(r"\b(?:local(?: function)?|for)\s+([\w\s,]+?)\s*(?:=|\bin\b|\()", code):
        defined |= {n.strip() for n in names.split(",")}
    for params in re.findall(r"\bfunction\b[\w\s]*\(([^)]*)\)", code):
        defined |= {n.strip() for n in params.split(",") if n.strip()}
    used = set(re.findall(r"(?<![\w.:])([A-Za-z_]\w*)", code))
    return used - defined


@pytest.mark.parametrize("name", sorted(_sources()))
def test_a_script_defines_every_name_it_uses_in_every_branch(name: str) -> None:
    """Each script gets the prelude's definitions its text names, and those they name: one
    a rare branch calls (a sweep's requeue, a dead letter, a full Redis) is sent too."""
    assert _undefined(_sources()[name]) == set()


def test_a_script_without_the_prelude_would_use_names_it_does_not_define() -> None:
    """The check above can fail: the scripts' own texts name the prelude's functions."""
    assert {"sweep", "claimed", "now_ms"} <= _undefined(redis_scripts._TEXTS["claim"])
    assert {"requeue_all", "settles_of"} <= _undefined(redis_scripts._TEXTS["close"])


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_flags_line_comes_first_and_the_file_comment_is_not_sent(name: str) -> None:
    flagged, plain = source(name, allow_oom=True), source(name, allow_oom=False)
    assert flagged == ALLOW_OOM + plain
    assert not plain.startswith(ALLOW_OOM)
    folder = resources.files("distq.transport").joinpath("redis_lua")
    for file in (f"{name}.lua", "prelude.lua"):
        comment = folder.joinpath(file).read_text("utf-8").splitlines()[0]
        assert comment.startswith("--"), file
        assert comment not in plain, f"the comment atop {file} went into the script"


def _numbers_sent(text: str) -> list[str]:
    """The arguments of each ``redis.call``/``redis.pcall`` in ``text`` that are a number
    literal (at the call's own level, not inside a nested call)."""
    found = []
    for match in re.finditer(r"redis\.p?call\(", text):
        depth, start, args, quote = 1, match.end(), [], ""
        for i in range(match.end(), len(text)):
            if quote:  # inside a string literal: its brackets and commas are text
                quote = "" if text[i] == quote else quote
                continue
            if text[i] in "'\"":
                quote = text[i]
            elif text[i] in "({":
                depth += 1
            elif text[i] in ")}":
                depth -= 1
            if depth == 0 or (depth == 1 and text[i] == ","):
                args.append(text[start:i].strip())
                start = i + 1
            if depth == 0:
                break
        found += [f"{match.group()}...{arg}" for arg in args if re.fullmatch(r"-?\d+", arg)]
    return found


@pytest.mark.parametrize("name", sorted(_sources()))
def test_no_script_sends_redis_a_number_literal(name: str) -> None:
    """A Lua number sent to Redis is written out by Redis 7.0 with ``%.17g`` (8 % of a lone
    task's claim.lua in instructions, issue 16): a constant goes as a string ('0', '-1')."""
    assert _numbers_sent(_sources()[name]) == []
