#!/usr/bin/env bash
# Usage: scripts/package-test.sh        (as root: it installs and removes the package)
# Builds the .deb (scripts/package.sh deb), installs it with apt, and checks the
# installed programs: `tokenwarden --version`, then the installed daemon with one
# workload signed in at a loopback issuer (the installed `tokenwarden demo`'s) until
# `tokenwarden status NAME` exits 0 (running); then removes the package. Runs the
# checks inside a private D-Bus session with an unlocked keyring (scripts/session.sh).
# Logs go to $TOKENWARDEN_TEST_LOG_DIR/package-test (the secret scan reads them) or to
# artifacts/package-test; the .deb to artifacts/packages. Prints how long each step took
# and the package size.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

if [[ ${1:-} == --installed ]]; then
  # ---- inside the private session: the installed programs ----
  log_dir=$2
  ledger=$3
  bin=/usr/bin/tokenwarden
  name=ci-workload
  export TOKENWARDEN_CONFIG_DIR=$HOME/tw-config
  export TOKENWARDEN_LOG_DIR=$log_dir/daemon-logs
  export TOKENWARDEN_DEMO_LEDGER=$ledger   # every token issued: the secret scan looks for them
  pids=()
  cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  }
  trap cleanup EXIT

  version=$("$bin" --version)
  echo "package-test: installed: $version"
  [[ $version == "tokenwarden "* ]] || { echo "package-test: unexpected --version: $version" >&2; exit 1; }

  # The user unit: its syntax, its ExecStart, its Documentation= (the installed man page).
  if command -v systemd-analyze >/dev/null && command -v man >/dev/null; then
    systemd-analyze verify --user /usr/lib/systemd/user/tokenwarden.service
    echo "package-test: the user unit verifies (systemd-analyze)"
  fi

  # A loopback issuer: the installed binary's demo (its own throwaway config dir; stdin
  # held open by a fifo so that it keeps running).
  mkfifo "$HOME/demo-in"
  "$bin" demo --terminal <"$HOME/demo-in" >"$log_dir/demo.out" 2>"$log_dir/demo.err" &
  pids+=($!)
  exec 7>"$HOME/demo-in"
  issuer=""
  for _ in $(seq 300); do
    issuer=$(grep -oE 'embedded issuer at http://127\.0\.0\.1:[0-9]+' "$log_dir/demo.out" 2>/dev/null |
      head -n1 | sed 's/^embedded issuer at //') || true
    [[ -n $issuer ]] && break
    kill -0 "${pids[0]}" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $issuer ]] || { echo "package-test: the demo's issuer did not start" >&2; cat "$log_dir/demo.err" >&2; exit 1; }
  echo "package-test: issuer $issuer"

  "$bin" add "$name" --token-endpoint "$issuer/token" --authorization-endpoint "$issuer/authorize" \
    --client-id tokenwarden-demo --scope read --no-login

  "$bin" daemon >"$log_dir/daemon.out" 2>"$log_dir/daemon.err" &
  daemon=$!
  pids+=("$daemon")
  # `status NAME` exits with the state the running daemon reports (not the last known
  # one, which it would say on stderr): poll until it is WANT, up to 30 s.
  wait_status() { # wait_status WANT
    local rc=-1 err
    for _ in $(seq 300); do
      rc=0
      err=$("$bin" status "$name" 2>&1 >/dev/null) || rc=$?
      [[ $err == *"no daemon runs"* ]] && rc=-1
      ((rc == $1)) && return 0
      kill -0 "$daemon" 2>/dev/null || { echo "package-test: the daemon exited" >&2; cat "$log_dir/daemon.err" >&2; exit 1; }
      sleep 0.1
    done
    "$bin" status "$name" || true
    echo "package-test: \`tokenwarden status $name\` exits $rc, not $1" >&2
    exit 1
  }
  wait_status 4   # unauthenticated: no login yet
  # The browser: follows the authorization URL as a signed-in user's would.
  TOKENWARDEN_BROWSER=$root/tests/desktop/browser.sh "$bin" login "$name" --timeout 60s
  wait_status 0   # running
  "$bin" status "$name"
  echo "package-test: the installed daemon runs $name"
  exit 0
fi

if [[ $(id -u) != 0 ]]; then
  echo "package-test: needs root (apt-get install / remove)" >&2
  exit 1
fi
log_dir=${TOKENWARDEN_TEST_LOG_DIR:-$root/artifacts}/package-test
rm -rf "$log_dir"
mkdir -p "$log_dir"
out=$root/artifacts/packages   # not in the log dir: the secret scan reads that

start=$SECONDS
PACKAGE_OUT=$out bash scripts/package.sh deb
package_secs=$((SECONDS - start))
deb=$(ls "$out"/*.deb)
pkg_name=$(dpkg-deb -f "$deb" Package)

removed=0
remove() {
  ((removed)) && return 0
  removed=1
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 remove -y "$pkg_name"
}
trap remove EXIT

step=$SECONDS
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "$deb"
install_secs=$((SECONDS - step))

step=$SECONDS
bash scripts/session.sh bash "$root/scripts/package-test.sh" --installed "$log_dir" \
  "${TOKENWARDEN_TEST_LOG_DIR:-$log_dir}/issued-tokens.txt"
run_secs=$((SECONDS - step))

step=$SECONDS
remove
trap - EXIT
if [[ -e /usr/bin/tokenwarden ]]; then
  echo "package-test: /usr/bin/tokenwarden is still there after apt-get remove" >&2
  exit 1
fi
remove_secs=$((SECONDS - step))
size=$(stat -c %s "$deb")
echo "package-test: passed: $(basename "$deb") $((size / 1000)) kB; package ${package_secs}s," \
  "install ${install_secs}s, daemon to running ${run_secs}s, remove ${remove_secs}s"
