"""Secrets from files, passwords kept out of URLs and output, TLS and limit settings."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from certs import CertificateAuthority
from conftest import REPO
from distq import tls
from distq.config import SETTINGS, Settings
from distq.credentials import SECRETS, mask_url
from distq.errors import ConfigError
from distq.logs import mask_secrets
from distq.signing import key_id
from distq.transport.rabbitmq_link import Broker

KEY = {"DISTQ_AUTHKEY": "secret-authkey-value"}
SIGNING = "k" * 16 + "-signing"


def secret_file(tmp_path: Path, text: str, name: str = "secret") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load(env: dict[str, str], flags: dict[str, str | None] | None = None) -> Settings:
    return Settings.load(env, flags)


def error(env: dict[str, str], flags: dict[str, str | None] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.load(env, flags)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- *_FILE ------------------------------------------------------------------------


def test_every_secret_has_a_file_variant_with_a_flag() -> None:
    flags = {entry.variable: entry.flag for entry in SETTINGS}
    for var in SECRETS:
        assert var in flags and var + "_FILE" in flags
    assert flags["DISTQ_SIGNING_KEYS_FILE"] == "--signing-keys-file"


def test_a_file_holds_the_secret_without_its_trailing_newline(tmp_path: Path) -> None:
    settings = load(
        {
            "DISTQ_AUTHKEY_FILE": secret_file(tmp_path, "from-a-file\n", "a"),
            "DISTQ_SIGNING_KEYS_FILE": secret_file(tmp_path, f"{SIGNING}1\n{SIGNING}2\n", "k"),
        }
    )
    assert settings.authkey == b"from-a-file"
    assert settings.signing_keys == (f"{SIGNING}1".encode(), f"{SIGNING}2".encode())


def test_a_file_keeps_inner_whitespace(tmp_path: Path) -> None:
    assert load({"DISTQ_AUTHKEY_FILE": secret_file(tmp_path, "a b\r\n")}).authkey == b"a b"


def test_a_file_keeps_the_spaces_around_its_secret(tmp_path: Path) -> None:
    """Only the trailing newline goes, as documented; was: every surrounding blank."""
    settings = load(
        {
            "DISTQ_TRANSPORT": "redis",
            "DISTQ_AUTHKEY_FILE": secret_file(tmp_path, "\tkey with blanks \r\n", "a"),
            "DISTQ_REDIS_PASSWORD_FILE": secret_file(tmp_path, " my-redis-password \n", "r"),
        }
    )
    assert settings.authkey == b"\tkey with blanks "
    assert redis.connection.parse_url(settings.redis_url)["password"] == " my-redis-password "
    # a variable's value is stripped like every setting's (an editor's or a shell's blank)
    assert load({"DISTQ_AUTHKEY": " k \n"}).authkey == b"k"


def test_an_error_in_a_secret_from_a_file_names_the_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "tooshort\n")
    message = error({"DISTQ_TRANSPORT": "redis", "DISTQ_SIGNING_KEYS_FILE": path})
    assert message.startswith(
        f"DISTQ_SIGNING_KEYS (read from DISTQ_SIGNING_KEYS_FILE {path!r}) has key 1 of 1 "
        "8 characters long"
    )
    assert "tooshort" not in message.replace(path, "")


def test_setting_a_secret_and_its_file_is_an_error(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "x")
    message = error({"DISTQ_AUTHKEY": "y", "DISTQ_AUTHKEY_FILE": path})
    assert "DISTQ_AUTHKEY_FILE and DISTQ_AUTHKEY are both set" in message
    message = error(KEY, {"DISTQ_AUTHKEY": "y", "DISTQ_AUTHKEY_FILE": path})
    assert "DISTQ_AUTHKEY_FILE --authkey-file and DISTQ_AUTHKEY --authkey are both given" in (
        message
    )


def test_a_bad_secret_file_given_as_a_flag_or_keyword_is_named_so(tmp_path: Path) -> None:
    """The flag or the Executor keyword was said to be the variable, with the advice to
    unset a variable that was not set (input17)."""
    missing = str(tmp_path / "missing")
    message = error({}, {"DISTQ_AUTHKEY_FILE": missing})
    assert message.startswith(f"DISTQ_AUTHKEY_FILE --authkey-file names {missing!r}")
    assert message.endswith("mount the secret there or leave it out")
    keyword = {"DISTQ_AUTHKEY_FILE": "Executor keyword authkey_file (DISTQ_AUTHKEY_FILE)"}
    with pytest.raises(ConfigError) as caught:
        Settings.load({}, {"DISTQ_AUTHKEY_FILE": missing}, keyword)
    assert str(caught.value).startswith("Executor keyword authkey_file (DISTQ_AUTHKEY_FILE)")
    assert error({"DISTQ_AUTHKEY_FILE": missing}).endswith("or unset DISTQ_AUTHKEY_FILE")


def test_a_flag_wins_over_the_environment_for_either_spelling(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "from-file")
    assert load(KEY, {"DISTQ_AUTHKEY_FILE": path}).authkey == b"from-file"
    assert load({"DISTQ_AUTHKEY_FILE": path}, {"DISTQ_AUTHKEY": "flag"}).authkey == b"flag"


def test_a_file_variable_is_stripped_and_a_blank_one_is_unset(tmp_path: Path) -> None:
    """As every variable's value and the TLS files': a compose ``value: "/run/secrets/x "``
    named a file that does not exist, and a blank one counted as set."""
    path = secret_file(tmp_path, "from-file")
    assert load({"DISTQ_AUTHKEY_FILE": f" {path} \n"}).authkey == b"from-file"
    assert load({"DISTQ_AUTHKEY_FILE": "   ", "DISTQ_AUTHKEY": "k"}).authkey == b"k"
    assert load({"DISTQ_AUTHKEY_FILE": path, "DISTQ_AUTHKEY": "  "}).authkey == b"from-file"
    assert load({"DISTQ_AUTHKEY_FILE": path}, {"DISTQ_AUTHKEY_FILE": " "}).authkey == b"from-file"
    assert load(KEY, {"DISTQ_AUTHKEY_FILE": f"\t{path} "}).authkey == b"from-file"
    message = error({"DISTQ_AUTHKEY_FILE": f" {path}x "})
    assert f"DISTQ_AUTHKEY_FILE names {path + 'x'!r}, which cannot be read" in message


@pytest.mark.parametrize(
    ("var", "content", "problem"),
    [
        ("DISTQ_AUTHKEY", None, "cannot be read"),
        ("DISTQ_AUTHKEY", "\n", "empty"),
        ("DISTQ_REDIS_PASSWORD", b"\xff\xfe", "not UTF-8 text; write the password in UTF-8"),
    ],
)
def test_a_bad_secret_file_names_the_variable_and_path(
    tmp_path: Path, var: str, content: str | bytes | None, problem: str
) -> None:
    path = tmp_path / "s"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    message = error({"DISTQ_TRANSPORT": "redis", f"{var}_FILE": str(path)})
    assert message.startswith(f"{var}_FILE") and str(path) in message and problem in message


def test_a_key_file_of_random_bytes_holds_the_key_the_variable_would(tmp_path: Path) -> None:
    """`head -c 32 /dev/urandom > key`: its bytes are the key, as in the variable (whose
    bytes os.environ keeps with surrogateescape); they were refused as not UTF-8. A list
    of keys is split at commas and line ends, which random bytes hold (a fifth of 32-byte
    keys, diff17): its file must be text, and says how to write one."""
    raw = b"\xe9\x00\xff" + bytes(range(0x80, 0x9D)) + b"\xc3"
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "one").write_bytes(raw + b",\xfe")
    settings = load({"DISTQ_AUTHKEY_FILE": str(tmp_path / "a")})
    assert settings.authkey == raw
    from_env = load({**KEY, "DISTQ_SIGNING_KEY": (raw + b",\xfe").decode(errors="surrogateescape")})
    from_file = load({**KEY, "DISTQ_SIGNING_KEY_FILE": str(tmp_path / "one")})
    assert from_file.signing_keys == from_env.signing_keys == (raw + b",\xfe",)
    message = error({**KEY, "DISTQ_SIGNING_KEYS_FILE": str(tmp_path / "one")})
    assert "which is not UTF-8 text; a list of keys is text, one per line" in message
    assert "DISTQ_SIGNING_KEY_FILE" in message


def test_a_password_file_goes_into_the_url(tmp_path: Path) -> None:
    settings = load(
        {
            "DISTQ_TRANSPORT": "rabbitmq",
            "DISTQ_REDIS_URL": "redis://10.0.0.1:6379/2",
            "DISTQ_REDIS_PASSWORD_FILE": secret_file(tmp_path, "p@ss/w:rd\n", "r"),
            "DISTQ_AMQP_URL": "amqps://distq@rabbit:5671/%2F",
            "DISTQ_AMQP_PASSWORD_FILE": secret_file(tmp_path, "a:b@c", "a"),
        }
    )
    assert settings.redis_url == "redis://:p%40ss%2Fw%3Ard@10.0.0.1:6379/2"
    assert settings.amqp_url == "amqps://distq:a%3Ab%40c@rabbit:5671/%2F"
    kwargs = redis.connection.parse_url(settings.redis_url)
    assert kwargs["password"] == "p@ss/w:rd" and kwargs["host"] == "10.0.0.1"


def test_a_password_in_the_url_and_a_password_file_is_an_error(tmp_path: Path) -> None:
    message = error(
        {
            "DISTQ_TRANSPORT": "redis",
            "DISTQ_REDIS_URL": "redis://:inline-pw@h:6379/0",
            "DISTQ_REDIS_PASSWORD_FILE": secret_file(tmp_path, "file-pw"),
        }
    )
    assert "DISTQ_REDIS_PASSWORD" in message and "one place" in message
    assert "inline-pw" not in message and "file-pw" not in message


def test_an_amqp_password_needs_a_user_in_the_url() -> None:
    message = error(
        {
            "DISTQ_TRANSPORT": "rabbitmq",
            "DISTQ_AMQP_URL": "amqp://h:5672/%2F",
            "DISTQ_AMQP_PASSWORD": "pw",
        }
    )
    assert "names no user" in message


# --- signing keys and limits --------------------------------------------------------


def test_signing_key_settings() -> None:
    assert load({**KEY, "DISTQ_SIGNING_KEY": SIGNING}).signing_keys == (SIGNING.encode(),)
    keys = load({**KEY, "DISTQ_SIGNING_KEYS": f" {SIGNING}1, {SIGNING}2,"}).signing_keys
    assert keys == (f"{SIGNING}1".encode(), f"{SIGNING}2".encode())
    assert load(KEY).signing_keys == ()
    both = error({**KEY, "DISTQ_SIGNING_KEY": SIGNING, "DISTQ_SIGNING_KEYS": SIGNING})
    assert "both set" in both
    short = error({**KEY, "DISTQ_SIGNING_KEYS": f"{SIGNING},tooshort"})
    assert "key 2 of 2 8 characters long" in short and "tooshort" not in short
    one = error({**KEY, "DISTQ_SIGNING_KEYS": f"{SIGNING},x"})  # it said "1 characters long"
    assert "key 2 of 2 1 character long;" in one, one


def test_two_keys_sharing_a_key_id_are_refused() -> None:
    """Was: taken, and the later key's entry replaced the first's under their shared id
    (8 hex digits: about one pair in 2**32), so the process signed with the second key
    where the README says the first signs. These two share the id efdd3fc0."""
    first, second = "distq-collide-00050871", "distq-collide-00095698"
    assert key_id(first.encode()) == key_id(second.encode())
    message = error({**KEY, "DISTQ_SIGNING_KEYS": f"{first},{second}"})
    assert "DISTQ_SIGNING_KEYS) has keys 1 and 2 of 2 that share the key id efdd3fc0" in message
    assert first not in message and second not in message
    assert load({**KEY, "DISTQ_SIGNING_KEYS": f"{first},{first}"}).signing_keys  # the same twice


def test_the_one_key_setting_takes_its_value_whole() -> None:
    """Was: split at commas as the list is, so a key with a comma in it became two keys,
    the first piece signing (or "key 1 of 2 is 3 characters long")."""
    comma = f"{SIGNING},{SIGNING}x"
    assert load({**KEY, "DISTQ_SIGNING_KEY": f" {comma}\n"}).signing_keys == (comma.encode(),)
    assert load({**KEY, "DISTQ_SIGNING_KEY": "k3y,with-a-comma-and-long"}).signing_keys == (
        b"k3y,with-a-comma-and-long",
    )
    short = error({**KEY, "DISTQ_SIGNING_KEY": "short,key"})
    assert "DISTQ_SIGNING_KEY has a key 9 characters long" in short and "short,key" not in short
    assert error({**KEY, "DISTQ_SIGNING_KEY": ","}).startswith(
        "DISTQ_SIGNING_KEY has a key 1 character long;"
    )


@pytest.mark.parametrize(
    "env",
    [
        {"DISTQ_SIGNING_KEYS": ","},
        {"DISTQ_SIGNING_KEYS": " , \n"},
        {"DISTQ_SIGNING_KEYS": ",,"},
        {"DISTQ_SIGNING_KEYS": "   "},  # stripped, these read as unset: signing off
        {"DISTQ_SIGNING_KEYS": "\n"},
        {"DISTQ_SIGNING_KEY": "\t"},
    ],
)
def test_a_signing_key_setting_that_holds_no_key_is_refused(env: dict[str, str]) -> None:
    """Was: loaded with no key, so the process ran unsigned without a word."""
    [variable] = env
    message = error({"DISTQ_TRANSPORT": "redis", **env})
    assert message.startswith(f"{variable} holds no key"), message
    assert "16 random characters" in message and "unset it" in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (" \n", "DISTQ_SIGNING_KEYS_FILE names {path!r}, which is empty but for whitespace"),
        ("\t\r\n", "DISTQ_SIGNING_KEYS_FILE names {path!r}, which is empty but for whitespace"),
        (",\n", "DISTQ_SIGNING_KEYS (read from DISTQ_SIGNING_KEYS_FILE {path!r}) holds no key"),
        (" ,\n,\n", "DISTQ_SIGNING_KEYS (read from DISTQ_SIGNING_KEYS_FILE {path!r}) holds no"),
    ],
)
def test_a_signing_keys_file_that_holds_no_key_is_refused(
    tmp_path: Path, content: str, problem: str
) -> None:
    """Was: a file of blanks or commas loaded as no key: signing silently off."""
    path = secret_file(tmp_path, content)
    message = error({"DISTQ_TRANSPORT": "redis", "DISTQ_SIGNING_KEYS_FILE": path})
    assert problem.format(path=path) in message, message


def test_a_secret_file_of_only_whitespace_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "  \n")
    message = error({"DISTQ_AUTHKEY_FILE": path})
    assert message == (
        f"DISTQ_AUTHKEY_FILE names {path!r}, which is empty but for whitespace; write the "
        "secret into that file, or unset DISTQ_AUTHKEY_FILE"
    )


def test_max_message_bytes() -> None:
    assert load(KEY).max_message_bytes == 1 << 20
    assert load(KEY, {"DISTQ_MAX_MESSAGE_BYTES": "4096"}).max_message_bytes == 4096
    assert "1024 to" in error({**KEY, "DISTQ_MAX_MESSAGE_BYTES": "100"})


# --- masking -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("amqps://u:p%40x@h:5671/%2F?heartbeat=5", "amqps://u:***@h:5671/%2F?heartbeat=5"),
        ("rediss://u:p@ss/w@rd@h:1/0", "rediss://u:***@h:1/0"),
        ("unix://:pw@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("amqp://user@h/v", "amqp://user@h/v"),
        ("redis://h:6379/0?password=S3cret", "redis://h:6379/0?password=***"),
        ("redis://h:6379/0?db=1&Password=S3&x=1#f", "redis://h:6379/0?db=1&Password=***&x=1#f"),
        ("rediss://:pw@h:1/0?ssl_password=k3y", "rediss://:***@h:1/0?ssl_password=***"),
        ("unix:///run/r.sock?db=0&password=S3cret", "unix:///run/r.sock?db=0&password=***"),
        ("redis://h:70000/0?password=S3cret", "redis://h:70000/0?password=***"),
        (  # pika's TLS options: a dict that may hold the client key's password
            "amqps://u:p@h:5671/%2F?ssl_options=%7B%27password%27%3A%27k3y%27%7D&heartbeat=5",
            "amqps://u:***@h:5671/%2F?ssl_options=***&heartbeat=5",
        ),
        (  # written as it is, quotes and spaces: the mask stopped at the first quote
            "amqps://u:p@h/%2F?ssl_options={'keyfile': '/k', 'password': 'hunter2'}",
            "amqps://u:***@h/%2F?ssl_options=***",
        ),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    "text",
    [
        "cannot use redis://h:6379/0?password=S3cret now",
        "url='redis://u:S3cret@h:6379/0?db=0' failed",
        "rediss://h:1/0?db=0&password=S3cret&ssl_cert_reqs=none",
    ],
)
def test_log_lines_mask_a_password_in_a_query(text: str) -> None:
    shown = mask_secrets(text)
    assert "S3cret" not in shown and "***" in shown


def test_a_masked_url_in_a_message_keeps_its_closing_parenthesis() -> None:
    line = f"DISTQ_REDIS_URL ({mask_url('redis://h:70000?password=S3cret')}) has port 70000"
    assert mask_secrets(line) == "DISTQ_REDIS_URL (redis://h:70000?password=***) has port 70000"


def test_a_password_in_the_query_and_a_password_setting_is_an_error() -> None:
    message = error(
        {
            "DISTQ_TRANSPORT": "redis",
            "DISTQ_REDIS_URL": "redis://h:6379/0?password=S3cret",
            "DISTQ_REDIS_PASSWORD": "other",
        }
    )
    assert "holds a password too" in message and "S3cret" not in message


def test_settings_never_show_a_secret(tmp_path: Path) -> None:
    settings = load(
        {
            "DISTQ_TRANSPORT": "redis",
            "DISTQ_AUTHKEY": "authkey-value-1",
            "DISTQ_REDIS_URL": "redis://h:6379/0",
            "DISTQ_REDIS_PASSWORD": "redis-password-2",
            "DISTQ_AMQP_URL": "amqp://u:amqp-password-3@h:5672/%2F",
            "DISTQ_SIGNING_KEYS": "signing-key-value-4",
        }
    )
    shown = repr(settings) + str(settings)
    for secret in ("authkey-value-1", "redis-password-2", "amqp-password-3", "signing-key-value"):
        assert secret not in shown


def test_a_malformed_url_is_reported_without_its_password() -> None:
    message = error({**KEY, "DISTQ_REDIS_URL": "redis://:abc/defpw@host/0"})
    assert "abc" not in message and "defpw" not in message and "not a valid URL" in message


@pytest.mark.parametrize(
    "options",
    [
        "{'ca_certs':'/etc/ssl/certs/ca-certificates.crt','password':'KeyPassS3cr3t",
        "{}",
        "{'ca_certs':'/nonexistent.pem','password':'KeyPassS3cr3t'}",
        "['KeyPassS3cr3t']",  # not a dict: pika's AttributeError was a traceback too
    ],
)
def test_unusable_ssl_options_are_a_config_error_without_the_key_password(options: str) -> None:
    """pika reads them with ast.literal_eval and builds an SSL context at once: a
    SyntaxError (quoting the value, password and all), TypeError or OSError was a
    traceback and exit 1."""
    url = f"amqps://u:S3cr3tPw@127.0.0.1:5671/%2F?ssl_options={quote(options, safe='')}"
    with pytest.raises(ConfigError, match="its ssl_options cannot be used") as caught:
        Broker.from_url(url)
    assert "KeyPassS3cr3t" not in str(caught.value) and "S3cr3tPw" not in str(caught.value)


@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("client_properties=[1]", "an option cannot be used (TypeError: client_properties"),
        ("tcp_options=[1]", "an option cannot be used (TypeError: tcp_options"),
        ("tcp_options={'TCP_KEEPIDLE':'x'}", "each value must be a whole number"),
    ],
)
def test_an_amqp_option_other_than_ssl_options_that_cannot_be_used_is_named(
    option: str, said: str
) -> None:
    """Such an option was said to be the ssl_options, with their fix; a tcp_options value
    of text was a traceback at the first connect (input17)."""
    name, _, value = option.partition("=")
    url = f"amqp://u:p@127.0.0.1:5672/%2F?{name}={quote(value, safe='')}"
    with pytest.raises(ConfigError, match=re.escape(said)) as caught:
        Broker.from_url(url)
    assert "ssl_options" not in str(caught.value)


@pytest.mark.parametrize("scheme", ["amqp", "amqps"])
def test_an_amqp_url_with_a_user_and_no_password_says_so(scheme: str) -> None:
    """Was: "an option cannot be used (TypeError: argument of type 'NoneType' is not
    iterable); correct it or remove it", for a URL with no option: pika unquoted the
    missing password."""
    url = f"{scheme}://u@127.0.0.1:5672/%2F"
    with pytest.raises(ConfigError) as caught:
        Broker.from_url(url)
    assert str(caught.value) == (
        f"DISTQ_AMQP_URL ({url}) names the user 'u' and no password; give the password "
        "in DISTQ_AMQP_PASSWORD or DISTQ_AMQP_PASSWORD_FILE, or in the URL after the user "
        "and a colon (u:<password>@)"
    )
    assert Broker.from_url(f"{scheme}://u:@127.0.0.1:5672/%2F").user == "u"  # empty: one


# --- TLS settings ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


def tls_redis(ca: CertificateAuthority) -> dict[str, str]:
    """A Redis over TLS with a CA file and a client's certificate and key, all readable."""
    client = ca.issue("client", client=True)
    return {
        "DISTQ_TRANSPORT": "redis",
        "DISTQ_REDIS_URL": "rediss://127.0.0.1:6380/0",
        "DISTQ_TLS_CA_FILE": str(ca.cert),
        "DISTQ_TLS_CERT_FILE": str(client.cert),
        "DISTQ_TLS_KEY_FILE": str(client.key),
    }


