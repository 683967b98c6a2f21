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

workers=()
for i in 1 2; do
    # manager: the workers wait for the job, which hosts the queues, to listen
    "$bin/distq" worker --tasks wordcount_tasks --worker-id "worker-$i" --quiet \
        --exit-when-idle 3 --connect-timeout 30 2>&1 | sed -u "s/^/    [worker-$i] /" &
    workers+=("$!")
done
status=0
"$bin/python" examples/wordcount/wordcount.py "$folder" --glob "${EXAMPLE_GLOB:-*.py}" --check \
    || status=$?
wait "${workers[@]}" || true
exit "$status"
