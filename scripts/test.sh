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

if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --no-fail-fast)
else
  echo "test.sh: cargo-nextest unavailable, falling back to cargo test" >&2
  runner=(cargo test --no-fail-fast)
fi
# Console output (incl. captured output of failing tests) is a log too: keep a
# copy in the log dir so the secret scan covers it. Keep colours on a terminal.
[[ -t 1 ]] && runner+=(--color always)

tests_rc=0
bash scripts/session.sh bash scripts/desktop-xvfb.sh "${runner[@]}" "$@" 2>&1 | tee "$TOKENWARDEN_TEST_LOG_DIR/console.log" ||
  tests_rc=$?   # pipefail: the status of the test run (tee rarely fails)

disk_report "after the tests"
du -sh "${CARGO_TARGET_DIR:-target}" 2>/dev/null | awk '{print "test.sh: target dir " $1}' || true

scan_rc=0
# The scan first proves it finds every encoded form it claims to, then scans.
bash scripts/scan-secrets.sh --self-test || scan_rc=$?
bash scripts/scan-secrets.sh "$TOKENWARDEN_TEST_LOG_DIR" || scan_rc=$?

if ((tests_rc != 0)); then
  echo "test.sh: FAILED: tests exited with $tests_rc$( ((scan_rc)) && echo '; secret scan also failed')" >&2
  exit "$tests_rc"
elif ((scan_rc != 0)); then
  echo "test.sh: FAILED: tests passed but the secret scan failed" >&2
  exit "$scan_rc"
fi
echo "test.sh: all tests passed, secret scan clean"
