#!/usr/bin/env bash
# Build and run the app: bash scripts/run.sh [tokenwarden args...]
# Both programs are built: the tray app starts the window's (tokenwarden-window) beside it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/deps.sh
cargo build --release --locked --bins
exec "${CARGO_TARGET_DIR:-target}/release/tokenwarden" "$@"
