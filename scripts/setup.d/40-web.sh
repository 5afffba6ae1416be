#!/usr/bin/env bash
# What the dashboard's tests and benchmark need: Debian's Chromium (and
# ChromeDriver) for the browser tests, wrk for the HTTP benchmark,
# playwright-core (npm, pinned by web/e2e/package-lock.json) to drive
# Chromium, and schemathesis (PyPI) to fuzz the OpenAPI document. Each is
# checked first, so running this again does nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if [ ! -d web/e2e/node_modules/playwright-core ]; then
  echo "== installing playwright-core in web/e2e (npm ci)"
  (cd web/e2e && npm ci --no-audit --no-fund)
fi
py=python3
command -v "$py" >/dev/null 2>&1 || py=python
if ! "$py" -c 'import schemathesis' >/dev/null 2>&1; then
  echo "== installing schemathesis (PyPI)"
  "$py" -m pip install -q schemathesis
fi
