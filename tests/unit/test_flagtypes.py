"""The role flags' parsers: a finite number in range, or one argparse line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import pytest

from distq import flagtypes
from distq.config import Settings
from distq.errors import ConfigError
from distq.limits import MAX_PREFETCH
from distq.ranges import shown_number


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "0", "-1", "1e10"])
def test_seconds_refuse_what_is_not_a_finite_positive_wait(text: str) -> None:
    with pytest.raises(
        argparse.ArgumentTypeError,
        match=r"; use a number greater than 0, at most 1000000000 seconds$",
    ):
        flagtypes.seconds(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-0.5", "1e300"])
def test_a_delay_refuses_what_is_not_finite_or_is_below_0(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="use a number from 0 to 1000000000"):
        flagtypes.seconds_or_zero(text)


def test_numbers_in_range_are_taken() -> None:
    assert flagtypes.seconds("0.5") == 0.5
    assert flagtypes.seconds_or_zero("0") == 0.0
    assert flagtypes.rate("2000") == 2000.0
    assert flagtypes.count("3") == 3
    assert flagtypes.port("65535") == 65535
    assert flagtypes.host("::1") == "::1"


@pytest.mark.parametrize("text", ["nan", "inf", "0", "-3"])
def test_a_rate_is_finite_and_positive(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        flagtypes.rate(text)


@pytest.mark.parametrize("text", ["", "bad host", "a/b", "u@h", "h\x00"])
def test_a_host_with_spaces_or_separators_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a host"):
        flagtypes.host(text)


@pytest.mark.parametrize("text", ["1025", "1000000", "99999999999999999999999"])
def test_a_count_up_to_a_bound_refuses_more(text: str) -> None:
    with pytest.raises(
        argparse.ArgumentTypeError, match=f"^is {text}; use a whole number from 1 to 1024$"
    ):
        flagtypes.count_up_to(1024)(text)


def test_a_count_up_to_a_bound_takes_1_to_it_and_refuses_0() -> None:
    assert flagtypes.count_up_to(1024)("1") == 1
    assert flagtypes.count_up_to(1024)("1024") == 1024
    with pytest.raises(
        argparse.ArgumentTypeError, match=r"^is 0; use a whole number from 1 to 1024$"
    ):
        flagtypes.count_up_to(1024)("0")


@pytest.mark.parametrize(
    "text", ["پیش\u200cفرض", "a\u00a0b", "host\u3000one", "👩\u200d🔬", "w\u200fx", "w-1:2 ok", ""]
)
def test_a_worker_name_may_be_any_text_on_one_line(text: str) -> None:
    """isprintable() refused a no-break space, a zero-width joiner or non-joiner and
    direction marks: ids that ran before were refused, exit 2 (diff15b); and "" (a start
    script's empty $WORKER_ID) is the default name, as before (regress11)."""
    assert flagtypes.name(text) == text


@pytest.mark.parametrize("text", ["a\tb", "a\x00b", "a\u2028b", "w\udcf6"])
def test_a_worker_name_with_control_characters_or_no_utf_8_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        flagtypes.name(text)


def test_a_count_of_more_digits_than_python_reads_is_said_by_its_size_not_shown() -> None:
    """``--max-attempts`` (or ``--tasks``, ``--limit``) of 5,000 digits was refused as
    "'99999...' is not a whole number", all 5,000 digits on the line, and not saying the
    range as a 5-digit one does (a setting's variable says "is about 10**4999"); then
    "a number of 5,000 digits is out of range; use 1 to 10000", in other words than the
    variable's "is about 10**4999; use a whole number from 1 to 10000"."""
    text = "9" * 5000
    with pytest.raises(argparse.ArgumentTypeError) as bounded:
        flagtypes.count_up_to(10_000)(text)
    assert str(bounded.value) == "is about 10**4999; use a whole number from 1 to 10000"
    with pytest.raises(argparse.ArgumentTypeError) as unbounded:
        flagtypes.count("-" + text)
    assert str(unbounded.value) == "is about -10**4999; use a whole number, 1 or more"
    with pytest.raises(
        argparse.ArgumentTypeError,
        match=r"^is '9x', not a whole number; use a whole number, 1 or more$",
    ):
        flagtypes.count("9x")


@pytest.mark.parametrize("text", ["0", "-3", "10001", "9" * 40, "9" * 5000])
def test_a_count_flag_out_of_range_is_refused_in_its_variables_words(text: str) -> None:
    """``--max-attempts 0`` (``-c 0``, ``--limit 0``) said "'0' must be 1 or more" while
    10001 said "'10001' is out of range; use 1 to 10000", and DISTQ_PREFETCH, a count of
    the same range, "is 0; use a whole number from 1 to 10000": now every one says the
    whole range, as the variable does, by one function (ranges.out_of_range)."""
    with pytest.raises(ConfigError) as by_variable:
        Settings.load({"DISTQ_AUTHKEY": "k", "DISTQ_PREFETCH": text})
    said = str(by_variable.value).removeprefix("DISTQ_PREFETCH ")
    assert said.endswith("; use a whole number from 1 to 10000"), said
    with pytest.raises(argparse.ArgumentTypeError) as by_flag:
        flagtypes.count_up_to(MAX_PREFETCH)(text)
    assert str(by_flag.value) == said
    with pytest.raises(argparse.ArgumentTypeError) as unbounded:
        flagtypes.count("0")
    assert str(unbounded.value) == "is 0; use a whole number, 1 or more"


@pytest.mark.parametrize(
    ("parse", "span"),
    [
        (flagtypes.rate, "a number greater than 0, at most 1000000000000"),
        (flagtypes.seconds_or_zero, "a number from 0 to 1000000000 seconds"),
        (flagtypes.port, "a whole number from 1 to 65535"),
    ],
    ids=["rate", "delay", "port"],
)
def test_a_number_flag_too_long_to_read_is_said_by_its_size_and_range(
    parse: Callable[[str], float], span: str
) -> None:
    """``--rate`` or ``--task-delay`` of 5,000 digits (a float's inf) and ``--port`` of
    as many (past int()'s digits) put all 5,000 on the line ("'999...' is out of range",
    "'999...' is not a port number"), where a variable says "is about 10**4999"."""
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        parse("9" * 5000)
    assert str(refused.value) == f"is about 10**4999; use {span}"


def _refused(parse: Callable[[str], object] | None, variable: str | None, text: str) -> str:
    """What a flag's parser (``parse``) or else ``variable`` says of ``text`` it refuses,
    after the flag's or the variable's name."""
    if parse is not None:
        with pytest.raises(argparse.ArgumentTypeError) as by_flag:
            parse(text)
        return str(by_flag.value)
    assert variable is not None
    return _variable_says(variable, text)


def _variable_says(variable: str, text: str) -> str:
    """What follows ``variable``'s name when it holds ``text``."""
    with pytest.raises(ConfigError) as refused:
        Settings.load({"DISTQ_AUTHKEY": "k", variable: text})
    said = str(refused.value)
    assert said.startswith(f"{variable} "), said
    return said.removeprefix(f"{variable} ")


_OUT_OF_RANGE = ["-1", "0", "2e13", "nan", "NaN", "inf", "-inf", "9" * 5000, "-" + "9" * 5000]


@pytest.mark.parametrize("text", _OUT_OF_RANGE, ids=lambda text: text[:8])
@pytest.mark.parametrize(
    ("parse", "variable", "variable_span", "span"),
    [
        (
            flagtypes.seconds,
            "DISTQ_LEASE_SECONDS",
            "a number from 0.3 to 3600 seconds",
            "a number greater than 0, at most 1000000000 seconds",
        ),
        (
            flagtypes.seconds_or_zero,
            "DISTQ_DRAIN_SECONDS",
            "a number from 0 to 3600 seconds",
            "a number from 0 to 1000000000 seconds",
        ),
        (
            flagtypes.rate,
            "DISTQ_STATS_SECONDS",
            "a number from 0.1 to 3600 seconds",
            "a number greater than 0, at most 1000000000000",
        ),
    ],
    ids=["seconds", "delay", "rate"],
)
def test_a_float_flag_out_of_range_is_refused_in_a_variables_words(
    parse: Callable[[str], float], variable: str, variable_span: str, span: str, text: str
) -> None:
    """``--rate 1e13`` said "'1e13' is out of range; use a number greater than 0, at most
    1000000000000" (``--timeout``, ``--task-delay`` alike) where a variable of seconds
    says "is 10000000000000; use a number from 0.3 to 3600 seconds": now a flag says what
    a variable would of the same text, only its own range after "use"."""
    if text == "0" and parse is flagtypes.seconds_or_zero:
        assert parse(text) == 0.0
        return
    said = _variable_says(variable, text)
    assert said.endswith(f"; use {variable_span}"), said
    with pytest.raises(argparse.ArgumentTypeError) as by_flag:
        parse(text)
    assert str(by_flag.value) == said.removesuffix(variable_span) + span


@pytest.mark.parametrize(
    "text", ["0", "-1", "70000", "99999999999999999999", "9" * 5000, "-" + "9" * 5000]
)
def test_a_port_flag_out_of_range_says_what_its_variable_does(text: str) -> None:
    """``distq probe --port 70000`` said "'70000' is out of range; use a port from 1 to
    65535", its variable DISTQ_METRICS_PORT "is 70000; use a whole number from 1 to
    65535": one range, now said one way."""
    with pytest.raises(argparse.ArgumentTypeError) as by_flag:
        flagtypes.port(text)
    assert str(by_flag.value) == _variable_says("DISTQ_METRICS_PORT", text)


@pytest.mark.parametrize(
    ("parse", "variable", "span"),
    [
        (flagtypes.rate, None, "a number greater than 0, at most 1000000000000"),
        (flagtypes.seconds, None, "a number greater than 0, at most 1000000000 seconds"),
        (None, "DISTQ_LEASE_SECONDS", "a number from 0.3 to 3600 seconds"),
    ],
    ids=["rate", "seconds", "variable"],
)
def test_a_plus_before_thousands_of_digits_is_said_by_its_size_not_inf(
    parse: Callable[[str], float] | None, variable: str | None, span: str
) -> None:
    """``--rate +999...`` (5,000 digits) was said "is about 10**4999" before the flags read
    through ranges.Number, which took only a '-' for a whole number's sign: a '+' made it
    a float's inf, "is inf; use ...", by a flag and a variable of seconds alike. A number
    with a fraction now takes a '-' alone too, as a whole number does: its size, then the
    digits to write it in."""
    text = "+" + "9" * 5000
    said = _refused(parse, variable, text)
    assert said == (
        f"is about 10**4999 written with a '+', not a number; use {span}, in the digits 0-9 alone"
    ), said


_ZEROS = "0" * 5000


@pytest.mark.parametrize(
    ("refuse", "text", "said"),
    [
        (
            lambda text: _variable_says("DISTQ_PREFETCH", text),
            _ZEROS + "5",
            "is 5 written in 5,001 digits; use a whole number from 1 to 10000, without "
            "leading zeros",
        ),
        (
            flagtypes.count_up_to(MAX_PREFETCH),
            _ZEROS + "5",
            "is 5 written in 5,001 digits; use a whole number from 1 to 10000, without "
            "leading zeros",
        ),
        (
            flagtypes.port,
            _ZEROS + "9100",
            "is 9100 written in 5,004 digits; use a whole number from 1 to 65535, without "
            "leading zeros",
        ),
        (
            flagtypes.count,
            "-" + _ZEROS + "70000",
            "is -70000 written in 5,005 digits; use a whole number, 1 or more, without "
            "leading zeros",
        ),
    ],
    ids=["variable", "count", "port", "unbounded"],
)
def test_a_number_in_range_behind_thousands_of_zeros_is_not_said_in_range(
    refuse: Callable[[str], object], text: str, said: str
) -> None:
    """DISTQ_PREFETCH=000...05 (5,000 zeros; int() reads no more than 4,300 digits) was
    refused as "is 5; use a whole number from 1 to 10000": a 5 said out of a range it is
    in (--prefetch, --port, and an AMQP URL's channel_max=000...03 alike). Now the
    refusal says why: how many digits it was written in, and to drop the zeros."""
    try:
        refused = refuse(text)
    except argparse.ArgumentTypeError as exc:
        refused = str(exc)
    assert refused == said


#: Texts a whole number or a number might be given as: ASCII digits, with blanks, with a
#: sign, with '_' (int() and float() take it), in other scripts' digits (fullwidth,
#: Arabic-Indic), a float's words, a hex, thousands of digits.
_TEXTS = [
    "5",
    " 5 ",
    "\t7\n",
    "05",
    "+5",
    "-5",
    "0",
    "9_100",
    "1_0",
    "\uff15",
    "\uff19\uff11\uff10\uff10",
    "\u0665",
    "\u0669\u0661\u0660\u0660",
    "5.0",
    "1e3",
    "0x10",
    "",
    "x",
    "nan",
    "70000",
    "9" * 5000,
    "-" + "9" * 5000,
    "+" + "9" * 5000,
    "0" * 5000 + "5",
]


def _outcome(read: Callable[[str], object], text: str) -> object:
    """What ``read`` makes of ``text``: its value, or its refusal's words."""
    try:
        return read(text)
    except (argparse.ArgumentTypeError, ConfigError) as refused:
        return str(refused)


def _variable(variable: str) -> Callable[[str], object]:
    def read(text: str) -> object:
        settings = Settings.load({"DISTQ_AUTHKEY": "k", variable: text})
        return getattr(settings, variable.removeprefix("DISTQ_").lower())

    return read


def _after_name(variable: str, said: object) -> object:
    return said.removeprefix(f"{variable} ") if isinstance(said, str) else said


def _read_as(said: object) -> str:
    """An outcome without its range: a value taken as "is 9100", as a refusal of it
    out of another range begins; a refusal up to "; use"."""
    return (
        f"is {shown_number(said)}" if isinstance(said, int | float) else str(said).split("; use")[0]
    )


@pytest.mark.parametrize("text", _TEXTS, ids=repr)
@pytest.mark.parametrize(
    ("parse", "variable"),
    [
        (flagtypes.port, "DISTQ_METRICS_PORT"),
        (flagtypes.count_up_to(MAX_PREFETCH), "DISTQ_PREFETCH"),
    ],
    ids=["port", "count_up_to"],
)
def test_a_whole_number_flag_takes_the_texts_its_variable_takes(
    parse: Callable[[str], int], variable: str, text: str
) -> None:
    """``distq probe --port 9_100`` and ``distq master --tasks \\uff15`` were taken (int()
    reads '_', a '+' and other scripts' digits) where DISTQ_METRICS_PORT=9_100 is
    refused "is '9_100', not a whole number": a flag of a variable's range now takes
    what the variable takes, the same value, and refuses the rest in its words. (Empty,
    DISTQ_METRICS_PORT is not set: the flag's "is '', not a whole number; use ...".)"""
    if text == "" and variable == "DISTQ_METRICS_PORT":
        assert (
            _outcome(parse, text) == "is '', not a whole number; use a whole number from 1 to 65535"
        )
        return
    by_variable = _after_name(variable, _outcome(_variable(variable), text))
    assert _outcome(parse, text) == by_variable


@pytest.mark.parametrize("text", _TEXTS, ids=repr)
@pytest.mark.parametrize(
    "parse",
    [flagtypes.count, flagtypes.seed, flagtypes.count_up_to(10)],
    ids=["count", "seed", "up_to"],
)
def test_a_whole_number_flag_of_its_own_range_reads_as_a_variable_does(
    parse: Callable[[str], int], text: str
) -> None:
    """``--tasks``, ``--max-attempts``, ``--seed``: what DISTQ_PREFETCH takes as a whole
    number they take as the same one; what it refuses as none they refuse in its words;
    only what follows "; use" (their range) differs."""
    by_variable = _after_name("DISTQ_PREFETCH", _outcome(_variable("DISTQ_PREFETCH"), text))
    assert _read_as(_outcome(parse, text)) == _read_as(by_variable)


@pytest.mark.parametrize("text", _TEXTS, ids=repr)
@pytest.mark.parametrize(
    ("parse", "variable"),
    [
        (flagtypes.seconds, "DISTQ_STALL_SECONDS"),
        (flagtypes.seconds_or_zero, "DISTQ_DRAIN_SECONDS"),
        (flagtypes.rate, "DISTQ_STATS_SECONDS"),
    ],
    ids=["seconds", "delay", "rate"],
)
def test_a_float_flag_takes_the_texts_its_variable_takes(
    parse: Callable[[str], float], variable: str, text: str
) -> None:
    """``--rate x`` said "'x' is not a number" where a variable says "is 'x', not a
    number": a float flag takes what a variable of seconds takes (the same value where
    both ranges hold it), and refuses the rest in its words, its own range after "use"."""
    by_variable = _after_name(variable, _outcome(_variable(variable), text))
    assert _read_as(_outcome(parse, text)) == _read_as(by_variable)


def test_a_plus_before_thousands_of_digits_is_said_by_its_size_by_a_count() -> None:
    """DISTQ_PREFETCH=+999... (5,000 nines) put every digit on the line ("is '+999...',
    not a whole number"), as ``--seed`` of 5,000 digits did in argparse's own "invalid
    int value: '999...'": both are said by their size, as other numbers are."""
    nines = "9" * 5000
    assert _variable_says("DISTQ_PREFETCH", "+" + nines) == (
        "is about 10**4999 written with a '+', not a whole number; use a whole number from 1 "
        "to 10000, in the digits 0-9 alone"
    )
    with pytest.raises(argparse.ArgumentTypeError) as seed:
        flagtypes.seed(nines)
    assert str(seed.value) == (
        f"is about 10**4999; use a whole number of at most {sys.get_int_max_str_digits()} "
        "digits (Python's limit for its text)"
    )
    assert flagtypes.seed("-" + "9" * 40) == -int("9" * 40)  # any int, as int() read it


def test_a_plus_before_thousands_of_leading_zeros_is_said_by_its_size() -> None:
    """``--tasks +000...05`` (5,001 digits) was said "is 5 written in 5,001 digits; use
    ..." before the flags read as the variables do; then the '+' made it "no number",
    shown whole: a line of 5,000 zeros, by the flag and DISTQ_PREFETCH alike, since only
    the digits past the leading zeros were counted against the 30 shown."""
    text = "+" + _ZEROS + "5"
    said = "is 5 written in 5,001 digits with a '+', not a whole number; use a whole number"
    assert _variable_says("DISTQ_PREFETCH", text).startswith(said)
    for parse in (flagtypes.count, flagtypes.seed):
        with pytest.raises(argparse.ArgumentTypeError) as by_flag:
            parse(text)
        assert str(by_flag.value).startswith(said) and len(str(by_flag.value)) < 200


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("+5", "is '+5', not a whole number; use a whole number from 1 to 10000, in the digits"),
        ("9_100", "is '9_100', not a whole number; use a whole number from 1 to 10000, in the"),
        ("\uff15", "is '\uff15', not a whole number; use a whole number from 1 to 10000, in the"),
        ("x", "is 'x', not a whole number; use a whole number from 1 to 10000"),
    ],
)
def test_a_text_refused_as_no_whole_number_says_what_to_write(text: str, said: str) -> None:
    """``--tasks +5`` (as DISTQ_PREFETCH=+5) said only "is '+5', not a whole number":
    true of no '+5' a user meant, and nothing said what to write. Now the range follows,
    and for a text int() reads ('+', '_', other scripts' digits) the digits it wants."""
    by_variable = _variable_says("DISTQ_PREFETCH", text)
    with pytest.raises(argparse.ArgumentTypeError) as by_flag:
        flagtypes.count_up_to(MAX_PREFETCH)(text)
    assert str(by_flag.value) == by_variable
    assert by_variable.startswith(said), by_variable
    assert ("0-9 alone" in by_variable) == (text != "x"), by_variable


