from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from certs import CertificateAuthority
from conftest import REPO
from distq.config import DEFAULTS, SETTINGS, Settings, misspelled
from distq.errors import ConfigError
from distq.timelimits import TimeLimits

KEY = {"DISTQ_AUTHKEY": "secret"}


def test_defaults_and_flags_over_environment() -> None:
    settings = Settings.load(
        {**KEY, "DISTQ_QUEUE": "from-env", "DISTQ_LEASE_SECONDS": "2"},
        {"DISTQ_QUEUE": "from-flag", "DISTQ_PREFETCH": None},
    )
    assert settings.transport == "manager"
    assert settings.manager_address == ("127.0.0.1", 9000)
    assert settings.queue == "from-flag"
    assert settings.lease_seconds == 2.0
    assert settings.prefetch == 128
    assert settings.heartbeat_interval == pytest.approx(2 / 3)


def test_repr_hides_secrets() -> None:
    settings = Settings.load(
        {**KEY, "DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": "redis://:pw@127.0.0.1:6379/0"}
    )
    assert "secret" not in repr(settings) and "pw" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DISTQ_TRANSPORT": "kafka"}, ["DISTQ_TRANSPORT", "manager, redis, rabbitmq"]),
        ({"DISTQ_AUTHKEY": ""}, ["DISTQ_AUTHKEY", "not set"]),
        ({**KEY, "DISTQ_MANAGER_ADDRESS": "localhost"}, ["DISTQ_MANAGER_ADDRESS", "host:port"]),
        ({**KEY, "DISTQ_MANAGER_ADDRESS": "h:70000"}, ["DISTQ_MANAGER_ADDRESS"]),
        ({**KEY, "DISTQ_REDIS_URL": "http://x"}, ["DISTQ_REDIS_URL", "redis://"]),
        ({**KEY, "DISTQ_AMQP_URL": "amqp://h:port/"}, ["DISTQ_AMQP_URL", "not a valid URL"]),
        ({**KEY, "DISTQ_QUEUE": "has space"}, ["DISTQ_QUEUE"]),
        ({**KEY, "DISTQ_LEASE_SECONDS": "soon"}, ["DISTQ_LEASE_SECONDS", "not a number"]),
        ({**KEY, "DISTQ_LEASE_SECONDS": "0"}, ["DISTQ_LEASE_SECONDS", "0.3 to 3600"]),
        ({**KEY, "DISTQ_PREFETCH": "1.5"}, ["DISTQ_PREFETCH", "whole number"]),
        ({**KEY, "DISTQ_METRICS_PORT": "99999"}, ["DISTQ_METRICS_PORT"]),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load(env)
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_authkey_is_needed_only_by_manager() -> None:
    assert Settings.load({"DISTQ_TRANSPORT": "redis"}).authkey is None


def test_flag_origin_is_named() -> None:
    with pytest.raises(ConfigError, match="DISTQ_QUEUE --queue"):
        Settings.load(KEY, {"DISTQ_QUEUE": "bad name"})


def test_every_setting_is_one_entry_with_variable_flag_default_and_help() -> None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    assert [e.variable for e in SETTINGS] == [
        f.metadata["setting"].variable for f in fields.values()
    ]
    for entry in SETTINGS:
        assert entry.variable.startswith("DISTQ_") and entry.flag.startswith("--")
        assert entry.flag == "--" + entry.variable.removeprefix("DISTQ_").lower().replace("_", "-")
        assert entry.help and entry.shown_default
    assert Settings() == DEFAULTS and DEFAULTS.prefetch == 128 and DEFAULTS.lease_seconds == 5.0
    loaded = Settings.load({"DISTQ_TRANSPORT": "redis"})
    assert dataclasses.replace(loaded, transport="manager") == DEFAULTS  # defaults are the entries'


def test_values_are_stripped_and_an_empty_metrics_port_is_off() -> None:
    settings = Settings.load({**KEY, "DISTQ_QUEUE": " q1 \n", "DISTQ_METRICS_PORT": ""})
    assert settings.queue == "q1" and settings.metrics_port is None
    assert Settings.load({"DISTQ_AUTHKEY": " k \n"}).authkey == b"k"


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("DISTQ_TRANSPRT", "DISTQ_TRANSPORT"),
        ("DISTQ_PREFECH", "DISTQ_PREFETCH"),
        ("DISTQ_LEASE_SECOND", "DISTQ_LEASE_SECONDS"),
        ("DISTQ_AUTH_KEY", "DISTQ_AUTHKEY"),
        ("DISTQ_AMQP", "DISTQ_AMQP_URL"),
    ],
)
def test_a_misspelled_variable_warns_naming_the_closest_setting(name: str, closest: str) -> None:
    environ = {name: "x", "DISTQ_QUEUE": "q", "PATH": "/bin"}
    assert misspelled(environ) == [
        f"{name} is not a distq setting (ignored); did you mean {closest}?"
    ]


def test_known_and_unrelated_variables_pass_without_a_word() -> None:
    environ = {
        "DISTQ_TRANSPORT": "redis",
        "DISTQ_TEST_REDIS_URL": "redis://127.0.0.1:1/0",  # the test harness's own
        "DISTQ_REDIS_IMAGE": "redis:7",
        "DISTQ_DEBIAN_MIRROR": "http://127.0.0.1/debian",
        "TRANSPORT": "x",
    }
    assert misspelled(environ) == []


