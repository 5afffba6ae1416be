#!/usr/bin/env node
// Compiles the contracts in src/ with the pinned solc-js (package.json) and
// writes one artifact per contract to artifacts/NAME.json: ABI and creation
// bytecode, plus the compiler settings that produced them. The output is
// deterministic (no metadata hash, fixed key order), so CI can recompile and
// fail if the committed artifact differs:
//
//   node compile.js           # (re)write artifacts/
//   node compile.js --check   # exit 1 if artifacts/ is not what src/ compiles to
//
// EVM version `paris`: no PUSH0 (Shanghai) and no MCOPY/TSTORE (Cancun), so
// the bytecode runs on every chain with the London/Berlin opcode set: Energy
// Web Chain, Gnosis, a Besu PoA network and Anvil alike.
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const EVM_VERSION = 'paris';
const CONTRACTS = ['VoltshareSettlement', 'TestToken'];
const root = __dirname;

function findImport(p) {
  for (const base of [path.join(root, 'node_modules'), root]) {
    const f = path.join(base, p);
    if (fs.existsSync(f)) return { contents: fs.readFileSync(f, 'utf8') };
  }
  return { error: `not found: ${p}` };
}

const sources = {};
for (const name of CONTRACTS) {
  const rel = `src/${name}.sol`;
  sources[rel] = { content: fs.readFileSync(path.join(root, rel), 'utf8') };
}
const input = {
  language: 'Solidity',
  sources,
  settings: {
    evmVersion: EVM_VERSION,
    optimizer: { enabled: true, runs: 10000 },
    // No CBOR metadata: its IPFS hash depends on source paths and would make
    // the artifact differ between checkouts for no reason.
    metadata: { appendCBOR: false, bytecodeHash: 'none' },
    outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
  },
};
const out = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
const errors = (out.errors || []).filter((e) => e.severity === 'error');
for (const e of out.errors || []) process.stderr.write(e.formattedMessage + '\n');
if (errors.length > 0) process.exit(1);

const check = process.argv.includes('--check');
let stale = false;
fs.mkdirSync(path.join(root, 'artifacts'), { recursive: true });
for (const name of CONTRACTS) {
  const c = out.contracts[`src/${name}.sol`][name];
  const artifact = {
    contractName: name,
    compiler: `solc-js ${solc.version()}`,
    evmVersion: EVM_VERSION,
    optimizerRuns: input.settings.optimizer.runs,
    abi: c.abi,
    bytecode: '0x' + c.evm.bytecode.object,
  };
  const text = JSON.stringify(artifact, null, 2) + '\n';
  const file = path.join(root, 'artifacts', `${name}.json`);
  if (check) {
    const have = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
    if (have !== text) {
      process.stderr.write(`artifacts/${name}.json differs from what src/ compiles to; run node compile.js\n`);
      stale = true;
    }
  } else {
    fs.writeFileSync(file, text);
    process.stdout.write(`artifacts/${name}.json: ${c.evm.bytecode.object.length / 2} bytes of creation code\n`);
  }
}
process.exit(stale ? 1 : 0);
