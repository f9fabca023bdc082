#!/usr/bin/env bash
# Installs the official SDKs the end-to-end tests drive: centrifuge-js (npm) and
# centrifuge-python + cent (PyPI, in a virtualenv). Idempotent: does nothing when the pinned
# versions are already installed.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f node_modules/centrifuge/package.json ] || ! grep -q '"version": "5.8.0"' node_modules/centrifuge/package.json; then
  echo "installing centrifuge-js and friends (npm)..."
  npm install --no-audit --no-fund --loglevel=error
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import centrifuge, cent, jwt" 2>/dev/null; then
  echo "installing centrifuge-python, cent and PyJWT (pip)..."
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
fi