@pytest.mark.parametrize(
    ("queue", "part"),
    [
        ("distq.dead", ".dead"),
        ("jobs.retry.500", ".retry."),
        ("jobs.results.x", ".results."),
        ("jobs.held.w-1", ".held."),
    ],
)
def test_a_queue_named_as_another_queues_own_queue_is_refused(queue: str, part: str) -> None:
    """A worker on ``distq.dead`` took queue distq's dead letters for tasks, and
    dead-lettered them as malformed into ``distq.dead.dead``: gone from distq's."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({**KEY, "DISTQ_QUEUE": queue})
    assert str(caught.value).startswith(f"DISTQ_QUEUE is {queue!r}: distq names the queues of ")
    assert f"pick a name without {part!r}" in str(caught.value)
    for fine in ("dead", "jobs.deadline", "jobs.retry", "held.jobs"):
        assert Settings.load({**KEY, "DISTQ_QUEUE": fine}).queue == fine


@pytest.mark.parametrize(
    ("variable", "url", "why"),
    [
        ("DISTQ_REDIS_URL", "redis://h:6379/0?socket_timeout=1", "sets socket_timeout, which "),
        ("DISTQ_REDIS_URL", "redis://h:6379/0?socket_connect_timeout=nan", "'nan'; use a "),
        ("DISTQ_REDIS_URL", "redis://h:6379/0?socket_connect_timeout=-1", "'-1'; use a "),
        ("DISTQ_AMQP_URL", "amqp://u:p@h:5672/%2F?socket_timeout=nan", "'nan'; use a number"),
        ("DISTQ_AMQP_URL", "amqp://u:p@h:5672/%2F?stack_timeout=inf", "'inf'; use a number"),
        ("DISTQ_REDIS_URL", "unix://", "names no socket path"),
        ("DISTQ_REDIS_URL", "unix://tmp/redis.sock", "names no socket path"),
    ],
)
def test_broker_url_options_that_cannot_work_are_refused(variable: str, url: str, why: str) -> None:
    """Redis's socket_timeout replaced distq's (false outages, --exit-when-idle never
    came); NaN or -1 seconds gave a traceback or a wait for good; ``unix://`` without
    a path retried "None:None" for the whole connect timeout."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": "redis", variable: url})
    assert str(caught.value).startswith(f"{variable} ("), caught.value
    assert why in str(caught.value), caught.value
    fine = "unix:///run/redis.sock?db=2", "redis://h:6379/0?socket_connect_timeout=2.5"
    for ok in fine:
        assert Settings.load({"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": ok}).redis_url == ok


def test_the_readme_settings_table_lists_every_setting_with_its_flag_and_default() -> None:
    """Every setting, once, with its flag and default, in the order of ``--help``."""
    readme = (REPO / "README.md").read_text().splitlines()
    for entry in SETTINGS:
        prefix = f"| `{entry.variable}` | `{entry.flag}` | "
        rows = [line for line in readme if line.startswith(prefix)]
        assert len(rows) == 1, f"README.md: no settings row for {entry.variable}"
        default = rows[0].removeprefix(prefix).split(" | ")[0].strip("`")
        assert default == entry.shown_default, entry.variable
    listed = [line.split("`")[1] for line in readme if line.startswith("| `DISTQ_")]
    assert listed == [entry.variable for entry in SETTINGS]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://127.0.0.1:/0", "names no port"),
        ("redis://127.0.0.1/0", "names no port"),
        ("redis://:6379/0", "names no host"),
        ("redis://h:x/0", "not a valid URL"),
        ("redis://h:0/0", "has port 0"),
        ("rediss://h:99999/0", "has port 99999; use 1 to 65535"),
        ("redis://127.0.0.1:70000/0", "has port 70000; use 1 to 65535"),
        ("redis://[::1]:70000/0", "has port 70000; use 1 to 65535"),
        ("redis://:pw@h:70000/0?password=x", "has port 70000; use 1 to 65535"),
        ("redis://:99999/pw@h:6379/0", "not a valid URL"),  # a password's digits: not shown
    ],
)
def test_broker_urls_need_a_host_and_a_numeric_port(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url})
    message = str(caught.value)
    assert message.startswith("DISTQ_REDIS_URL ") and why in message and "\n" not in message
    if "pw" in url:  # nothing of a password is shown, not even as a port
        assert "pw" not in message and "99999" not in message
    with pytest.raises(ConfigError, match="DISTQ_AMQP_URL names no port"):
        Settings.load({"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": "amqp://u:p@h/%2F"})
    ok = Settings.load({"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": "unix:///run/r.sock?db=0"})
    assert ok.redis_url.startswith("unix://")  # a socket path has no host or port


