"""forget_orphans at its edges, on every transport and real broker: a lone orphan, and an
orphan that is the newest dead letter (mut17b). An orphan left behind is a task its master
submitted again: `requeue-dead` would run it a second time."""

from __future__ import annotations

import pytest

from conftest import Target
from distq.envelope import new_id
from distq.transport import Transport
from distq.transport.base import orphaned_reason
from seam import dead_letter

pytestmark = pytest.mark.integration


def test_forget_orphans_removes_a_lone_orphan(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    """One orphan and nothing else in the dead letters: a master back from one short
    lapse, a single task dead-lettered meanwhile (mut17b)."""
    mine = hosted.reply_queue(new_id())
    dead_letter(hosted, remote, [(b"a", orphaned_reason(mine), target.settings.queue)])
    assert hosted.forget_orphans(mine) == 1
    assert hosted.dead_letters() == []


def test_forget_orphans_removes_the_newest_letter_too(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    """The orphan made last (orphans are the newest letters) is looked at and removed,
    and another master's letter before it is kept (mut17b)."""
    queue = target.settings.queue
    mine, theirs = hosted.reply_queue(new_id()), hosted.reply_queue(new_id())
    letters = [(b"b", orphaned_reason(theirs), queue), (b"a", orphaned_reason(mine), queue)]
    dead_letter(hosted, remote, letters)
    assert hosted.forget_orphans(mine) == 1
    assert [letter.body for letter in hosted.dead_letters()] == [b"b"]
