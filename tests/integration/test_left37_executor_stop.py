"""An Executor's own take-back as it closes, against a broker that fails it: as a
stopping master's (12288af), no call after it that would wait on that broker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import distq
from distq.dispatcher import Dispatcher
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
