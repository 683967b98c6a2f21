# shellcheck shell=bash
# Small helpers the project's scripts share. Source it, do not run it:
#   . "$(dirname "$0")/lib.sh"        (or from bench/: . "$repo/scripts/lib.sh")
# Every function is quiet on success and says on stderr what failed and what to do.

# log MESSAGE...: one line on stderr, tagged with the script's name (LOG_NAME overrides it).
log() { printf '%s: %s\n' "${LOG_NAME:-$(basename "$0" .sh)}" "$*" >&2; }

# is_root_on_debian: true when this shell may install Debian packages itself.
is_root_on_debian() { [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ]; }

# apt_install [APT-OPTION...] PACKAGE...: apt-get install, quietly. On a fresh machine the
# package lists may be stale or missing, so a failed install is retried once after
# apt-get update. Waits up to 10 minutes for another apt/dpkg to finish. On failure prints
# the tail of apt's output and returns non-zero. Needs root (see is_root_on_debian).
apt_install() {
    local out status=0
    out=$(mktemp "${TMPDIR:-/tmp}/distq-apt.XXXXXX")
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=600)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "$@" >"$out" 2>&1; then
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >"$out" 2>&1 \
            && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "$@" >"$out" 2>&1 \
            || status=$?
    fi
    if [ "$status" != 0 ]; then
        tail -n 15 "$out" >&2
        log "apt-get install $* failed (exit $status)"
    fi
    rm -f "$out"
    return "$status"
}

# apt_install_no_start [APT-OPTION...] PACKAGE...: apt_install for packages that ship a
# service (brokers, Prometheus), kept from starting system-wide at install time through
# /usr/sbin/policy-rc.d; the project starts its own on loopback. A policy file that was
# already there is left as it was; one made here is removed afterwards.
apt_install_no_start() {
    local policy=/usr/sbin/policy-rc.d made_policy=false status=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=true
    fi
    apt_install "$@" || status=$?
    if [ "$made_policy" = true ]; then rm -f "$policy"; fi
    return "$status"
}

# missing_server_packages PACKAGE...: prints (one a line) those of redis-server,
# rabbitmq-server and prometheus whose programs tests/launch/ cannot find.
missing_server_packages() {
    local pkg
    for pkg in "$@"; do
        case "$pkg" in
            redis-server) command -v redis-server >/dev/null 2>&1 || echo "$pkg" ;;
            rabbitmq-server)
                { command -v epmd >/dev/null 2>&1 || [ -x /usr/lib/erlang/bin/epmd ]; } \
                    && { [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] \
                        || command -v rabbitmq-server >/dev/null 2>&1; } \
                    || echo "$pkg"
                ;;
            prometheus)
                command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
                    || echo "$pkg"
                ;;
            *) log "missing_server_packages: unknown package $pkg"; return 2 ;;
        esac
    done
}

# files_hash FILE...: a sha256 of the files' contents, the key of an install stamp.
files_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }

# stamp_matches STAMP KEY: true when the file STAMP holds KEY, i.e. the install it guards
# was done for exactly these inputs and can be skipped.
stamp_matches() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# stamp_write STAMP KEY: records that the install for KEY succeeded.
stamp_write() { printf '%s\n' "$2" >"$1"; }

# venv_pip_install VENV PIP-ARGUMENT...: pip install into VENV, its output kept in
# VENV/pip-install.log (pip's build backend is loud even with -q) and shown on failure.
venv_pip_install() {
    local venv=$1
    shift
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check "$@" \
            >"$venv/pip-install.log" 2>&1; then
        tail -n 30 "$venv/pip-install.log" >&2
        log "pip install failed; the whole output is in $venv/pip-install.log"
        return 1
    fi
}

# public_source_url URL: what an image label (org.opencontainers.image.source) may say
# about a git remote. An http(s), ssh or git URL keeps its scheme, host, port and path,
# and loses any user:password@ (CI systems clone through token URLs), query and fragment;
# scp-like [user@]host:path becomes ssh://host/path. Anything else (a local path,
# file://, an empty remote, anything odd such as a stray @) is "unknown": the label then
# says nothing rather than something private.
public_source_url() {
    local url=${1:-} scheme rest authority tail host
    local host_re='^([A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]+)?$'
    # Git's scp-like syntax; a one-letter "host" is a Windows drive (C:\...), not a host.
    local scp_re='^([^@/:]+@)?([A-Za-z0-9._-]{2,}):(.+)$'
    case "$url" in
        *[[:space:]\\]* | "") echo unknown; return 0 ;;
        http://* | https://* | ssh://* | git://* | git+ssh://* | ssh+git://*)
            scheme=${url%%://*}
            rest=${url#*://}
            authority=${rest%%[/?#]*}
            tail=${rest#"$authority"}
            host=${authority##*@}
            # An @ after the host: a password with a / ? or # in it, or worse.
            case "$tail" in *@*) echo unknown; return 0 ;; esac
            if [[ $host =~ $host_re ]]; then
                printf '%s://%s%s\n' "$scheme" "$host" "${tail%%[?#]*}"
            else
                echo unknown
            fi
            ;;
        *://*) echo unknown ;;
        *)
            if [[ $url =~ $scp_re ]] && [[ ${BASH_REMATCH[3]} != *@* ]]; then
                host=${BASH_REMATCH[2]}
                tail=${BASH_REMATCH[3]#/}
                printf 'ssh://%s/%s\n' "$host" "${tail%%[?#]*}"
            else
                echo unknown
            fi
            ;;
    esac
}
