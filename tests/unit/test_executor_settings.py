"""An executor's settings: the DISTQ_* environment, a Settings object, keyword overrides."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

from distq import flagtypes
from distq.codec import Codec
from distq.config import Settings, shown_number
from distq.envelope import Task
from distq.errors import ConfigError
from distq.executor import Executor, load_settings
from distq.signing import MAGIC
from distq.timelimits import TimeLimits
from distq.transport import open_transport
from launch import free_port

KEY = "k" * 32
REDIS = {"DISTQ_TRANSPORT": "redis"}
REDIS_KEYWORD = {"transport": "redis"}


def test_the_environment_with_keyword_overrides_by_field_name() -> None:
    env = {"DISTQ_TRANSPORT": "manager", "DISTQ_AUTHKEY": "k", "DISTQ_QUEUE": "from-env"}
    assert load_settings(None, {}, env).queue == "from-env"
    got = load_settings(
        None,
        {"transport": "redis", "redis_url": "redis://h:1/0", "lease_seconds": 2, "queue": "q"},
        {},  # no DISTQ_AUTHKEY needed once the transport is redis
    )
    assert (got.transport, got.redis_url, got.lease_seconds, got.queue) == (
        "redis",
        "redis://h:1/0",
        2.0,
        "q",
    )
    address = load_settings(None, {"manager_address": ("0.0.0.0", 9100), "authkey": b"k"}, {})
    assert address.manager_address == ("0.0.0.0", 9100) and address.authkey == b"k"


def test_overrides_of_a_settings_object_are_parsed_and_checked() -> None:
    base = Settings(transport="redis")
    assert load_settings(base, {"prefetch": "7"}, {}).prefetch == 7
    assert load_settings(base, {"prefetch": 9}, {}).prefetch == 9
    with pytest.raises(ConfigError, match=r"prefetch='x': DISTQ_PREFETCH is 'x', not a whole"):
        load_settings(base, {"prefetch": "x"}, {})
    with pytest.raises(ConfigError, match="manager transport needs a shared secret"):
        load_settings(base, {"transport": "manager"}, {})


def test_bad_values_and_unknown_names_are_refused_before_anything_connects() -> None:
    # the keyword the caller gave is named, not the command's flag
    with pytest.raises(
        ConfigError, match=r"^Executor keyword transport \(DISTQ_TRANSPORT\) is 'kafka'"
    ):
        load_settings(None, {"transport": "kafka"}, {})
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"transport": "redis", "signing_key": "short"}, {})
    assert str(refused.value).startswith(
        "Executor keyword signing_key (DISTQ_SIGNING_KEY) has a key 5 characters long"
    )
    assert "--signing-key" not in str(refused.value) and "short" not in str(refused.value)
    with pytest.raises(ConfigError, match="DISTQ_AUTHKEY is not set"):
        load_settings(None, {}, {})
    with pytest.raises(TypeError, match="unexpected keyword argument 'queu'; settings are: "):
        load_settings(None, {"queu": "x"}, {})
    with pytest.raises(ValueError, match="max_attempts is 0"):
        Executor(Settings(transport="redis"), max_attempts=0)
    with pytest.raises(ValueError, match="task_timeout is -1"):
        Executor(Settings(transport="redis"), task_timeout=-1)
    with pytest.raises(ValueError, match="task_timeout is '5', not a number; use a number"):
        Executor(Settings(transport="redis"), task_timeout="5")  # type: ignore[arg-type]


def test_a_misspelled_variable_is_logged_as_the_command_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"DISTQ_TRANSPORT": "redis", "DISTQ_QEUE": "x"}
    assert load_settings(None, {}, env).queue == "distq"
    assert "DISTQ_QEUE is not a distq setting (ignored); did you mean DISTQ_QUEUE?" in caplog.text


def _signs_as_a_worker_with_the_key_expects(settings: Settings) -> None:
    worker_settings = {**REDIS, "DISTQ_SIGNING_KEY": KEY, "DISTQ_QUEUE": settings.queue}
    worker = Codec.from_settings(Settings.load(worker_settings))
    message = Codec.from_settings(settings).seal_task(Task("f", [1], "q"))
    assert message.startswith(MAGIC), message[:40]
    assert worker.open_task(message).args == [1]


@pytest.mark.parametrize(
    ("base", "overrides"),
    [
        (Settings.load(REDIS), {"signing_key": KEY}),
        (Settings(transport="redis"), {"signing_key": KEY.encode()}),  # not parsed: as given
        (Settings(transport="redis", signing_key=(KEY.encode(),)), {}),
        (Settings.load({**REDIS, "DISTQ_SIGNING_KEYS": "o" * 32}), {"signing_key": KEY}),
        (Settings.load({**REDIS, "DISTQ_SIGNING_KEY": "o" * 32}), {"signing_key": KEY}),
        (Settings.load({**REDIS, "DISTQ_SIGNING_KEY": KEY}), {"queue": "q"}),
    ],
)
def test_a_signing_key_over_a_settings_object_signs(base: Settings, overrides: Any) -> None:
    """Was: Executor(settings, signing_key=...) sent unsigned tasks, without a word."""
    if isinstance(overrides.get("signing_key"), bytes):
        overrides = {"signing_key": (overrides["signing_key"],)}
    _signs_as_a_worker_with_the_key_expects(load_settings(base, overrides, {}))


def test_a_secret_file_over_a_settings_object_is_read(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n")
    password = tmp_path / "password"
    password.write_text(" pw \n")
    base = Settings.load(REDIS)
    got = load_settings(
        base, {"signing_keys_file": str(keys), "redis_password_file": str(password)}, {}
    )
    _signs_as_a_worker_with_the_key_expects(got)
    assert got.redis_url == "redis://:%20pw%20@127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="signing_key_file and signing_key are both given"):
        load_settings(base, {"signing_key_file": str(keys), "signing_key": KEY}, {})


def test_a_codec_signs_with_the_one_key_of_settings_made_by_hand() -> None:
    _signs_as_a_worker_with_the_key_expects(Settings(signing_key=(KEY.encode(),)))


def test_a_settings_object_goes_through_the_checks_of_settings_load(tmp_path: Path) -> None:
    """Was: TLS files that would not be used, or could not be, were accepted."""
    base = Settings(transport="redis")
    with pytest.raises(ConfigError, match=r"DISTQ_REDIS_URL is redis:// \(plain TCP\); use rediss"):
        load_settings(base, {"tls_ca_file": str(tmp_path / "ca.pem")}, {})
    with pytest.raises(ConfigError, match=r"DISTQ_TLS_CA_FILE names .*, which cannot be read"):
        load_settings(
            base, {"redis_url": "rediss://h:6380/0", "tls_ca_file": str(tmp_path / "ca.pem")}, {}
        )
    with pytest.raises(ConfigError, match="DISTQ_SIGNING_KEY and DISTQ_SIGNING_KEYS are both set"):
        load_settings(base, {"signing_key": KEY, "signing_keys": KEY}, {})
    with pytest.raises(ConfigError, match="holds a password too"):
        load_settings(base, {"redis_url": "redis://:a@h:1/0", "redis_password": "b"}, {})
    # a password goes into the URL, once: settings Settings.load made come out the same
    moved = load_settings(base, {"redis_password": "pw"}, {})
    assert moved.redis_url == "redis://:pw@127.0.0.1:6379/0"
    loaded = Settings.load({**REDIS, "DISTQ_REDIS_PASSWORD": "pw", "DISTQ_SIGNING_KEY": KEY})
    assert load_settings(loaded, {}, {}) == loaded


def test_a_password_or_a_url_over_loaded_settings_is_used_as_the_variables_would_be() -> None:
    """Was: over settings Settings.load made with DISTQ_REDIS_PASSWORD, a new password was
    refused ("holds a password too") and a new URL lost the password."""
    loaded = Settings.load({**REDIS, "DISTQ_REDIS_PASSWORD": "old"})
    assert load_settings(loaded, {"redis_password": "new"}, {}).redis_url == (
        "redis://:new@127.0.0.1:6379/0"
    )
    assert load_settings(loaded, {"redis_url": "redis://10.0.0.9:6380/2"}, {}).redis_url == (
        "redis://:old@10.0.0.9:6380/2"
    )
    amqp = Settings.load(
        {
            "DISTQ_TRANSPORT": "rabbitmq",
            "DISTQ_AMQP_URL": "amqp://distq@h:5672/%2F",
            "DISTQ_AMQP_PASSWORD": "old",
        }
    )
    assert load_settings(amqp, {"amqp_password": "n w"}, {}).amqp_url == (
        "amqp://distq:n%20w@h:5672/%2F"
    )
    # a password the URL itself held (no password setting) and a second one: refused
    inline = Settings.load({**REDIS, "DISTQ_REDIS_URL": "redis://:inline@127.0.0.1:6379/0"})
    with pytest.raises(ConfigError, match="holds a password too"):
        load_settings(inline, {"redis_password": "other"}, {})


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("redis_url", "redis://:TopSecretPw@localhost:notaport/0", "is not a valid URL"),
        ("signing_keys", "short-secret-k", "has key 1 of 1 14 characters long"),
        ("signing_key", "short,secret-k", "has a key 14 characters long"),
        ("signing_key", " ", "holds no key"),
        ("signing_keys", "\n\n", "holds no key"),
        ("amqp_url", "ftp://guest:TopSecretPw@h:5672/", "has scheme 'ftp'"),
        ("rabbitmq_management_url", "ftp://u:TopSecretPw@h:1", "has scheme 'ftp'"),
    ],
)
def test_a_bad_secret_override_is_refused_without_its_value(
    name: str, value: str, problem: str
) -> None:
    """Was: ``redis_url='redis://:TopSecretPw@...': ...``, the secret in clear."""
    with pytest.raises(ConfigError) as caught:
        load_settings(Settings(transport="redis"), {name: value}, {})
    message = str(caught.value)
    assert message.startswith(f"{name}: DISTQ_{name.upper()} ") and problem in message, message
    assert "TopSecretPw" not in message and "secret-k" not in message, message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"signing_keys": (b"short",)}, "signing_keys has key 1 of 1 5 bytes long"),
        ({"signing_keys": (b"x" * 16, b"y")}, "signing_keys has key 2 of 2 1 byte long;"),
        ({"signing_key": (b"x" * 16, b"tiny")}, "signing_key has key 2 of 2 4 bytes long"),
        ({"signing_keys": b"a-long-enough-key-0123"}, "signing_keys is a bytes; give a tuple"),
        ({"signing_keys": ["a-long-enough-key-0123"]}, "signing_keys is a list; give a tuple"),
        ({"signing_keys": ("a-long-enough-key-0123",)}, "signing_keys is a tuple of other"),
        ({"signing_key": ["a-long-enough-key-0123"]}, "signing_key is a list; give a tuple"),
    ],
)
@pytest.mark.parametrize("base", [Settings(transport="redis"), None])
def test_keys_given_as_values_are_checked_like_the_variables_keys(
    overrides: dict[str, Any], expected: str, base: Settings | None
) -> None:
    """Was: Executor(settings, signing_keys=(b"short",)) signed with a 5-byte key, and
    keys of another type were taken as given. Without a Settings object (keywords over
    the environment), a list of keys became the text of its repr: every task was signed
    with a wrong key, dead-lettered by the workers, and every future waited for good."""
    with pytest.raises(ConfigError) as refused:
        load_settings(base, overrides, REDIS)
    assert str(refused.value).startswith(expected), refused.value
    assert "short" not in str(refused.value) and "tiny" not in str(refused.value)
    assert "a-long-enough" not in str(refused.value)


def test_keyword_secrets_of_any_bytes_are_kept_as_given() -> None:
    """A random authkey (as multiprocessing makes them) was a UnicodeDecodeError quoting
    one of its bytes; a key holding a comma was split in two."""
    key = bytes(range(256))  # not UTF-8, and a comma in it
    got = load_settings(None, {"authkey": key, "signing_keys": (key,)}, {})
    assert (got.authkey, got.signing_keys) == (key, (key,))
    assert load_settings(None, {"signing_key": (key,)}, REDIS).signing_keys == (key,)
    assert load_settings(None, {"signing_keys": None}, REDIS).signing_keys == ()
    with pytest.raises(ConfigError, match=r"^Executor keyword queue \(DISTQ_QUEUE\) is a list; "):
        load_settings(None, {"queue": ["jobs"]}, REDIS)
    # as the variables: bytes that are not UTF-8 reach them through os.environ escaped
    env = {"DISTQ_AUTHKEY": key.decode(errors="surrogateescape")}
    assert load_settings(None, {}, env).authkey == key


@pytest.mark.parametrize(
    ("key", "keys"),
    [(KEY, (b"2" * 32,)), ((b"1" * 32,), KEY), (KEY, KEY.replace("k", "j"))],
)
def test_both_spellings_of_the_keys_are_refused_whatever_their_types(key: Any, keys: Any) -> None:
    """One as a string, the other as a tuple: the tuple went in as given and the string's
    key was dropped without a word (workers holding it dead-lettered every task)."""
    with pytest.raises(ConfigError, match="signing_key and signing_keys are both given"):
        load_settings(None, {"signing_key": key, "signing_keys": keys}, REDIS)


@pytest.mark.parametrize("key", [b" leading", b"trailing\n", b"\t\x07tabbed\x07\n", b"\xa4 \x00"])
def test_an_authkey_of_bytes_is_kept_to_the_last_byte(key: bytes) -> None:
    """Its text went through Settings.load, which strips: a key with whitespace at an
    end lost it, and disagreed with the same key over a Settings object."""
    assert load_settings(None, {"authkey": key}, {}).authkey == key
    over = load_settings(Settings.load({"DISTQ_AUTHKEY": "x" * 16}), {"authkey": key}, {})
    assert over.authkey == key


def test_a_hand_built_settings_object_with_an_unknown_transport_is_a_config_error() -> None:
    """A bare KeyError: 'redsi' before."""
    with pytest.raises(ConfigError, match="transport 'redsi' is not one of manager, redis"):
        open_transport(Settings(transport="redsi"), "worker")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (("::1", 9000), ("::1", 9000)),
        (("[::1]", "9001"), ("::1", 9001)),
        (["h", 9002], ("h", 9002)),
    ],
)
def test_a_host_and_port_pair_is_taken_ipv6_too(address: Any, expected: tuple[str, int]) -> None:
    """README: a ``(host, port)`` address is taken; ("::1", 9000) was written ::1:9000 and
    refused ("write an IPv6 address in brackets")."""
    got = load_settings(None, {"manager_address": address, "authkey": KEY}, {})
    assert got.manager_address == expected


def test_a_workers_setting_given_to_an_executor_is_said_to_do_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """task_time_limit=0.5 let a 2 s task run to its end without a word, where `distq
    master --task-time-limit` says it does not read it."""
    with caplog.at_level("WARNING", logger="distq"):
        load_settings(None, {**{"transport": "redis"}, "task_time_limit": "0.5", "queue": "q"}, {})
    assert [r.getMessage() for r in caplog.records] == [
        "Executor keyword task_time_limit is a worker's setting: an Executor does not read "
        "it; give it to `distq worker` (--task-time-limit)"
    ]


def test_a_number_of_seconds_for_task_time_limit_is_taken_over_a_settings_object_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``Executor(task_time_limit=30)`` reads the number as the variable's text, but
    ``Executor(settings, task_time_limit=30)`` raised "is 30, not TimeLimits" once a
    Settings' task_time_limit had to be a TimeLimits: a warning before, an error now for
    a setting the executor does not read. Over a Settings object it is read as its text
    too, and held to the same range."""
    settings = Settings(transport="redis", queue="q")
    with caplog.at_level("WARNING", logger="distq"):
        for seconds in (30, 0.5):
            without = load_settings(None, {"transport": "redis", "task_time_limit": seconds}, {})
            over = load_settings(settings, {"task_time_limit": seconds}, {})
            assert over.task_time_limit == without.task_time_limit == TimeLimits(seconds)
        for settings_or_none, keywords in ((None, REDIS_KEYWORD), (settings, {})):
            with pytest.raises(ConfigError, match=r"is '?0\.05\b.* 0\.1 to 604800"):
                load_settings(settings_or_none, {**keywords, "task_time_limit": 0.05}, {})