#: Texts float() reads that no variable or flag of seconds or a rate takes: a '+', '_'
#: between digits, other scripts' digits (Arabic-Indic, fullwidth), with a fraction too.
_NOT_PLAIN = ["+5", "9_100", "1_0.5", "\u0663", "\uff10.5", "+0.5", "1e1_0"]


@pytest.mark.parametrize("text", _NOT_PLAIN, ids=repr)
@pytest.mark.parametrize(
    ("parse", "variable", "span"),
    [
        (flagtypes.rate, None, "a number greater than 0, at most 1000000000000"),
        (flagtypes.seconds, None, "a number greater than 0, at most 1000000000 seconds"),
        (flagtypes.seconds_or_zero, None, "a number from 0 to 1000000000 seconds"),
        (None, "DISTQ_LEASE_SECONDS", "a number from 0.3 to 3600 seconds"),
        (None, "DISTQ_STALL_SECONDS", "a number from 0.1 to 86400 seconds"),
    ],
    ids=["rate", "timeout", "delay", "lease", "stall"],
)
def test_a_number_with_a_fraction_is_in_the_digits_0_9_alone(
    parse: Callable[[str], float] | None, variable: str | None, span: str, text: str
) -> None:
    """DISTQ_LEASE_SECONDS=9_100 was read as 9100 and ``--rate \u0663`` as 3 (float()
    takes '_', a '+' and other scripts' digits), where DISTQ_PREFETCH=9_100 is refused
    "in the digits 0-9 alone": a number with a fraction now follows the same rule, in
    the same words, by a flag and a variable alike."""
    said = _refused(parse, variable, text)
    assert said == f"is {text!r}, not a number; use {span}, in the digits 0-9 alone", said


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.5", 0.5), (".5", 0.5), ("5.", 5.0), ("1e3", 1000.0), ("2.5E+2", 250.0), ("3", 3.0)],
)
def test_a_number_with_a_fraction_is_read_as_before_in_plain_digits(
    text: str, value: float
) -> None:
    """What the rule of plain digits keeps: a fraction (with no digit before or after
    its point), an exponent (a sign in it as Python writes one, ``1e+16``), by a flag and
    a variable of seconds alike."""
    assert flagtypes.rate(text) == value
    assert flagtypes.seconds(f" {text} ") == value
    settings = Settings.load({"DISTQ_AUTHKEY": "k", "DISTQ_STATS_SECONDS": text})
    assert settings.stats_seconds == value


