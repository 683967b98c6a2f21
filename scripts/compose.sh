#!/usr/bin/env bash
# Docker Compose on the stack's files, with the stack's settings:
#   scripts/compose.sh ARGS...        e.g. scripts/compose.sh ps, scripts/compose.sh logs master
# Sourced by scripts/compose-stack.sh for the same functions.
#
# - Runs `docker compose` (v2) when it answers, else `docker-compose` (v1). When neither
#   is there: as root on Debian installs Debian's docker-compose; elsewhere says what to
#   install. DISTQ_COMPOSE="docker-compose" (or "docker compose") picks one.
# - The settings are the env file's (DISTQ_ENV_FILE, default .env; `make up` writes it):
#   the variables the compose files read are taken out of the environment, so a
#   DISTQ_TRANSPORT exported for other work cannot steer the stack. `make up NAME=value`
#   is how a setting changes.
# - The secrets of the env file reach the containers as files: `make up` writes them to
#   DISTQ_SECRETS_DIR (the env file's name plus .secrets: .env.secrets/, its owner alone
#   may enter it), which docker-compose.yml mounts as compose secrets.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"
ENV_FILE=${DISTQ_ENV_FILE:-$REPO/.env}
ENV_EXAMPLE=$REPO/.env.example
SECRETS_DIR=$ENV_FILE.secrets
# The env file's secrets, each NAME:file (the compose secret of that name).
SECRET_FILES="DISTQ_AUTHKEY:authkey DISTQ_SIGNING_KEYS:signing-keys REDIS_PASSWORD:redis-password
    RABBITMQ_PASSWORD:rabbitmq-password GRAFANA_ADMIN_PASSWORD:grafana-admin-password"

# Every variable docker-compose.yml and deploy/compose/*.yml read, and the ones that steer
# compose itself. tests/e2e/test_files.py checks that the list is complete.
STACK_VARIABLES="COMPOSE_FILE COMPOSE_PROFILES COMPOSE_PROJECT_NAME DISTQ_TRANSPORT
    DISTQ_AUTHKEY DISTQ_SIGNING_KEYS REDIS_PASSWORD RABBITMQ_USER RABBITMQ_PASSWORD GRAFANA_ADMIN_PASSWORD
    GRAFANA MASTER_RATE MASTER_TASK_DELAY WORKERS WORKER_CONCURRENCY PROMETHEUS_PORT REDIS_PORT
    RABBITMQ_PORT RABBITMQ_MANAGEMENT_PORT GRAFANA_PORT PYTHON_IMAGE REDIS_IMAGE
    RABBITMQ_IMAGE PROMETHEUS_IMAGE GRAFANA_IMAGE DISTQ_IMAGE_TAG DISTQ_SECRETS_DIR
    DISTQ_SECRETS_DISTQ DISTQ_SECRETS_REDIS DISTQ_SECRETS_RABBITMQ DISTQ_SECRETS_GRAFANA"

# NAME KNOWN lines: each variable of the environment that is not a stack variable but
# is one edit from one (a letter left out, added, changed, or two swapped), as distq
# warns of its own (`make up DISTQ_TRANSPRT=rabbitmq` brought the stack up on redis).
misspelled_settings() {
    compgen -e | awk -v known="$STACK_VARIABLES" '
        function distance(a, b,    i, j, la, lb, d, cost, best) {
            la = length(a); lb = length(b)
            for (i = 0; i <= la; i++) d[i, 0] = i
            for (j = 0; j <= lb; j++) d[0, j] = j
            for (i = 1; i <= la; i++)
                for (j = 1; j <= lb; j++) {
                    cost = substr(a, i, 1) != substr(b, j, 1)
                    best = d[i - 1, j] + 1
                    if (d[i, j - 1] + 1 < best) best = d[i, j - 1] + 1
                    if (d[i - 1, j - 1] + cost < best) best = d[i - 1, j - 1] + cost
                    if (i > 1 && j > 1 && substr(a, i, 1) == substr(b, j - 1, 1) \
                        && substr(a, i - 1, 1) == substr(b, j, 1) && d[i - 2, j - 2] + 1 < best)
                        best = d[i - 2, j - 2] + 1
                    d[i, j] = best
                }
            return d[la, lb]
        }
        BEGIN { count = split(known, names, /[ \t\n]+/); for (i = 1; i <= count; i++) is[names[i]] = 1 }
        !($0 in is) {
            for (i = 1; i <= count; i++) {
                if (names[i] == "" || (length($0) - length(names[i])) ^ 2 > 1) continue
                if (distance($0, names[i]) <= 1) { print $0, names[i]; next }
            }
        }'
}

