#!/bin/sh
# WebKitWebDriver starts the "browser" binary as `BINARY --automation ARGS...`;
# tokenwarden's command line has no such flag, so drop it and exec the real binary
# (same pid, same environment). TOKENWARDEN_BIN is set by tests/desktop.rs.
[ "${1:-}" = "--automation" ] && shift
exec "$TOKENWARDEN_BIN" "$@"