@pytest.mark.parametrize(
    ("text", "shown"),
    [("inf", "inf"), ("-inf", "-inf"), ("+inf", "inf"), ("Infinity", "inf"), ("NaN", "nan")],
)
def test_inf_and_nan_stay_refused_by_their_range(text: str, shown: str) -> None:
    """float()'s words for no finite number stay what they were: read, then refused out
    of range as "is inf" or "is nan" (not "not a number ... in the digits 0-9 alone")."""
    span = "a number from 0.3 to 3600 seconds"
    assert _variable_says("DISTQ_LEASE_SECONDS", text) == f"is {shown}; use {span}"
    with pytest.raises(argparse.ArgumentTypeError) as by_flag:
        flagtypes.rate(text)
    assert str(by_flag.value) == f"is {shown}; use a number greater than 0, at most 1000000000000"


_LONG = "x" * 5000


@pytest.mark.parametrize(
    ("parse", "variable", "said"),
    [
        (flagtypes.rate, None, "not a number; use a number greater than 0, at most 1000000000000"),
        (None, "DISTQ_LEASE_SECONDS", "not a number; use a number from 0.3 to 3600 seconds"),
        (
            flagtypes.count_up_to(MAX_PREFETCH),
            None,
            "not a whole number; use a whole number from 1 to 10000",
        ),
        (None, "DISTQ_PREFETCH", "not a whole number; use a whole number from 1 to 10000"),
        (flagtypes.count, None, "not a whole number; use a whole number, 1 or more"),
        (None, "DISTQ_METRICS_PORT", "not a whole number; use a whole number from 1 to 65535"),
    ],
    ids=["rate", "lease", "prefetch-flag", "prefetch", "count", "port"],
)
def test_a_long_text_refused_as_no_number_is_shown_by_its_start_and_length(
    parse: Callable[[str], object] | None, variable: str | None, said: str
) -> None:
    """DISTQ_LEASE_SECONDS (or ``--rate``) of 5,000 x's put all 5,000 on the refusal's
    line: a flag and a variable alike now show its first 40 characters and its length."""
    refused = _refused(parse, variable, _LONG)
    assert refused == f"is {'x' * 40!r}... (5,000 characters), {said}", refused


