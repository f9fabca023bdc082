#!/usr/bin/env bash
# Installs what the end-to-end tests drive: the official SDKs, centrifuge-js (npm) and
# centrifuge-python + cent (PyPI, in a virtualenv), and for the admin UI's browser tests
# playwright-core (npm) with Debian's chromium (apt, when running as root; no browser
# download). Idempotent: does nothing when the pinned versions are already installed.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f node_modules/centrifuge/package.json ] || ! grep -q '"version": "5.8.0"' node_modules/centrifuge/package.json \
   || [ ! -f node_modules/playwright-core/package.json ] || ! grep -q '"version": "1.65.2"' node_modules/playwright-core/package.json; then
  echo "installing centrifuge-js, playwright-core and friends (npm)..."
  npm install --no-audit --no-fund --loglevel=error
fi
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium (apt) for the admin UI's browser tests..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "!!! no chromium at ${CHROMIUM:-/usr/bin/chromium}: the admin UI's browser tests will skip (install Debian's chromium)" >&2
  fi
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import centrifuge, cent, jwt" 2>/dev/null; then
  echo "installing centrifuge-python, cent and PyJWT (pip)..."
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
fi
