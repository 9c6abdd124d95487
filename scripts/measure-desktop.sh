#!/usr/bin/env bash
# Usage: scripts/measure-desktop.sh
# Measures the desktop app's footprint on the release binary: cold start to tray
# icon, idle CPU over 60 s with 10 running workloads, memory of the whole process
# tree with the window open and closed, binary size, and the .deb's size
# (built by scripts/package.sh).
# MEASURE_IDLE_SECS shortens the idle windows (default 60).
# Runs inside a private D-Bus session and Xvfb; prints a Markdown table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

echo "== building the release binary (this takes a few minutes cold)"
cargo build --release --locked --workspace --bins
echo "== measuring"
bash scripts/session.sh bash scripts/desktop-xvfb.sh \
  cargo test --release --locked --test tests desktop_measure:: -- --ignored --nocapture --test-threads 1

mb() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }
echo
for bin in tokenwarden tokenwarden-window; do
  printf '| release binary %s | %s |\n' "$bin" "$(mb "$CARGO_TARGET_DIR/release/$bin")"
done
echo "== bundling the .deb (scripts/package.sh, which checks what it holds)"
bash scripts/package.sh deb >/dev/null
deb=$(ls -t "$CARGO_TARGET_DIR"/release/bundle/deb/*.deb | head -n1)
printf '| .deb bundle (%s) | %s |\n' "$deb" "$(mb "$deb")"
printf '| .deb depends on | %s |\n' "$(dpkg-deb -f "$deb" Depends)"
