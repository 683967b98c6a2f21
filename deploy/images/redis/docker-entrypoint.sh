#!/bin/sh
# Runs redis-server in the foreground, listening on every interface of the container with
# protected mode off (else it refuses connections that arrive through Docker's port
# forwarding). Options given as the command come after ours, so they win.
set -e
if [ "${1#-}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" = "redis-server" ]; then
    shift
    exec redis-server --bind 0.0.0.0 --protected-mode no "$@"
fi
exec "$@"