def test_a_text_of_40_characters_is_shown_whole() -> None:
    """Only a text past 40 characters is cut: one of 40 is shown as it is."""
    assert _variable_says("DISTQ_LEASE_SECONDS", "y" * 40).startswith(f"is {'y' * 40!r}, not")
    assert "(41 characters)" in _variable_says("DISTQ_LEASE_SECONDS", "y" * 41)


def test_a_long_text_of_digits_is_refused_at_once() -> None:
    """The rule of a number with a fraction is read in one pass: a pattern with two ways
    to split a run of digits took 8 s to refuse 20,000 digits and an 'x'."""
    text = "1" * 20_000 + "x"
    started = time.monotonic()
    said = _variable_says("DISTQ_LEASE_SECONDS", text)
    assert time.monotonic() - started < 2, said
    assert said.startswith(f"is {'1' * 40!r}... (20,001 characters), not a number; use ")


def test_a_host_flag_of_thousands_of_characters_is_shown_by_its_start() -> None:
    """``distq probe --host`` of 5,000 characters and a blank put all of them on the
    line; a host is shown as an address's is, past 300 characters by its start and its
    length."""
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        flagtypes.host("h" * 5000 + " x")
    said = str(refused.value)
    assert said.startswith(f"{'h' * 300!r}... (5,002 characters) is not a host; "), said[:400]
    assert len(said) < 500, len(said)


