"""An outage begun by a refusal of the credentials: a later error that is no refusal says
nothing, and does not make the refusal said again (mut17b)."""

from __future__ import annotations

from distq.backoff import Outage
from distq.errors import AuthenticationFailed, TransportError


def test_an_outage_begun_by_a_refusal_says_nothing_of_a_plain_connection_error() -> None:
    """A plain connection error met while reconnecting is no refusal: no line (it was
    "; still reconnecting, with these credentials", with no reason), and the refusal
    that began the outage is still the one said (mut17b)."""
    outage = Outage()
    refused = AuthenticationFailed("Redis at h:1 refused the credentials; check the password.")
    assert outage.lost(refused)  # its cause, said by whoever reported the outage
    assert outage.refused(TransportError("Connection refused")) is None
    assert outage.refused(refused) is None
