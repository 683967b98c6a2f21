"""How a number out of its range is said, in one wording wherever it was given: a
setting's variable or flag (:mod:`distq.config`), a role flag (:mod:`distq.flagtypes`),
an address's or a URL's port (:mod:`distq.addresses`), an Executor keyword. Each says
what follows the name of what gave it: ``is 0; use a whole number from 1 to 10000``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

_N = TypeVar("_N", int, float)
#: A mebibyte, which a range of bytes is said in too when it is whole ones.
MIB = 1 << 20
#: A whole number's text, a sign allowed: what a float reads as inf only when too long.
_SIGNED_WHOLE = re.compile(r"[+-]?[0-9]+")
#: A whole number's text as every variable and flag takes it (once stripped): ASCII
#: digits, a '-' allowed. int() also takes "+5", "9_100" and other scripts' digits.
WHOLE_TEXT = re.compile(r"-?[0-9]+")
#: A number's text as every variable and flag of seconds or a rate takes it (once
#: stripped): :data:`WHOLE_TEXT`, then a fraction, an exponent or both (``0.5``, ``.5``,
#: ``1e3``, ``2.5E-3``; the exponent's sign as Python writes one, ``1e+16``). float()
#: also takes "+5", "9_100", "1_0.5" and other scripts' digits. (One way to match each
#: text: with two, "1" * 20_000 + "x" took 8 s to refuse.)
DECIMAL_TEXT = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")
#: The words float() reads as no finite number (``inf``, ``-Infinity``, ``NaN``): read
#: as before, then refused out of range ("is nan; use ...").
_NOT_FINITE = re.compile(r"[+-]?(inf|infinity|nan)", re.IGNORECASE)
#: Most digits a number too long to read is shown in; past them, by its order of magnitude.
_SHOWN_DIGITS = 30
#: Most characters of a text refused as no number that its refusal shows; past them, its
#: start and its length (a text of 5,000 put 5,000 on the line).
SHOWN_CHARACTERS = 40
#: The same for a text a refusal quotes to say where in it the fault is (an address, a
#: URL, a setting of several items): any a user means is shorter.
SHOWN_LINE = 300


def shown_number(value: float) -> str:
    """A number as a user would write it, every digit kept: ``134217729``, ``0.3``,
    ``3600`` (``:g`` rounds to 6 digits, ``134217729`` to ``1.34218e+08``); an int too
    long to read (``10**400``) by its order of magnitude."""
    if isinstance(value, int) and abs(value) >= 10**30:  # str() stops at 4300 digits
        power = math.floor(math.log10(abs(value)))  # a float's: off by one either way
        power -= 10**power > abs(value)  # 10**4301 - 1 read as 4301.0
        power += 10 ** (power + 1) <= abs(value)  # 10**512 read as 511.99...
        return f"about {'-' * (value < 0)}10**{power}"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)


def whole_numbers(low: int, high: int | None = None) -> str:
    """A range of whole numbers as every refusal says it, a variable's and a flag's
    (:mod:`distq.flagtypes`): ``a whole number from 1 to 10000``, or with no ``high``
    ``a whole number, 1 or more``."""
    if high is None:
        return f"a whole number, {shown_number(low)} or more"
    return f"a whole number from {shown_number(low)} to {shown_number(high)}"


def out_of_range(shown: str, span: str) -> str:
    """The refusal of a number (``shown`` as :func:`shown_number` says it) outside
    ``span``, to follow the name of its variable or flag: ``is 0; use a whole number from
    1 to 10000``. A variable, a flag and an Executor keyword say it so."""
    return f"is {shown}; use {span}"


def too_long(digits: str, span: str) -> str:
    """:func:`out_of_range` for a number written in ``digits`` (``[+-]?[0-9]+``) too long
    to read (past ``int()``'s 4300 digits, or a float's inf): by its order of magnitude,
    as :func:`shown_number` says an int, ``is about 10**4999; use ...``, not its digits.
    One long only by its leading zeros says so: ``is 5 written in 5,001 digits; use a
    whole number from 1 to 10000, without leading zeros`` (not "is 5", in range)."""
    unsigned = digits.lstrip("+-")
    if unsigned.startswith("0") and len(unsigned.lstrip("0")) <= _SHOWN_DIGITS:
        written = f"{shown_digits(digits)} written in {len(unsigned):,} digits"
        return out_of_range(written, f"{span}, without leading zeros")
    return out_of_range(shown_digits(digits), span)


def shown_digits(digits: str) -> str:
    """A whole number written in ``digits`` (``[+-]?[0-9]+``) as :func:`shown_number`
    says its int, without reading more than 30 of them (``int()`` refuses past 4300):
    ``70000``, ``about 10**4999``."""
    sign = "-" * digits.startswith("-")
    significant = digits.lstrip("+-").lstrip("0")
    if len(significant) > _SHOWN_DIGITS:
        return f"about {sign}10**{len(significant) - 1}"
    return shown_number(int(sign + (significant or "0")))


def shown_text(text: str) -> str:
    """A text refused as no number, to follow "is": ``'9_100'``; one of a sign and more
    digits than :func:`shown_digits` shows (``+999...``), by its size as a number too long
    to read is said, ``about 10**4999 written with a '+'``, not every digit; one long by its
    leading zeros as :func:`too_long` says it, ``5 written in 5,001 digits with a '+'``;
    any other past :data:`SHOWN_CHARACTERS` by its start and its length (:func:`cut`)."""
    unsigned = text.lstrip("+-")
    if not (_SIGNED_WHOLE.fullmatch(text) and len(unsigned) > _SHOWN_DIGITS):
        return cut(text)
    shown, sign = shown_digits(text.lstrip("+")), text[0]
    if len(unsigned.lstrip("0")) <= _SHOWN_DIGITS:  # long only by its leading zeros
        return f"{shown} written in {len(unsigned):,} digits with a {sign!r}"
    return f"{shown} written with a {sign!r}"


def cut(text: str, most: int = SHOWN_CHARACTERS) -> str:
    """``text`` as a refusal quotes it: ``repr(text)``, or past ``most`` characters its
    start and its length, ``'xxxxxxxx'... (5,000 characters)``."""
    return shortened(text, most, repr)


def shortened(text: str, most: int = SHOWN_LINE, shown: Callable[[str], str] = str) -> str:
    """``text`` whole, or past ``most`` characters its first ``most`` and its length,
    ``redis://:***@127.0.0.1:9999... (5,036 characters)``; each part as ``shown`` says it
    (:func:`cut`: quoted)."""
    if len(text) <= most:
        return shown(text)
    return f"{shown(text[:most])}... ({len(text):,} characters)"


def whole(text: str, span: str) -> int:
    """``text`` (stripped) read as a whole number by the one rule of every variable and
    flag, :data:`WHOLE_TEXT`; else ``ValueError`` in the words that follow its name: "is
    '9_100', not a whole number; use ``span``, in the digits 0-9 alone", or past
    ``int()``'s digits "is about 10**4999; use ``span``" (:func:`too_long`)."""
    if WHOLE_TEXT.fullmatch(text) is None:
        digits = ", in the digits 0-9 alone" * _int_reads(text)
        raise ValueError(f"is {shown_text(text)}, not a whole number; use {span}{digits}")
    try:
        return int(text)
    except ValueError:  # past int()'s digits (4300 unless set): no other whole number fails
        raise ValueError(too_long(text, span)) from None