def test_time_limits_per_task_name_and_for_every_task() -> None:
    limits = Settings.load({**KEY, "DISTQ_TASK_TIME_LIMIT": "30, square=2,mod.jobs:fn=0.5"})
    tl = limits.task_time_limit
    assert (tl.for_task("square"), tl.for_task("mod.jobs:fn"), tl.for_task("other")) == (2, 0.5, 30)
    assert tl.describe() == "30,mod.jobs:fn=0.5,square=2"
    assert not Settings.load(KEY).task_time_limit  # off by default
    assert not Settings.load({**KEY, "DISTQ_TASK_TIME_LIMIT": "off"}).task_time_limit
    registered = TimeLimits.parse("square=2").with_registered({"square": 9, "resize": 60})
    assert (registered.for_task("square"), registered.for_task("resize")) == (2, 60)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("soon", "not a number of seconds"),
        ("square=", "not a number of seconds"),
        ("=3", "NAME=SECONDS"),
        ("1,2", "one limit without a name"),
        ("a=1,a=2", "two limits"),
        ("0", "the default limit is 0; use a number from 0.1 to 604800 seconds"),
        ("604800.4", "is 604800.4; use a number from 0.1 to 604800 seconds"),  # :g said 604800
        ("x=1234567", "the limit of 'x' is 1234567; use"),  # :g said 1.23457e+06
    ],
)
def test_bad_time_limits_name_the_variable(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match="DISTQ_TASK_TIME_LIMIT") as caught:
        Settings.load({**KEY, "DISTQ_TASK_TIME_LIMIT": text})
    assert why in str(caught.value)


def test_drain_seconds_and_queue_type() -> None:
    settings = Settings.load(
        {**KEY, "DISTQ_DRAIN_SECONDS": "5", "DISTQ_RABBITMQ_QUEUE_TYPE": "quorum"}
    )
    assert (settings.drain_seconds, settings.rabbitmq_queue_type) == (5.0, "quorum")
    assert (DEFAULTS.drain_seconds, DEFAULTS.rabbitmq_queue_type) == (20.0, "classic")
    with pytest.raises(ConfigError, match="DISTQ_RABBITMQ_QUEUE_TYPE is 'stream'"):
        Settings.load({**KEY, "DISTQ_RABBITMQ_QUEUE_TYPE": "stream"})
    assert Settings(lease_seconds=1.0).master_ttl == 10.0  # at least 10 s
    assert Settings(lease_seconds=5.0).master_ttl == 15.0  # three leases


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "Infinity"])
def test_no_number_setting_takes_nan_or_infinity(text: str) -> None:
    """``float()`` reads these, and NaN passes any ``value <= 0`` check: every setting
    that is a number (and the time limits) must refuse them by name."""
    numeric = [e for e in SETTINGS if isinstance(e.default, (int, float)) and e.variable]
    numeric += [e for e in SETTINGS if e.variable == "DISTQ_METRICS_PORT"]
    assert {"DISTQ_LEASE_SECONDS", "DISTQ_DRAIN_SECONDS", "DISTQ_PREFETCH"} <= {
        e.variable for e in numeric
    }
    for variable in [e.variable for e in numeric] + ["DISTQ_TASK_TIME_LIMIT"]:
        with pytest.raises(ConfigError, match=variable):
            Settings.load({**KEY, variable: text})
        if variable == "DISTQ_TASK_TIME_LIMIT":
            with pytest.raises(ConfigError, match=variable):
                Settings.load({**KEY, variable: f"square={text}"})


@pytest.mark.parametrize("path", ["/abc", "/0x", "/1/2", "/-1", "/ 1", "/\uff15"])
def test_a_redis_url_path_that_is_not_a_database_number_is_refused(path: str) -> None:
    """redis-py reads such a path as database 0 (``/1/2`` as 12) without a word."""
    url = f"redis://:pw@127.0.0.1:6379{path}"
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url})
    message = str(caught.value)
    assert message.startswith("DISTQ_REDIS_URL (redis://:***@127.0.0.1:6379")
    assert "not a database number" in message and "pw" not in message


@pytest.mark.parametrize("path", ["", "/", "/0", "/15", "/3/"])
def test_a_redis_url_may_end_with_a_database_number_or_nothing(path: str) -> None:
    url = f"redis://127.0.0.1:6379{path}"
    settings = Settings.load({"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url})
    assert settings.redis_url == url


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        (
            "DISTQ_MAX_MESSAGE_BYTES",
            "134217729",
            "is 134217729; use a whole number from 1024 to 134217728 bytes (128 MiB)",
        ),
        ("DISTQ_PREFETCH", "1234567", "is 1234567; use a whole number from 1 to 10000"),
        ("DISTQ_LEASE_SECONDS", "123456.7", "is 123456.7; use a number from 0.3 to 3600 seconds"),
        ("DISTQ_STALL_SECONDS", "0.05", "is 0.05; use a number from 0.1 to 86400 seconds"),
    ],
)
def test_a_number_out_of_range_is_quoted_with_every_digit(
    variable: str, text: str, message: str
) -> None:
    """``:g`` kept 6 digits: "is 1.34218e+08; use ... to 1.34218e+08 bytes"."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({**KEY, variable: text})
    assert str(caught.value) == f"{variable} {message}"


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("::1", "write an IPv6 address in brackets, then its port: [::1]:PORT, e.g. [::1]:9000"),
        ("::", "[::]:PORT"),
        ("fe80::1", "[fe80::1]:PORT"),
        ("[::1", "[ADDRESS]:PORT"),
        ("http://h:9000", "use host:port without a scheme"),
        ("h]:9000", "use host:port, e.g. 127.0.0.1:9000"),
    ],
)
def test_a_manager_address_that_is_not_host_port_is_refused(text: str, hint: str) -> None:
    """``::1`` was read as host ':' and port 1, ``http://h:9000`` as host 'http://h':
    an unreachable master (exit 3) for a typo."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({**KEY, "DISTQ_MANAGER_ADDRESS": text})
    assert str(caught.value).startswith(f"DISTQ_MANAGER_ADDRESS is {text!r}")
    assert hint in str(caught.value)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("[::1]:9000", ("::1", 9000)),
        ("[::]:9001", ("::", 9001)),
        ("h.example:1", ("h.example", 1)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
    ],
)
def test_a_manager_address_is_host_port_with_ipv6_in_brackets(
    text: str, address: tuple[str, int]
) -> None:
    assert Settings.load({**KEY, "DISTQ_MANAGER_ADDRESS": text}).manager_address == address


