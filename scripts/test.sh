#!/usr/bin/env bash
# The project's test command: bash scripts/test.sh [extra nextest args...]
# Runs the whole suite inside a private D-Bus session with an unlocked keyring,
# then scans every test log for leaked tokens. Fails if either step fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/deps.sh

mkdir -p artifacts            # git-ignored
rm -rf artifacts/test-logs
mkdir artifacts/test-logs
export TOKENWARDEN_TEST_LOG_DIR=$PWD/artifacts/test-logs
export TOKENWARDEN_TEST_KEYCHAIN=1
# tests/desktop.rs drives the real desktop app (Xvfb display from desktop-xvfb.sh).
export TOKENWARDEN_TEST_DESKTOP=1
# Network-trigger tests make their own namespace and veth pair: they need root, and
# must not silently skip when we are root.
[[ $(id -u) == 0 ]] && export TOKENWARDEN_TEST_ROOT=1
# A one-shot build (CI) gains nothing from incremental caches; they are ~20 % of target/.
[[ ${CI:-} == true ]] && export CARGO_INCREMENTAL=0
disk_report() { df -h --output=avail,size,target "${CARGO_TARGET_DIR:-target}" 2>/dev/null | tail -n1 |
  awk -v w="$1" '{print "test.sh: disk " w ": " $1 " free of " $2 " on " $3}' || true; }
mkdir -p "${CARGO_TARGET_DIR:-target}"
disk_report "before the build"
export RUST_LOG=${RUST_LOG:-trace}
export RUST_BACKTRACE=1

# Every package of the workspace; the window is another package's binary, which the
# app's tests start: build every binary first.
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --workspace --no-fail-fast)
else
  echo "test.sh: cargo-nextest unavailable, falling back to cargo test" >&2
  runner=(cargo test --workspace --no-fail-fast)
fi
# Console output (incl. captured output of failing tests) is a log too: keep a
# copy in the log dir so the secret scan covers it. Keep colours on a terminal.
[[ -t 1 ]] && runner+=(--color always)

tests_rc=0
bash scripts/session.sh bash scripts/desktop-xvfb.sh "${runner[@]}" "$@" 2>&1 | tee "$TOKENWARDEN_TEST_LOG_DIR/console.log" ||
  tests_rc=$?   # pipefail: the status of the test run (tee rarely fails)

# A retried pass is a flake: name it where CI shows it (nextest retries only the
# desktop tests, whose web view stack can stall on a loaded machine).
flaky=$(grep -aE '^\s*FLAKY ' "$TOKENWARDEN_TEST_LOG_DIR/console.log" | sed -E 's/\x1b\[[0-9;]*m//g' || true)
if [[ -n $flaky ]]; then
  echo "test.sh: WARNING: $(grep -c '' <<<"$flaky") test(s) passed only on a retry:" >&2
  sed 's/^/  /' <<<"$flaky" >&2
fi

# Gated tests leave a marker when their gated part runs (tests/support/gate.rs). Under
# CI every gate this script opened must have run: a gate that silently skipped fails.
gates_rc=0
for gate in desktop keychain ${TOKENWARDEN_TEST_ROOT:+root}; do
  n=$( (find "$TOKENWARDEN_TEST_LOG_DIR/gates/$gate" -type f 2>/dev/null || true) | wc -l)
  echo "test.sh: gate $gate: $n test(s) ran behind it"
  if ((n == 0)) && [[ ${CI:-} == true ]] && ((tests_rc == 0)) && (($# == 0)); then
    echo "test.sh: FAILED: no test ran behind the $gate gate (skipped where it must run)" >&2
    gates_rc=1
  fi
done

disk_report "after the tests"

# CI, whole suite: build the .deb (a release build: the longest step), install it with
# apt, run the installed daemon until a workload is `running`, remove it again.
package_rc=0
if [[ ${CI:-} == true ]] && (($# == 0)); then
  if [[ $(id -u) == 0 ]]; then
    bash scripts/package-test.sh 2>&1 | tee "$TOKENWARDEN_TEST_LOG_DIR/package-test.log" || package_rc=$?
  else
    echo "test.sh: FAILED: the package test needs root (apt-get install)" >&2
    package_rc=1
  fi
fi
du -sh "${CARGO_TARGET_DIR:-target}" 2>/dev/null | awk '{print "test.sh: target dir " $1}' || true

# The output of every test, passing ones too (.config/nextest.toml), for the scan.
junit="${CARGO_TARGET_DIR:-target}/nextest/default/junit.xml"
[[ -f $junit ]] && cp "$junit" "$TOKENWARDEN_TEST_LOG_DIR/junit.xml"

scan_rc=0
# The scan first proves it finds every encoded form it claims to, then scans.
bash scripts/scan-secrets.sh --self-test || scan_rc=$?
bash scripts/scan-secrets.sh "$TOKENWARDEN_TEST_LOG_DIR" || scan_rc=$?

if ((tests_rc == 0 && gates_rc != 0)); then
  tests_rc=$gates_rc
fi
if ((tests_rc == 0 && package_rc != 0)); then
  echo "test.sh: FAILED: the package test (scripts/package-test.sh) exited with $package_rc" >&2
  tests_rc=$package_rc
fi
if ((tests_rc != 0)); then
  echo "test.sh: FAILED: tests exited with $tests_rc$( ((scan_rc)) && echo '; secret scan also failed')" >&2
  exit "$tests_rc"
elif ((scan_rc != 0)); then
  echo "test.sh: FAILED: tests passed but the secret scan failed" >&2
  exit "$scan_rc"
fi
echo "test.sh: all tests passed, secret scan clean"
