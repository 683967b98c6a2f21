#!/usr/bin/env bash
# Makes sure a Docker engine answers `docker info`.
# Root on Debian: installs docker.io when dockerd is missing and starts dockerd in the
# background (there is no systemd here), then waits up to 60 s for it to answer.
# Anywhere else: says what to install and exits 1. Never stops a process it did not start.
# Builds elsewhere in the project use DOCKER_BUILDKIT=0: the docker client first on PATH
# may have no buildx plugin.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

if docker info >/dev/null 2>&1; then
    exit 0
fi

if ! is_root_on_debian; then
    log "no Docker engine answers 'docker info'."
    log "Install and start Docker Engine (see Docker's install guide for your system),"
    log "or on Debian/Ubuntu as root: apt-get install -y docker.io && dockerd &"
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    log "installing docker.io"
    apt_install docker.io
fi

# Live dockerd processes: a killed daemon can linger as a zombie (state Z) when nothing
# reaps it, and a zombie must not pass for a daemon that is starting up.
live_dockerd() {
    local pid
    for pid in $(pgrep -x dockerd 2>/dev/null); do
        case "$(ps -o stat= -p "$pid" 2>/dev/null)" in
            Z* | "") ;;
            *) printf '%s ' "$pid" ;;
        esac
    done
}

# A daemon that is already starting up is left alone; only start one when none runs.
started=""
running=$(live_dockerd)
if [ -n "$running" ]; then
    log "a dockerd is already running (pid $running); waiting for it"
else
    log "starting dockerd (log: /var/log/dockerd.log)"
    setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &
    started=$!
    log "dockerd pid $started"
fi

for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        exit 0
    fi
    if [ -n "$started" ] && ! kill -0 "$started" 2>/dev/null; then
        log "dockerd exited; last lines of /var/log/dockerd.log:"
        tail -n 20 /var/log/dockerd.log >&2 || true
        exit 1
    fi
    sleep 1
done

log "dockerd did not answer within 60 s; last lines of /var/log/dockerd.log:"
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
