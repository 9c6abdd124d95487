#!/usr/bin/env bash
# Installs axe-core for tests/desktop.rs (the version package-lock.json pins) into
# tests/desktop/node_modules; does nothing when it is already current.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [[ -f node_modules/.package-lock.json ]] && cmp -s package-lock.json .installed-lock; then
  exit 0
fi
echo "tests/desktop: npm ci (axe-core, pinned)"
npm ci --no-audit --no-fund --ignore-scripts
cp package-lock.json .installed-lock
