"""A garbage result pack of millions of tiny items is refused without making an object
for each (Codec.open_results, Codec.oversized_results, and a master's collector, which
asks oversized_results for stand-ins when open_results says the pack is too large)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest

from distq.codec import Codec
from distq.collector import Collector
from distq.envelope import Result
from distq.errors import EnvelopeError, MessageTooLarge
from distq.limits import DEFAULT_MAX_MESSAGE_BYTES, MAX_PREFETCH

KEY = b"0123456789abcdef0123456789abcdef"


def _peak(call: Callable[[], object]) -> int:
    """The most memory Python held above what it held before ``call``."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        call()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _warm(codec: Codec) -> None:
    """Read one pack of many commas first: what its reading makes once per process."""
    pack = b"[" + b",".join([b"0"] * (MAX_PREFETCH + 1)) + b"]"
    assert (
        codec.oversized_results(pack if codec.signer is None else codec.signer.sign(pack, "result"))
        == []
    )


def _zeros(size: int) -> bytes:
    """``[0,0,...,0]`` of ``size`` bytes or one less: one item per two bytes."""
    return b"[" + b",".join([b"0"] * ((size - 1) // 2)) + b"]"


@pytest.mark.parametrize("limit", [DEFAULT_MAX_MESSAGE_BYTES, 16 << 20])
def test_a_pack_of_millions_of_tiny_items_is_refused_in_little_memory(limit: int) -> None:
    """``[0,0,...]`` as large as DISTQ_MAX_MESSAGE_BYTES allows: the master made one
    msgspec.Raw per item (some 64 bytes each: 28 MB from 1 MiB, 448 MB from 16 MiB)
    before it counted them and refused the pack for holding over 10,000."""
    codec = Codec(max_message_bytes=limit)
    message = _zeros(limit)
    _warm(codec)

    def refused() -> None:
        with pytest.raises(MessageTooLarge):
            codec.open_results(message)

    assert _peak(refused) < 2 << 20
    with pytest.raises(MessageTooLarge, match="result pack holds over 10,000 results"):
        codec.open_results(message)
    assert codec.oversized_results(message) == []
    assert _peak(lambda: codec.oversized_results(message)) < 2 << 20
    errors: list[EnvelopeError] = []
    collector: Collector[None] = Collector(lambda r, e, rtt: None, errors.append, codec=codec)
    assert _peak(lambda: collector.accept([message])) < 2 << 20
    assert collector.malformed == 1 and len(errors) == 1  # one pack, one line
    assert "holds over 10,000 results" in str(errors[0])


def test_an_oversized_pack_of_millions_of_tiny_items_makes_no_object_for_each() -> None:
    """A pack over this process's limit (a worker's is larger) is read for the heads of
    its results: the same 16 MiB of ``[0,0,...]`` made 448 MB there too."""
    codec = Codec([KEY])
    message = codec.signer.sign(_zeros(16 << 20), "result")  # type: ignore[union-attr]
    _warm(codec)
    # its body once more: the signature checked, the body is a copy
    assert _peak(lambda: codec.oversized_results(message)) < len(message) + (2 << 20)
    assert codec.oversized_results(message) == []


@pytest.mark.parametrize("keys", [(), (KEY,)])
def test_a_pack_of_as_many_results_as_a_batch_still_opens(keys: tuple[bytes, ...]) -> None:
    """A batch of MAX_PREFETCH results, each with a list value (commas past the count
    that takes the bounded reading), packed whole as a worker before cb0ef70 did (up to
    its own limit): every result reads, in order; one more is refused, said."""
    codec = Codec(list(keys), max_message_bytes=16 << 20)
    results = [Result(f"t{n}", "ok", "w", 1, 1.0, 0.5, [n, n, [n]]) for n in range(MAX_PREFETCH)]
    envelopes = [codec.encode_result(r) for r in results]
    pack = b"[" + b",".join(envelopes) + b"]"
    message = pack if codec.signer is None else codec.signer.sign(pack, "result")
    assert codec.open_results(message) == envelopes
    assert [Result.decode(e) for e in codec.open_results(message)] == results
    small = Codec(list(keys))  # its limit below the pack: the heads of all 10,000 read
    assert [r.task_id for r in small.oversized_results(message)] == [r.task_id for r in results]
    more = b"[" + b",".join([*envelopes, envelopes[0]]) + b"]"
    message = more if codec.signer is None else codec.signer.sign(more, "result")
    with pytest.raises(MessageTooLarge, match="holds over 10,000 results; a worker packs at most"):
        codec.open_results(message)
    assert small.oversized_results(message) == []


def test_packs_of_few_items_with_many_commas_open_as_before() -> None:
    codec = Codec()
    value = list(range(MAX_PREFETCH * 2))
    envelopes = [
        codec.encode_result(Result(f"t{n}", "ok", "w", 1, 1.0, 0.5, value)) for n in (1, 2)
    ]
    pack = b"[" + b",".join(envelopes) + b"]"
    assert codec.open_results(pack) == envelopes
    with pytest.raises(EnvelopeError, match="not a JSON array"):
        codec.open_results(pack[:-1])
    with pytest.raises(EnvelopeError, match="not a JSON array"):
        codec.open_results(pack + b"]")
    with pytest.raises(MessageTooLarge, match="deeper than"):
        codec.open_results(b"[" * 5000 + b"0," * MAX_PREFETCH + b"0" + b"]" * 5000)