def test_a_metrics_port_of_0_is_refused_and_empty_is_off() -> None:
    """0 bound a random port, which neither ``distq probe`` nor Prometheus can find."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({**KEY, "DISTQ_METRICS_PORT": "0"})
    assert str(caught.value) == "DISTQ_METRICS_PORT is 0; use a whole number from 1 to 65535"
    assert Settings.load({**KEY, "DISTQ_METRICS_PORT": "1"}).metrics_port == 1
    assert Settings.load({**KEY, "DISTQ_METRICS_PORT": " "}).metrics_port is None


def _readme_defaults() -> dict[str, str]:
    """Each setting's default column in the README's table, by variable."""
    text = (REPO / "README.md").read_text()
    return {
        name: default.strip()
        for name, default in re.findall(r"^\| `(DISTQ_\w+)` \|[^|]*\|([^|]*)\|", text, re.M)
    }


def _loaded(env: dict[str, str]) -> Settings | str:
    try:
        return Settings.load(env)
    except ConfigError as exc:
        return str(exc)


@pytest.mark.parametrize("name", sorted(_readme_defaults()))
def test_an_empty_variable_is_unset_or_refused_as_the_readme_says(name: str) -> None:
    """The README: empty is unset for a setting off unless set (its default in
    parentheses), and an error, not the default, for one with a default value."""
    base = {"DISTQ_AUTHKEY": "k"}
    unset = {key: value for key, value in base.items() if key != name}
    empty = _loaded({**unset, name: ""})
    if _readme_defaults()[name].startswith("("):
        assert empty == _loaded(unset)
    else:
        assert isinstance(empty, str) and empty.startswith(name), empty


RABBIT = {"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": "amqp://u:p@127.0.0.1:5672/%2F"}


REDIS = {"DISTQ_TRANSPORT": "redis"}
AMQP_USER = {"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": "amqp://distq@127.0.0.1:5672/%2F"}


@pytest.mark.parametrize("value", ["a\x01b", "host\x7f"])
def test_a_metrics_host_with_a_control_character_is_refused_as_its_flag_refuses_it(
    value: str,
) -> None:
    """The variable took what --metrics-host refused (code24 U3)."""
    with pytest.raises(ConfigError, match=r"^DISTQ_METRICS_HOST is "):
        Settings.load({**KEY, "DISTQ_METRICS_HOST": value})


@pytest.mark.parametrize(
    ("variable", "value", "env"),
    [
        ("DISTQ_REDIS_URL", "redis://redis..local:6379/0", REDIS),
        ("DISTQ_AMQP_URL", "amqp://u:p@rabbit..local:5672/%2F", RABBIT),
        ("DISTQ_MANAGER_ADDRESS", "master..local:9000", {}),
        ("DISTQ_MANAGER_ADDRESS", f"{'m' * 64}.local:9000", {}),
        ("DISTQ_METRICS_HOST", "a..b", {}),
        ("DISTQ_RABBITMQ_MANAGEMENT_URL", "http://x..y:15672", RABBIT),
    ],
)
def test_a_host_name_that_cannot_be_looked_up_is_a_bad_setting(
    variable: str, value: str, env: dict[str, str]
) -> None:
    """Python turns a host into its ASCII form before the lookup: an empty label failed
    there, with a traceback at the first connect (exit 1; from an Executor, a bare
    UnicodeError)."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({**KEY, **env, variable: value})
    message = str(caught.value)
    assert message.startswith(variable + " ") and "not a host name" in message, message


