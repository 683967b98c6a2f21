"""A result of another envelope version over the master's size limit: a v1
one over it, and a v2 one within it, each stand in for their task with an error
result; a v2 one over it was refused unsaid, and its task waited until its timeout."""

from __future__ import annotations

import pytest

from distq.codec import Codec
from distq.collector import Collector
from distq.envelope import Result

KEY = b"0123456789abcdef-key"


def _v2(result: Result) -> bytes:
    return result.encode().replace(b'{"v":1,', b'{"v":2,', 1)


@pytest.mark.parametrize("keys", [(), (KEY,)])
@pytest.mark.parametrize("packed", [False, True])
def test_a_newer_result_over_the_limit_fails_its_task_saying_so(
    keys: tuple[bytes, ...], packed: bool
) -> None:
    worker = Codec(keys)  # a newer worker's, with the default limit
    big = Result("t-big", "ok", "w1", 2, 0.0, 0.1, "x" * 5000)
    small = Result("t-small", "ok", "w1", 1, 0.0, 0.1, 5)
    envelopes = [_v2(big), _v2(small)] if packed else [_v2(big)]
    messages = worker.seal_results(envelopes)
    assert len(messages) == 1
    got: list[Result] = []
    refused: list[str] = []
    master = Codec(keys, max_message_bytes=1024)
    collector: Collector[str] = Collector(
        lambda r, entry, rtt: got.append(r), lambda e: refused.append(str(e)), codec=master
    )
    collector.expect([("t-big", "a"), ("t-small", "b")])
    collector.accept(messages)
    by_id = {r.task_id: r for r in got}
    assert "t-big" in by_id, refused
    stand_in = by_id["t-big"]
    assert (stand_in.status, stand_in.error_type, stand_in.attempt, stand_in.worker) == (
        "error",
        "MessageTooLarge",
        2,
        "w1",
    )
    if packed:  # the small one of another version: said so, as before
        assert by_id["t-small"].error_type == "VersionMismatch"
