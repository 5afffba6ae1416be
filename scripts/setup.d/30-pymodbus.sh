#!/usr/bin/env bash
# pymodbus (PyPI), an independent Modbus implementation that the meter tests
# use as a device the project's own simulator did not build. Pinned to the
# 3.x line (the tests use its 3.x server API). socat (Debian) makes the
# pseudo-terminal pairs of the Modbus RTU tests.
set -euo pipefail
if ! python3 -c "import pymodbus, sys; sys.exit(0 if pymodbus.__version__.startswith('3.') else 1)" >/dev/null 2>&1; then
  echo "== installing pymodbus 3.x (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check "pymodbus>=3.8,<4"
fi
if ! command -v socat >/dev/null 2>&1; then
  echo "== installing socat (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat
fi