@pytest.mark.parametrize("text", ["-0", "-0.0", "-.0e5", "-1e-999"])
def test_a_negative_zero_is_read_as_zero(text: str) -> None:
    """DISTQ_DRAIN_SECONDS=-0 (in range: 0 to 3600) was read as float's -0.0, which a
    worker then said as "after -0 s (DISTQ_DRAIN_SECONDS)": a zero is read as 0, by a
    flag and a variable alike."""
    settings = Settings.load({"DISTQ_AUTHKEY": "k", "DISTQ_DRAIN_SECONDS": text})
    read = (settings.drain_seconds, flagtypes.seconds_or_zero(text))
    assert [f"{value:g}" for value in read] == ["0", "0"], read


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("1e999", "1e999"),
        ("-1e999", "-1e999"),
        ("1.5E+400", "1.5E+400"),
        ("9" * 400 + ".5", f"{'9' * 40!r}... (402 characters)"),
    ],
)
def test_a_number_past_a_floats_range_is_said_as_written_not_inf(text: str, shown: str) -> None:
    """DISTQ_LEASE_SECONDS=1e999 (or ``--rate 1e999``) was refused as "is inf; use ...",
    a word the user never wrote (float() reads it as inf); a whole number that long is
    said by its size. It is now said as written: "is 1e999; use ...". The word inf
    itself stays "is inf"."""
    span = "a number from 0.3 to 3600 seconds"
    assert _variable_says("DISTQ_LEASE_SECONDS", text) == f"is {shown}; use {span}"
    with pytest.raises(argparse.ArgumentTypeError) as by_flag:
        flagtypes.rate(text)
    assert str(by_flag.value) == f"is {shown}; use a number greater than 0, at most 1000000000000"
    assert _variable_says("DISTQ_LEASE_SECONDS", "inf") == f"is inf; use {span}"
