#!/usr/bin/env bash
# Makes sure .venv exists and holds the project with its dev extras.
# Creates .venv with `python3 -m venv` (PYTHON=... picks another interpreter) when it is
# missing or broken; as root on Debian, installs python3-venv first if venv/ensurepip is
# missing, elsewhere says what to install and exits 1. Runs `pip install -e '.[dev]'` only
# when pyproject.toml (or the venv's interpreter) changed since the last install: a hash is
# kept in .venv/.distq-installed, so a repeated run takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.distq-installed

has_venv_module() { "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; }

venv_works() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    log "$PYTHON not found: install Python 3.11 or newer (Debian: apt-get install python3 python3-venv)"
    exit 1
fi

if ! venv_works; then
    if ! has_venv_module; then
        if is_root_on_debian; then
            log "installing python3-venv ($PYTHON has no venv/ensurepip module)"
            apt_install python3-venv || true  # the check below says what to do
        fi
        if ! has_venv_module; then
            log "$PYTHON ($(command -v "$PYTHON")) cannot create virtual environments."
            log "Install its venv module: Debian/Ubuntu: apt-get install python3-venv;"
            log "Fedora: dnf install python3; or use a python.org / pyenv build (PYTHON=...)."
            exit 1
        fi
    fi
    if [ -e "$VENV" ]; then
        log "$VENV has no working python/pip: recreating it"
    fi
    "$PYTHON" -m venv --clear "$VENV"
    rm -f "$STAMP"
fi

# pyvenv.cfg names the interpreter, so a venv remade with another Python reinstalls.
want=$(files_hash pyproject.toml "$VENV/pyvenv.cfg")
if stamp_matches "$STAMP" "$want"; then
    exit 0
fi

log "installing the project into $VENV (pip install -e '.[dev]'; log: $VENV/pip-install.log)"
venv_pip_install "$VENV" -e '.[dev]'
stamp_write "$STAMP" "$want"
