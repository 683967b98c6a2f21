"""The test helper ``hosted_and_remote`` closes both ends, whichever close raises."""

from __future__ import annotations

from typing import Any

import pytest

import conftest
from distq.config import Settings


class _Closing:
    """A transport's close, counted, raising ``error`` if given."""

    def __init__(self, role: str, error: Exception | None, closed: list[str]) -> None:
        self.role, self.error, self.closed = role, error, closed

    def close(self) -> None:
        self.closed.append(self.role)
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize(
    ("failing", "raised"), [({"worker"}, "worker"), ({"worker", "master"}, "worker")]
)
def test_the_hosted_end_is_closed_though_the_remotes_close_raised(
    monkeypatch: pytest.MonkeyPatch, failing: set[str], raised: str
) -> None:
    """The remote's close raising left the hosted master open (its port and threads)
    for the rest of the session. Now each end is closed; the first error is raised."""
    closed: list[str] = []

    def opened(_settings: Settings, role: str) -> Any:
        error = RuntimeError(f"{role} close failed") if role in failing else None
        return _Closing(role, error, closed)

    monkeypatch.setattr(conftest, "open_transport", opened)
    raising = pytest.raises(RuntimeError, match=f"{raised} close failed")
    with raising, conftest.hosted_and_remote(Settings()):
        pass
    assert closed == ["worker", "master"]
