"""``micro.py``: its steps run against the code as it is, and its HMAC floor is HMAC."""

from __future__ import annotations

import hashlib
import hmac

import micro
from distq.signing import HEADER_BYTES, Signer


def test_hmac_floor_is_hmac_sha256_as_signing_computes_it() -> None:
    key, data = micro.KEY, b'{"id":"t-1","name":"square","args":[733]}'
    one = micro.hmac_floor(key, data)
    assert one() == hmac.new(key, data, hashlib.sha256).hexdigest().encode()
    signed = Signer([key]).sign(data)
    assert signed[HEADER_BYTES - 65 : HEADER_BYTES - 1] == one()  # the header's signature


def test_every_step_measures_a_positive_cost() -> None:
    costs = micro.measure(rounds=1)
    assert "signing floor: one HMAC-SHA256 of a task (two per task)" in costs
    assert all(cost > 0 for cost in costs.values()), costs
