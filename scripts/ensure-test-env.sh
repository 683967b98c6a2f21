#!/usr/bin/env bash
# What `make test` runs before pytest: the venv (scripts/ensure-venv.sh), a Docker engine
# (scripts/ensure-docker.sh) and the broker images (scripts/build-local-images.sh).
# When Docker cannot be had it says why and falls back: as root on Debian it installs
# redis-server and rabbitmq-server, which tests/brokers.py then starts as plain processes.
# DISTQ_TEST_BROKERS=docker makes a missing Docker fatal; =process skips Docker.
# Quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'ensure-test-env: %s\n' "$*" >&2; }

is_root_on_debian() { [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ]; }

have_process_brokers() {
    command -v redis-server >/dev/null 2>&1 && command -v epmd >/dev/null 2>&1 \
        && { [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] \
            || command -v rabbitmq-server >/dev/null 2>&1; }
}

install_process_brokers() {
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages from starting system-wide brokers (on 0.0.0.0) at install time;
    # the tests start their own on loopback. Only a policy file made here is removed.
    local policy=/usr/sbin/policy-rc.d made_policy=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=true
    fi
    local rc=0
    apt-get install -y -q redis-server rabbitmq-server >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null \
            && apt-get install -y -q redis-server rabbitmq-server >/dev/null; } || rc=$?
    if [ "$made_policy" = true ]; then rm -f "$policy"; fi
    return "$rc"
}

scripts/ensure-venv.sh

mode=${DISTQ_TEST_BROKERS:-auto}
case "$mode" in
    auto | docker | process) ;;
    *) log "DISTQ_TEST_BROKERS=$mode: use auto, docker or process"; exit 2 ;;
esac

if [ "$mode" != process ]; then
    if scripts/ensure-docker.sh && scripts/build-local-images.sh; then
        exit 0
    fi
    if [ "$mode" = docker ]; then
        log "DISTQ_TEST_BROKERS=docker but Docker or the broker images cannot be had (see above)"
        exit 1
    fi
    log "no usable Docker: the tests will start Redis and RabbitMQ as local processes"
fi

if have_process_brokers; then
    exit 0
fi
if is_root_on_debian; then
    log "installing redis-server and rabbitmq-server"
    install_process_brokers
    exit 0
fi
if [ -n "${DISTQ_TEST_REDIS_URL:-}" ] && [ -n "${DISTQ_TEST_AMQP_URL:-}" ]; then
    exit 0  # the tests use the brokers these name
fi
log "the integration tests need Redis and RabbitMQ. Either:"
log "  - install and start Docker (then re-run make test), or"
log "  - install redis-server and rabbitmq-server (Debian/Ubuntu: apt-get install"
log "    redis-server rabbitmq-server; macOS: brew install redis rabbitmq), or"
log "  - set DISTQ_TEST_REDIS_URL and DISTQ_TEST_AMQP_URL to brokers on 127.0.0.1."
exit 1
