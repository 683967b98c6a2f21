"""A DISTQ_AUTHKEY holder's request that names a global is refused and logged as the
README says, in one line with the peer's address: the global's name, which the peer
chose, cannot make that line several (a line break in it) nor huge."""

from __future__ import annotations

import secrets
import struct
import time
from multiprocessing import connection

import pytest

from distq.config import Settings
from distq.transport import open_transport
from launch import free_port

pytestmark = pytest.mark.integration


def _naming(module: str, name: str) -> bytes:
    """A protocol 4 pickle that asks for ``module.name`` (STACK_GLOBAL) and stops."""
    parts = [b"\x80\x04"]
    for text in (module, name):
        data = text.encode()
        parts.append(b"X" + struct.pack("<I", len(data)) + data)  # BINUNICODE
    return b"".join([*parts, b"\x93."])


@pytest.mark.parametrize(
    "module",
    ["os\nmaster at 127.0.0.1:9000: all is well", "x" * 1_000_000],
    ids=["a line break", "a megabyte"],
)
def test_a_refused_global_is_logged_in_one_short_line(
    caplog: pytest.LogCaptureFixture, module: str
) -> None:
    authkey = secrets.token_hex(16).encode()
    settings = Settings(authkey=authkey, manager_address=("127.0.0.1", free_port()))
    hosted = open_transport(settings, "master")
    conn = connection.Client(settings.manager_address, authkey=authkey)
    try:
        conn.send_bytes(_naming(module, "system"))
        deadline = time.monotonic() + 30
        while "does not unpickle" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
    finally:
        conn.close()
        hosted.close()
    [message] = [r.getMessage() for r in caplog.records if "does not unpickle" in r.getMessage()]
    assert "\n" not in message and len(message) < 1000, message[:2000]
    assert "is not among what the manager protocol unpickles" in message, message[:2000]
