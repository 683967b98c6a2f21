"""Signing as the README's "Security" section describes it, on every transport: a
result signed with a key the submitter does not hold is dropped with a warning line
naming the key id, and its future is not completed by it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

import distq
import jobs
from conftest import Target
from distq.signing import key_id
from procs import Distq

pytestmark = pytest.mark.integration

OLD = "sec30-old-signing-key-0123456789abcdef"
NEW = "sec30-new-signing-key-fedcba9876543210"


def test_a_result_signed_with_another_key_is_dropped_with_a_warning(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    ex = distq.Executor(target.settings, signing_keys=(OLD.encode(),))
    try:
        future = ex.submit(jobs.add, 1, 2)
        with _worker_with_new_key_first(target):
            deadline = time.monotonic() + 60
            said = "dropped a result: result signed with another key"
            while said not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.1)
            assert repr(key_id(NEW.encode())) in caplog.text, caplog.text
            assert not future.done()
    finally:
        ex.close()  # not waited for: the future never completes


@contextlib.contextmanager
def _worker_with_new_key_first(target: Target) -> Iterator[Distq]:
    """A worker that moved the new key first too early: it signs with NEW, accepts OLD."""
    args = ["worker", "--tasks", "jobs", "--connect-timeout", "30"]
    proc = Distq(args, target.process_env(DISTQ_SIGNING_KEYS=f"{NEW},{OLD}"))
    try:
        yield proc
    finally:
        proc.stop(grace=3.0)
