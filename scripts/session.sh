#!/usr/bin/env bash
# Usage: scripts/session.sh CMD [ARGS...]
# Runs CMD inside a fresh, private, quiet D-Bus session bus with an unlocked
# gnome-keyring Secret Service, with HOME and XDG_* pointing at a temp dir.
# Exits with CMD's exit code; cleans up the daemons and temp dir on exit.
set -euo pipefail

if (($# == 0)); then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
conf="$script_dir/dbus-session.conf"

# Keep the real toolchain before HOME moves (PATH is left untouched).
export CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
export RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokenwarden-session.XXXXXX")
bus_pid=""
# gnome-keyring-daemon forks and does not print its pid: find ours by the
# (unique) bus address in its environment.
keyring_pids() {
  local p
  for p in $(pgrep -x gnome-keyring-d || true); do   # comm is cut to 15 chars
    grep -qzxF "DBUS_SESSION_BUS_ADDRESS=${DBUS_SESSION_BUS_ADDRESS:-none}" \
      "/proc/$p/environ" 2>/dev/null && echo "$p"
  done
  return 0
}
cleanup() {
  local pids
  pids=$(keyring_pids)
  [[ -n $pids ]] && kill $pids 2>/dev/null
  [[ -n $bus_pid ]] && kill "$bus_pid" 2>/dev/null
  rm -rf "$tmp"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export HOME="$tmp/home"
export XDG_CONFIG_HOME="$HOME/.config"
export XDG_DATA_HOME="$HOME/.local/share"
export XDG_STATE_HOME="$HOME/.local/state"
export XDG_CACHE_HOME="$HOME/.cache"
export XDG_RUNTIME_DIR="$tmp/runtime"
mkdir -p "$XDG_CONFIG_HOME" "$XDG_DATA_HOME" "$XDG_STATE_HOME" "$XDG_CACHE_HOME" "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"

# Private bus: prints the address on line 1 and the pid on line 2.
{ read -r DBUS_SESSION_BUS_ADDRESS; read -r bus_pid; } < <(
  dbus-daemon --config-file="$conf" --fork --print-address=1 --print-pid=1)
if [[ -z $DBUS_SESSION_BUS_ADDRESS || -z $bus_pid ]]; then
  echo "session.sh: dbus-daemon failed to start" >&2
  exit 1
fi
export DBUS_SESSION_BUS_ADDRESS

# Start gnome-keyring (secrets only) and unlock the login keyring with a fixed
# password; it prints GNOME_KEYRING_CONTROL=... and (usually) SSH_AUTH_SOCK=...
# (An inherited GNOME_KEYRING_CONTROL would make it talk to the caller's daemon.)
unset GNOME_KEYRING_CONTROL
eval "$(printf 'tokenwarden-test' | gnome-keyring-daemon --unlock --components=secrets)"
export GNOME_KEYRING_CONTROL ${SSH_AUTH_SOCK:+SSH_AUTH_SOCK}

# Wait (up to ~5 s) until the Secret Service name is owned on our bus.
for _ in $(seq 50); do
  if gdbus call --session --timeout 1 --dest org.freedesktop.DBus --object-path /org/freedesktop/DBus \
       --method org.freedesktop.DBus.NameHasOwner org.freedesktop.secrets 2>/dev/null \
     | grep -q '(true,)'; then
    ready=1
    break
  fi
  sleep 0.1
done
if [[ -z ${ready:-} ]]; then
  echo "session.sh: org.freedesktop.secrets did not appear on the private bus within 5 s" >&2
  exit 1
fi

# Not exec: the EXIT trap must still run to clean up.
status=0
"$@" || status=$?
exit "$status"