def test_tls_files_are_checked_up_front(ca: CertificateAuthority, tmp_path: Path) -> None:
    env = tls_redis(ca)
    client_cert, client_key = env["DISTQ_TLS_CERT_FILE"], env["DISTQ_TLS_KEY_FILE"]
    settings = load(env)
    assert settings.tls_files == tls.TlsFiles(str(ca.cert), client_cert, client_key)
    assert "(plain TCP); use rediss://" in error({**env, "DISTQ_REDIS_URL": "redis://h:6379/0"})
    assert "without DISTQ_TLS_KEY_FILE" in error({**env, "DISTQ_TLS_KEY_FILE": ""})
    assert "manager transport has no TLS" in error({**env, **KEY, "DISTQ_TRANSPORT": "manager"})
    junk = secret_file(tmp_path, "not a certificate")
    assert "holds no usable PEM" in error({**env, "DISTQ_TLS_CA_FILE": junk})
    other = ca.issue("other", client=True)
    mismatch = error({**env, "DISTQ_TLS_KEY_FILE": str(other.key)})
    assert "not a PEM certificate and its key" in mismatch
    amqp = {"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": "amqps://u@h:5671/%2F"}
    assert load({**amqp, "DISTQ_TLS_CA_FILE": str(ca.cert)}).tls_files.ca_file == str(ca.cert)


