#!/usr/bin/env bash
# Runs the Python runtime's tests in a venv kept outside the clone.
#   bash python/run-tests.sh [extra pytest args]
# The venv (${TROUPE_PYVENV:-$HOME/.cache/troupe/pyvenv}) is created once; pytest is
# installed into it only when missing. The package is tested from the source tree
# (PYTHONPATH), so nothing is built or installed into the venv. Exits non-zero when a
# test fails or when no test ran at all.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${TROUPE_PYVENV:-${HOME}/.cache/troupe/pyvenv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import pytest' 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'pytest>=7'
fi

cd "$here"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
    exit "$status"
fi
if ! grep -Eq '[0-9]+ passed' "$log"; then
    echo "run-tests.sh: no test ran" >&2
    exit 1
fi
