#!/usr/bin/env bash
# Makes sure the broker images the tests use exist locally, and writes their names to
# .build/images.env (DISTQ_REDIS_IMAGE=..., DISTQ_RABBITMQ_IMAGE=...) for tests/brokers.py.
#
# For each broker, the image named by DISTQ_REDIS_IMAGE (default redis:7) or
# DISTQ_RABBITMQ_IMAGE (default rabbitmq:3-management) is used when it exists locally or
# can be pulled. Without a registry, local stand-ins are built from deploy/images/*:
#   distq-local/bookworm-python:3.11   debootstrap'd Debian 12 + python3, made here and
#                                      carrying the host's extra CA certificates: never push it
#   distq-local/redis:7                FROM that base
#   distq-local/rabbitmq:3-management  FROM that base
#   distq-local/prometheus:2.42        FROM that base (Debian's prometheus), for the compose stack
# Every step whose image already exists is skipped, so a second run takes seconds; a
# stand-in is built again when its deploy/images/ folder changed (a label holds its hash).
#
# `build-local-images.sh --standin KIND` (python, redis, rabbitmq or prometheus) only makes
# sure that kind's stand-in exists and prints its name: scripts/compose-images.sh uses it
# when the compose stack's official images cannot be had.
# Needs a running Docker engine (scripts/ensure-docker.sh); root on Debian for debootstrap,
# which uses DISTQ_DEBIAN_MIRROR, else the bookworm mirror named in this machine's apt sources.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

export DOCKER_BUILDKIT=0  # the docker client first on PATH may have no buildx

BASE_IMAGE=distq-local/bookworm-python:3.11
LOCAL_REDIS=distq-local/redis:7
LOCAL_RABBITMQ=distq-local/rabbitmq:3-management
LOCAL_PROMETHEUS=distq-local/prometheus:2.42
ENV_FILE=.build/images.env

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# Prints the Debian mirror this machine's apt uses for bookworm (deb822 .sources or .list),
# or nothing when its apt sources name none.
debian_mirror() {
    local f mirror=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        mirror=$(awk 'BEGIN { RS = ""; FS = "\n" }
            {
                uri = ""; ok = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/) { split($i, u, /[ \t]+/); uri = u[2] }
                    if ($i ~ /^Suites:/ && $i ~ /[ \t]bookworm([ \t]|$)/) ok = 1
                }
                if (ok && uri != "") { print uri; exit }
            }' "$f")
        [ -n "$mirror" ] && break
    done
    if [ -z "$mirror" ]; then
        for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
            [ -f "$f" ] || continue
            mirror=$(awk '$1 == "deb" {
                    for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) break
                    if ($(i + 1) == "bookworm") { print $i; exit }
                }' "$f")
            [ -n "$mirror" ] && break
        done
    fi
    [ -z "$mirror" ] || printf '%s\n' "$mirror"
}

build_base() {
    if ! is_root_on_debian; then
        log "cannot make $BASE_IMAGE: debootstrap needs root on Debian."
        log "Use a machine that reaches a container registry, or set DISTQ_REDIS_IMAGE /"
        log "DISTQ_RABBITMQ_IMAGE to images that exist locally."
        exit 1
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap"
        apt_install debootstrap
    fi

    local mirror root
    mirror=${DISTQ_DEBIAN_MIRROR:-$(debian_mirror)}
    if [ -z "$mirror" ]; then
        log "cannot make $BASE_IMAGE: no Debian bookworm mirror in this machine's apt sources"
        log "(/etc/apt/sources.list.d/*.sources, *.list, /etc/apt/sources.list)."
        log "Set DISTQ_DEBIAN_MIRROR to the mirror URL this machine may use, or add it to apt."
        exit 1
    fi
    root=$(mktemp -d "${TMPDIR:-/var/tmp}/distq-rootfs.XXXXXX")
    # debootstrap mounts /proc and /sys inside the tree: unmount before removing it, and
    # never cross into another file system.
    cleanup_root() {
        local m
        for m in "$root/proc" "$root/sys" "$root/dev/pts" "$root/dev"; do
            if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
        done
        rm -rf --one-file-system "$root"
    }
    trap cleanup_root EXIT

    log "debootstrap bookworm from $mirror (about a minute)"
    if ! debootstrap --variant=minbase \
            --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$root" "$mirror" >"$root.log" 2>&1; then
        tail -n 20 "$root.log" >&2
        rm -f "$root.log"
        log "debootstrap failed"
        exit 1
    fi
    rm -f "$root.log"

    # Outbound HTTPS here may pass a TLS-intercepting proxy: give the base the host's
    # extra CAs so pip inside images works. Only this locally made base carries them.
    local crt added=0
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$crt" ] || continue
        cp "$crt" "$root/usr/local/share/ca-certificates/"
        added=1
    done
    if [ "$added" = 1 ]; then
        # Its warning about the bundle file (not a single certificate) is expected noise.
        chroot "$root" update-ca-certificates >/dev/null 2>&1 \
            || { log "update-ca-certificates failed in the base"; exit 1; }
    fi
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb

    log "importing $BASE_IMAGE"
    tar -C "$root" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >/dev/null
    cleanup_root
    trap - EXIT
}

