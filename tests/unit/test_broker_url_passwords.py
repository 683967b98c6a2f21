"""A broker password given apart from the URL (DISTQ_*_PASSWORD[_FILE]) conflicts only
with a password the URL holds for the broker, not with a TLS option of the URL that
masking hides (pika's ``ssl_options``, redis-py's ``ssl_password``, a key's pass phrase)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from distq.config import Settings
from distq.credentials import mask_url
from distq.errors import ConfigError
from distq.logs import mask_secrets

SSL_OPTIONS = "ssl_options={'ca_certs': '/etc/distq/ca.pem'}"


def test_an_amqp_url_with_ssl_options_takes_the_password_from_its_setting() -> None:
    settings = Settings.load(
        {
            "DISTQ_TRANSPORT": "rabbitmq",
            "DISTQ_AMQP_URL": f"amqps://distq@rabbit-host:5671/%2F?{SSL_OPTIONS}",
            "DISTQ_AMQP_PASSWORD": "amqp-password",
        }
    )
    parts = urlsplit(settings.amqp_url)
    assert (parts.username, parts.password) == ("distq", "amqp-password")
    assert parse_qs(parts.query)["ssl_options"] == [SSL_OPTIONS.partition("=")[2]]


def test_a_redis_url_with_a_key_pass_phrase_takes_the_password_from_its_setting() -> None:
    query = "ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_password=key-phrase"
    settings = Settings.load(
        {
            "DISTQ_TRANSPORT": "redis",
            "DISTQ_REDIS_URL": f"rediss://redis-host:6380/0?{query}",
            "DISTQ_REDIS_PASSWORD": "redis-password",
        }
    )
    parts = urlsplit(settings.redis_url)
    assert parts.password == "redis-password"
    assert parse_qs(parts.query)["ssl_password"] == ["key-phrase"]


@pytest.mark.parametrize(
    "url",
    ["redis://h:6379/0?password=S3cret", "redis://:S3cret@h:6379/0", "redis://u:S3cret@h:6379/0"],
)
def test_a_redis_url_holding_the_password_still_conflicts_with_the_setting(url: str) -> None:
    env = {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url, "DISTQ_REDIS_PASSWORD": "other"}
    with pytest.raises(ConfigError, match="holds a password too") as caught:
        Settings.load(env)
    assert "S3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "password", ["S3cret'Pw0rd", 'S3cret"Pw0rd', "S3cret Pw0rd", "S3cret)Pw0rd"]
)
def test_a_url_shown_masks_all_of_its_query_password(password: str) -> None:
    """redis-py reads ``?password=`` to the next ``&``: a quote or a space in it is the
    password's, and the part after it was shown (``?password=***'Pw0rd``)."""
    url = f"redis://127.0.0.1:70000/0?password={password}&db=0"
    assert mask_url(url) == "redis://127.0.0.1:70000/0?password=***&db=0"
    env = {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url}
    with pytest.raises(ConfigError, match="has port 70000") as caught:
        Settings.load(env)
    assert "Pw0rd" not in str(caught.value) and "Pw0rd" not in mask_secrets(str(caught.value))
