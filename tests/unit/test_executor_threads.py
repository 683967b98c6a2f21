"""executor_threads.join_finishing: the wait of a shutdown for its executor's thread."""

from __future__ import annotations

from typing import Any

from distq import executor_threads


class _Racing:
    """A future set that another thread changes while it is read, once."""

    def __init__(self) -> None:
        self.reads = 0

    def __iter__(self) -> Any:
        self.reads += 1
        if self.reads == 1:
            raise RuntimeError("Set changed size during iteration")
        return iter(())


class _Thread:
    """A dispatcher's thread that never ends by itself (its broker hangs)."""

    def __init__(self) -> None:
        self.futures = _Racing()
        self.finishing = True
        self.failed: list[str] = []

    def is_alive(self) -> bool:
        return not self.failed

    def join(self, timeout: float) -> None:
        pass

    def fail_stuck(self, reason: str) -> int:
        self.failed.append(reason)
        return 0


def test_a_future_set_changed_while_read_is_read_again_not_a_crash_of_the_shutdown(
    monkeypatch: Any,
) -> None:
    # A Submit queued before shutdown() can add its futures while the wait reads them.
    clock = iter(range(0, 1000))
    monkeypatch.setattr("distq.executor_threads.time.monotonic", lambda: float(next(clock)))
    thread = _Thread()
    assert executor_threads.join_finishing(thread) is True  # type: ignore[arg-type]
    assert thread.futures.reads == 2 and thread.finishing is False
