"""The broker fixtures give real servers on 127.0.0.1 that check passwords."""

from __future__ import annotations

from urllib.parse import urlsplit

import pika
import pytest
import redis

from brokers import Broker

pytestmark = pytest.mark.integration


def _amqp_connect(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    return pika.BlockingConnection(params)


@pytest.mark.parametrize("fixture", ["redis_broker", "rabbitmq_broker"])
def test_brokers_listen_on_loopback_only(fixture: str, request: pytest.FixtureRequest) -> None:
    broker: Broker = request.getfixturevalue(fixture)
    for url in (broker.url, broker.bad_credentials_url):
        assert urlsplit(url).hostname in ("127.0.0.1", "localhost")
    assert urlsplit(broker.url).password != urlsplit(broker.bad_credentials_url).password
    assert broker.kind == fixture.removesuffix("_broker")


def test_redis_url_logs_in(redis_broker: Broker) -> None:
    client = redis.Redis.from_url(redis_broker.url)
    try:
        assert client.ping() is True
        client.set("distq:fixture-check", "1")
        assert client.get("distq:fixture-check") == b"1"
        client.delete("distq:fixture-check")
    finally:
        client.close()


def test_redis_bad_credentials_are_refused(redis_broker: Broker) -> None:
    client = redis.Redis.from_url(redis_broker.bad_credentials_url)
    try:
        with pytest.raises(redis.AuthenticationError):
            client.ping()
    finally:
        client.close()


def test_rabbitmq_url_logs_in(rabbitmq_broker: Broker) -> None:
    connection = _amqp_connect(rabbitmq_broker.url)
    try:
        channel = connection.channel()
        declared = channel.queue_declare(queue="", exclusive=True)
        channel.basic_publish("", declared.method.queue, b"ping")
        method, _, body = channel.basic_get(declared.method.queue, auto_ack=True)
        assert method is not None
        assert body == b"ping"
    finally:
        connection.close()


def test_rabbitmq_bad_credentials_are_refused(rabbitmq_broker: Broker) -> None:
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        _amqp_connect(rabbitmq_broker.bad_credentials_url)
