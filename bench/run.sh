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
LOG_NAME=bench
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

python_version() { "$1" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))'; }

ensure_venv() {
    local version want
    version="$(python_version "$python")"
    want="$(files_hash "$here/requirements.txt" "$repo/pyproject.toml") $version"
    if [ -x "$venv/bin/python" ] && stamp_matches "$venv/.bench-stamp" "$want"; then
        return
    fi
    log "preparing $venv (Python $version; log: $venv/pip-install.log)"
    if [ ! -x "$venv/bin/python" ] || [ "$(python_version "$venv/bin/python")" != "$version" ]; then
        "$python" -m venv --clear "$venv"
    fi
    venv_pip_install "$venv" --quiet --upgrade pip
    venv_pip_install "$venv" --quiet -r "$here/requirements.txt" -e "$repo"
    stamp_write "$venv/.bench-stamp" "$want"
}

ensure_brokers() {
    local missing=() pkg
    while IFS= read -r pkg; do  # not mapfile: bash 3.2 (macOS) has none
        missing+=("$pkg")
    done < <(missing_server_packages redis-server rabbitmq-server)
    [ "${#missing[@]}" -eq 0 ] && return
    if is_root_on_debian; then
        log "installing ${missing[*]} (Debian packages; their services are not started)"
        apt_install_no_start --no-install-recommends "${missing[@]}" \
            || log "those brokers' rows will fail"
    else
        log "missing ${missing[*]}; install them (Debian/Ubuntu:" \
            "sudo apt-get install ${missing[*]}); their rows will fail until then"
    fi
}

case "${1:-}" in
    -h | --help) ensure_venv; exec "$venv/bin/python" "$here/run.py" --help ;;
esac
ensure_venv
ensure_brokers
exec "$venv/bin/python" "$here/run.py" "$@"