# Sets COMPOSE (an array): the compose command to run.
find_compose() {
    if [ -n "${DISTQ_COMPOSE:-}" ]; then
        read -r -a COMPOSE <<<"$DISTQ_COMPOSE"
        if ! "${COMPOSE[@]}" version >/dev/null 2>&1; then
            log "DISTQ_COMPOSE=$DISTQ_COMPOSE does not run; unset it or install that one"
            exit 1
        fi
        return 0
    fi
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
        return 0
    fi
    if command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
        return 0
    fi
    if is_root_on_debian; then
        log "installing docker-compose (Debian's package)"
        apt_install docker-compose
        COMPOSE=(docker-compose)
        return 0
    fi
    log "neither 'docker compose' nor 'docker-compose' runs. Install Docker Compose:"
    log "https://docs.docker.com/compose/install/ (Debian/Ubuntu: apt-get install docker-compose)"
    exit 1
}

# The env file: one NAME=value per line; the last assignment of a name counts.
env_get() {  # NAME
    [ -f "$ENV_FILE" ] || return 0
    sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1
}

env_set() {  # NAME VALUE: replaces the line of NAME, or appends one
    local tmp
    tmp=$(mktemp "$ENV_FILE.XXXXXX")
    if grep -q "^$1=" "$ENV_FILE"; then
        awk -v name="$1" -v value="$2" \
            'index($0, name "=") == 1 { print name "=" value; next } { print }' \
            "$ENV_FILE" >"$tmp"
    else
        cat "$ENV_FILE" >"$tmp"
        printf '%s=%s\n' "$1" "$2" >>"$tmp"
    fi
    chmod 600 "$tmp"
    mv "$tmp" "$ENV_FILE"
}

secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# Makes the env file from .env.example on first use, with random secrets; gives an older
# env file the secrets it lacks.
ensure_env_file() {
    local name project
    if [ ! -f "$ENV_FILE" ]; then
        (umask 077 && cp "$ENV_EXAMPLE" "$ENV_FILE")
        # Compose v1 and v2 derive different names from a directory such as distq-main.
        project=$(basename "$REPO" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9')
        env_set COMPOSE_PROJECT_NAME "${project:-distq}"
        log "wrote $ENV_FILE with random secrets (from .env.example)"
    fi
    local pair
    for pair in $SECRET_FILES; do
        name=${pair%%:*}
        case "$(env_get "$name")" in
            "" | change-me) env_set "$name" "$(secret)" ;;
        esac
    done
}

