"""A manager master's replies that are malformed plain data (a dict keyed by a list, a
set of lists, an int that is not digits) are refused by the worker like a reply naming a
global: a lost connection, said in one line, never a traceback out of the worker."""

from __future__ import annotations

import pytest

from distq.errors import ConnectionFailed
from distq.transport import open_transport
from fake_master import fake_master, fake_settings, fetch_refused

pytestmark = pytest.mark.integration

#: protocol 4 pickles of plain data that no pickle.dumps writes
MALFORMED = {
    "a dict keyed by a list": b"\x80\x04}]K\x01s.",  # EMPTY_DICT EMPTY_LIST 1 SETITEM
    "a set of a list": b"\x80\x04\x8f(]\x90.",  # EMPTY_SET MARK EMPTY_LIST ADDITEMS
    "an int of letters": b"Ixyz\n.",  # INT 'xyz'
}


@pytest.mark.parametrize("what", MALFORMED)
def test_a_malformed_reply_as_a_worker_connects_is_a_refused_connection(what: str) -> None:
    settings = fake_settings("sec32")
    refused = pytest.raises(ConnectionFailed, match=r"refused the reply of the master")
    with fake_master(settings, "dummy", MALFORMED[what]), refused:
        open_transport(settings, "worker").close()


@pytest.mark.parametrize("what", MALFORMED)
def test_a_malformed_reply_to_a_call_is_a_lost_connection(what: str) -> None:
    fetch_refused(fake_settings("sec32"), MALFORMED[what])
