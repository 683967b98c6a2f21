#!/usr/bin/env bash
# make example: word counts over a folder of text files (examples/wordcount/), split into
# tasks for two workers, checked against a single-process count.
#
# Transport: the DISTQ_* environment, like distq itself; when DISTQ_TRANSPORT is unset,
# the embedded default (manager) with a fresh random authkey on a free port. Folder:
# EXAMPLE_FOLDER (default: the Python standard library's own modules, a few MB of text
# every machine with Python has) and EXAMPLE_GLOB (default *.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/.venv/bin"

if [ -z "${DISTQ_TRANSPORT:-}" ]; then
    port=$("$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    DISTQ_AUTHKEY=$("$bin/python" -c 'import secrets; print(secrets.token_hex(16))')
    export DISTQ_TRANSPORT=manager DISTQ_MANAGER_ADDRESS="127.0.0.1:$port" DISTQ_AUTHKEY
fi
folder=${EXAMPLE_FOLDER:-$("$bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')}
export PYTHONPATH="$PWD/examples/wordcount${PYTHONPATH:+:$PYTHONPATH}"

# Each worker's lines go through a FIFO to a sed that tags them, so that the workers'
# own PIDs are known: once the job is done, they are told to stop (SIGTERM: a worker
# finishes what it runs and exits 0), instead of waiting to be idle, or, for one that
# started after a short job had ended, waiting for a master until --connect-timeout.
fifos=$(mktemp -d)
trap 'rm -rf "$fifos"' EXIT
workers=() taggers=()
for i in 1 2; do
    mkfifo "$fifos/worker-$i"
    sed -u -e "s/^/    [worker-$i] /" -e "w $fifos/said-$i" <"$fifos/worker-$i" &
    taggers+=("$!")
    # manager: the workers wait for the job, which hosts the queues, to listen
    "$bin/distq" worker --tasks wordcount_tasks --worker-id "worker-$i" --quiet \
        --connect-timeout 30 >"$fifos/worker-$i" 2>&1 &
    workers+=("$!")
done
# The job starts once both workers have said their first line (what tasks they run):
# they are past Python's start-up, where a SIGTERM would end one without a word, and
# both share the job. Bounded: one that failed at start has said why by then.
for _ in $(seq 300); do
    if [ -s "$fifos/said-1" ] && [ -s "$fifos/said-2" ]; then break; fi
    sleep 0.1
done
status=0
"$bin/python" examples/wordcount/wordcount.py "$folder" --glob "${EXAMPLE_GLOB:-*.py}" --check \
    || status=$?
kill -TERM "${workers[@]}" 2>/dev/null || true
wait "${workers[@]}" || true
wait "${taggers[@]}" || true
exit "$status"
