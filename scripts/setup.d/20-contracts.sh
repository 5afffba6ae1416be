#!/usr/bin/env bash
# The Solidity toolchain of deploy/contracts, all from the npm registry and
# pinned by its package-lock.json: solc-js (the compiler), OpenZeppelin
# contracts, and Anvil (the self-contained binary package
# @foundry-rs/anvil-linux-amd64) for the chain tests. Idempotent: `npm ci`
# runs only when something pinned is missing or at another version. The
# @foundry-rs/anvil wrapper is deliberately not a dependency: its
# other-platform optional packages have empty version specs that npm leaves
# out of the lock file, after which `npm ci` refuses to install on a fresh
# machine.
set -euo pipefail
dir="$(cd "$(dirname "$0")/../../deploy/contracts" && pwd)"
if ! command -v npm >/dev/null 2>&1; then
  echo "== installing nodejs and npm (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
want() { node -p "require('$dir/package-lock.json').packages['node_modules/$1'].version"; }
have() { node -p "try { require('$dir/node_modules/$1/package.json').version } catch (e) { '' }"; }
ok=1
for p in solc @openzeppelin/contracts @foundry-rs/anvil-linux-amd64; do
  [ "$(have "$p")" = "$(want "$p")" ] || ok=0
done
[ -x "$dir/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil" ] || ok=0
if [ "$ok" = 0 ]; then
  echo "== npm ci in deploy/contracts (solc, OpenZeppelin, Anvil)"
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
"$dir/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil" --version >/dev/null