@pytest.mark.parametrize(
    ("variable", "value", "env"),
    [
        ("DISTQ_REDIS_URL", "redis://:s3cr\udce9t@127.0.0.1:6379/0", REDIS),
        ("DISTQ_REDIS_PASSWORD", "s3cr\udce9t", REDIS),
        ("DISTQ_AMQP_PASSWORD", "s3cr\udce9t", AMQP_USER),
        ("DISTQ_RABBITMQ_MANAGEMENT_URL", "http://u:s3cr\udce9t@127.0.0.1:15672", RABBIT),
    ],
)
def test_bytes_that_are_not_utf8_in_a_url_or_password_are_a_bad_setting(
    variable: str, value: str, env: dict[str, str]
) -> None:
    """A Latin-1 byte from an env file is a lone surrogate in Python, which no broker
    protocol can send: a traceback at the first connect. The message shows none of it."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({**KEY, **env, variable: value})
    message = str(caught.value)
    assert message.startswith(variable + " holds bytes that are not UTF-8"), message
    assert "s3cr" not in message


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("decode_responses=true", "sets decode_responses, which distq cannot work with"),
        ("encoding=utf-16", "sets encoding, which distq cannot work with"),
        ("encoding_errors=ignore", "sets encoding_errors, which distq cannot work with"),
        ("protocol=9", "has protocol='9'; use 2 or 3"),
        ("client_name=a%20b", "has client_name='a b'; use a name without spaces"),
    ],
)
def test_redis_url_options_distq_cannot_work_with_are_refused(query: str, why: str) -> None:
    """With decode_responses every reply came back as text: a worker reconnected for good
    and a master lost every result; protocol=9 and a client name with a space read as
    the broker being unreachable (exit 3)."""
    env = {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": f"redis://127.0.0.1:6379/0?{query}"}
    with pytest.raises(ConfigError) as caught:
        Settings.load(env)
    assert str(caught.value).startswith("DISTQ_REDIS_URL (") and why in str(caught.value)
    fine = "redis://127.0.0.1:6379/0?protocol=3&client_name=jobs-1"
    assert Settings.load({**env, "DISTQ_REDIS_URL": fine}).redis_url == fine


@pytest.mark.parametrize("text", ["+28995", "9_100", "\u0669\u0661\u0660\u0660", "0x10"])
def test_whole_numbers_are_ascii_digits_as_the_probe_reads_them(text: str) -> None:
    """int() took "+28995" and "9_100": the worker served its endpoint there, and the
    healthcheck's `distq probe`, which reads ASCII digits, refused the same variable."""
    with pytest.raises(
        ConfigError, match=re.escape(f"DISTQ_METRICS_PORT is {text!r}, not a whole number")
    ):
        Settings.load({**KEY, "DISTQ_METRICS_PORT": text})  # fmt: skip


def test_tls_files_serve_an_https_management_api_over_a_plain_amqp_broker(
    tmp_path: Path,
) -> None:
    """The CA file checks an https management API too (README): with AMQP in the clear
    it was refused, and a private CA could not be given for the API."""
    ca = CertificateAuthority(tmp_path)
    env = {**RABBIT, "DISTQ_TLS_CA_FILE": str(ca.cert)}
    with pytest.raises(ConfigError, match="DISTQ_AMQP_URL is amqp://"):
        Settings.load(env)  # nothing would use it
    with pytest.raises(ConfigError, match="DISTQ_AMQP_URL is amqp://"):
        Settings.load({**env, "DISTQ_RABBITMQ_MANAGEMENT_URL": "http://h:15672"})
    https = Settings.load({**env, "DISTQ_RABBITMQ_MANAGEMENT_URL": "https://h:15671"})
    assert https.tls_files.ca_file == str(ca.cert)


