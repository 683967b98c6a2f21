"""How :mod:`distq.transport.redis_wire` packs commands: as redis-py would, byte for byte."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from redis.connection import Connection, PythonRespSerializer  # type: ignore[attr-defined]

from distq.transport import redis_wire
from distq.transport.redis_wire import Fixed, Headed


def test_a_hiredis_without_pack_command_leaves_the_packing_to_redis_py(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """redis-py (``redis[hiredis]>=5.3`` here) takes hiredis from 3.0 on (7.x: 3.2) and
    packs with it only if it has ``pack_command``; else in Python. ``from hiredis import
    pack_command`` then failed the import of the Redis transport (an ImportError): a
    :class:`Headed` command's tail is packed by hiredis only where redis-py would."""
    monkeypatch.setitem(sys.modules, "hiredis", types.ModuleType("hiredis"))
    assert redis_wire._hiredis_packer() is None
    monkeypatch.setattr(redis_wire, "_pack_tail", None)
    conn: Any = Connection()  # as redis-py 5 makes it without hiredis's pack_command
    conn._command_packer = PythonRespSerializer(conn._buffer_cutoff, conn.encoder.encode)
    command = Headed.of(Fixed(("EVALSHA", "f00", 1, "k", "id")), (3, b"body"))
    assert command.packed(conn) == b"".join(conn.pack_command(*command))


@pytest.mark.parametrize(
    "tail",
    [
        (b"x",),
        ("héllo ünïcode",),
        (0, -3, 2**70),
        (1.5, 0.1, 1e20, float("inf")),
        (memoryview(b"mv"),),
        (b"", ""),
        (b"a" * 5999,),
        (b"a" * 6000,),
        (b"a" * 6001, 1, b"b"),
        (b"a" * 70_000,),
    ],
    ids=["bytes", "str", "int", "float", "memoryview", "empty", "5999", "6000", "6001", "70000"],
)
def test_a_headed_command_is_packed_as_redis_py_packs_it_whole(tail: tuple[object, ...]) -> None:
    """Its head packed once and its tail at each send: the bytes redis-py's own
    ``pack_command`` makes of the whole, for each type of argument and size."""
    conn = Connection()
    head = Fixed(("EVALSHA", "f00", 2, "distq:q:ready", "k é", "id", 30000, 0.5))
    command = Headed.of(head, tail)  # type: ignore[arg-type]
    for _ in range(2):  # packed afresh, then with the head as packed before
        assert command.packed(conn) == b"".join(conn.pack_command(*command))
