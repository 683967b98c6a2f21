"""Refused tasks and what their dead letters and answers say (codec32)."""

from __future__ import annotations

import pytest

from distq.codec import Codec
from distq.ending import Endings
from distq.envelope import DeadLetter, Task
from distq.errors import EnvelopeError, MessageTooLarge
from distq.framing import pack
from distq.transport import Delivery

LIMIT = 2000


def _refused(endings: Endings, body: bytes) -> tuple[EnvelopeError, DeadLetter]:
    with pytest.raises(EnvelopeError) as caught:
        endings.codec.open_task(body)
    ending = endings.malformed(Delivery(body, 1), caught.value)
    assert ending.outcome == "malformed" and ending.settlement.dead_letter is not None
    return caught.value, DeadLetter.decode(ending.settlement.dead_letter)


@pytest.mark.parametrize("transport", [None, "rabbitmq", "redis", "manager"])
def test_a_pack_over_the_limit_is_dead_lettered_saying_it_is_a_pack(transport: str | None) -> None:
    """Refused for its size first, its letter said "task is 2,4xx bytes, over the limit":
    one task too large, where 3 small ones came packed in one message (codec31)."""
    body = pack([Task("jobs.square", ["x" * 700], "replies").encode() for _ in range(3)])
    assert len(body) > LIMIT
    endings = Endings("w1", "q", Codec(max_message_bytes=LIMIT, transport=transport))
    error, letter = _refused(endings, body)
    assert isinstance(error, MessageTooLarge)
    assert "a pack of 3 task(s)" in letter.reason, letter.reason
    assert f"{len(body):,} bytes, over the limit of {LIMIT:,}" in letter.reason, letter.reason
    assert "task is" not in letter.reason, letter.reason
    assert letter.body == body[:LIMIT] or letter.body == body  # its start, as any oversized
