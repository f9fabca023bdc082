#!/usr/bin/env bash
# Installs what the end-to-end tests drive: the official SDKs, centrifuge-js (npm) and
# centrifuge-python + cent (PyPI, in a virtualenv), and for the admin UI's browser tests
# playwright-core with Debian's chromium and puppeteer-core with Debian's firefox-esr (npm
# and apt, the latter when running as root; no browser download); TypeScript and
# @grafana/schema for the dashboards' schema check; and cargo-deb for the package test. Idempotent: does nothing when the pinned versions are already installed.
set -euo pipefail
cd "$(dirname "$0")"
# Every dependency of package.json installed at its pinned version, else npm install.
if ! node -e '
  const deps = require("./package.json").dependencies;
  for (const [name, version] of Object.entries(deps)) {
    let got;
    try { got = require(`./node_modules/${name}/package.json`).version; } catch (e) { process.exit(1); }
    if (got !== version) process.exit(1);
  }' 2>/dev/null; then
  echo "installing centrifuge-js, the browser drivers and friends (npm)..."
  npm install --no-audit --no-fund --loglevel=error
fi
# cargo-deb, for the package test (tests/tests/e2e/package.rs).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb (cargo install)..."
  cargo install --quiet --locked cargo-deb --version 3.8.0
fi
browsers=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || browsers+=(chromium)
[ -x "${FIREFOX:-/usr/bin/firefox-esr}" ] || browsers+=(firefox-esr)
if [ ${#browsers[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's ${browsers[*]} (apt) for the admin UI's browser tests..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${browsers[@]}" >/dev/null
  else
    echo "!!! missing ${browsers[*]}: the admin UI's browser tests will skip (install Debian's chromium and firefox-esr)" >&2
  fi
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import centrifuge, cent, jwt" 2>/dev/null; then
  echo "installing centrifuge-python, cent and PyJWT (pip)..."
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
fi
