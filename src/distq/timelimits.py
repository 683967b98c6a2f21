"""Per-task time limits: how long a task may run before its attempt fails.

``DISTQ_TASK_TIME_LIMIT`` is off by default. It takes seconds for every task (``30``),
seconds per task name (``square=2,mypkg.jobs:resize=600``), or both (``30,square=2``:
square gets 2 s, every other task 30 s); an item with two ``=`` is refused: a name
with ``,`` or ``=`` in it (which only :meth:`~distq.tasks.Registry.register` can give)
is written in double quotes, as a JSON string (``"a=b"=2``), as the worker's ``time
limits:`` line writes it; a chunk of N calls (``Executor.map(chunksize=N)``) gets the
limit named ``distq:chunk`` (``distq:chunk=60``: 60 s a chunk, whatever it calls) when
one is, else N times the limit of the function it calls. A program that registers its own functions
can also give one when it registers it (:meth:`distq.tasks.Registry.register`): the
setting's ``NAME=SECONDS`` wins over that, and that over the setting's default.

The worker's keeper enforces a limit (:mod:`distq.keeper`): a task past it fails that
attempt with :class:`~distq.errors.TimeLimitExceeded`, which is retried like any error,
and its slot goes on. Python cannot stop a thread, so the function itself is not
interrupted: the slot leaves its thread behind and takes a new one; see the worker's
docstring.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from distq.chunks import CHUNK_TASK
from distq.counts import counted
from distq.envelope import Task
from distq.ranges import SHOWN_LINE, Number, cut

#: Shortest limit accepted: the worker checks about every tenth of a second.
MIN_SECONDS = 0.1
MAX_SECONDS = 7 * 24 * 3600.0


def said(seconds: float) -> str:
    """A limit as a sentence says how long it is: as it was set (``{:g}`` kept 6 digits,
    and said 123456.7 s as 123457 and 604799.9 as 604800), without a float's noise (a
    chunk's 7 x 0.3 s is 2.1 s, not 2.0999999999999996). Not to be read back as the
    setting: :func:`written` is."""
    return f"{seconds:.15g}"


def written(seconds: float) -> str:
    """A limit as the setting is written, to read back as the very float it is: every
    digit (``repr``: 1/3 given to ``Registry.register`` is ``0.3333333333333333``;
    :func:`said`'s 15 digits read back as another limit), ``30`` for ``30.0``. A limit
    is 0.1 to a week, so ``repr`` writes no exponent."""
    return repr(float(seconds)).removesuffix(".0")


@dataclass(frozen=True)
class TimeLimits:
    """Time limits in seconds: ``default`` for any task, ``per_name`` for named ones."""

    default: float | None = None
    per_name: tuple[tuple[str, float], ...] = ()
    #: The names in ``per_name`` whose limit was given at registration, not by the
    #: setting: only for :meth:`which` to say so (the same limits either way).
    registered: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    #: Whether these limits were read from the setting (``DISTQ_TASK_TIME_LIMIT`` or its
    #: flag, by ``Settings.load``), not built by a program (``TimeLimits(30)``, or
    #: :meth:`parse` as distq's errors tell it): only for :meth:`which` to name where a
    #: limit was set.
    from_setting: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Refuse what the keeper cannot enforce as given, as the setting and
        ``Registry.register`` do: limits a program builds (``Settings(task_time_limit=
        ...)``, ``WorkerOptions``) went unchecked: 0 failed every task at once, NaN
        enforced none, a name given twice took its second limit. Built once, at start."""
        if self.default is not None:
            _enforceable("default", self.default)
        if not isinstance(self.per_name, tuple):
            raise ValueError(
                f"TimeLimits per_name is a {type(self.per_name).__name__}; give a tuple of "
                "(name, seconds) pairs, e.g. (('square', 2.0),)"
            )
        seen: dict[str, float] = {}
        for pair in self.per_name:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                raise ValueError(
                    f"TimeLimits per_name holds {pair!r:.60}; give (name, seconds) pairs, "
                    "e.g. (('square', 2.0),)"
                )
            name, seconds = pair
            _enforceable(repr(name), seconds)
            if name in seen:
                raise ValueError(
                    f"TimeLimits names {name!r} twice ({written(seen[name])} and "
                    f"{written(seconds)}); give each name one limit"
                )
            seen[name] = seconds

    def __bool__(self) -> bool:
        return self.default is not None or bool(self.per_name)

    def of(self, task: Task) -> float | None:
        """The limit of one run of ``task``: a chunk's (``Executor.map(chunksize=N)``) is
        the limit named ``distq:chunk`` when one is (a chunk is a task of that name: its
        name's limit wins, as any task's does; ignored, it warned that the worker "does
        not run" chunks), else its function's limit once per call it holds."""
        name, args = task.name, task.args
        if name == CHUNK_TASK and len(args) == 2 and isinstance(args[1], list):
            named = dict(self.per_name).get(CHUNK_TASK)  # for_task's, without the default
            if named is not None:
                return named
            limit = self.for_task(args[0]) if isinstance(args[0], str) else self.default
            return None if limit is None else limit * max(1, len(args[1]))
        return self.for_task(name)

    def for_task(self, name: str) -> float | None:
        """The limit of tasks named ``name``: its own, else the default, else None (none)."""
        for known, seconds in self.per_name:
            if known == name:
                return seconds
        return self.default

    def with_registered(self, registered: Mapping[str, float]) -> TimeLimits:
        """These limits with limits given at registration, under this one's named ones."""
        merged = {**registered, **dict(self.per_name)}
        theirs = self.registered | (registered.keys() - dict(self.per_name).keys())
        named = tuple(sorted(merged.items()))
        return TimeLimits(self.default, named, frozenset(theirs), self.from_setting)

    def which(self, task: Task) -> str:
        """Which limit :meth:`of` gives ``task``, as it was set (``DISTQ_TASK_TIME_LIMIT
        square=2``; built in a program, as it was given: ``TimeLimits(default=30)``, which
        was named as the variable, never set): the error of a task past its limit said
        only how long it was, and a user with several set could not tell which to raise.
        Asked only once a task has run past its limit: :meth:`of` stays the one look-up
        of a task that did not."""
        name, args = task.name, task.args
        if name == CHUNK_TASK and len(args) == 2 and isinstance(args[1], list):
            named = dict(self.per_name).get(CHUNK_TASK)
            if named is not None:
                return self._which(CHUNK_TASK)
            its = self._which(args[0]) if isinstance(args[0], str) else self._which(None)
            calls = max(1, len(args[1]))
            return (
                f"{counted(calls, 'call')} x {its}; or give every chunk its "
                f"own: {CHUNK_TASK}=SECONDS"
            )
        return self._which(name)

    def _which(self, name: str | None) -> str:
        """Where the limit of tasks named ``name`` (None: the default) was set."""
        seconds = None if name is None else dict(self.per_name).get(name)
        if name is not None and seconds is not None and name in self.registered:
            return f"time_limit={written(seconds)} given to Registry.register for {name!r}"
        if name is not None and seconds is not None:
            if not self.from_setting:  # a program's: the variable may not even be set
                return f"({name!r}, {written(seconds)}) in TimeLimits(per_name=...)"
            return f"DISTQ_TASK_TIME_LIMIT {_written(name)}={written(seconds)}"
        if self.default is not None:
            where = (
                f"DISTQ_TASK_TIME_LIMIT {written(self.default)}"
                if self.from_setting
                else f"TimeLimits(default={written(self.default)})"
            )
            return f"{where}: the default, for a task with no limit of its own"
        return "no limit set"  # of() gave None: no task runs past it

    def describe(self) -> str:
        """As the setting is written (``30,square=2``), or ``off``: it reads back as these
        limits, a name given at registration with ``,`` or ``=`` in it too (quoted)."""
        parts = [] if self.default is None else [written(self.default)]
        parts += [f"{_written(name)}={written(seconds)}" for name, seconds in self.per_name]
        return ",".join(parts) or "off"

    @classmethod
    def parse(cls, text: str) -> TimeLimits:
        """Read ``SECONDS``, ``NAME=SECONDS`` items, comma-separated; empty or ``off`` is off.
        A name in double quotes is a JSON string (``"a=b"=2``), as :meth:`describe`
        writes a name the setting could not read otherwise.

        Raises ``ValueError`` phrased to follow the variable's name ("is ...; use ...").
        """
        if text.strip().lower() in ("", "off"):
            return cls()
        default: float | None = None
        per_name: dict[str, float] = {}
        for name, sep, value in _items(text):
            seconds = _seconds(value.strip(), text, name if sep else None)
            if not sep:
                if default is not None:
                    raise ValueError(f"is {_shown(text)}; give one limit without a name, not two")
                default = seconds
            elif name in per_name:
                raise ValueError(f"is {_shown(text)}; {name!r} has two limits; give each name one")
            else:
                per_name[name] = seconds
        return cls(default, tuple(sorted(per_name.items())))


def enforceable(seconds: object) -> bool:
    """Whether ``seconds`` is a limit the keeper can enforce as given: a number, not a
    bool, in ``DISTQ_TASK_TIME_LIMIT``'s range (NaN is in none). One check for the
    setting's limits built in a program and those given to ``Registry.register``."""
    return (
        isinstance(seconds, int | float)
        and not isinstance(seconds, bool)
        and MIN_SECONDS <= seconds <= MAX_SECONDS
    )


def _enforceable(what: str, seconds: object) -> None:
    """Refuse ``seconds`` for the limit ``what`` unless :func:`enforceable`."""
    if enforceable(seconds):
        return
    off = " (None for none)" if what == "default" else ""
    raise ValueError(
        f"TimeLimits {what}={shown_limit(seconds)} cannot be enforced; give seconds from "
        f"{MIN_SECONDS:g} to {MAX_SECONDS:g}{off}, or read the setting's text: "
        "TimeLimits.parse('30,square=2')"
    )


def shown_limit(seconds: object) -> str:
    """A limit refused as given, shown in its refusal: an int too long to show (``repr``
    raises past 4,300 digits) by its order of magnitude, anything else cut short."""
    if isinstance(seconds, int) and abs(seconds) >= 10**30:
        return f"about 10**{math.floor(math.log10(abs(seconds)))}"
    return f"{seconds!r:.40}"


def _written(name: str) -> str:
    """``name`` as the setting reads it: as it is, or in double quotes as a JSON string
    (ASCII, so a line break or an escape in it prints as such) when it could not be
    read as it is: with ``,``, ``=`` or ``"`` in it (``Registry.register`` takes any
    name; ``a=b=5`` was refused, ``x,y=5`` read as a default of ``x`` and a name ``y``),
    space at either end (stripped), a character that does not print, or none at all."""
    if name and name == name.strip() and name.isprintable() and not any(c in name for c in ',="'):
        return name
    return json.dumps(name)


def _items(text: str) -> Iterator[tuple[str, str, str]]:
    """The comma-separated items of the setting ``text``: (name, ``=`` or ``""``,
    seconds as written); a name in double quotes is read as a JSON string, and ends at
    its closing quote (a ``,`` or ``=`` inside is part of it)."""
    at = 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if text.startswith('"', at):
            try:
                name, end = _JSON.raw_decode(text, at)
            except json.JSONDecodeError as exc:  # its own words: not all "does not end"
                raise ValueError(
                    f"is {_shown(text)}: the quoted name at character {at + 1} is no JSON string "
                    f"({exc.msg.removesuffix(' at')} at character {exc.pos + 1}); quote it "
                    'as a JSON string, e.g. "a=b"=2'
                ) from None
            comma = text.find(",", end)
            before, sep, value = text[end : len(text) if comma < 0 else comma].partition("=")
            if before.strip() or not sep:
                raise ValueError(
                    f"is {_shown(text)}: the quoted name {name!r} is not followed by =SECONDS; "
                    'e.g. "a=b"=2'
                )
            yield name, sep, value
        else:
            comma = text.find(",", at)
            item = text[at : len(text) if comma < 0 else comma].strip()
            name, sep, value = item.rpartition("=")
            name = name.strip()
            if not item or (sep and not name):
                raise ValueError(
                    f"is {_shown(text)}; use SECONDS or NAME=SECONDS items, e.g. 30,square=2"
                )
            if "=" in name:  # "square=1=2" named a task "square=1"
                raise ValueError(
                    f"is {_shown(text)}: {cut(item)} has more than one '='; use one '=' per item "
                    '(NAME=SECONDS), e.g. 30,square=2, and quote a name with "=" or "," '
                    'in it: "a=b"=2'
                )
            yield name, sep, value
        if comma < 0:
            return
        at = comma + 1


_JSON = json.JSONDecoder()


def _seconds(value: str, text: str, name: str | None) -> float:
    """The seconds ``value`` of the limit of ``name`` (None: the default) in the
    setting's ``text``, refused out of range as a variable's number is
    (:class:`~distq.ranges.Number`): "is '0': the default limit is 0; use a number from
    0.1 to 604800 seconds"."""
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(
            f"is {_shown(text)}: {cut(value)} is not a number of seconds; e.g. 30,square=2"
        ) from None
    try:
        return _LIMIT(value)
    except ValueError as exc:
        if math.isinf(seconds) and value.isascii() and value.lstrip("+-").isdigit():
            text = text.replace(value, "...")  # 400 digits or more: by its size, not twice
        whose = "the default limit" if name is None else f"the limit of {_named(name)}"
        raise ValueError(f"is {_shown(text)}: {whose} {exc}") from None


def _shown(text: str) -> str:
    """The setting's text as its refusal quotes it, to say where in it the fault is:
    past 300 characters, its start and its length (:func:`~distq.ranges.cut`); a text of
    5,000 put 5,000 on the line, twice with its item."""
    return cut(text, SHOWN_LINE)


def _named(name: str) -> str:
    """``name`` as a refusal says it after the setting's text, which holds it already: a
    long one by its first 40 characters (a name of 3,000 put 6,000 on the line)."""
    return repr(name) if len(name) <= 40 else f"{name[:40]!r}..."


#: A limit of the setting's text: its range as a variable's number says it.
_LIMIT = Number(float, MIN_SECONDS, MAX_SECONDS, " seconds")
