from __future__ import annotations

import pytest

from distq.transport.rabbitmq import pack_results, unpack_results


def test_packed_results_come_back_byte_for_byte() -> None:
    bodies = [b"", b"a", b'{"v":1}', bytes(range(256)) * 300]
    assert unpack_results(pack_results(bodies)) == bodies
    assert unpack_results(b"") == []


def test_a_truncated_pack_is_refused() -> None:
    with pytest.raises(ValueError, match="truncated"):
        unpack_results(pack_results([b"abc", b"def"])[:-1])