@pytest.mark.parametrize(
    ("path", "refused"),
    [("/a/b", True), ("/a%2Fb", False), ("/%2F", False), ("/a/", False), ("", False)],
)
def test_an_amqp_url_whose_path_is_more_than_one_vhost_is_refused(path: str, refused: bool) -> None:
    """pika takes the first segment as the vhost: /a/b connected to vhost 'a' without a
    word, or said vhost 'a' was refused, a name the user never wrote (input17)."""
    env = {"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": f"amqp://u:p@h:5672{path}"}
    if not refused:
        assert Settings.load(env).amqp_url.endswith(f"5672{path}")
        return
    with pytest.raises(ConfigError, match=r"has path '/a/b': a vhost is one segment; percent"):
        Settings.load(env)


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DISTQ_REDIS_URL", "redis://fe80::1:6379/0"),
        ("DISTQ_REDIS_URL", "redis://h:1:2/0"),
        ("DISTQ_AMQP_URL", "amqp://u:p@::1:5672/%2F"),
    ],
)
def test_a_url_with_an_unbracketed_ipv6_host_is_not_told_its_good_port_is_bad(
    variable: str, url: str
) -> None:
    """A host:port part with more ':' than one named its (valid) last digits as the bad
    port: "has port 6379; use 1 to 65535"."""
    transport = "redis" if variable == "DISTQ_REDIS_URL" else "rabbitmq"
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": transport, variable: url})
    message = str(caught.value)
    assert "use 1 to 65535" not in message, message
    assert message.startswith(variable) and "brackets" in message and "[::1]" in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/2147483648",
        "redis://127.0.0.1:6379/99999999999999999999",
        "redis://127.0.0.1:6379/0?db=2147483648",
        "unix:///run/redis.sock?db=2147483648",
        "redis://127.0.0.1:6379/" + "9" * 5000,  # redis-py read it as database 0, unsaid
    ],
)
def test_a_redis_database_past_what_select_takes_is_a_bad_setting(url: str) -> None:
    """Redis's SELECT reads a C int: past it the server said "value is out of range" at
    the first connect, which read as a broker failing (exit 3), not a bad value (exit 2)."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url})
    message = str(caught.value)
    assert message.startswith("DISTQ_REDIS_URL (") and "past any Redis server's" in message
    ok = "redis://127.0.0.1:6379/2147483647"  # the server says whether it has that one
    assert Settings.load({"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": ok}).redis_url == ok


@pytest.mark.parametrize(
    ("variable", "name"),
    [
        ("DISTQ_REDIS_URL", "socket_connect_timeout"),
        ("DISTQ_AMQP_URL", "stack_timeout"),
        ("DISTQ_AMQP_URL", "socket_timeout"),  # distq sets Redis's from the lease, not AMQP's
        ("DISTQ_AMQP_URL", "blocked_connection_timeout"),
        ("DISTQ_AMQP_URL", "retry_delay"),
    ],
)
@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("\u0663", "\u0663"),  # an Arabic-Indic 3
        ("%D9%A3", "\u0663"),  # the same, as a URL escapes it
        ("%EF%BC%95", "\uff15"),  # a fullwidth 5
        ("1_0", "1_0"),  # 10 to float(): 1.0, or 10?
        ("%2B5", "+5"),
        ("+5", " 5"),  # a URL's query reads a '+' as a space
        ("%205", " 5"),
        ("5%20", "5 "),
    ],
)
def test_broker_url_seconds_are_read_in_the_digits_0_9_alone(
    variable: str, name: str, written: str, read: str
) -> None:
    """A URL's seconds were read by float(), which takes other scripts' digits, '_'
    between digits, a sign and spaces around (redis-py and pika read them so too): every
    other number of seconds distq reads, a flag's or a variable's, is refused unless in
    the digits 0-9 alone (ranges.decimal)."""
    base = "redis://h:6379/0" if variable == "DISTQ_REDIS_URL" else "amqp://u:p@h:5672/%2F"
    transport = "redis" if variable == "DISTQ_REDIS_URL" else "rabbitmq"
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": transport, variable: f"{base}?{name}={written}"})
    message = str(caught.value)
    assert message.startswith(f"{variable} ("), message
    assert f"has {name}={read!r}; use a number of seconds " in message, message
    assert "in the digits 0-9 alone" in message, message
    assert ("reads a '+' or %20 as a space" in message) == (read != read.strip()), message
    out_of_range = f"{base}?{name}=-5"  # a number's text: nothing of its digits
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": transport, variable: out_of_range})
    assert "has " in str(caught.value) and "digits" not in str(caught.value), caught.value
    for ok in ("5", "0.5", ".5", "5.", "1e1", "2.5E-1"):
        fine = f"{base}?{name}={ok}"
        loaded = Settings.load({"DISTQ_TRANSPORT": transport, variable: fine})
        assert (loaded.redis_url if transport == "redis" else loaded.amqp_url) == fine


@pytest.mark.parametrize(
    "query",
    [
        "connection_attempts=2&retry_delay=nan",
        "connection_attempts=2&retry_delay=inf",
        "connection_attempts=2&retry_delay=-5",
        "retry_delay=2e6",
        "blocked_connection_timeout=nan",
        "blocked_connection_timeout=inf",
    ],
)
def test_amqp_url_delays_that_cannot_work_are_refused(query: str) -> None:
    """pika takes any float for retry_delay: NaN or inf waited for good between two
    connection attempts (a worker that never started, nor said why), -5 raised a
    traceback at the first connect; blocked_connection_timeout=nan passed the README's
    "timeout options in seconds above 0" unrefused."""
    url = f"amqp://u:p@h:5672/%2F?{query}"
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": url})
    name, _, value = query.rpartition("&")[2].partition("=")
    assert str(caught.value).startswith("DISTQ_AMQP_URL ("), caught.value
    assert f"has {name}={value!r}; use a number of seconds" in str(caught.value), caught.value
    for ok in ("retry_delay=0", "connection_attempts=3&retry_delay=2.5"):
        fine = f"amqp://u:p@h:5672/%2F?{ok}"
        loaded = Settings.load({"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": fine})
        assert loaded.amqp_url == fine


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DISTQ_AMQP_URL", "amqp://guest:pa#ss@127.0.0.1:5672/%2F"),
        ("DISTQ_AMQP_URL", "amqp://guest:pa?ss@127.0.0.1:5672/%2F"),
        ("DISTQ_REDIS_URL", "redis://:pa#ss@127.0.0.1:6379/0"),
        ("DISTQ_REDIS_URL", "redis://:pa?ss@127.0.0.1:6379/0"),
        ("DISTQ_AMQP_URL", "amqp://guest:12#ss@127.0.0.1:5672/%2F"),
        ("DISTQ_AMQP_URL", "amqp://guest:12?ss@127.0.0.1:5672/%2F"),
        ("DISTQ_REDIS_URL", "redis://u:12#ss@127.0.0.1:6379/0"),
        ("DISTQ_REDIS_URL", "redis://:12?ss@127.0.0.1:6379/0"),
    ],
)
def test_a_password_holding_a_hash_or_a_question_mark_is_named_as_the_cause(
    variable: str, url: str
) -> None:
    """The hint named '/', '@' and ':' only: a password holding '#' or '?' (which end a
    URL's host part as '/' does) read as a port that is not a number, and the user
    looked for characters the password does not hold. One of digits before them read
    as a port: ``amqp://guest:12#ss@...`` was taken as host 'guest', port 12 (an
    unreachable broker, exit 3), ``redis://:12?ss@...`` as naming no host."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": "redis", variable: url})
    message = str(caught.value)
    assert message.startswith(f"{variable} ("), message
    assert "is not a valid URL" in message, message
    char = "#" if "#" in url else "?"
    assert f"{char!r}" in message and ("%23" if char == "#" else "%3F") in message, message
    assert "ss@" not in message  # the password stays masked


