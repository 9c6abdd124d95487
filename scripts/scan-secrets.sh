#!/usr/bin/env bash
# Usage: scripts/scan-secrets.sh DIR
#        scripts/scan-secrets.sh --self-test
# Fails if any secret listed in DIR/issued-tokens.txt (the test issuer's ledger, one
# access token, refresh token or client secret per line) appears in any other file
# under DIR, as written or in a form a log could hold it in: URL-encoded (upper- and
# lower-case hex, form encoding), JSON-escaped (also with `\/`), and base64 / base64url
# at each of the three byte alignments it can have inside a longer encoded value (a
# Basic auth header, a JWT). Never prints the secrets themselves, only file names and
# counts. --self-test plants every form in a temporary directory and checks each is
# found (and that a clean file passes).
set -euo pipefail

# Every form of every ledger line, one per line (stdin: the ledger; stdout: patterns).
expand_forms() {
  python3 -c '
import base64, json, sys, urllib.parse

def b64_forms(t):
    b = t.encode()
    for k in range(3):  # bytes of the longer value before the secret, mod 3
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            s = enc(b"\0" * k + b).decode()
            # Keep only the characters made of the secret'"'"'s bits alone.
            lo = -(-8 * k // 6)
            hi = (8 * (k + len(b))) // 6
            if hi - lo >= 16:
                yield s[lo:hi]

seen = set()
for line in sys.stdin:
    t = line.strip("\r\n")
    if not t.strip():
        continue
    forms = {t}
    q = urllib.parse.quote(t, safe="")
    forms |= {q, q.lower(), urllib.parse.quote_plus(t, safe="")}
    j = json.dumps(t, ensure_ascii=True)[1:-1]
    forms |= {j, j.replace("/", "\\/")}
    forms |= set(b64_forms(t))
    for f in sorted(forms):
        if f and f not in seen:
            seen.add(f)
            print(f)
'
}

scan() {
  local dir=$1 ledger="$1/issued-tokens.txt"
  if [[ ! -f $ledger ]]; then
    echo "secret scan: FAILED: $ledger is missing (nothing was checked)" >&2
    return 1
  fi
  # Patterns are kept outside DIR.
  local patterns
  patterns=$(mktemp)
  # shellcheck disable=SC2064
  trap "rm -f '$patterns'" RETURN
  local secrets
  secrets=$(tr -d '\r' <"$ledger" | grep -v '^[[:space:]]*$' | sort -u | wc -l)
  if ((secrets == 0)); then
    echo "secret scan: FAILED: $ledger is empty (nothing was checked)" >&2
    return 1
  fi
  expand_forms <"$ledger" >"$patterns"
  local forms
  forms=$(wc -l <"$patterns")

  # Same file set grep scans: every regular file except ledgers (by basename).
  local files bytes
  files=$(find "$dir" -type f ! -name issued-tokens.txt | wc -l)
  bytes=$(find "$dir" -type f ! -name issued-tokens.txt -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  if ((files == 0)); then
    echo "secret scan: WARNING: no log files under $dir" >&2
  fi

  # grep: 0 = found, 1 = none found, >1 = error.
  local rc=0 leaks
  leaks=$(grep -arlF -f "$patterns" --exclude=issued-tokens.txt "$dir") || rc=$?
  if ((rc > 1)); then
    echo "secret scan: FAILED: grep error (exit $rc)" >&2
    return 1
  fi
  if ((rc == 0)); then
    local nfiles nforms
    nfiles=$(grep -c '' <<<"$leaks")
    # Count distinct leaked forms without ever showing them.
    nforms=$(grep -arohF -f "$patterns" --exclude=issued-tokens.txt "$dir" | sort -u | wc -l)
    echo "secret scan: FAILED: $nforms forms of the $secrets issued secrets leaked into $nfiles of $files log files:" >&2
    sed 's/^/  /' <<<"$leaks" >&2
    return 1
  fi
  echo "secret scan: $secrets secrets ($forms forms) checked against $files log files ($bytes bytes): clean"
}

self_test() {
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  local secret='sim_rt_Ab3-._~+x/Yz09qrSTuvWXyz12345678+QRS/tuv'
  local ledger="$tmp/ledger/issued-tokens.txt"
  mkdir -p "$tmp/ledger"
  printf '%s\n' "$secret" >"$ledger"
  local -A planted=(
    [raw]="$secret"
    [url]=$(python3 -c 'import sys,urllib.parse;print(urllib.parse.quote(sys.argv[1],safe=""))' "$secret")
    [url-lower]=$(python3 -c 'import sys,urllib.parse;print(urllib.parse.quote(sys.argv[1],safe="").lower())' "$secret")
    [json-slash]=$(python3 -c 'import sys,json;print(json.dumps(sys.argv[1]).replace("/","\\/"))' "$secret")
    [basic-auth]=$(printf 'client:%s' "$secret" | base64 -w0)
    [basic-auth-2]=$(printf 'cl:%s' "$secret" | base64 -w0)
    [basic-auth-3]=$(printf 'c:%s;more' "$secret" | base64 -w0)
    [base64url]=$(printf '{"rt":"%s"}' "$secret" | base64 -w0 | tr '+/' '-_' | tr -d '=')
  )
  local form failed=0
  for form in "${!planted[@]}"; do
    rm -rf "$tmp/logs"
    mkdir -p "$tmp/logs"
    cp "$ledger" "$tmp/logs/"
    printf 'INFO something happened value=%s end\n' "${planted[$form]}" >"$tmp/logs/app.log"
    if scan "$tmp/logs" >/dev/null 2>&1; then
      echo "secret scan self-test: FAILED: the $form form was not found" >&2
      failed=1
    fi
  done
  rm -rf "$tmp/logs"
  mkdir -p "$tmp/logs"
  cp "$ledger" "$tmp/logs/"
  printf 'INFO nothing secret here: sim_rt_ and %s\n' "$(printf 'client:other' | base64)" >"$tmp/logs/app.log"
  if ! scan "$tmp/logs" >/dev/null 2>&1; then
    echo "secret scan self-test: FAILED: a clean log was reported as a leak" >&2
    failed=1
  fi
  ((failed == 0)) && echo "secret scan self-test: all ${#planted[@]} planted forms found, a clean log passes"
  return "$failed"
}

case ${1:?usage: scan-secrets.sh DIR | --self-test} in
  --self-test) self_test ;;
  *) scan "$1" ;;
esac
