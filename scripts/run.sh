#!/usr/bin/env bash
# Build and run the daemon: bash scripts/run.sh [daemon args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/deps.sh
exec cargo run --release -- "$@"
