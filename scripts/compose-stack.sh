#!/usr/bin/env bash
# What `make up`, `make down`, `make scale` and `make job` run (README: "Run it in
# containers"):
#   compose-stack.sh up         settings into the env file, images, start, wait until healthy
#   compose-stack.sh down       remove the stack's containers, networks and volumes
#   compose-stack.sh scale N    N workers
#   compose-stack.sh job N      one batch job of N tasks against the running stack; exits
#                               with the job's status (0 all correct, 1 failed, 3 unreachable)
# Settings: see .env.example and scripts/compose.sh. Bounded waits; on a failure the
# last log lines of the containers concerned are printed.
set -euo pipefail
# shellcheck source=scripts/compose.sh
. "$(dirname "$0")/compose.sh"
cd "$REPO"

TRANSPORT_NAMES="manager redis rabbitmq"
HEALTH_TIMEOUT=${DISTQ_STACK_TIMEOUT:-240}  # seconds for the stack to become healthy
# Settings `make up NAME=value` writes into the env file.
KNOBS="DISTQ_TRANSPORT GRAFANA MASTER_RATE MASTER_TASK_DELAY WORKERS WORKER_CONCURRENCY
    PROMETHEUS_PORT REDIS_PORT RABBITMQ_PORT RABBITMQ_MANAGEMENT_PORT GRAFANA_PORT
    COMPOSE_PROJECT_NAME"
IMAGES="PYTHON_IMAGE REDIS_IMAGE RABBITMQ_IMAGE PROMETHEUS_IMAGE GRAFANA_IMAGE"

die() { log "$*"; exit 1; }

# A changed distq secret (the signing keys, the authkey, the broker's password)
# recreates the master and the workers, the master first (the workers depend on it):
# workers still holding the old signing keys would refuse its tasks (dead letters, and
# results its job waits for in vain). So the running workers stop first, warm.
stop_workers_holding_old_secrets() {
    local running now
    running=$(containers | xargs -r docker inspect --format \
        '{{ index .Config.Labels "com.docker.compose.service" }} {{ .State.Running }} {{ index .Config.Labels "io.distq.secrets" }}' \
        | awk '$1 == "worker" && $2 == "true" { print $3 }' | sort -u)
    now=$(secret_env | sed -n 's/^DISTQ_SECRETS_DISTQ=//p')
    if [ -n "$running" ] && [ "$running" != "$now" ]; then
        log "distq's secrets changed: stopping the workers first, so that none holding the old ones meets the new master's tasks"
        compose stop worker
    fi
}

# Containers of the project (one-off `run` containers too when ALL=1), as IDs.
containers() {
    local filter=(--filter "label=com.docker.compose.project=$(project_name)")
    if [ "${1:-}" != all ]; then filter+=(--filter "label=com.docker.compose.oneoff=False"); fi
    docker ps -aq "${filter[@]}"
}

# name status health restarts, one line per container of the project
container_states() {
    local ids
    ids=$(containers)
    [ -n "$ids" ] || return 0
    # shellcheck disable=SC2086
    docker inspect --format \
        '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}' \
        $ids | sed 's|^/||'
}

show_logs() {  # CONTAINER...: the last lines of each, and its failing healthcheck output
    local name
    for name in "$@"; do
        printf '\n--- %s: last log lines ---\n' "$name" >&2
        docker logs --tail 30 "$name" 2>&1 | sed 's/^/  /' >&2 || true
        docker inspect --format \
            '{{if .State.Health}}{{range .State.Health.Log}}  healthcheck (exit {{.ExitCode}}): {{.Output}}{{end}}{{end}}' \
            "$name" 2>/dev/null | tail -n 3 >&2 || true
    done
}

# Waits until every container of the project runs and passes its healthcheck.
wait_healthy() {
    local deadline=$((SECONDS + HEALTH_TIMEOUT)) states pending
    while :; do
        states=$(container_states)
        pending=$(awk '$2 != "running" || ($3 != "healthy" && $3 != "none") { print $1 }' \
            <<<"$states")
        if [ -n "$states" ] && [ -z "$pending" ]; then
            return 0
        fi
        # A container that keeps crashing will not get healthy by waiting.
        local crashing
        crashing=$(awk '$4 >= 3 { print $1 }' <<<"$states")
        if [ -n "$crashing" ] || [ "$SECONDS" -ge "$deadline" ]; then
            log "not healthy after $((SECONDS - deadline + HEALTH_TIMEOUT)) s:"
            printf '%s\n' "$states" | sed 's/^/  /' >&2
            # shellcheck disable=SC2086
            show_logs ${crashing:-$pending}
            return 1
        fi
        sleep 2
    done
}