def test_no_task_time_limit_over_a_settings_object_is_off_as_without_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``Executor(task_time_limit=None)`` is off (the variable's empty text), but over a
    Settings object it raised "is None, not TimeLimits" since a Settings' task_time_limit
    must be a TimeLimits (taken before: the executor does not read it)."""
    settings = Settings(transport="redis", queue="q", task_time_limit=TimeLimits.parse("30"))
    with caplog.at_level("WARNING", logger="distq"):
        without = load_settings(None, {"transport": "redis", "task_time_limit": None}, {})
        over = load_settings(settings, {"task_time_limit": None}, {})
    assert over.task_time_limit == without.task_time_limit == TimeLimits()


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (10**400, r"about 10\*\*400"),
        (10**5000, r"about 10\*\*5000"),
        (0.05, r"0\.05"),
        (True, "True"),
    ],
    ids=["10**400", "10**5000", "0.05", "True"],
)
def test_seconds_for_task_time_limit_out_of_range_over_a_settings_object_are_said_short(
    seconds: object, shown: str
) -> None:
    """Read as their text over a Settings object, 10**400 was said three times with all
    its 401 digits, and 10**5000 raised Python's "Exceeds the limit (4300 digits) for
    integer string conversion": refused as the other numbers are, "is about 10**400"."""
    settings = Settings(transport="redis", queue="q")
    with pytest.raises(
        ConfigError,
        match=rf"^Executor keyword task_time_limit \(DISTQ_TASK_TIME_LIMIT\) is {shown}; use "
        r"a number from 0\.1 to 604800 seconds, or the variable's text: '30,square=2'$",
    ):
        load_settings(settings, {"task_time_limit": seconds}, {})


def test_a_setting_the_codec_refuses_leaves_no_listener_behind() -> None:
    """A Settings object built by hand (taken as given) with a max_message_bytes that is
    no number failed Executor() with a TypeError once its transport was open, and left it
    open: with manager, its address stayed bound and its threads ran, so the corrected
    Executor in the same process could not listen ('Address already in use')."""
    address = ("127.0.0.1", free_port())
    bad = Settings(
        transport="manager",
        authkey=KEY.encode(),
        manager_address=address,
        max_message_bytes="2000000",  # type: ignore[arg-type]
    )
    with pytest.raises(ConfigError, match=r"^max_message_bytes .* is '2000000', not a whole"):
        Executor(bad)  # now refused with the settings, before the transport opens
    with Executor(dataclasses.replace(bad, max_message_bytes=2_000_000)) as executor:
        assert executor.stats().ready == 0


def test_an_executor_whose_thread_cannot_start_closes_what_it_opened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process at its thread limit (a container's pids limit): Executor() raised
    "can't start new thread" with its transport left open (a manager's address bound:
    the next Executor there failed 'Address already in use') and its thread counted as
    running, so the interpreter's exit raised 'cannot join thread before it is started'."""
    from distq import executor_threads
    from distq.dispatcher import Dispatcher

    address = ("127.0.0.1", free_port())
    settings = Settings(transport="manager", authkey=KEY.encode(), manager_address=address)

    def refused(self: Dispatcher) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patched:
        patched.setattr(Dispatcher, "start", refused)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            Executor(settings)
    assert all(dispatcher.ident is not None for dispatcher in executor_threads.running)
    with Executor(settings) as executor:
        assert executor.stats().ready == 0


def _short(value: object) -> str | None:
    """A test id: a number's repr, cut (10**400 has 401 digits)."""
    return None if isinstance(value, str) else repr(value)[:12]


@pytest.mark.parametrize(
    ("keyword", "value", "said"),
    [
        ("task_timeout", 10**400, r"task_timeout is about 10\*\*400; use a number greater than 0"),
        ("task_timeout", 1e300, r"task_timeout is 1e\+300; use a number greater than 0, at most "),
        ("task_timeout", float("nan"), r"task_timeout is nan; use a number greater than 0"),
        ("task_timeout", -1, r"task_timeout is -1; use a number greater than 0"),
        ("task_timeout", True, r"task_timeout is True, not a number; use a number greater"),
        ("max_attempts", True, r"max_attempts is True; use a whole number from 1 to 10000$"),
        ("max_attempts", 2.0, r"max_attempts is 2.0; use a whole number from 1 to 10000$"),
    ],
    ids=_short,
)
def test_an_executor_argument_out_of_range_is_refused_at_construction(
    keyword: str, value: Any, said: str
) -> None:
    """Was: task_timeout=10**400 (or 1e300) was taken, then each submit raised
    OverflowError (a deadline past what a float or a lock's wait can hold)."""
    with pytest.raises(ValueError, match=f"^{said}"):
        Executor(Settings(transport="redis", redis_url="redis://127.0.0.1:1/0"), **{keyword: value})


@pytest.mark.parametrize("value", [10**400, 1e300, float("nan"), -1, 0, "5"], ids=_short)
def test_task_timeout_out_of_range_is_said_as_the_flag_of_seconds_says_it(value: Any) -> None:
    """task_timeout=1e300 said "is 1e+300; use seconds > 0 and at most 1000000000 (about
    31 years)" where ``--timeout 1e300`` (and a variable of seconds) says "is 1e+300; use
    a number greater than 0, at most 1000000000 seconds", through ranges.Number: now the
    keyword says it so, adding only that None means no limit."""
    with pytest.raises(ValueError) as by_keyword:
        Executor(Settings(transport="redis"), task_timeout=value)
    if isinstance(value, str):  # a str, not a number, though --timeout would take its text
        said = "is '5', not a number; use a number greater than 0, at most 1000000000 seconds"
    else:
        with pytest.raises(argparse.ArgumentTypeError) as by_flag:
            flagtypes.seconds(str(value))
        said = str(by_flag.value)
    assert str(by_keyword.value) == f"task_timeout {said}, or None for no limit"


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("lease_seconds", float("nan"), r"is nan; use a number from 0.3 to 3600 seconds"),
        ("lease_seconds", float("inf"), r"is inf; use a number from 0.3 to 3600 seconds"),
        ("lease_seconds", 10**400, r"is about 10\*\*400; use a number from 0.3 to 3600 seconds"),
        ("lease_seconds", -1, r"is -1; use a number from 0.3 to 3600 seconds"),
        ("lease_seconds", True, r"is True, not a number; use a number from 0.3 to 3600"),
        ("drain_seconds", 1e300, r"is 1e\+300; use a number from 0 to 3600 seconds"),
        ("prefetch", 2**64, r"is 18446744073709551616; use a whole number from 1 to 10000"),
        ("prefetch", 2.0, r"is 2.0, not a whole number; use a whole number from 1 to 10000"),
        ("prefetch", False, r"is False, not a whole number"),
        ("metrics_port", 70000, r"is 70000; use a whole number from 1 to 65535"),
        ("stall_seconds", float("-inf"), r"is -inf; use a number from 0.1 to 86400 seconds"),
        ("stats_seconds", 0, r"is 0; use a number from 0.1 to 3600 seconds"),
        ("max_message_bytes", 10**400, r"is about 10\*\*400; use a whole number from 1024 "),
        ("manager_address", ("127.0.0.1", 10**400), r"is \('127.0.0.1', 1000.*; use \(host, "),
        ("manager_address", ("::1", 70000), r"is \('::1', 70000\); use \(host, port\) with a "),
        ("manager_address", ("h", True), r"is \('h', True\); use \(host, port\) with a port "),
        ("manager_address", ("a b", 9000), r"is 'a b:9000': 'a b' is not a host"),
    ],
    ids=_short,
)
def test_a_numeric_setting_out_of_range_is_refused_in_every_way_it_can_be_given(
    name: str, value: Any, said: str
) -> None:
    """Was: a number given over a Settings object (or in one) was taken as it was, unlike
    the same in the environment: nan, inf, 10**400 or True as lease_seconds reached the
    transport, to fail there (OverflowError, a lease that never lapses)."""
    variable = f"DISTQ_{name.upper()}"
    base = Settings(transport="redis")
    with pytest.raises(ConfigError, match=rf"^Executor keyword {name} \({variable}\) {said}"):
        load_settings(base, {name: value}, {})
    with pytest.raises(ConfigError, match=rf"^{name} \({variable}\) {said}"):
        load_settings(dataclasses.replace(base, **{name: value}), {}, {})
    assert getattr(load_settings(base, {}, {}), name) == getattr(base, name)  # in range: kept


