#!/usr/bin/env bash
# Make (or bring up to date) .venv with the Python packages the tests use
# (tests/requirements.txt). Cheap when nothing changed: a stamp file holds
# the requirements it was made from.
set -euo pipefail
cd "$(dirname "$0")/.."
req=tests/requirements.txt
stamp=.venv/.requirements
if [ -x .venv/bin/python ] && cmp -s "$req" "$stamp"; then
  exit 0
fi
echo "test-venv: installing $(grep -v '^#' "$req" | xargs) into .venv" >&2
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