# A value of the env file as compose's own reader takes it (python-dotenv): the quotes
# around it removed, or, unquoted, a trailing " #comment" and the blanks around it. The
# secrets once went through compose so: a quoted password meant the same then.
env_value() {  # NAME
    local value
    value=$(env_get "$1")
    case "$value" in
        \"*\") value=${value#\"} && value=${value%\"} ;;
        \'*\') value=${value#\'} && value=${value%\'} ;;
        *)
            value=${value%% #*}
            value=${value#"${value%%[![:space:]]*}"}
            value=${value%"${value##*[![:space:]]}"}
            ;;
    esac
    printf '%s' "$value"
}

# Writes each secret of the env file to its file in SECRETS_DIR, before `make up` starts
# the stack: only then, for a container that restarts reads its file again (a file
# written by `make ps` gave a restarted Redis another password than its workers'). The
# files are readable by all (a container's user is not the host's) in a directory only
# its owner may enter; a failure stops `make up`.
write_secret_files() {
    local pair file value
    (umask 077 && mkdir -p "$SECRETS_DIR") || return 1
    chmod 700 "$SECRETS_DIR" || return 1
    if [ ! -s "$SECRETS_DIR/.salt" ]; then  # the fingerprints' own secret, see secret_env
        (umask 077 && secret >"$SECRETS_DIR/.salt") || return 1
    fi
    for pair in $SECRET_FILES; do
        file=$SECRETS_DIR/${pair#*:}
        value=$(env_value "${pair%%:*}")
        if [ ! -f "$file" ] || [ "$(cat "$file")" != "$value" ]; then
            { printf '%s' "$value" >"$file.new" && chmod 644 "$file.new" && mv "$file.new" "$file"; } \
                || return 1
        fi
    done
}

# A fingerprint of secret files (SECRETS_DIR/NAME ...), salted, so that a password of
# few characters cannot be guessed from it: it is a container label, which `docker
# inspect` shows.
fingerprint() {
    local name
    for name in .salt "$@"; do
        cat "$SECRETS_DIR/$name" 2>/dev/null || true
        echo
    done | if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi \
        | cut -c 1-16
}

# NAME=value lines of what compose reads the secrets with: where the files are, and per
# service the fingerprint of the files it mounts, its label: a changed secret recreates
# the containers that read it, and only those.
secret_env() {
    local distq="authkey signing-keys"
    case "$(env_get DISTQ_TRANSPORT)" in
        redis) distq="$distq redis-password" ;;
        rabbitmq) distq="$distq rabbitmq-password" ;;
    esac
    # shellcheck disable=SC2086
    printf '%s\n' "DISTQ_SECRETS_DIR=$SECRETS_DIR" \
        "DISTQ_SECRETS_DISTQ=$(fingerprint $distq)" \
        "DISTQ_SECRETS_REDIS=$(fingerprint redis-password)" \
        "DISTQ_SECRETS_RABBITMQ=$(fingerprint rabbitmq-password)" \
        "DISTQ_SECRETS_GRAFANA=$(fingerprint grafana-admin-password)"
}

project_name() { env_get COMPOSE_PROJECT_NAME; }

# The compose files and profiles of one transport (GRAFANA=1 adds its profile). A local
# docker-compose.override.yml comes last, as compose itself would load it.
compose_files() {  # TRANSPORT
    local files=docker-compose.yml
    [ "$1" = manager ] || files+=":deploy/compose/$1.yml"
    [ ! -f "$REPO/docker-compose.override.yml" ] || files+=":docker-compose.override.yml"
    printf '%s' "$files"
}

compose_profiles() {  # TRANSPORT GRAFANA
    local profiles=""
    [ "$1" = manager ] || profiles=$1
    if [ "$2" = 1 ]; then profiles=${profiles:+$profiles,}grafana; fi
    printf '%s' "$profiles"
}

# Runs compose with the env file's settings (its secrets as the files `make up` wrote)
# and nothing else from the environment; NAME=value arguments before `--` win over the
# env file's.
compose_with() {
    local args=() var line
    for var in $STACK_VARIABLES; do args+=(-u "$var"); done
    while IFS= read -r line; do args+=("$line"); done < <(secret_env)
    while [ "$1" != -- ]; do args+=("$1") && shift; done
    shift
    (cd "$REPO" && env "${args[@]}" "${COMPOSE[@]}" --env-file "$ENV_FILE" "$@")
}

compose() { compose_with -- "$@"; }

# The same, with every transport's files and profiles: reaches all of the stack's services.
compose_all() {
    compose_with COMPOSE_FILE="$(compose_files redis):deploy/compose/rabbitmq.yml" \
        COMPOSE_PROFILES="redis,rabbitmq,grafana" -- "$@"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    if [ ! -f "$ENV_FILE" ]; then
        log "no $ENV_FILE: start the stack with 'make up' first"
        exit 1
    fi
    find_compose
    compose "$@"
fi
