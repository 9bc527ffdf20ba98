#!/usr/bin/env bash
# Create the project's virtual environment and install the project into it, on a machine
# that has only Python 3.11+. Usage: scripts/venv.sh VENV_DIR
set -euo pipefail
venv=${1:-.venv}
py=${PYTHON:-python3}

if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "intent-pipeline needs Python 3.11 or newer as '$py' (set PYTHON=... to choose one)" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  if ! "$py" -m venv "$venv" 2>/dev/null; then
    # Debian/Ubuntu ship venv without ensurepip unless python3-venv is installed: build
    # the venv without pip and let the interpreter's own pip install into it.
    rm -rf "$venv"
    "$py" -m venv --without-pip "$venv"
    if ! "$py" -m pip --version >/dev/null 2>&1; then
      echo "cannot install packages: '$py' has neither ensurepip nor pip." >&2
      echo "install one of them (Debian/Ubuntu: apt-get install python3-venv) and re-run" >&2
      rm -rf "$venv"
      exit 1
    fi
    "$py" -m pip --python "$venv/bin/python" install --quiet pip
  fi
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
