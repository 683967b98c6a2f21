"""Local servers for tests and the benchmark: Redis, RabbitMQ and Prometheus.

Each server is a child process of this one that listens on 127.0.0.1 only, on a free
port, with all of its state in the directory the caller gives; it is ended by its PID
(its process group), never by name. A test that kills, pauses or restarts a broker
starts a private one here::

    with LocalRedis(tmp_path, password="pw").start() as server:
        server.pause(); ...; server.resume()     # SIGSTOP / SIGCONT
        server.kill(); server.restart()          # a crash, then the same port and dir

The programs are Debian's ``redis-server``, ``rabbitmq-server`` (with ``epmd``) and
``prometheus``; ``make test`` installs them. A missing one raises :class:`ServerError`
saying what to install. :class:`TlsFiles` turns TLS on (``certs.py`` makes throw-away
ones). Start servers from a thread that outlives them: with ``die_with_parent=True``
the kernel ends a server when the thread that started it ends.
"""

from launch.process import every_thread_stopped
from launch.prometheus_server import LocalPrometheus
from launch.rabbitmq_server import LocalRabbitMQ
from launch.redis_server import LocalRedis
from launch.server import HOST, LocalServer, ServerError, TlsFiles, free_port

__all__ = [
    "HOST",
    "LocalPrometheus",
    "LocalRabbitMQ",
    "LocalRedis",
    "LocalServer",
    "ServerError",
    "TlsFiles",
    "every_thread_stopped",
    "free_port",
]
