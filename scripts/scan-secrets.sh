#!/usr/bin/env bash
# Usage: scripts/scan-secrets.sh DIR
# Fails if any token listed in DIR/issued-tokens.txt (the fake issuer's ledger,
# one access/refresh token per line) appears in any other file under DIR.
# Never prints the tokens themselves, only file names and counts.
set -euo pipefail

dir=${1:?usage: scan-secrets.sh DIR}
ledger="$dir/issued-tokens.txt"

if [[ ! -f $ledger ]]; then
  echo "secret scan: FAILED: $ledger is missing (nothing was checked)" >&2
  exit 1
fi

# Patterns = non-blank ledger lines (CRs stripped), kept outside DIR.
patterns=$(mktemp)
trap 'rm -f "$patterns"' EXIT
tr -d '\r' <"$ledger" | grep -v '^[[:space:]]*$' | sort -u >"$patterns" || true
tokens=$(wc -l <"$patterns")
if ((tokens == 0)); then
  echo "secret scan: FAILED: $ledger is empty (nothing was checked)" >&2
  exit 1
fi

# Same file set grep scans: every regular file except ledgers (by basename).
files=$(find "$dir" -type f ! -name issued-tokens.txt | wc -l)
bytes=$(find "$dir" -type f ! -name issued-tokens.txt -printf '%s\n' | awk '{s+=$1} END {print s+0}')
if ((files == 0)); then
  echo "secret scan: WARNING: no log files under $dir" >&2
fi

# grep: 0 = found, 1 = none found, >1 = error.
rc=0
leaks=$(grep -arlF -f "$patterns" --exclude=issued-tokens.txt "$dir") || rc=$?
if ((rc > 1)); then
  echo "secret scan: FAILED: grep error (exit $rc)" >&2
  exit 1
fi
if ((rc == 0)); then
  nfiles=$(grep -c '' <<<"$leaks")
  # Count distinct leaked tokens without ever showing them.
  ntok=$(grep -arohF -f "$patterns" --exclude=issued-tokens.txt "$dir" | sort -u | wc -l)
  echo "secret scan: FAILED: $ntok of $tokens issued tokens leaked into $nfiles of $files log files:" >&2
  sed 's/^/  /' <<<"$leaks" >&2
  exit 1
fi

echo "secret scan: $tokens tokens checked against $files log files ($bytes bytes): clean"