# Fails when a host port the stack publishes is taken by something other than the stack.
check_ports() {  # TRANSPORT GRAFANA
    local pairs="prometheus:9090:PROMETHEUS_PORT" pair service inner var port mine
    case "$1" in
        redis) pairs+=" redis:6379:REDIS_PORT" ;;
        rabbitmq) pairs+=" rabbitmq:5672:RABBITMQ_PORT rabbitmq:15672:RABBITMQ_MANAGEMENT_PORT" ;;
    esac
    if [ "$2" = 1 ]; then pairs+=" grafana:3000:GRAFANA_PORT"; fi
    for pair in $pairs; do
        IFS=: read -r service inner var <<<"$pair"
        port=${!var:-$(env_get "$var")}  # the caller's value, before .env is written
        if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
            log "$var=$port: use a port number from 1 to 65535"
            exit 2
        fi
        mine=$(compose port "$service" "$inner" 2>/dev/null || true)
        if [ "$mine" = "127.0.0.1:$port" ]; then
            continue
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "127.0.0.1:$port ($var) is in use by another program; pick a free port: make up $var=<port>"
        fi
    done
}

up() {
    local var previous transport grafana tag line resolved
    ensure_env_file
    previous=$(env_get DISTQ_TRANSPORT)
    transport=${DISTQ_TRANSPORT:-$previous}
    grafana=${GRAFANA:-$(env_get GRAFANA)}
    case " $TRANSPORT_NAMES " in
        *" $transport "*) ;;
        *) log "DISTQ_TRANSPORT=$transport: use one of: $TRANSPORT_NAMES"; exit 2 ;;
    esac
    case "$grafana" in
        0 | 1) ;;
        *) log "GRAFANA=$grafana: use 1 (with Grafana) or 0"; exit 2 ;;
    esac
    local name meant
    while read -r name meant; do
        log "warning: $name is not a setting of the stack (ignored); did you mean $meant?"
    done < <(misspelled_settings)
    if [ -n "${WORKERS:-}" ] && ! [[ "$WORKERS" =~ ^[0-9]+$ ]]; then
        log "WORKERS=$WORKERS: say how many workers, e.g. WORKERS=3"
        exit 2
    fi
    # ports and images first: a refusal leaves the running stack, and .env, as they were
    check_ports "$transport" "$grafana"
    # Images: one named by the caller wins; a stand-in from an earlier run is tried anew.
    for var in $IMAGES; do
        if [ -z "${!var:-}" ]; then
            case "$(env_get "$var")" in
                distq-local/*) ;;
                *) export "$var=$(env_get "$var")" ;;
            esac
        fi
    done
    resolved=$(scripts/compose-images.sh resolve "$([ "$grafana" = 1 ] && echo grafana)") \
        || die "the stack's images cannot be had (above)"
    for var in $KNOBS; do
        if [ -n "${!var:-}" ]; then env_set "$var" "${!var}"; fi
    done

    if [ "$previous" != "$transport" ] && [ -n "$(containers)" ]; then
        log "the transport changes from $previous to $transport: removing the old stack's containers"
        compose_all down --remove-orphans >/dev/null 2>&1
    fi
    env_set COMPOSE_FILE "$(compose_files "$transport")"
    env_set COMPOSE_PROFILES "$(compose_profiles "$transport" "$grafana")"

    while IFS= read -r line; do
        env_set "${line%%=*}" "${line#*=}"
    done <<<"$resolved"
    # The project's own tag, not the version every checkout shares: a `make up` in
    # another checkout retagged distq-*:0.1.0 and :latest under this stack.
    tag=${DISTQ_IMAGE_TAG:-$(project_name)}
    PYTHON_IMAGE=$(env_get PYTHON_IMAGE) DISTQ_IMAGE_TAG=$tag scripts/compose-images.sh build
    env_set DISTQ_IMAGE_TAG "$tag"

    write_secret_files || die "could not write the secret files in $SECRETS_DIR (above)"
    stop_workers_holding_old_secrets
    log "starting the stack: transport $transport, project $(project_name)"
    # The last `make scale` holds: an `up` without --scale would go back to one worker.
    if ! compose up -d --remove-orphans --scale "worker=$(env_get WORKERS)"; then
        wait_healthy || true
        die "compose up failed (above: the containers and their last log lines)"
    fi
    wait_healthy || die "the stack did not become healthy"
    compose ps
    cat <<EOF

distq runs on the $transport transport: the master submits $(env_get MASTER_RATE) tasks/s.
  Prometheus   http://127.0.0.1:$(env_get PROMETHEUS_PORT)  (try: distq_worker_tasks_total)
EOF
    if [ "$grafana" = 1 ]; then
        echo "  Grafana      http://127.0.0.1:$(env_get GRAFANA_PORT)  (admin password in $ENV_FILE)"
    fi
    if [ "$transport" = rabbitmq ]; then
        echo "  RabbitMQ     http://127.0.0.1:$(env_get RABBITMQ_MANAGEMENT_PORT)  (user and password in $ENV_FILE)"
    fi
    cat <<EOF
  make scale WORKERS=5   five workers
  make job TASKS=1000    a batch job; exit 0 when every result is in and correct
  make logs / make ps    what it does
  make down              stop, and remove containers, networks and volumes
EOF
}

down() {
    local project left
    if [ ! -f "$ENV_FILE" ]; then
        log "no $ENV_FILE: nothing was started here"
        return 0
    fi
    project=$(project_name)
    compose_all down --volumes --remove-orphans
    # One-off containers of an interrupted `make job` are not the services' own.
    left=$(containers all)
    if [ -n "$left" ]; then
        # shellcheck disable=SC2086
        docker rm -f $left >/dev/null
        compose_all down --volumes --remove-orphans >/dev/null 2>&1
    fi
    log "removed project $project: containers, networks and volumes (.env, its secret files and the images kept)"
}

scale() {  # N
    local count=${1:-}
    [[ "$count" =~ ^[0-9]+$ ]] || { log "say how many workers: make scale WORKERS=3"; exit 2; }
    [ -n "$(containers)" ] || die "the stack is not running: make up first"
    env_set WORKERS "$count"
    compose up -d --no-deps --no-recreate --scale "worker=$count" worker
    wait_healthy || die "the workers did not become healthy"
    log "$count worker(s):"
    container_states | awk '$1 ~ /worker/ { print "  " $1 " " $3 }' >&2
}

# Stops and removes the job's container if it is still there: an interrupted (Ctrl-C,
# SIGTERM) `compose run -T` of Compose v2 returns and leaves it running, the job going
# on unseen (on the manager transport beside the restarted master, under its name).
end_job() {  # CONTAINER
    if docker inspect "$1" >/dev/null 2>&1; then
        docker stop "$1" >/dev/null 2>&1 || true
        docker rm -f "$1" >/dev/null 2>&1 || true
    fi
}

job() {  # N
    local tasks=${1:-} delay=${TASK_DELAY:-0} timeout=${JOB_TIMEOUT:-300} transport status=0 out
    [[ "$tasks" =~ ^[1-9][0-9]*$ ]] || { log "say how many tasks: make job TASKS=100"; exit 2; }
    [ -n "$(containers)" ] || die "the stack is not running: make up first"
    transport=$(env_get DISTQ_TRANSPORT)
    local name
    name="$(project_name)-job-$$"
    # --use-aliases: the job's master has the service's name on the network, so
    # Prometheus (dns_sd_configs `master`) scrapes it beside the stack's master.
    local run=(run --rm --no-deps --use-aliases --name "$name")
    [ -t 0 ] && [ -t 1 ] || run+=(-T)  # no terminal (CI, tests): no TTY
    local args=(master --tasks "$tasks" --task-delay "$delay" --timeout "$timeout")
    if [ "$transport" = manager ]; then
        # The manager master hosts the queues its workers use: the job's master takes
        # its place (and its name on the network) while the job runs.
        log "manager transport: the job's master stands in for the running master meanwhile"
        if ! out=$(compose stop master 2>&1); then
            printf '%s\n' "$out" | tail -n 5 | sed 's/^/  /' >&2
            die "could not stop the stack's master for the job (above); see make ps"
        fi
        trap "end_job $name; compose start master >/dev/null 2>&1 || true" EXIT
        compose "${run[@]}" "${args[@]}" || status=$?
        end_job "$name"
        # A master that does not come back is reported; the exit status stays the job's.
        if ! out=$(compose start master 2>&1); then
            printf '%s\n' "$out" | tail -n 5 | sed 's/^/  /' >&2
            log "the job is over (exit $status), but the stack's master did not start again"
            log "(above): see make ps and make logs SERVICE=master; make up starts it"
        fi
        trap - EXIT
    else
        trap "end_job $name" EXIT
        compose "${run[@]}" "${args[@]}" || status=$?
        end_job "$name"
        trap - EXIT
    fi
    return "$status"
}

find_compose
case "${1:-}" in
    up)
        scripts/ensure-docker.sh
        up
        ;;
    down) down ;;
    scale) scale "${2:-}" ;;
    job) job "${2:-}" ;;
    *) log "usage: compose-stack.sh up | down | scale N | job N"; exit 2 ;;
esac
