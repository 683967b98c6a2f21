#!/usr/bin/env bash
# The images of the compose stack (docker-compose.yml).
#
#   compose-images.sh resolve [grafana]   print KEY=IMAGE lines: the image each service runs
#   compose-images.sh build               build distq-master and distq-worker (make images)
#
# resolve: each of PYTHON_IMAGE, REDIS_IMAGE, RABBITMQ_IMAGE, PROMETHEUS_IMAGE (and
# GRAFANA_IMAGE when asked) is the image named by that variable, official by default.
# It is used when it exists locally or can be pulled. When an official default cannot be
# had (no registry: a pull fails within a second), a local stand-in is built from
# deploy/images/ by scripts/build-local-images.sh and used instead. An image named
# explicitly that cannot be had is an error, and so is Grafana without a registry.
#
# build: docker build of both images FROM the resolved PYTHON_IMAGE, tagged
# DISTQ_IMAGE_TAG (default: the package version; also `latest` then; `make up` passes
# the compose project's name, so checkouts keep their images apart). Legacy builder
# (DOCKER_BUILDKIT=0): the docker client on PATH may have no buildx.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

export DOCKER_BUILDKIT=0

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

version() { sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml; }

# Prints the image to run for one kind: the wanted one if it can be had, else a stand-in.
resolve_one() {  # KIND VARIABLE
    local kind=$1 var=$2 default wanted
    default=$(sed -n "s/^$var=//p" .env.example)  # the official image, pinned
    wanted=${!var:-$default}
    if have_image "$wanted"; then
        printf '%s\n' "$wanted"
        return 0
    fi
    if docker pull -q "$wanted" >/dev/null 2>&1; then
        log "pulled $wanted"
        printf '%s\n' "$wanted"
        return 0
    fi
    if [ "$wanted" != "$default" ]; then
        log "$var=$wanted: not here and cannot be pulled; pull or build it, or unset $var"
        return 1
    fi
    if [ "$kind" = grafana ]; then
        log "$wanted cannot be pulled and has no local stand-in: Grafana needs a registry"
        log "(or a local image named by GRAFANA_IMAGE); without it: make up GRAFANA=0"
        return 1
    fi
    local standin
    standin=$(scripts/build-local-images.sh --standin "$kind") || return 1
    log "cannot pull $wanted (no registry?): using the local stand-in $standin"
    printf '%s\n' "$standin"
}

resolve() {
    local pair image kinds="python:PYTHON_IMAGE redis:REDIS_IMAGE rabbitmq:RABBITMQ_IMAGE"
    kinds+=" prometheus:PROMETHEUS_IMAGE"
    if [ "${1:-}" = grafana ]; then kinds+=" grafana:GRAFANA_IMAGE"; fi
    for pair in $kinds; do
        image=$(resolve_one "${pair%%:*}" "${pair#*:}") || exit 1
        printf '%s=%s\n' "${pair#*:}" "$image"
    done
}

build() {
    local python tag version revision source role out
    python=$(resolve_one python PYTHON_IMAGE) || exit 1
    version=$(version)
    tag=${DISTQ_IMAGE_TAG:-$version}
    revision=$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)
    # Never the remote as it is: it may carry a CI token (https://user:token@host/...) or
    # be a path on this machine, and the label travels with every push and pull.
    source=$(public_source_url "$(git remote get-url origin 2>/dev/null || true)")
    for role in master worker; do
        log "building distq-$role:$tag FROM $python"
        # Output only on failure (the legacy builder also prints a deprecation notice).
        if ! out=$(docker build --force-rm -f "services/$role/Dockerfile" \
                --build-arg "PYTHON_IMAGE=$python" --build-arg "VERSION=$version" \
                --build-arg "REVISION=$revision" --build-arg "SOURCE_URL=$source" \
                -t "distq-$role:$tag" . 2>&1); then
            printf '%s\n' "$out" | tail -n 30 >&2
            log "docker build of distq-$role failed"
            exit 1
        fi
        if [ "$tag" = "$version" ]; then
            docker tag "distq-$role:$tag" "distq-$role:latest"
        fi
    done
    docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
        | grep -E "^distq-(master|worker):$tag " >&2 || true
}

if ! docker info >/dev/null 2>&1; then
    log "no Docker engine answers; run scripts/ensure-docker.sh first"
    exit 1
fi

case "${1:-}" in
    resolve) resolve "${2:-}" ;;
    build) build ;;
    *) log "usage: compose-images.sh resolve [grafana] | build"; exit 2 ;;
esac