@pytest.mark.parametrize("given", ["redis://:hunter2@127.0.0.1:6379/0", {"transport": "redis"}, 5])
def test_settings_that_are_not_a_settings_object_are_refused_saying_what_to_pass(
    given: Any,
) -> None:
    """``Executor("redis://...")`` (a URL where a ``Settings`` goes) raised "replace()
    should be called on dataclass instances", from deep inside: it says nothing of the
    argument or of what to give instead."""
    with pytest.raises(TypeError, match=r"Executor\(\) settings must be a distq.config.Settings"):
        load_settings(given, {}, {})
    with pytest.raises(TypeError, match=r"give settings by keyword: Executor\(redis_url="):
        Executor(given)
    with pytest.raises(TypeError) as refused:
        Executor(given)
    assert "hunter2" not in str(refused.value)


def _whole(digits: str) -> int:
    """The int ``digits`` writes, however many (int() refuses more than 4300)."""
    body = digits.lstrip("-")
    head, tail = body[:4000], body[4000:]
    scale: int = 10 ** len(tail)
    value = int(head) * scale + int(tail or "0")
    return -value if digits.startswith("-") else value


@pytest.mark.parametrize(
    ("name", "digits", "span"),
    [
        ("lease_seconds", "1" + "0" * 5000, "a number from 0.3 to 3600 seconds"),
        ("prefetch", "1" + "0" * 5000, "a whole number from 1 to 10000"),
        ("metrics_port", "-1" + "0" * 5000, "a whole number from 1 to 65535"),
        ("max_message_bytes", "9" * 4301, "a whole number from 1024 to 134217728 bytes (128 MiB)"),
        ("stall_seconds", "1" + "0" * 400, "a number from 0.1 to 86400 seconds"),
    ],
    ids=["lease_seconds", "prefetch", "metrics_port", "max_message_bytes", "stall_seconds"],
)
def test_a_number_keyword_past_pythons_digit_limit_is_refused_as_its_variable_is(
    name: str, digits: str, span: str
) -> None:
    """Without a Settings object, a number went in as its variable's text: 10**5000 raised
    Python's "Exceeds the limit (4300 digits) for integer string conversion", and 10**400
    for a float setting read as inf ("is inf"). The keyword and the variable now say the
    same: the number by its order of magnitude (the variable said 10**5000 "is '1000...'
    (all 5001 digits), not a whole number"), and the range."""
    entry = next(f.metadata["setting"] for f in dataclasses.fields(Settings) if f.name == name)
    shown = f"about {'-' * digits.startswith('-')}10**{len(digits.lstrip('-')) - 1}"
    value = _whole(digits)
    with pytest.raises(ConfigError) as by_variable:
        Settings.load({"DISTQ_TRANSPORT": "redis", entry.variable: digits})
    assert str(by_variable.value) == f"{entry.variable} is {shown}; use {span}"
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"transport": "redis", name: value}, {})
    assert str(caught.value) == f"Executor keyword {name} ({entry.variable}) is {shown}; use {span}"


