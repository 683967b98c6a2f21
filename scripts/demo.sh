#!/usr/bin/env bash
# make demo: the tutorial's squares job on the embedded default (manager transport):
# one master and two workers as local processes, a fresh random authkey, a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin

port=$("$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DISTQ_AUTHKEY=$("$bin/python" -c 'import secrets; print(secrets.token_hex(16))')
export DISTQ_TRANSPORT=manager DISTQ_MANAGER_ADDRESS="127.0.0.1:$port" DISTQ_AUTHKEY

# --wait-workers 2: the job starts once both workers are attached, so that both take
# part however slowly this machine starts them
"$bin/distq" master --tasks "${DEMO_TASKS:-6}" --task-delay "${DEMO_TASK_DELAY:-1}" --timeout 120 \
    --wait-workers 2 &
master=$!
workers=()
for i in 1 2; do
    # workers' lines are indented and tagged so the three processes read apart
    "$bin/distq" worker --worker-id "worker-$i" --exit-when-idle 2 2>&1 \
        | sed -u "s/^/    [worker-$i] /" &
    workers+=("$!")
done
status=0
wait "$master" || status=$?
wait "${workers[@]}" || true
exit "$status"
