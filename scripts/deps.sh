#!/usr/bin/env bash
# Idempotent setup of build/test dependencies on Debian 12.
# Installs only missing packages (as root); otherwise says what to install.
set -euo pipefail

# dbus-x11 is deliberately absent: with it, a process that has DISPLAY but no
# DBUS_SESSION_BUS_ADDRESS silently starts its own session bus.
PACKAGES=(
  build-essential pkg-config libdbus-1-dev
  dbus gnome-keyring keyutils libglib2.0-bin python3-dbus python3-gi
  curl iproute2 xvfb xauth
  libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev
  # desktop e2e tests (tests/desktop.rs): WebKitWebDriver, closing windows over X
  webkit2gtk-driver python3-xlib
  # reading the X clipboard as another app would (tests/desktop/clipboard.py)
  gir1.2-gtk-3.0
)
# tests/stdio.rs runs the MCP TypeScript SDK (Node.js >= 18): Debian's nodejs and npm
# unless a Node.js with npm is already there (e.g. nodesource's, which bundles npm).
if ! { command -v node && command -v npm; } >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  # dpkg -s also succeeds for removed-but-not-purged packages; check the status line.
  if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps.sh: missing system packages; install them with:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "deps.sh: installing ${missing[*]}"
  # Lock::Timeout: wait for another apt/dpkg run instead of failing at once.
  apt-get -o DPkg::Lock::Timeout=600 update
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
    install -y --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "deps.sh: 'cargo' not found on PATH; install Rust from https://rustup.rs" >&2
  exit 1
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "deps.sh: installing cargo-nextest"
  # Not fatal: scripts/test.sh falls back to plain `cargo test`.
  cargo install cargo-nextest --locked ||
    echo "deps.sh: WARNING: could not install cargo-nextest" >&2
fi

# The desktop e2e tests drive the real app through tauri-driver (a WebDriver proxy
# in front of WebKitWebDriver). Fatal when missing: scripts/test.sh runs them.
if ! command -v tauri-driver >/dev/null 2>&1 && [[ ! -x ${CARGO_HOME:-$HOME/.cargo}/bin/tauri-driver ]]; then
  echo "deps.sh: installing tauri-driver"
  cargo install tauri-driver --version '^2' --locked
fi

# The MCP SDK peers of tests/stdio.rs, pinned by tests/mcp/package-lock.json.
bash "$(dirname "${BASH_SOURCE[0]}")/../tests/mcp/install.sh"
# axe-core, which the desktop e2e tests run in the real webview (tests/desktop/package-lock.json).
bash "$(dirname "${BASH_SOURCE[0]}")/../tests/desktop/install.sh"
