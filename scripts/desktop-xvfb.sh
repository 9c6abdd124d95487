#!/usr/bin/env bash
# Usage: scripts/desktop-xvfb.sh CMD [ARGS...]
# Runs CMD with a private Xvfb display. The display is exported as
# TOKENWARDEN_TEST_DISPLAY, not DISPLAY, so only the desktop tests (which pass it
# to the app they start) get a GUI; everything else in the suite stays headless.
# Exits with CMD's exit code; stops Xvfb on exit.
set -euo pipefail
if (($# == 0)); then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokenwarden-xvfb.XXXXXX")
xvfb_pid=""
cleanup() {
  [[ -n $xvfb_pid ]] && kill "$xvfb_pid" 2>/dev/null
  # Keep the X server's own log with the test logs (why a client was refused, ...).
  [[ -n ${TOKENWARDEN_TEST_LOG_DIR:-} && -s $tmp/xvfb.log ]] && cp "$tmp/xvfb.log" "$TOKENWARDEN_TEST_LOG_DIR/xvfb.log"
  rm -rf "$tmp"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -displayfd: Xvfb picks a free display number and writes it to fd 3.
Xvfb -displayfd 3 -screen 0 1280x800x24 -nolisten tcp 3>"$tmp/display" 2>"$tmp/xvfb.log" &
xvfb_pid=$!
for _ in $(seq 100); do
  [[ -s $tmp/display ]] && break
  sleep 0.1
done
if [[ ! -s $tmp/display ]]; then
  echo "desktop-xvfb.sh: Xvfb did not start:" >&2
  cat "$tmp/xvfb.log" >&2
  exit 1
fi
export TOKENWARDEN_TEST_DISPLAY=":$(tr -d '[:space:]' <"$tmp/display")"

status=0
"$@" || status=$?
exit "$status"
