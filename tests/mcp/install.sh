#!/usr/bin/env bash
# Installs the MCP SDK peers of tests/stdio.rs (the versions package-lock.json pins)
# into tests/mcp/node_modules; does nothing when they are already current.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [[ -f node_modules/.package-lock.json ]] && cmp -s package-lock.json .installed-lock; then
  exit 0
fi
echo "tests/mcp: npm ci (the MCP TypeScript SDK, pinned)"
npm ci --no-audit --no-fund --ignore-scripts
cp package-lock.json .installed-lock
