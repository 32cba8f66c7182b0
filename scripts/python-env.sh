#!/usr/bin/env bash
# The Python the gateway's tests drive (an unmodified Cloud API SDK, the standardwebhooks
# verifier): a venv in var/test-venv with tests/python/requirements.txt, re-created only when
# that file or the Python changes (the first run needs PyPI, later runs no network). `make test`
# runs it before the tests; tests/gateway_python.rs uses var/test-venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=var/test-venv
REQ=tests/python/requirements.txt
PYTHON=${PYTHON:-python3}
want=$({ sha256sum "$REQ"; "$PYTHON" --version 2>&1; } | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] \
  || [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)" != "$want" ]; then
  printf '[python-env] installing %s into %s\n' "$REQ" "$VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input --requirement "$REQ"
  echo "$want" >"$VENV/.requirements.sha256"
fi
