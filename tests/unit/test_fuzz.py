"""Bad input at the seams: arbitrary bytes into the envelope decoders and the worker.

Every ``make test`` runs well over 10,000 examples in a few seconds. For a longer hunt,
``DISTQ_FUZZ_EXAMPLES=200000 pytest -m fuzz`` (``make faults`` does that). The promise
under test: no exception escapes, and every delivery ends as a result, a retry or a
dead letter, each of which decodes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distq import squares
from distq.codec import Codec
from distq.console import Console
from distq.ending import Endings
from distq.envelope import DeadLetter, Result, Task
from distq.errors import EnvelopeError
from distq.runner import TaskRunner
from distq.signing import SIGNED
from distq.tasks import Registry
from distq.transport import Delivery

pytestmark = pytest.mark.fuzz

#: Examples in all, shared by the tests below in proportion to how cheap each one is.
EXAMPLES = int(os.environ.get("DISTQ_FUZZ_EXAMPLES", "10000"))


def fuzz(share: float) -> settings:
    return settings(
        max_examples=max(1, round(EXAMPLES * share)),
        deadline=None,
        database=None,  # no .hypothesis/ directory in the work tree
        suppress_health_check=list(HealthCheck),
    )


KEY, OTHER = secrets.token_hex(16).encode(), secrets.token_hex(16).encode()
CODECS = {"unsigned": Codec(max_message_bytes=4096), "signed": Codec([KEY], 4096)}


def _nested(depth: int) -> Any:
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


# Cheap to draw (st.recursive costs ten times more), with the values that break decoders.
_leaves = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 2**63, 10**400, 1.5, float("nan"), float("inf")]),
    st.sampled_from(["", "square", "x" * 300, "\x00", "[[[", "\u2603"]),
    st.integers(),
    st.text(max_size=8),
)
json_values = st.one_of(
    _leaves,
    st.lists(_leaves, max_size=3),
    st.dictionaries(st.sampled_from(["n", "value", "x", "v"]), _leaves, max_size=2),
    st.integers(0, 80).map(_nested),
)


_DELETE = object()
_odd_values = st.one_of(
    st.just(_DELETE),
    json_values,
    st.sampled_from(["", "x" * 256, "\u00e9" * 128, 10**30, 10**400, -1, float("nan"), 2**31]),
)
_TASKS = [
    json.loads(Task(name=name, args=args, reply_to="r").encode())
    for name in ("square", "echo", "boom", "unjsonable", "nope")
    for args in ([3], [], ["x"], [[1, {"a": None}]])
]
_FIELDS = sorted(_TASKS[0])


def _apply(base: dict[str, Any], changes: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(base)
    for name, value in changes:
        if value is _DELETE:
            obj.pop(name, None)
        else:
            obj[name] = value
    return obj


#: Real tasks with up to three fields removed or replaced by odd values: deep paths stay
#: likely (a generator of whole objects would rarely get every field right at once).
envelopes = st.builds(
    _apply,
    st.sampled_from(_TASKS),
    st.lists(st.tuples(st.sampled_from(_FIELDS), _odd_values), max_size=3),
)


#: Any bytes, and now and then brackets nested far past the parser's recursion limit.
any_bytes = st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=600),
    st.integers(0, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(0, 5000).map(lambda n: b'{"v":1,"args":' + b"[" * n),
)


def _square(n: Any, delay: Any = 0.0) -> Any:
    """The tutorial's square, its sleep cut to a millisecond: a fuzzed ``args`` of
    ``[3, 10**9]`` is square(3, delay=10**9), which slept for years (``make faults`` hung
    in its fuzz stage). Every other delay, odd or not, reaches it as drawn."""
    if type(delay) in (int, float) and delay > 0.001:
        delay = 0.001
    return squares.square(n, delay)


def worker(codec: Codec) -> TaskRunner:
    """The part of a worker that reads a delivery, runs its task and says how it ends."""
    registry = Registry()
    registry.register("square", _square, show=squares.show)
    registry.register("echo", lambda value=None, *more, **kw: value)
    registry.register("boom", lambda *args, **kw: 1 / 0)
    registry.register("unjsonable", lambda *args, **kw: {1, 2})
    console = Console(quiet=True, out=io.StringIO(), err=io.StringIO())
    return TaskRunner(registry, Endings("fuzz", "q", codec), console)


WORKERS = {name: worker(codec) for name, codec in CODECS.items()}


def settle_checked(name: str, body: bytes) -> None:
    """The worker's verdict on ``body`` is one of the three endings, each well formed."""
    codec = CODECS[name]
    runner = WORKERS[name]
    ending = runner(Delivery(body, tag=1))
    (settlement,), outcome = runner.endings.settlements([ending]), ending.outcome
    assert outcome in ("ok", "failed", "retried", "malformed")
    ends = [settlement.result, settlement.retry, settlement.dead_letter]
    assert any(end is not None for end in ends), (body, outcome)
    refusal = (  # a task refused for its signature is answered unsigned, by any worker
        settlement.result is not None
        and codec.signer is not None
        and not settlement.result.startswith(SIGNED)
    )
    if settlement.result is not None:
        assert settlement.reply_to
        if refusal:
            answer = Codec(max_message_bytes=4096).open_result(settlement.result)
            assert answer.error_type == "SignatureError", answer
        else:
            codec.open_result(settlement.result)
    if settlement.retry is not None:
        task = codec.open_task(body)
        assert codec.open_task(settlement.retry).attempt == task.attempt + 1
    if settlement.dead_letter is not None:
        letter = DeadLetter.decode(settlement.dead_letter)
        assert letter.reason and body.startswith(letter.body)
    if outcome == "malformed":
        assert settlement.dead_letter is not None
        if settlement.result is not None:  # answered: another version, too large, refused
            head = codec.task_head(body, any_version=True) or codec.unverified_task_head(
                body, most=len(body)
            )
            assert head is not None and head.reply_to == settlement.reply_to


