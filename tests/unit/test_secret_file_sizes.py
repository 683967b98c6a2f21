"""A secret's file, or a TLS file, is read up to a limit: one pointed at an endless source
(``/dev/zero``) or at a large file is refused, naming the setting, the path and the limit,
where it was read whole, the process's memory growing until the kernel killed it."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from distq.config import Settings
from distq.credentials import MAX_SECRET_BYTES, SECRETS, read_secret
from distq.errors import ConfigError
from distq.executor_settings import load_settings
from distq.tls import MAX_TLS_FILE_BYTES, TlsFiles
from procs import checkout_env

#: Address space a distq process under test may have: a few times what its imports take,
#: far less than a read without end takes.
_ADDRESS_SPACE = 1 << 30

REDIS_TLS = {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": "rediss://127.0.0.1:1/0"}


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_ADDRESS_SPACE, _ADDRESS_SPACE))


@pytest.mark.parametrize(
    ("variable", "env"),
    [
        ("DISTQ_AUTHKEY_FILE", {}),
        ("DISTQ_SIGNING_KEYS_FILE", {"DISTQ_AUTHKEY": "k"}),
        ("DISTQ_SIGNING_KEY_FILE", {"DISTQ_AUTHKEY": "k"}),
        ("DISTQ_REDIS_PASSWORD_FILE", {"DISTQ_TRANSPORT": "redis"}),
        ("DISTQ_AMQP_PASSWORD_FILE", {"DISTQ_TRANSPORT": "rabbitmq"}),
        ("DISTQ_TLS_CA_FILE", REDIS_TLS),
        ("DISTQ_TLS_CERT_FILE", {**REDIS_TLS, "DISTQ_TLS_KEY_FILE": "/dev/null"}),
        ("DISTQ_TLS_KEY_FILE", {**REDIS_TLS, "DISTQ_TLS_CERT_FILE": "/dev/null"}),
    ],
)
def test_a_file_setting_pointed_at_dev_zero_exits_2_naming_it_and_the_limit(
    variable: str, env: dict[str, str]
) -> None:
    """Was: a worker (or any command) read a secret's /dev/zero until its memory ran out:
    here, under a 1 GiB address space, MemoryError and a traceback (exit 1). OpenSSL gave
    up on a TLS file's /dev/zero itself ("holds no usable PEM certificates"); it is
    refused as too large now, as a secret's is. Exit 2 at once, with one line."""
    done = subprocess.run(
        [sys.executable, "-m", "distq", "worker"],
        env=checkout_env(**env, **{variable: "/dev/zero"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_limited,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    most = MAX_TLS_FILE_BYTES if "_TLS_" in variable else MAX_SECRET_BYTES
    assert done.stderr.startswith(
        f"distq: {variable} names '/dev/zero', which holds more than {most:,} bytes "
    ), done.stderr[-2000:]
    assert len(done.stderr.splitlines()) == 1, done.stderr[-2000:]


def _sparse(path: Path, size: int) -> str:
    with path.open("wb") as file:
        file.truncate(size)
    return str(path)


def test_a_secret_file_of_the_most_bytes_is_read_and_one_more_is_refused(tmp_path: Path) -> None:
    """The limit itself is a secret's (a key of any bytes, a keys file of many keys)."""
    whole = tmp_path / "key"
    whole.write_bytes(b"k" * MAX_SECRET_BYTES)
    assert read_secret(str(whole), "DISTQ_AUTHKEY_FILE") == "k" * MAX_SECRET_BYTES
    big = _sparse(tmp_path / "big", 64 << 20)  # sparse: read whole, 64 MiB of memory
    with pytest.raises(ConfigError) as caught:
        read_secret(big, "DISTQ_SIGNING_KEYS_FILE")
    assert str(caught.value) == (
        f"DISTQ_SIGNING_KEYS_FILE names {big!r}, which holds more than 65,536 bytes (64 KiB), "
        "the most the secret may be (a device, or another file?); mount the secret there or "
        "unset DISTQ_SIGNING_KEYS_FILE"
    )


def test_a_tls_file_past_the_limit_is_refused_before_openssl_reads_it(tmp_path: Path) -> None:
    """OpenSSL holds a PEM block whole: a CA file of one 320 MB block took a worker to
    680 MB before it was refused as "no usable PEM certificates"."""
    big = _sparse(tmp_path / "ca.pem", MAX_TLS_FILE_BYTES + 1)
    with pytest.raises(ConfigError) as caught:
        TlsFiles(ca_file=big).context()
    assert str(caught.value) == (
        f"DISTQ_TLS_CA_FILE names {big!r}, which holds more than 16,777,216 bytes (16 MiB), "
        "the most a PEM file may be (a device, or another file?); mount a PEM file there or "
        "unset DISTQ_TLS_CA_FILE"
    )


_SECRET_ENVS = {
    "DISTQ_AUTHKEY": {},
    "DISTQ_SIGNING_KEYS": {"DISTQ_AUTHKEY": "k"},
    "DISTQ_SIGNING_KEY": {"DISTQ_AUTHKEY": "k"},
    "DISTQ_REDIS_PASSWORD": {"DISTQ_TRANSPORT": "redis"},
    "DISTQ_AMQP_PASSWORD": {"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": "amqp://u@h:5672/"},
}


@pytest.mark.parametrize("variable", SECRETS)
def test_a_secret_variable_holds_at_most_what_its_file_may(variable: str) -> None:
    """DISTQ_SIGNING_KEYS of 97 KiB of keys (about all a variable can hold, 128 KiB) was
    taken, while its file was refused over 64 KiB; so was every other secret's variable
    (and flag, and Executor keyword). Now one limit for both, said as the file's is: what,
    how big, the limit, what to do; the secret itself never shown."""
    env = _SECRET_ENVS[variable]
    most = "k" * MAX_SECRET_BYTES  # one key, or one password, of the most bytes
    Settings.load({**env, variable: most})  # taken, as a file of as many bytes is
    with pytest.raises(ConfigError) as caught:
        Settings.load({**env, variable: most + "é"})  # 2 bytes more, 1 character
    said = str(caught.value)
    assert said.startswith(
        f"{variable} holds {MAX_SECRET_BYTES + 2:,} bytes, more than {MAX_SECRET_BYTES:,} "
        f"bytes (64 KiB), the most a secret may be, as its file {variable}_FILE may hold"
    ), said
    assert "kkkk" not in said and len(said.splitlines()) == 1, said[:300]
    name = variable.removeprefix("DISTQ_").lower()
    with pytest.raises(ConfigError, match=rf"^Executor keyword {name} \({variable}\) holds "):
        load_settings(None, {**_keywords(env), name: most + "é"}, {})


def _keywords(env: dict[str, str]) -> dict[str, object]:
    return {
        k.removeprefix("DISTQ_").lower(): v.encode() if k == "DISTQ_AUTHKEY" else v
        for k, v in {"DISTQ_TRANSPORT": "manager", "DISTQ_AUTHKEY": "k", **env}.items()
    }


_TWO_KEYS = (b"k" * (MAX_SECRET_BYTES - 65), b"j" * 64)  # with a comma: the most, as text
_ONE_BYTE_MORE = (b"k" * (MAX_SECRET_BYTES - 64), b"j" * 64)


@pytest.mark.parametrize(
    ("keywords", "over_settings"),
    [
        ({"signing_keys": _ONE_BYTE_MORE}, False),
        ({"signing_keys": _ONE_BYTE_MORE}, True),
        ({"signing_key": (b"k" * MAX_SECRET_BYTES + b"k",)}, True),
        ({"authkey": b"k" * MAX_SECRET_BYTES + b"k"}, True),
    ],
    ids=["signing_keys", "signing_keys-over-settings", "signing_key", "authkey"],
)
def test_a_secret_keyword_as_bytes_holds_at_most_what_its_variable_may(
    keywords: dict[str, object], over_settings: bool
) -> None:
    """Keys as the tuple of bytes distq asks for (``signing_keys=(key.encode(),)``), or an
    authkey's bytes over a Settings object, were taken past 64 KiB, while the same keys
    as a string keyword (or the variable) were refused: one limit for every form, its
    keys counted as the variable holds them, a comma between each."""
    settings = Settings.load({"DISTQ_AUTHKEY": "k"}) if over_settings else None
    name = next(iter(keywords))
    variable = f"DISTQ_{name.upper()}"
    with pytest.raises(ConfigError) as caught:
        load_settings(settings, {"authkey": b"k", **keywords}, {})
    said = str(caught.value)
    assert said.startswith(
        f"Executor keyword {name} ({variable}) holds {MAX_SECRET_BYTES + 1:,} bytes, more "
        f"than {MAX_SECRET_BYTES:,} bytes (64 KiB)"
    ), said[:300]
    assert "kkkk" not in said, said[:300]
    if name == "signing_keys":  # as many bytes as the variable may hold: taken
        assert load_settings(settings, {"authkey": b"k", name: _TWO_KEYS}, {}).signing_keys == (
            _TWO_KEYS
        )
