"""TLS files given the URL's own way (pika's ``ssl_options``, DISTQ_TLS_* unset) with the
broker password from its file, as the README advises: a job's status over ``amqps://``."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tls import Pki, TlsBroker, environment, pki, rabbitmq_tls, rabbitmq_tls_server, status

__all__ = ["pki", "rabbitmq_tls", "rabbitmq_tls_server"]  # the fixtures this module uses

pytestmark = pytest.mark.integration


def test_ssl_options_in_the_amqp_url_with_the_password_from_its_file(
    rabbitmq_tls: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    options = {
        "ca_certs": str(pki.ca.cert),
        "certfile": str(pki.client.cert),
        "keyfile": str(pki.client.key),
    }
    url = f"{rabbitmq_tls.url}?ssl_options={options!r}"
    env = environment(
        rabbitmq_tls,
        pki,
        tmp_path,
        DISTQ_AMQP_URL=url,
        DISTQ_TLS_CA_FILE="",
        DISTQ_TLS_CERT_FILE="",
        DISTQ_TLS_KEY_FILE="",
    )
    assert "DISTQ_AMQP_PASSWORD_FILE" in env and "DISTQ_TLS_CA_FILE" not in env
    code, out = status(env)
    assert code == 0, out
    assert "over TLS" in out and rabbitmq_tls.password not in out, out
