"""A result message that is an empty pack: no worker writes one, so it is refused, said."""

from __future__ import annotations

import pytest

from distq.codec import Codec
from distq.collector import Collector
from distq.envelope import Result, Task
from distq.errors import EnvelopeError

KEY = b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("keys", [(), (KEY,)])
def test_an_empty_result_pack_is_refused_saying_so(keys: tuple[bytes, ...]) -> None:
    """``[]`` on a master's reply queue (a queue writer's, never a worker's: a worker
    packs one result or more) opened as no results at all: the master dropped it
    without a word and counted nothing, where any other garbage result is said
    ("dropped a result: ...") and counted as malformed."""
    codec = Codec(keys)
    message = b"[]" if not keys else codec.signer.sign(b"[]", "result")  # type: ignore[union-attr]
    with pytest.raises(EnvelopeError, match=r"^result pack holds no result"):
        codec.open_results(message)
    errors: list[EnvelopeError] = []
    collector: Collector[str] = Collector(lambda r, e, rtt: None, errors.append, codec=codec)
    assert collector.accept([message]) == 0
    assert collector.malformed == 1 and len(errors) == 1, errors


def test_packs_of_results_still_open() -> None:
    codec = Codec()
    envelopes = [codec.encode_result(Result(f"t{n}", "ok", "w", 1, 1.0, 0.5, n)) for n in (1, 2)]
    (message,) = codec.seal_results(envelopes)
    assert codec.open_results(message) == envelopes


@pytest.mark.parametrize("field", ["name", "reply_to"])
def test_a_task_with_a_string_that_is_not_utf8_has_no_head(field: str) -> None:
    """A damaged task (a byte that is no UTF-8 inside a string) reads no head, so the
    worker dead-letters it as malformed. msgspec before 0.23 raised UnicodeDecodeError
    there instead of its DecodeError, which escaped the worker's settling of the damaged
    task (pyproject.toml: msgspec>=0.23)."""
    task = Task("square", [3], "r")
    body = task.encode().replace(f'"{field}":"'.encode(), f'"{field}":"\x80'.encode("latin-1"))
    assert body != task.encode()
    codec = Codec()
    assert codec.task_head(task.encode()) is not None  # the same task, undamaged, reads
    assert codec.task_head(body) is None
    assert codec.unverified_task_head(body) is None