def test_a_number_past_pythons_digit_limit_for_a_text_setting_is_refused_saying_so() -> None:
    for name, value, use in (
        ("queue", 10**5000, "give it as a string, as DISTQ_QUEUE takes"),
        (
            "manager_address",
            ("127.0.0.1", 10**5000),
            "use (host, port) with a port from 1 to 65535, e.g. ('127.0.0.1', 9000)",
        ),
    ):
        with pytest.raises(ConfigError, match=rf"^Executor keyword {name} \(DISTQ_") as caught:
            load_settings(None, {"transport": "manager", "authkey": b"k", name: value}, {})
        assert "holds a number of more than 4300 digits" in str(caught.value), caught.value
        assert str(caught.value).endswith(f"; {use}"), caught.value  # was "give the text it takes"


@pytest.mark.parametrize(
    ("value", "shown"), [(10**5000, "10**5000"), (10**400, "10**400")], ids=["5000", "400"]
)
def test_a_task_time_limit_keyword_past_pythons_digit_limit_is_refused_as_over_settings(
    value: int, shown: str
) -> None:
    """The same number over a Settings object was refused so already (see above)."""
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"transport": "redis", "task_time_limit": value}, {})
    assert str(caught.value) == (
        f"Executor keyword task_time_limit (DISTQ_TASK_TIME_LIMIT) is about {shown}; "
        "use a number from 0.1 to 604800 seconds, or the variable's text: '30,square=2'"
    )


