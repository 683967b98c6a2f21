#!/usr/bin/env bash
# What `make test` runs before pytest:
# 1. the venv (scripts/ensure-venv.sh);
# 2. the local servers tests/launch/ starts on loopback: redis-server, rabbitmq-server
#    (with epmd) and prometheus (with promtool). Tests that kill, pause or restart a broker,
#    TLS tests and the Prometheus tests need them whatever provides the shared brokers. As
#    root on Debian they are installed (their services kept from starting); elsewhere it
#    says what to install and exits 1;
# 3. a Docker engine (scripts/ensure-docker.sh) and the broker images
#    (scripts/build-local-images.sh) for the session's brokers. Without Docker it says why
#    and tests/brokers.py starts them as local processes instead.
# DISTQ_TEST_BROKERS=docker makes a missing Docker fatal; =process skips Docker.
# Quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SERVER_PACKAGES=(redis-server rabbitmq-server prometheus)

mode=${DISTQ_TEST_BROKERS:-auto}
case "$mode" in
    auto | docker | process) ;;
    *) log "DISTQ_TEST_BROKERS=$mode: use auto, docker or process"; exit 2 ;;
esac

scripts/ensure-venv.sh

# A read loop, not mapfile: macOS runs this with its bash 3.2, which has no mapfile, and
# must get as far as the hint below.
missing=()
while IFS= read -r pkg; do
    missing+=("$pkg")
done < <(missing_server_packages "${SERVER_PACKAGES[@]}")
if [ "${#missing[@]}" -gt 0 ]; then
    if ! is_root_on_debian; then
        log "the tests start their own ${missing[*]} on 127.0.0.1; install them:"
        log "  Debian/Ubuntu: apt-get install ${missing[*]}"
        log "  macOS: brew install redis rabbitmq prometheus"
        log "then re-run make test."
        exit 1
    fi
    log "installing ${missing[*]} (Debian packages; their services are not started)"
    apt_install_no_start --no-install-recommends "${missing[@]}"
fi

if [ "$mode" = process ]; then
    exit 0
fi
if scripts/ensure-docker.sh && scripts/build-local-images.sh; then
    exit 0
fi
if [ "$mode" = docker ]; then
    log "DISTQ_TEST_BROKERS=docker but Docker or the broker images cannot be had (see above)"
    exit 1
fi
log "no usable Docker: the tests will start Redis and RabbitMQ as local processes"