@pytest.mark.parametrize(
    "missing", ["DISTQ_TLS_CA_FILE", "DISTQ_TLS_CERT_FILE", "DISTQ_TLS_KEY_FILE"]
)
def test_a_tls_file_that_cannot_be_read_is_named_alone(
    ca: CertificateAuthority, tmp_path: Path, missing: str
) -> None:
    """A path that does not exist was said to hold "no usable PEM certificates (No such
    file or directory)", or, for the client's two files, both were named as "not a PEM
    certificate and its key": the user was not told which file to mount."""
    message = error({**tls_redis(ca), missing: str(tmp_path / "absent.pem")})
    assert message.startswith(
        f"{missing} names {str(tmp_path / 'absent.pem')!r}, which cannot "
        "be read (No such file or directory); "
    ), message
    assert f"or unset {missing}" in message
    assert "PEM" not in message


def test_an_encrypted_client_key_is_refused_without_prompting(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """OpenSSL's own callback asked "Enter PEM pass phrase:" on the terminal, twice, and
    waited for good; with none, it said the files were "not a PEM certificate"."""
    cert, encrypted = ca.encrypted_client(tmp_path)
    env = {
        "DISTQ_TRANSPORT": "redis",
        "DISTQ_REDIS_URL": "rediss://127.0.0.1:6380/0",
        "DISTQ_TLS_CA_FILE": str(ca.cert),
        "DISTQ_TLS_CERT_FILE": str(cert),
        "DISTQ_TLS_KEY_FILE": str(encrypted),
    }
    done = subprocess.run(  # a process of its own: a prompt would read its stdin
        [sys.executable, "-m", "distq", "status"],
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Enter PEM pass phrase" not in done.stdout + done.stderr, done.stderr
    assert f"DISTQ_TLS_KEY_FILE {str(encrypted)!r} is encrypted with a pass phrase" in done.stderr


@pytest.mark.parametrize("value", ["REQUIRED", "Required", "CERT_REQUIRED", "required "])
def test_an_ssl_cert_reqs_redis_py_does_not_take_is_refused_at_once(value: str) -> None:
    """It failed at each connect, read as an outage: 10 s of retries, then exit 3 and
    "is it running? ... use redis://"."""
    url = f"rediss://127.0.0.1:6380/0?ssl_cert_reqs={quote(value)}"
    message = error({"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url})
    assert f"has ssl_cert_reqs={value!r}; use required, optional or none" in message, message


@pytest.mark.parametrize("value", ["0", "no", "f", "N", "False", "1", "yes"])
def test_an_ssl_check_hostname_other_than_true_or_false_is_refused(value: str) -> None:
    """redis-py reads 0, no, f, N, False as false: the host-name check went off by a
    spelling the README does not name (sec16)."""
    url = f"rediss://127.0.0.1:6380/0?ssl_check_hostname={quote(value)}"
    message = error({"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url})
    assert f"has ssl_check_hostname={value!r}; use true or false, in lower case" in message


def test_redis_options_check_host_names(ca: CertificateAuthority) -> None:
    files = tls.TlsFiles(str(ca.cert))  # a regular file: handed on by its own path
    assert tls.redis_options("redis://h/0", files) == {}
    options = tls.redis_options("rediss://h/0", files)
    assert issubclass(options.pop("connection_class"), redis.SSLConnection)  # checks them
    assert options == {"ssl_check_hostname": True, "ssl_ca_certs": str(ca.cert)}
    assert "ssl_check_hostname" not in tls.redis_options("rediss://h/0?ssl_cert_reqs=none", files)


@pytest.mark.parametrize(
    ("query", "checked"),
    [
        ("?ssl_cert_reqs=required", True),  # was: not checked with redis-py 5
        ("?db=0&ssl_cert_reqs=required", True),
        ("?ssl_cert_reqs=none", False),  # no certificate check at all: nor a host name one
        ("?ssl_cert_reqs=optional", True),  # verified as required is, on a client
        ("?ssl_cert_reqs=required&ssl_check_hostname=false", False),  # the URL says so
    ],
)
def test_a_url_that_asks_for_certificate_checks_gets_host_names_checked(
    query: str, checked: bool
) -> None:
    """redis-py 5 (allowed by pyproject) defaults ``ssl_check_hostname`` to False."""
    options = tls.redis_options(f"rediss://h:6380/0{query}", tls.TlsFiles())
    assert options.get("ssl_check_hostname") is (True if checked else None), options
    client = redis.Redis.from_url(f"rediss://h:6380/0{query}", **options)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs.get("ssl_check_hostname") in (True, "True")) is checked, kwargs


@pytest.mark.parametrize(
    "option",
    ["ssl_ca_certs=/etc/other.pem", "ssl_ca_path=/etc/ssl", "ssl_certfile=c.pem&ssl_keyfile=k.pem"],
)
def test_tls_files_in_the_redis_url_and_a_tls_setting_are_refused(
    ca: CertificateAuthority, option: str
) -> None:
    """Was: accepted, and redis-py let the URL's file win over DISTQ_TLS_CA_FILE."""
    url = f"rediss://127.0.0.1:6380/0?db=0&{option}"
    message = error(
        {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url, "DISTQ_TLS_CA_FILE": str(ca.cert)}
    )
    name = option.partition("=")[0]
    assert message == (
        f"DISTQ_TLS_CA_FILE is set and DISTQ_REDIS_URL has {name}, which would be used "
        f"instead; give the TLS files one way only: drop {name} from the URL, or unset "
        "DISTQ_TLS_CA_FILE"
    )
    if name == "ssl_ca_certs":  # what it prevents: redis-py lets the URL's option win
        client = redis.Redis.from_url(url, ssl_ca_certs=str(ca.cert))
        assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == "/etc/other.pem"
    # without DISTQ_TLS_*, the URL's own TLS options are the user's to set
    assert load({"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url}).redis_url == url


# --- TLS failures as one line ---------------------------------------------------------


def _raised_in(outer: type[Exception], inner: BaseException) -> Exception:
    """``outer`` raised while handling ``inner``, as redis-py does."""
    try:
        try:
            raise inner
        except BaseException:
            raise outer("Error 1 connecting to 127.0.0.1:6380.") from None
    except Exception as exc:
        exc.__context__ = inner
        return exc


def test_tls_failures_are_classified() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "certificate has expired"
    found = tls.failure(_raised_in(ConnectionError, verify))
    assert found is not None and found.refused
    assert found.what == "the server's certificate was refused: certificate has expired"
    assert "DISTQ_TLS_CA_FILE" in found.line("Redis at h:1")
    # pika keeps only the text of the TLS error
    text = "SSLError(1, '[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)')"
    found = tls.failure(ConnectionError(text))
    assert found is not None and found.refused and "client certificate" in found.what
    assert "DISTQ_TLS_CERT_FILE" in found.hint
    found = tls.failure(ConnectionError("Stream connection lost: SSLEOFError(8, 'EOF')"))
    assert found is not None and not found.refused and "handshake" in found.what
    wrong = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    wrong.reason = "WRONG_VERSION_NUMBER"
    found = tls.failure(wrong)
    assert found is not None and "does not speak TLS" in found.what
    assert tls.failure(ConnectionRefusedError(111, "Connection refused")) is None


def test_a_signing_key_flag_wins_over_the_other_spelling_in_the_environment(
    tmp_path: Path,
) -> None:
    """The compose stack and the manifests set DISTQ_SIGNING_KEYS: an operator's
    --signing-key was refused as "both set", though a flag wins over the environment
    (input17). Both spellings as flags are still refused."""
    env = {**KEY, "DISTQ_SIGNING_KEYS": f"{SIGNING}-env"}
    assert load(env, {"DISTQ_SIGNING_KEY": f"{SIGNING}-flag"}).signing_keys == (
        f"{SIGNING}-flag".encode(),
    )
    keys = secret_file(tmp_path, f"{SIGNING}-file\n", "k")
    env = {**KEY, "DISTQ_SIGNING_KEY_FILE": keys}
    assert load(env, {"DISTQ_SIGNING_KEYS": f"{SIGNING}-flag"}).signing_keys == (
        f"{SIGNING}-flag".encode(),
    )
    both: dict[str, str | None] = {
        "DISTQ_SIGNING_KEY": f"{SIGNING}-a",
        "DISTQ_SIGNING_KEYS": f"{SIGNING}-b",
    }
    assert "are both set" in error(KEY, both)


def test_an_amqp_url_pika_refuses_is_shown_by_its_start_and_length() -> None:
    """heartbeat= of 5,000 digits: pika's refusal (Python's digit limit) quoted them all,
    and so did the masked URL before it; both are now cut, with their length."""
    url = f"amqp://u:S3cr3tPw@127.0.0.1:5672/%2F?heartbeat={'9' * 5000}"
    with pytest.raises(ConfigError, match="is not a valid AMQP URL") as caught:
        Broker.from_url(url)
    said = str(caught.value)
    assert len(said) < 800 and "S3cr3tPw" not in said, said
    assert said.count(" characters)") == 2, said


def test_a_long_url_is_masked_then_cut_to_its_start_and_length() -> None:
    """mask_url shows a URL whole up to 300 characters, past them its start and the
    masked text's length (not the password's)."""
    short = "redis://:S3cr3tPw@h:6379/0"
    assert mask_url(short) == "redis://:***@h:6379/0"
    long = f"redis://:S3cr3tPw@h:6379/0?client_name={'n' * 5000}"
    shown = mask_url(long)
    masked = long.replace("S3cr3tPw", "***")
    assert shown == f"{masked[:300]}... ({len(masked):,} characters)", shown


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://{'u' * 5000}@127.0.0.1:5672/%2F",
        "amqp://u:S3cr3tPw@127.0.0.1:5672/%2F?tcp_options={'TCP_KEEPIDLE':'" + "x" * 5000 + "'}",
    ],
    ids=["user-without-password", "tcp-options"],
)
def test_an_amqp_url_refused_after_pika_read_it_is_shown_by_its_start(url: str) -> None:
    """A user of 5,000 characters with no password put it on the line twice (10,500
    characters: the URL was cut, the user and the example of it were not), and a
    tcp_options value of 5,000 once (5,450): each is now cut past 300 with its length,
    as the URL and pika's own refusal are."""
    with pytest.raises(ConfigError) as caught:
        Broker.from_url(url)
    said = str(caught.value)
    assert len(said) < 1200 and "S3cr3tPw" not in said, said
    assert re.search(r"\.\.\. \(5,0[0-9][0-9] characters\)", said.partition(") ")[2]), said