@fuzz(0.3)
@given(body=any_bytes)
def test_decoders_raise_only_envelope_errors_on_any_bytes(body: bytes) -> None:
    for decode in (Task.decode, Result.decode, DeadLetter.decode, *_opens()):
        with contextlib.suppress(EnvelopeError):
            decode(body)


def _opens() -> list[Any]:
    return [c.open_task for c in CODECS.values()] + [c.open_result for c in CODECS.values()]


@fuzz(0.05)
@given(obj=envelopes)
def test_decoders_raise_only_envelope_errors_on_any_json(obj: dict[str, Any]) -> None:
    body = json.dumps(obj).encode()
    for decode in (Task.decode, Result.decode, DeadLetter.decode):
        with contextlib.suppress(EnvelopeError):
            decode(body)


@fuzz(0.35)
@given(body=any_bytes)
def test_the_worker_settles_any_bytes(body: bytes) -> None:
    for name in CODECS:
        settle_checked(name, body)


@fuzz(0.1)
@given(obj=envelopes)
def test_the_worker_settles_any_envelope(obj: dict[str, Any]) -> None:
    body = json.dumps(obj).encode()
    signer = CODECS["signed"].signer
    assert signer is not None
    for name in CODECS:
        settle_checked(name, body)
        settle_checked(name, signer.sign(body, "task"))  # signed even when too deep to send


def _bases() -> list[tuple[str, bytes]]:
    """Real tasks of every kind, sealed by each codec: what damage starts from."""
    tasks = [
        Task(name=name, args=args, reply_to="r", max_attempts=3)
        for name in ("square", "echo", "boom", "unjsonable", "nope")
        for args in ([3], [], ["x" * 40], [[1, {"a": None}]], [1.5, True], [2, 3, 4])
    ]
    return [(name, CODECS[name].seal_task(t)) for name in sorted(CODECS) for t in tasks]


BASES = _bases()


@fuzz(0.15)
@given(base=st.sampled_from(BASES), noise=st.binary(max_size=9), cut=st.integers(0, 4000))
def test_the_worker_settles_damaged_tasks(base: tuple[str, bytes], noise: bytes, cut: int) -> None:
    """A real task, sealed by its codec, then some bytes changed and its tail maybe cut."""
    name, sealed = base
    body = bytearray(sealed)
    for i in range(0, len(noise) - 2, 3):  # (position high, position low, new byte)
        body[(noise[i] << 8 | noise[i + 1]) % len(body)] = noise[i + 2]
    settle_checked(name, bytes(body[: max(1, cut)]))


@fuzz(0.05)
@given(envelope=st.binary(max_size=200), key=st.sampled_from([KEY, OTHER]))
def test_a_signature_check_accepts_only_the_exact_bytes(envelope: bytes, key: bytes) -> None:
    sealed = Codec([key]).seal(envelope, "task") if b"[" not in envelope else None
    if sealed is None:
        return
    signer = CODECS["signed"].signer
    assert signer is not None
    if key == KEY:
        assert signer.verify(sealed, "task") == envelope
        flipped = bytearray(sealed)
        flipped[-1 if envelope else 0] ^= 1
        with pytest.raises(EnvelopeError):
            signer.verify(bytes(flipped), "task")
    else:
        with pytest.raises(EnvelopeError, match="another key"):
            signer.verify(sealed, "task")
