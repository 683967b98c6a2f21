#!/usr/bin/env bash
# make bench: distq against raw clients, Celery, Dramatiq and RQ on Redis, RabbitMQ and
# multiprocessing.managers. Options go to bench/run.py (--tasks, --repeat, --only,
# --contestants, --memory, ...; see bench/run.sh --help).
#
# 1. Creates or refreshes bench/.venv from bench/requirements.txt plus the project
#    (editable); skipped when the stamp (hash of both files + Python version) matches.
# 2. Makes sure redis-server and rabbitmq-server are installed (apt-get as root on
#    Debian, services not started; otherwise says what to install and goes on: the
#    missing broker's rows then say it did not start).
# 3. Runs bench/run.py, which starts and stops its own brokers on loopback ports.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="$here/.venv"
python="${PYTHON:-python3}"

ensure_venv() {
    local version want
    version="$("$python" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')"
    want="$(cat "$here/requirements.txt" "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1) $version"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.bench-stamp" 2>/dev/null)" = "$want" ]; then
        return
    fi
    echo "bench: preparing $venv (Python $version)"
    if [ -x "$venv/bin/python" ] && [ "$("$venv/bin/python" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')" = "$version" ]; then
        :
    else
        "$python" -m venv --clear "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements.txt" -e "$repo"
    echo "$want" >"$venv/.bench-stamp"
}

ensure_brokers() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || ! command -v epmd >/dev/null 2>&1; then
        missing+=(rabbitmq-server)
    fi
    [ "${#missing[@]}" -eq 0 ] && return
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench: installing ${missing[*]} (Debian packages; their services are not started)"
        # Keep the packages' init scripts from starting system-wide brokers.
        local policy=/usr/sbin/policy-rc.d made_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
        fi
        local status=0
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null; } || status=$?
        [ "$made_policy" -eq 1 ] && rm -f "$policy"
        [ "$status" -eq 0 ] || echo "bench: apt-get failed ($status); those brokers' rows will fail" >&2
    else
        echo "bench: missing ${missing[*]}; install them (Debian/Ubuntu:" \
            "sudo apt-get install ${missing[*]}); their rows will fail until then" >&2
    fi
}

case "${1:-}" in
    -h | --help) ensure_venv; exec "$venv/bin/python" "$here/run.py" --help ;;
esac
ensure_venv
ensure_brokers
exec "$venv/bin/python" "$here/run.py" "$@"
