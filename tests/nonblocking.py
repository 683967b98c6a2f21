"""A pipe whose writing end is O_NONBLOCK and fills up (as a parent may leave a shared
stdout), for tests of what distq writes to such a stream."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
from collections.abc import Iterator

from distq import console


@contextlib.contextmanager
def full_pipe() -> Iterator[tuple[io.TextIOWrapper, int]]:
    """A text stream on a pipe whose writing end is O_NONBLOCK, and the pipe's reading
    end (non-blocking too: :func:`drain` reads what is there)."""
    read, write = os.pipe()
    flags = fcntl.fcntl(write, fcntl.F_GETFL)
    fcntl.fcntl(write, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    os.set_blocking(read, False)
    stream = open(write, "w", encoding="utf-8")  # noqa: SIM115  # as sys.stdout on a pipe
    try:
        yield stream, read
    finally:
        # what is left in its buffer cannot go: the fd closes all the same
        with contextlib.suppress(BlockingIOError):
            stream.close()
        os.close(read)
        # nor the end of a line it owes: a next test's stream, at its id(), paid it first
        console._OWED.pop(id(stream), None)


def drain(read: int) -> bytes:
    """What the pipe's reading end ``read`` holds now."""
    chunks = []
    for _ in range(10_000):  # bounded: a pipe holds at most a few MB
        try:
            chunk = os.read(read, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