@pytest.mark.parametrize(
    "value", ["user@127.0.0.1:9000", "a b:9000", "master/x:9000", "[a b]:9000", "h\t:9000"]
)
def test_a_manager_address_whose_host_no_lookup_can_take_is_refused(value: str) -> None:
    """DISTQ_MANAGER_ADDRESS=user@127.0.0.1:9000 (or a host with a blank or a '/') was
    taken: a worker tried "user@127.0.0.1" for its whole --connect-timeout, then exited 3
    asking whether the master runs there, where DISTQ_METRICS_HOST and `probe --host`
    refuse such a host at once."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({**KEY, "DISTQ_MANAGER_ADDRESS": value})
    message = str(caught.value)
    assert message.startswith(f"DISTQ_MANAGER_ADDRESS is {value.strip()!r}"), message
    assert "e.g. 127.0.0.1:9000" in message, message


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DISTQ_REDIS_URL", "redis://redis host:6379/0"),
        ("DISTQ_AMQP_URL", "amqp://u:p@rabbit host:5672/%2F"),
        ("DISTQ_RABBITMQ_MANAGEMENT_URL", "http://rabbit host:15672"),
    ],
)
def test_a_broker_url_whose_host_holds_a_blank_is_refused(variable: str, url: str) -> None:
    """``redis://redis host:6379/0`` was taken: a worker tried host 'redis host' for its
    whole --connect-timeout, then exited 3 as if the broker were down."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": "redis", variable: url})
    message = str(caught.value)
    assert message.startswith(f"{variable} ("), message
    assert "host" in message and "not a host" in message, message


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis://:p[w@127.0.0.1:6379/0", "its user or password holds '[' or ']'"),
        ("redis://:p]w@127.0.0.1:6379/0", "its user or password holds '[' or ']'"),
        ("redis://:p[w]@127.0.0.1:6379/0", "its user or password holds '[' or ']'"),
        ("amqp://u:p[w@127.0.0.1:5672/%2F", "its user or password holds '[' or ']'"),
        ("redis://[::1:6379/0", "its host has a '[' without a ']'"),
    ],
)
def test_a_bracket_out_of_place_in_a_broker_url_is_named(url: str, said: str) -> None:
    """A password holding '[' or ']' was said to be a host and port with more than one
    ':' (the host was 127.0.0.1:6379), and an IPv6 host missing its ']' a port that is
    not a number, with a hint about a password the URL does not have."""
    variable = "DISTQ_AMQP_URL" if url.startswith("amqp") else "DISTQ_REDIS_URL"
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": "redis", variable: url})
    message = str(caught.value)
    assert message.startswith(f"{variable} ("), message
    assert said in message and "more than one ':'" not in message, message
    assert "p[w" not in message and "p]w" not in message, message


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0", "0"),
        ("1", "1"),
        ("2", "2"),
        ("02", "2"),
        ("65536", "65536"),
        ("9" * 40, "about 10**39"),
        ("9" * 5000, "about 10**4999"),
    ],
    ids=lambda value: value[:8],
)
def test_an_amqp_channel_max_out_of_range_is_refused_in_distqs_words(
    value: str, shown: str
) -> None:
    """channel_max=1 or 2 failed commands with NoFreeChannels, exit 3 (see
    tests/integration/test_cli_settings.py). 0, 65536 and 5,000 digits went on to pika,
    which refused them in its words inside distq's ("channel_max must be <= 65535 and >
    0, but got 65536"; for 5,000 digits Python's "Exceeds the limit (4300 digits) for
    integer string conversion", all of them on the line): now refused as a variable's
    number out of range is, before pika reads the URL."""
    url = f"amqp://u:p@h:5672/%2F?channel_max={value}"
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": url})
    said = str(caught.value)
    assert f"): channel_max is {shown}; use a whole number from 3 to 65535 (" in said, said
    assert said.endswith(", or leave the option out"), said


def test_an_amqp_channel_max_in_range_behind_thousands_of_zeros_says_why_it_is_refused() -> None:
    """channel_max=000...03 (5,000 zeros) is no number pika reads (Python's 4,300 digits):
    refused, it said "channel_max is 3; use a whole number from 3 to 65535", a 3 out of a
    range it is in. Now it says how many digits it was written in, and to drop the zeros."""
    url = f"amqp://u:p@h:5672/%2F?channel_max={'0' * 5000}3"
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": url})
    said = str(caught.value)
    expected = (
        "): channel_max is 3 written in 5,001 digits; use a whole number from 3 to 65535, "
        "without leading zeros (distq opens"
    )
    assert expected in said, said