def _int_reads(text: str) -> bool:
    """Whether ``int()`` reads ``text`` (or would, but for its 4300 digits): "+5", "9_100",
    other scripts' digits, which :func:`whole` refuses for a user to write plainly."""
    try:
        int(text)
    except ValueError:
        return _SIGNED_WHOLE.fullmatch(text) is not None
    return True


def decimal(text: str, span: str) -> str:
    """``text`` (stripped) if it is a number's text by the one rule of every variable and
    flag of seconds or a rate, :data:`DECIMAL_TEXT`, or a word float() reads as inf or nan
    (refused out of range once read, as before); else ``ValueError`` in the words of
    :func:`whole`: "is '9_100', not a number; use ``span``, in the digits 0-9 alone"."""
    if DECIMAL_TEXT.fullmatch(text) is None and _NOT_FINITE.fullmatch(text) is None:
        digits = ", in the digits 0-9 alone" * float_reads(text)
        raise ValueError(f"is {shown_text(text)}, not a number; use {span}{digits}")
    return text


def float_reads(text: str) -> bool:
    """Whether ``float()`` reads ``text``: "+5", "9_100", "1_0.5", other scripts' digits,
    which :func:`decimal` refuses for a user to write plainly (so does a broker URL's
    seconds option: :mod:`distq.addresses`)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Number(Generic[_N]):
    """A number setting's parser (text -> value) and its range, which :meth:`check` also
    applies to a value given as a number (a program's ``Settings``, an Executor keyword).
    With ``above``, ``low`` itself is out of range: ``a number greater than 0, at most
    1000000000 seconds`` (a flag's timeout)."""

    kind: type[_N]
    low: _N
    high: _N
    unit: str = ""
    above: bool = False

    @property
    def word(self) -> str:
        return "a whole number" if self.kind is int else "a number"

    def __call__(self, text: str) -> _N:
        if self.kind is int:  # ASCII digits only (:func:`whole`), as a flag reads them
            return self._in_range(whole(text, self.span()))
        value = self.kind(decimal(text, self.span())) + 0.0  # -0 read as 0, not -0.0
        if math.isinf(value) and _SIGNED_WHOLE.fullmatch(text):
            raise ValueError(too_long(text, self.span()))  # 400 digits: not "is inf"
        if math.isinf(value) and DECIMAL_TEXT.fullmatch(text):  # 1e999: as written
            written = text if len(text) <= SHOWN_CHARACTERS else cut(text)
            raise ValueError(out_of_range(written, self.span()))
        return self._in_range(value)

    def check(self, value: object) -> None:
        """Raise ``ValueError`` ("is ...; use ...") unless ``value`` is a number of this
        kind in range: bool, nan, inf and an int past what a float holds are not."""
        kinds = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"is {value!r:.40}, not {self.word}; use {self.span()}")
        self._in_range(value)

    def _in_range(self, value: Any) -> _N:
        low = self.low < value if self.above else self.low <= value
        if not (low and value <= self.high):  # NaN is in no range
            raise ValueError(out_of_range(shown_number(value), self.span()))
        return value  # type: ignore[no-any-return]

    def span(self) -> str:
        """The range as a refusal says it after "use": ``a whole number from 1 to
        65535``, ``a number from 0.3 to 3600 seconds``, ``a number greater than 0, at
        most 1000000000000``."""
        if self.kind is int and not self.above:
            return whole_numbers(int(self.low), int(self.high)) + self.unit + self._mib()
        low, high = shown_number(self.low), shown_number(self.high)
        within = f"greater than {low}, at most {high}" if self.above else f"from {low} to {high}"
        return f"{self.word} {within}{self.unit}"

    def _mib(self) -> str:
        return (
            f" ({int(self.high) // MIB} MiB)"
            if self.unit == " bytes" and self.high % MIB == 0
            else ""
        )


#: A TCP port, as the settings read one (``DISTQ_METRICS_PORT``) and ``distq probe`` too.
PORT = Number(int, 1, 65535)
