"""The compose stack per transport, for the end-to-end tests (marker ``docker``).

They run whenever a Docker engine answers (`make test` starts one on Debian as root, so
always in CI) and are skipped, saying why, when none does. A failing test's report
carries the last log lines of every container of its stack.
"""

from __future__ import annotations

import secrets
from collections.abc import Generator, Iterator

import pytest

from e2e.e2e_stack import Stack, docker_answers

# The stack's tests live in e2e/stack_cases.py, which is no test module: its asserts
# are rewritten as a test module's are, for their messages.
pytest.register_assert_rewrite("e2e.stack_cases")

TRANSPORTS = ("manager", "redis", "rabbitmq")
_TOKEN = secrets.token_hex(3)  # one per test run: project names, env files, image tags


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """`make up` on the transport its module names (TRANSPORT); whatever the tests leave
    is removed afterwards."""
    if not docker_answers():
        pytest.skip("no Docker engine answers `docker info` (make test starts one on Debian)")
    transport: str = request.module.TRANSPORT
    assert transport in TRANSPORTS, f"TRANSPORT = {transport!r}: one of {TRANSPORTS}"
    stack = Stack(transport, tmp_path_factory.mktemp(f"stack-{transport}"), _TOKEN)
    try:
        result = stack.up()
        if result.returncode != 0:
            pytest.fail(f"make up failed ({result.returncode}):\n{result.stdout}\n{stack.logs()}")
        yield stack
    finally:
        if stack.leftovers():
            stack.make("down", timeout=180)
        stack.remove_images()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.failed and isinstance(stack, Stack):
        try:
            report.sections.append((f"containers of {stack.project}", stack.logs()))
        except Exception as exc:  # the report must not fail for want of logs
            report.sections.append(("containers", f"(could not read their logs: {exc})"))
    return report
