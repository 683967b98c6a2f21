"""The stack's tests (e2e/stack_cases.py) on the redis transport, in a module of their
own: `make test` runs each transport's stack in a process of its own."""

from e2e.stack_cases import *  # noqa: F403

TRANSPORT = "redis"
