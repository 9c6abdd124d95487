#!/bin/sh
# A stand-in browser for the desktop tests (TOKENWARDEN_BROWSER): follows the
# authorization URL the way a signed-in user's browser would, redirects included,
# so the loopback callback of the real login flow receives the code.
exec curl -fsS -L --max-redirs 3 -o /dev/null "$1"
