"""A task sent with reply_to NO_REPLY gets no result, on the paths where the worker could
not handle it or refused it for its signature too (mut17b)."""

from __future__ import annotations

import pytest

from distq import signing
from distq.codec import Codec
from distq.ending import Endings
from distq.envelope import NO_REPLY, Task
from distq.errors import MessageTooLarge, SignatureError
from distq.transport import Delivery

KEY = b"k" * 32


def test_a_task_nobody_waits_for_that_the_worker_could_not_handle_gets_no_result() -> None:
    """Dead-lettered with the reason, and no WorkerError result published to a reply
    queue nobody reads (mut17b)."""
    t = Task(name="square", args=[3], reply_to=NO_REPLY)
    ending = Endings("w1", "q").unhandled(Delivery(t.encode(), 1), t, RuntimeError("bug"))
    s = ending.settlement
    assert ending.outcome == "failed" and s.dead_letter is not None
    assert (s.result, s.reply_to) == (None, None)


def test_a_task_nobody_waits_for_refused_for_its_signature_gets_no_result() -> None:
    """An unsigned task nobody waits for is dead-lettered unanswered; the same task with
    a master is answered, so the check is not vacuous (mut17b)."""
    codec = Codec([KEY])
    body = Task(name="square", args=[3], reply_to=NO_REPLY).encode()  # unsigned
    with pytest.raises(SignatureError) as caught:
        codec.open_task(body)
    ending = Endings("w1", "q", codec).malformed(Delivery(body, 1), caught.value)
    s = ending.settlement
    assert ending.outcome == "malformed" and s.dead_letter is not None
    assert (s.result, s.reply_to) == (None, None)
    answered = Task(name="square", args=[3], reply_to="replies").encode()
    with pytest.raises(SignatureError) as caught:
        codec.open_task(answered)
    refusal = Endings("w1", "q", codec).malformed(Delivery(answered, 1), caught.value)
    assert refusal.settlement.reply_to == "replies" and refusal.settlement.result is not None


@pytest.mark.parametrize("reply_to", [NO_REPLY, "replies"])
def test_an_oversized_signed_task_costs_one_mac_over_it(
    reply_to: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused for its size, a signed task nobody waits for had its signature checked
    twice, each an HMAC over all of it (up to 128 MiB): once to read its head, once more
    to say whether its signature was refused too. Counted as verifications of it:
    each hashes a message once at most, in any format or refusal."""
    sender, worker = Codec([KEY], max_message_bytes=1 << 20), Codec([KEY], max_message_bytes=4096)
    body = sender.seal_task(Task(name="square", args=["x" * 10_000], reply_to=reply_to))
    with pytest.raises(MessageTooLarge) as caught:
        worker.open_task(body)
    hashed: list[int] = []
    verify = signing.Signer.verify

    def counted(self: signing.Signer, message: bytes, kind: str) -> bytes:
        hashed.append(len(message))
        return verify(self, message, kind)

    monkeypatch.setattr(signing.Signer, "verify", counted)
    ending = Endings("w1", "q", worker).malformed(Delivery(body, 1), caught.value)
    assert ending.settlement.dead_letter is not None
    assert (ending.settlement.reply_to is None) == (reply_to == NO_REPLY)
    over_it = [size for size in hashed if size > 4096]
    assert len(over_it) == 1, hashed
