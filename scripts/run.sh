#!/usr/bin/env bash
# Build and run the app: bash scripts/run.sh [tokenwarden args...]
# With no arguments it runs the built-in demo (`tokenwarden demo`: its own window and
# tray on a throwaway config dir); `bash scripts/run.sh --hidden`, `... status`, etc.
# run the app on your own config. Both programs are built: the tray app starts the
# window's (tokenwarden-window) beside it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/deps.sh
cargo build --release --locked --bins
(($# == 0)) && set -- demo
exec "${CARGO_TARGET_DIR:-target}/release/tokenwarden" "$@"
