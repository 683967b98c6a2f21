#!/bin/sh
# The official rabbitmq image's entrypoint contract, for the local stand-in:
#   docker-entrypoint.sh rabbitmq-server [ARGS]  the server in the foreground (this image's
#                                                CMD; the k8s overlay's command ends in it)
#   docker-entrypoint.sh -FLAG ...               the same, the flags given to the server
#   docker-entrypoint.sh CMD [ARGS]              anything else runs as it is
# Debian's /usr/sbin/rabbitmq-server (first on PATH) is a wrapper that sends the logs to
# files: the server script in /usr/lib/rabbitmq/bin stays in the foreground, logs to the
# console (rabbitmq.conf) and stops cleanly on SIGTERM.
set -e
if [ "${1#-}" != "$1" ]; then
    set -- rabbitmq-server "$@"
fi
if [ "$1" = rabbitmq-server ]; then
    shift
    exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
