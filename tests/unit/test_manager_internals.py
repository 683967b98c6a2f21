"""The parts of ``multiprocessing`` the manager transport relies on, checked without a master.

A Python release that moves one fails at import of distq.transport.manager_wire,
naming it: see its docstring and :func:`check_multiprocessing`.
"""

from __future__ import annotations

from multiprocessing import connection, managers

import pytest

from distq.errors import ConfigError
from distq.transport import manager, manager_wire


def test_this_python_has_every_part_the_manager_transport_uses() -> None:
    manager_wire.check_multiprocessing()
    assert getattr(managers, "listener_client")[manager_wire.SERIALIZER][1] is manager_wire.client  # noqa: B009


def _renamed_parameters(conn: object, key: object) -> None:
    """A challenge function whose parameters a release renamed."""


@pytest.mark.parametrize(
    ("owner", "name", "value", "named"),
    [
        (managers, "listener_client", None, "managers.listener_client"),
        (managers, "listener_client", {"xmlrpclib": ()}, "managers.listener_client"),
        (managers.Server, "public", ["shutdown"], "managers.Server.public"),
        (connection, "SocketListener", None, "connection.SocketListener"),
        (connection, "answer_challenge", _renamed_parameters, "connection.answer_challenge"),
        (connection, "deliver_challenge", None, "connection.deliver_challenge"),
        (managers.BaseProxy, "_incref", None, "BaseProxy._incref"),
        (managers.BaseProxy, "_callmethod", 3, "BaseProxy._callmethod"),
        (managers.BaseManager, "_create", None, "BaseManager._create"),
        (managers.BaseProxy, "__init__", _renamed_parameters, "BaseProxy.__init__"),
    ],
)
def test_a_part_that_changed_is_named_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, value: object, named: str
) -> None:
    monkeypatch.setattr(owner, name, value, raising=False)
    with pytest.raises(ConfigError) as caught:
        manager_wire.check_multiprocessing()
    message = str(caught.value)
    assert f"changed multiprocessing's {named} " in message
    assert "DISTQ_TRANSPORT=redis or rabbitmq" in message


def test_a_listener_without_its_socket_is_refused_and_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[bool] = []

    class Moved:
        def __init__(self, address: object, family: object, backlog: int = 1) -> None:
            self.handle = object()  # no _socket: a release that renamed it

        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(connection, "SocketListener", Moved)
    with pytest.raises(ConfigError, match=r"SocketListener\._socket \(found NoneType"):
        manager_wire.Listener(("127.0.0.1", 0))
    assert closed == [True]


@pytest.mark.parametrize(
    ("answers", "bodies", "said"),
    [
        ([True], [b"a", b"b"], "withdraw's result: 1 answer for 2 bodies"),
        ([True, False], [b"a"], "withdraw's result: 2 answers for 1 body"),
        ([True, False, True], [b"a", b"b"], "withdraw's result: 3 answers for 2 bodies"),
    ],
)
def test_a_withdraw_answered_with_a_count_of_another_size_says_it_as_said(
    answers: list[bool], bodies: list[bytes], said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "1 answers for 2 bodies" and "2 answers for 1 bodies"."""
    monkeypatch.setattr(manager_wire.BrokerProxy, "_call", lambda *_, **__: answers)
    proxy = object.__new__(manager_wire.BrokerProxy)
    with pytest.raises(manager_wire.Refused) as refused:
        proxy.withdraw("q", bodies)
    assert str(refused.value) == said


@pytest.mark.parametrize(
    ("bodies", "taken", "said"),
    [
        ([b"a"], True, "it took its 1 task, which ends with it unrun"),
        ([b"a"], False, "it did not take its 1 task"),
        ([b"a", b"b"], True, "it took its 2 tasks, which end with it unrun"),
        ([b"a", b"b"], False, "it did not take its 2 tasks"),
    ],
)
def test_a_put_the_master_stopped_as_it_served_says_one_task_in_the_singular(
    bodies: list[bytes], taken: bool, said: str
) -> None:
    """What ``distq submit`` printed of its one task: "it took its 1 task(s), which end
    with it unrun"."""
    served = manager._ServedUntil.__new__(manager._ServedUntil)
    served._args, served._address = ("q", bodies), "127.0.0.1:5000"
    kind, text = served._put_stopped(taken)
    assert kind == "#TRACEBACK"
    assert text.endswith(f"the master at 127.0.0.1:5000 stopped as it served this put: {said}")
