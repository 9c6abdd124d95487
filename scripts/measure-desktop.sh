#!/usr/bin/env bash
# Usage: scripts/measure-desktop.sh
# Measures the desktop app's footprint on the release binary: cold start to tray
# icon, idle CPU over 60 s with 10 running workloads, memory of the whole process
# tree with the window open and closed, binary size, and the .deb size when
# tauri-cli is installed (`cargo install tauri-cli --version '^2' --locked`).
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
if cargo tauri --version >/dev/null 2>&1; then
  echo "== bundling the .deb"
  # tauri-cli rewrites Cargo.toml's tauri-build line; put the file back afterwards.
  cp Cargo.toml "$CARGO_TARGET_DIR/Cargo.toml.before-bundle"
  # The tray app is tauri-cli's main binary; the window's program goes in beside it
  # (tauri.conf.json names target/release/, here it is wherever CARGO_TARGET_DIR is).
  window_bin="$CARGO_TARGET_DIR/release/tokenwarden-window"
  cargo tauri build --bundles deb \
    --config "{\"bundle\":{\"linux\":{\"deb\":{\"files\":{\"/usr/bin/tokenwarden-window\":\"$window_bin\"}}}}}" >/dev/null
  cp "$CARGO_TARGET_DIR/Cargo.toml.before-bundle" Cargo.toml
  deb=$(ls -t "$CARGO_TARGET_DIR"/release/bundle/deb/*.deb | head -n1)
  printf '| .deb bundle (%s) | %s |\n' "$deb" "$(mb "$deb")"
  # Both programs must be in it: the tray app starts the window's program beside it.
  # (The listing is read whole: `grep -q` ending the pipe early would fail it.)
  listing=$(dpkg-deb -c "$deb")
  for bin in tokenwarden tokenwarden-window; do
    if grep -Eq "[ /]usr/bin/$bin\$" <<<"$listing"; then
      echo "| .deb holds /usr/bin/$bin | yes |"
    else
      echo "| .deb holds /usr/bin/$bin | NO: the package is broken |"
      exit 1
    fi
  done
  printf '| .deb depends on | %s |\n' "$(dpkg-deb -f "$deb" Depends)"
else
  echo "| .deb bundle | not built: install tauri-cli (cargo install tauri-cli --version '^2' --locked) |"
fi