@pytest.mark.parametrize("power", [31, 511, 512, 1024, 2048, 4300, 4301, 9000])
def test_a_large_int_is_said_by_its_own_order_of_magnitude(power: int) -> None:
    """log10 of 10**512, 10**1024 and 10**2048 rounds down: they were said as "about
    10**511" (and so on), as 10**4301 - 1 was said "about 10**4301" when it rounded up.
    An Executor's max_attempts=10**512 read "max_attempts is about 10**511"."""
    for value, said in ((10**power, power), (10**power - 1, power - 1), (-(10**power), power)):
        sign = "-" * (value < 0)
        assert shown_number(value) == f"about {sign}10**{said}", (power, value < 0)
    with pytest.raises(ValueError, match=rf"^max_attempts is about 10\*\*{power}; "):
        Executor(Settings(transport="redis"), max_attempts=10**power)


@pytest.mark.parametrize("most", [640, 1000])
def test_a_number_too_long_for_its_text_is_said_with_pythons_limit_as_it_is_set(
    most: int,
) -> None:
    """A program may lower Python's limit on an int's digits (sys.set_int_max_str_digits,
    PYTHONINTMAXSTRDIGITS): queue=10**2000 was said to hold "more than 4300 digits"."""
    was = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(most)
    try:
        with pytest.raises(ConfigError) as caught:
            load_settings(None, {"transport": "redis", "queue": 10**2000}, {})
    finally:
        sys.set_int_max_str_digits(was)
    assert str(caught.value).startswith(
        f"Executor keyword queue (DISTQ_QUEUE) holds a number of more than {most} digits"
    ), caught.value


