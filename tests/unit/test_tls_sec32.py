"""``?ssl_cert_reqs=optional`` on a client verifies the broker's certificate as
``required`` does (Python's ssl: "in client mode, CERT_OPTIONAL has the same meaning as
CERT_REQUIRED"), so distq checks its host name too, with every supported redis-py: with
redis-py 7 it was checked (its default), with redis-py 5 it was not, while the README
said ``optional`` turned the check off."""

from __future__ import annotations

import ssl

import redis

from distq import tls


def test_optional_certificate_checks_get_host_names_checked_with_every_redis_py() -> None:
    url = "rediss://h:6380/0?ssl_cert_reqs=optional"
    options = tls.redis_options(url, tls.TlsFiles())
    assert options.get("ssl_check_hostname") is True, options
    connection = redis.Redis.from_url(url, **options).connection_pool.make_connection()
    assert connection.cert_reqs == ssl.CERT_OPTIONAL and connection.check_hostname is True


def test_no_certificate_check_is_no_host_name_check() -> None:
    url = "rediss://h:6380/0?ssl_cert_reqs=none"
    assert "ssl_check_hostname" not in tls.redis_options(url, tls.TlsFiles())