# A hash of a build context: each file's name, whether it is executable, and contents.
context_hash() {  # DIR
    (
        cd "$1"
        find . -type f | LC_ALL=C sort | while IFS= read -r file; do
            if [ -x "$file" ]; then echo "executable $file"; fi
            sha256sum "$file"
        done
    ) | sha256sum | cut -d' ' -f1
}

# The label a stand-in carries: the hash of the context it was built from. An image of
# that name built from other files (an older deploy/images/*) is built again, so a
# change there reaches the tests without removing the image by hand.
CONTEXT_LABEL=org.distq.standin-context

build_standin() {  # NAME CONTEXT_DIR
    local name=$1 context=$2 key built
    key=$(context_hash "$context")
    if have_image "$name"; then
        built=$(docker image inspect --format "{{ index .Config.Labels \"$CONTEXT_LABEL\" }}" \
            "$name" 2>/dev/null || true)
        if [ "$built" = "$key" ]; then
            return 0
        fi
        log "$name was built from another version of $context: building it again"
    fi
    have_image "$BASE_IMAGE" || build_base
    log "building $name from $context"
    local out
    # Output is shown only on failure (the legacy builder also prints a deprecation notice).
    if ! out=$(docker build --force-rm --build-arg "BASE_IMAGE=$BASE_IMAGE" \
            --label "$CONTEXT_LABEL=$key" -t "$name" "$context" 2>&1); then
        printf '%s\n' "$out" | tail -n 30 >&2
        log "docker build of $name failed"
        exit 1
    fi
}

# Prints the image to use for one broker: the wanted one if it can be had, else the stand-in.
resolve() {  # WANTED STANDIN CONTEXT_DIR
    local wanted=$1 standin=$2 context=$3
    if have_image "$wanted"; then
        printf '%s\n' "$wanted"
        return 0
    fi
    # Without a registry a pull fails within about 0.1 s.
    if docker pull -q "$wanted" >/dev/null 2>&1; then
        printf '%s\n' "$wanted"
        return 0
    fi
    build_standin "$standin" "$context"
    printf '%s\n' "$standin"
}

if ! docker info >/dev/null 2>&1; then
    log "no Docker engine answers; run scripts/ensure-docker.sh first"
    exit 1
fi

if [ "${1:-}" = --standin ]; then
    case "${2:-}" in
        python) have_image "$BASE_IMAGE" || build_base; printf '%s\n' "$BASE_IMAGE" ;;
        redis) build_standin "$LOCAL_REDIS" deploy/images/redis; printf '%s\n' "$LOCAL_REDIS" ;;
        rabbitmq)
            build_standin "$LOCAL_RABBITMQ" deploy/images/rabbitmq
            printf '%s\n' "$LOCAL_RABBITMQ"
            ;;
        prometheus)
            build_standin "$LOCAL_PROMETHEUS" deploy/images/prometheus
            printf '%s\n' "$LOCAL_PROMETHEUS"
            ;;
        *) log "--standin takes python, redis, rabbitmq or prometheus, not '${2:-}'"; exit 2 ;;
    esac
    exit 0
fi

redis_image=$(resolve "${DISTQ_REDIS_IMAGE:-redis:7}" "$LOCAL_REDIS" deploy/images/redis)
rabbitmq_image=$(resolve "${DISTQ_RABBITMQ_IMAGE:-rabbitmq:3-management}" \
    "$LOCAL_RABBITMQ" deploy/images/rabbitmq)

mkdir -p .build
new=$(printf 'DISTQ_REDIS_IMAGE=%s\nDISTQ_RABBITMQ_IMAGE=%s\n' "$redis_image" "$rabbitmq_image")
if [ ! -f "$ENV_FILE" ] || [ "$(cat "$ENV_FILE")" != "$new" ]; then
    printf '%s\n' "$new" >"$ENV_FILE"
    log "wrote $ENV_FILE: $(printf '%s' "$new" | tr '\n' ' ')"
fi