@pytest.mark.parametrize("text", ["9_100", "+5", "\u0663"], ids=repr)
def test_a_string_keyword_of_seconds_and_a_time_limit_are_in_the_digits_0_9_alone(
    text: str,
) -> None:
    """A string Executor keyword of seconds and each limit of DISTQ_TASK_TIME_LIMIT are
    read as the variables are (6399223b): lease_seconds='9_100' was refused as 9100 out
    of range, '+5' and '\u0663' taken, with a Settings object or without one."""
    span = "use a number from 0.3 to 3600 seconds, in the digits 0-9 alone"
    for base in (None, Settings(transport="redis")):
        with pytest.raises(ConfigError) as caught:
            load_settings(base, {**REDIS_KEYWORD, "lease_seconds": text}, {})
        said = str(caught.value)
        assert said.endswith(f"DISTQ_LEASE_SECONDS) is {text!r}, not a number; {span}") or (
            said.endswith(f": DISTQ_LEASE_SECONDS is {text!r}, not a number; {span}")
        ), said
    with pytest.raises(ValueError) as limit:
        TimeLimits.parse(f"30,square={text}")
    assert str(limit.value) == (
        f"is '30,square={text}': the limit of 'square' is {text!r}, not a number; use a "
        "number from 0.1 to 604800 seconds, in the digits 0-9 alone"
    )
    # a float keyword given as a number goes in as its text, which the rule still reads
    assert load_settings(None, {**REDIS_KEYWORD, "drain_seconds": 1e-05}, {}).drain_seconds == 1e-05
