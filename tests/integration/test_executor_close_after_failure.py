"""An Executor's own take-back as it closes, against a broker that fails it: as a
stopping master's (12288af), no call after it that would wait on that broker."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

import distq
from distq.dispatcher import Dispatcher
from distq.transport.redis import RedisTransport
from launch import LocalRedis

pytestmark = pytest.mark.integration


def test_a_close_whose_withdraw_meets_a_paused_redis_makes_no_call_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that stops answering (SIGSTOP) as close()'s withdraw begins: the withdraw
    failed, and the executor's thread then closed its producer, a call that waited on the
    paused Redis out to its socket timeout once more (the thread and its connection kept
    meanwhile). The producer is abandoned now, as a stopping master's is: its reply
    queue's registration lapses."""
    withdraw = Dispatcher._withdraw
    ended: list[str] = []
    with LocalRedis(tmp_path).start() as server:

        def paused_first(dispatcher: Dispatcher, *args: Any, **named: Any) -> None:
            server.pause()
            withdraw(dispatcher, *args, **named)

        monkeypatch.setattr(Dispatcher, "_withdraw", paused_first)
        ex = distq.Executor(transport="redis", redis_url=server.url, queue="pausedclose")
        try:
            futures = [ex.submit("jobs:add", n, 1) for n in range(3)]  # no worker: queued
            deadline = time.monotonic() + 30
            while ex.stats().ready < 3:  # sent: close() withdraws them
                assert time.monotonic() < deadline, ex.stats()
                time.sleep(0.05)
            dispatcher = ex._dispatcher
            producer = type(dispatcher.producer)
            for how in ("close", "abandon"):
                ending = getattr(producer, how)

                def told(self: Any, _how: str = how, _ending: Any = ending) -> None:
                    ended.append(_how)
                    _ending(self)

                monkeypatch.setattr(producer, how, told)
            ex.close()
            assert all(future.done() for future in futures)
            assert not any(future.cancelled() for future in futures)  # the withdraw failed
            dispatcher.join(60)  # the withdraw's call on the paused Redis times out
            assert not dispatcher.is_alive()
        finally:
            server.resume()
    assert ended == ["abandon"], ended


def test_a_close_after_a_failure_that_skips_the_last_look_for_orphans_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An executor whose registration lapsed looks for its orphans again as it closes;
    after close()'s withdraw met a paused Redis it makes no such call (above), and said
    nothing of it, where a stopped master says it: one warning now, naming what to do."""
    monkeypatch.setattr("distq.dispatcher.RECONCILE_SECONDS", 0.1)
    looks: list[str] = []
    forget = RedisTransport.forget_orphans

    def looked(self: RedisTransport, reply_to: str) -> int:
        looks.append(reply_to)
        return forget(self, reply_to)

    monkeypatch.setattr(RedisTransport, "forget_orphans", looked)
    withdraw = Dispatcher._withdraw
    with LocalRedis(tmp_path).start() as server:

        def paused_first(dispatcher: Dispatcher, *args: Any, **named: Any) -> None:
            server.pause()
            withdraw(dispatcher, *args, **named)

        ex = distq.Executor(transport="redis", redis_url=server.url, queue="lapsedclose")
        try:
            futures = [ex.submit("jobs:add", n, 1) for n in range(3)]  # no worker: queued
            deadline = time.monotonic() + 30
            while ex.stats().ready < 3:
                assert time.monotonic() < deadline, ex.stats()
                time.sleep(0.05)
            transport = ex._transport
            assert isinstance(transport, RedisTransport)
            server.client().zrem(transport.masters_key, ex.reply_to)  # its registration lapses
            while not looks:  # its next reconcile finds it lapsed, and looks for orphans
                assert time.monotonic() < deadline, "the lapse was never found"
                time.sleep(0.05)
            monkeypatch.setattr(Dispatcher, "_withdraw", paused_first)
            with caplog.at_level(logging.WARNING, logger="distq.executor"):
                ex.close()
                assert all(future.done() for future in futures)
                ex._dispatcher.join(60)  # the withdraw's call on the paused Redis times out
                assert not ex._dispatcher.is_alive()
        finally:
            server.resume()
    assert looks == [ex.reply_to]  # none after the failure
    said = [r.getMessage() for r in caplog.records if "dead letters" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert "did not look again" in said[0] and "`distq dead-letters`" in said[0], said
