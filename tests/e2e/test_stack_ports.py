"""The stack fixture's `make up` once more on fresh ports when a port it chose free was
taken before the stack bound it (another test's server): decided from make's output, no
Docker needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from e2e.e2e_stack import PORT_TAKEN, REPO, Stack

#: docker's bind error, as a clean-clone CI run met it (Compose v2's wording)
DOCKER_BIND = (
    "Error response from daemon: driver failed programming external connectivity on "
    "endpoint distqe2e0a1b2credis-redis-1: Error starting userland proxy: listen tcp4 "
    "127.0.0.1:20694: bind: address already in use\n"
    "compose-stack: compose up failed (above: the containers and their last log lines)\n"
)
#: scripts/compose-stack.sh's own check, before the images are built
STACK_CHECK = (
    "compose-stack: 127.0.0.1:20694 (REDIS_PORT) is in use by another program; "
    "pick a free port: make up REDIS_PORT=<port>\n"
)


class ScriptedStack(Stack):
    """A stack whose `make` answers each call with the next of ``answers``, noting each
    call's target and the host ports it would have passed."""

    def __init__(self, workdir: Path, answers: list[tuple[int, str]]) -> None:
        super().__init__("redis", workdir, "0a1b2c")
        self.answers = answers
        self.calls: list[tuple[str, dict[str, str]]] = []

    def make(
        self, *args: str, timeout: float = 300, **env: str
    ) -> subprocess.CompletedProcess[str]:
        passed = self.env(**env)
        self.calls.append((" ".join(args), {var: passed[var] for var in self.ports}))
        code, out = self.answers.pop(0)
        return subprocess.CompletedProcess(["make", *args], code, out)


def test_a_port_taken_under_docker_is_chosen_afresh_and_up_run_again(tmp_path: Path) -> None:
    stack = ScriptedStack(tmp_path, [(2, DOCKER_BIND), (0, ""), (0, "distq runs\n")])
    first = {var: str(port) for var, port in stack.ports.items()}
    result = stack.up()
    assert result.returncode == 0
    assert [target for target, _ in stack.calls] == ["up", "down", "up"]
    assert stack.calls[0][1] == first
    again = stack.calls[2][1]
    assert set(again) == set(first) and not set(again.values()) & set(first.values()), again
    assert stack.up_output == DOCKER_BIND + "distq runs\n"  # both, for the tests that read it


def test_a_port_taken_before_the_stacks_own_check_is_chosen_afresh_too(tmp_path: Path) -> None:
    stack = ScriptedStack(tmp_path, [(2, STACK_CHECK), (0, ""), (0, "distq runs\n")])
    first = dict(stack.ports)
    assert PORT_TAKEN[1] in (REPO / "scripts/compose-stack.sh").read_text()  # its words
    assert stack.up().returncode == 0
    assert [target for target, _ in stack.calls] == ["up", "down", "up"]
    assert not set(stack.ports.values()) & set(first.values())


def test_up_is_run_again_once_only(tmp_path: Path) -> None:
    stack = ScriptedStack(tmp_path, [(2, DOCKER_BIND), (0, ""), (2, DOCKER_BIND)])
    assert stack.up().returncode == 2
    assert [target for target, _ in stack.calls] == ["up", "down", "up"]


def test_up_that_fails_otherwise_or_succeeds_is_not_run_again(tmp_path: Path) -> None:
    failed = ScriptedStack(tmp_path, [(2, "compose-stack: the stack did not become healthy\n")])
    assert failed.up().returncode == 2 and [t for t, _ in failed.calls] == ["up"]
    # the words in a successful run's output (a container's log line) ask for nothing
    fine = ScriptedStack(tmp_path, [(0, "redis_1 | bind: address already in use (retrying)\n")])
    assert fine.up().returncode == 0 and [t for t, _ in fine.calls] == ["up"]


def test_a_failed_make_down_between_the_two_ups_is_said_with_their_output(
    tmp_path: Path,
) -> None:
    """`make down` failing (a container it could not remove) was not looked at: the
    second `make up` ran beside what it left, and when that failed the fixture's message
    (the result's output) had nothing of the failed `make down`."""
    down = "compose-stack: could not remove distqe2e0a1b2credis-redis-1: device busy\n"
    stack = ScriptedStack(tmp_path, [(2, DOCKER_BIND), (1, down), (2, "port is allocated\n")])
    result = stack.up()
    assert [target for target, _ in stack.calls] == ["up", "down", "up"]
    assert result.returncode == 2
    for said in (result.stdout, stack.up_output):
        assert f"make down failed (exit 1):\n{down}" in said, said
        assert said.endswith("port is allocated\n"), said