def test_an_amqp_channel_max_in_range_is_taken() -> None:
    for value in ("3", "2047", "65535"):
        url = f"amqp://u:p@h:5672/%2F?channel_max={value}"
        assert Settings.load({"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": url}).amqp_url == url


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"DISTQ_MANAGER_ADDRESS": "127.0.0.1:" + "9" * 5000}, "is '127.0.0.1:9999"),
        (
            {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": f"redis://h:{'9' * 5000}/0"},
            "has port about 10**4999; use 1 to 65535, e.g. redis://",
        ),
        (
            {"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": f"amqp://h:{'9' * 5000}/"},
            "has port about 10**4999; use 1 to 65535, e.g. amqp://",
        ),
    ],
    ids=["manager", "redis", "amqp"],
)
def test_a_port_of_thousands_of_digits_is_refused_in_distqs_words(
    env: dict[str, str], said: str
) -> None:
    """int() of a port past its 4300 digits raised Python's "Exceeds the limit (4300
    digits) for integer string conversion", which the refusal said instead of distq's
    words, as the same port of 5 digits is refused."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_AUTHKEY": "k", **env})
    assert said in str(caught.value) and "Exceeds the limit" not in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": "redis://h:\u00b2/0"},
        {"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": "amqp://h:\u00b9\u00b2/"},
    ],
    ids=["redis", "amqp"],
)
def test_a_url_port_of_non_ascii_digits_is_refused_in_distqs_words(env: dict[str, str]) -> None:
    """A port of superscript digits passes str.isdigit() but not int(): the refusal was
    Python's "invalid literal for int() with base 10: '²'", not distq's words."""
    with pytest.raises(ConfigError) as caught:
        Settings.load(env)
    said = str(caught.value)
    assert "is not a valid URL: its port is not a number; percent-encode" in said, said
    assert "int()" not in said, said


_NINES = "9" * 5000


@pytest.mark.parametrize(
    ("env", "said"),
    [
        (
            {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": f"redis://:pw@h:{_NINES}/0"},
            "DISTQ_REDIS_URL (redis://:***@h:999",
        ),
        (
            {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": f"redis://:pw@h:6379/{_NINES}"},
            "DISTQ_REDIS_URL (redis://:***@h:6379/999",
        ),
        (
            {
                "DISTQ_TRANSPORT": "redis",
                "DISTQ_REDIS_URL": f"redis://:pw@h:6379/0?socket_connect_timeout={_NINES}",
            },
            "has socket_connect_timeout='9999999999999999999999999999999999999999'... (5,000 "
            "characters); use a number of seconds",
        ),
        (
            {"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": f"amqp://u:pw@h:{_NINES}/%2F"},
            "DISTQ_AMQP_URL (amqp://u:***@h:999",
        ),
        (
            {
                "DISTQ_TRANSPORT": "rabbitmq",
                "DISTQ_AMQP_URL": f"amqp://u:pw@h:5672/%2F?channel_max={_NINES}",
            },
            "): channel_max is about 10**4999; use a whole number from 3 to 65535",
        ),
        ({"DISTQ_MANAGER_ADDRESS": f"127.0.0.1:{_NINES}"}, "is '127.0.0.1:999"),
        ({"DISTQ_TASK_TIME_LIMIT": f"30,square={'x' * 5000}"}, "is '30,square=xxx"),
    ],
    ids=[
        "redis-port",
        "redis-database",
        "redis-option",
        "amqp-port",
        "amqp-channels",
        "manager",
        "time-limit",
    ],
)
def test_a_setting_of_thousands_of_characters_is_refused_by_its_start_and_length(
    env: dict[str, str], said: str
) -> None:
    """A URL holding a port, a database or an option of 5,000 digits was refused with
    every digit on the line (masked, but whole), as an address's port and a time limit of
    5,000 characters were: each refusal now shows the start of the text and its length."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_AUTHKEY": "k", **env})
    refused = str(caught.value)
    assert said in refused, refused
    assert re.search(r"\.\.\. \(5,0[0-9][0-9] characters\)", refused), refused
    assert len(refused) < 800 and "pw" not in refused, refused


@pytest.mark.parametrize(
    ("variable", "text", "shown"),
    [
        ("DISTQ_TRANSPORT", "x" * 5000, f"is {'x' * 40!r}... (5,000 characters); set it to one"),
        ("DISTQ_LOG_FORMAT", "x" * 5000, f"is {'x' * 40!r}... (5,000 characters); set it to one"),
        (
            "DISTQ_RABBITMQ_QUEUE_TYPE",
            "x" * 5000,
            f"is {'x' * 40!r}... (5,000 characters); set it to one",
        ),
        ("DISTQ_QUEUE", "q" * 5000, f"is {'q' * 300!r}... (5,000 characters); use 1-100 letters"),
    ],
    ids=["transport", "log-format", "queue-type", "queue"],
)
def test_a_word_or_a_queue_name_of_thousands_of_characters_is_shown_by_its_start(
    variable: str, text: str, shown: str
) -> None:
    """DISTQ_TRANSPORT (a word of a few choices) and DISTQ_QUEUE of 5,000 characters put
    all 5,000 on the refusal's line, where a number's, an address's or a URL's refusal
    shows the text's start and its length: so do these now (a word past 40 characters,
    a queue name, 100 at most, past 300)."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({**KEY, variable: text})
    refused = str(caught.value)
    assert refused.startswith(f"{variable} {shown}"), refused[:400]
    assert len(refused) < 500, len(refused)
