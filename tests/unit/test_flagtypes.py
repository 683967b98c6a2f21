"""The role flags' parsers: a finite number in range, or one argparse line."""

from __future__ import annotations

import argparse

import pytest

from distq import flagtypes


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "0", "-1", "1e10"])
def test_seconds_refuse_what_is_not_a_finite_positive_wait(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is out of range"):
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
        argparse.ArgumentTypeError, match=f"'{text}' is out of range; use 1 to 1024"
    ):
        flagtypes.count_up_to(1024)(text)


def test_a_count_up_to_a_bound_takes_1_to_it_and_refuses_0() -> None:
    assert flagtypes.count_up_to(1024)("1") == 1
    assert flagtypes.count_up_to(1024)("1024") == 1024
    with pytest.raises(argparse.ArgumentTypeError, match="must be 1 or more"):
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
    range as a 5-digit one does (a setting's variable says "is about 10**5000")."""
    text = "9" * 5000
    with pytest.raises(argparse.ArgumentTypeError) as bounded:
        flagtypes.count_up_to(10_000)(text)
    assert str(bounded.value) == "a number of 5,000 digits is out of range; use 1 to 10000"
    with pytest.raises(argparse.ArgumentTypeError) as unbounded:
        flagtypes.count("-" + text)
    assert str(unbounded.value) == "a number of 5,000 digits is out of range; use 1 or more"
    with pytest.raises(argparse.ArgumentTypeError, match=r"^'9x' is not a whole number$"):
        flagtypes.count("9x")
