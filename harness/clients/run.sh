#!/usr/bin/env bash
# The real-client check: drives matrix-js-sdk (with its Rust crypto) and matrix-nio against a
# homeserver and prints one line per step per client:
#
#   real-client <client> <version> | <step> | <RESULT> (<ms> ms)[: <detail>]
#
# RESULT is PASS, FAIL, BLOCKED (a step it needs did not pass), UNSUPPORTED (the client cannot
# do it), XFAIL (failed or blocked, and listed as expected) or XPASS (listed as expected, but
# passed). A failed step is followed by indented `http:` lines: what was asked and answered.
# The run ends with a summary line and then `real-clients: N passed, N failed, N skipped`.
#
#   harness/clients/run.sh <homeserver-base-url> [options]
#     --report FILE.md        also write the results as a markdown table
#     --server-kind KIND      expect the failures listed for KIND in expected-failures.txt
#     --expect-fail CLIENT:STEP   expect this step to fail (repeatable; CLIENT may be *)
#     --only js|nio           run one client only
#
# Installs what it needs on first use, quietly afterwards: matrix-js-sdk and a Node 22 from the
# npm registry into node_modules/ (package-lock.json), matrix-nio[e2e] from PyPI into .venv/
# (requirements.txt). Environment: PYTHON (default python3), MXC_STEP_TIMEOUT_MS,
# MXC_TOTAL_TIMEOUT_MS, MXC_CLIENT_LOG (see the checks). The clients' logs go to logs/.
#
# Exit status: 0 when every step passed, was unsupported or failed as listed; 1 otherwise (a
# client that could not be installed is a failed `install` step); 2 on a usage error.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"

usage() {
  sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

url=""
report=""
kind=""
only=""
expect=()
while [ $# -gt 0 ]; do
  case "$1" in
    --report) report="${2:?--report needs a file}"; shift 2 ;;
    --server-kind) kind="${2:?--server-kind needs a kind}"; shift 2 ;;
    --expect-fail) expect+=("${2:?--expect-fail needs CLIENT:STEP}"); shift 2 ;;
    --only) only="${2:?--only needs js or nio}"; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) [ -z "$url" ] || usage; url="$1"; shift ;;
  esac
done
[ -n "$url" ] || usage
case "$only" in ""|js|nio) ;; *) echo "--only takes js or nio" >&2; exit 2 ;; esac
case "$url" in http://*|https://*) ;; *) echo "the homeserver URL must start with http:// or https://" >&2; exit 2 ;; esac
url="${url%/}"

logs="$here/logs"
mkdir -p "$logs"

# --- installation ------------------------------------------------------------------------------

hash_of() { "$python" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

# A Node of 22 or newer: the one package.json pins, else the machine's own if it is new enough.
find_node() {
  local n major
  for n in "$here/node_modules/node/bin/node" "$(command -v node || true)"; do
    [ -n "$n" ] && [ -x "$n" ] || continue
    major="$("$n" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
    if [ "$major" -ge 22 ]; then echo "$n"; return 0; fi
  done
  return 1
}

install_js() {
  local stamp="$here/node_modules/.real-client-installed" want
  want="$(hash_of "$here/package-lock.json")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && find_node >/dev/null; then return 0; fi
  echo "real-client: installing matrix-js-sdk and Node 22 into $here/node_modules (npm ci)" >&2
  command -v npm >/dev/null || { echo "real-client: npm is needed to install matrix-js-sdk" >&2; return 1; }
  if ! (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >"$logs/npm-install.log" 2>&1); then
    echo "real-client: npm ci failed; see $logs/npm-install.log" >&2
    tail -n 20 "$logs/npm-install.log" >&2
    return 1
  fi
  if ! find_node >/dev/null; then
    echo "real-client: no Node 22 after npm ci (the node package's install script did not run?); see $logs/npm-install.log" >&2
    return 1
  fi
  echo "$want" >"$stamp"
}

install_nio() {
  local venv="$here/.venv" stamp="$here/.venv/.real-client-installed" want
  want="$(hash_of "$here/requirements.txt")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then return 0; fi
  echo "real-client: installing matrix-nio[e2e] into $venv (pip)" >&2
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" || { echo "real-client: $python -m venv failed" >&2; return 1; }
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >"$logs/pip-install.log" 2>&1 || true
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >>"$logs/pip-install.log" 2>&1; then
    # The e2e extra needs vodozemac's wheel; without it nio still runs, without encryption
    # (the check says so in its output).
    local nio_pin
    nio_pin="$(grep -i '^matrix-nio==' "$here/requirements.txt")"
    echo "real-client: the pinned set (with e2e) did not install; installing $nio_pin without e2e; see $logs/pip-install.log" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$nio_pin" >>"$logs/pip-install.log" 2>&1 || {
      echo "real-client: pip could not install $nio_pin; see $logs/pip-install.log" >&2
      tail -n 20 "$logs/pip-install.log" >&2
      return 1
    }
    return 0 # no stamp: try the full set again next time
  fi
  echo "$want" >"$stamp"
}

# --- expected failures -------------------------------------------------------------------------

expected="$(mktemp)"
results="$(mktemp)"
trap 'rm -f "$expected" "$results"' EXIT
if [ -n "$kind" ]; then
  found=0
  while read -r k client step reason; do
    case "$k" in ''|'#'*) continue ;; esac
    [ "$k" = "$kind" ] || continue
    printf '%s\t%s\t%s\n' "$client" "$step" "$reason" >>"$expected"
    found=1
  done <"$here/expected-failures.txt"
  [ "$found" = 1 ] || echo "real-client: expected-failures.txt lists nothing for server kind '$kind'" >&2
fi
for e in ${expect[@]+"${expect[@]}"}; do
  case "$e" in *:*) ;; *) echo "--expect-fail takes CLIENT:STEP, not '$e'" >&2; exit 2 ;; esac
  printf '%s\t%s\t%s\n' "${e%%:*}" "${e#*:}" "given with --expect-fail" >>"$expected"
done

# --- running -----------------------------------------------------------------------------------

# Rewrites the step lines of a check (expected failures), passes the rest through, and appends
# "client, version, step, result, ms, detail" records to $results.
filter() {
  awk -v expected="$expected" -v results="$results" '
    BEGIN {
      FS = "\t"
      while ((getline line < expected) > 0) {
        split(line, f, "\t"); why[f[1] SUBSEP f[2]] = f[3]
      }
      FS = " "
    }
    /^real-client / {
      a = index($0, " | "); head = substr($0, 1, a - 1); rest = substr($0, a + 3)
      b = index(rest, " | "); step = substr(rest, 1, b - 1); rest = substr(rest, b + 3)
      split(head, h, " "); client = h[2]; version = h[3]
      status = rest; sub(/ .*/, "", status)
      ms = rest; sub(/^[A-Z]+ \(/, "", ms); sub(/ ms\).*/, "", ms)
      detail = ""; c = index(rest, "): "); if (c) detail = substr(rest, c + 3)
      reason = ""
      if ((client SUBSEP step) in why) reason = why[client SUBSEP step]
      else if (("*" SUBSEP step) in why) reason = why["*" SUBSEP step]
      if (reason != "" && (status == "FAIL" || status == "BLOCKED")) {
        status = "XFAIL"; detail = detail " [expected: " reason "]"
      } else if (reason != "" && status == "PASS") {
        status = "XPASS"; detail = "listed as an expected failure (" reason ") but passed: remove it from the list"
      }
      printf "real-client %s %s | %s | %s (%s ms)%s\n", client, version, step, status, ms, (detail != "" ? ": " detail : "")
      gsub(/\t/, " ", detail)
      printf "%s\t%s\t%s\t%s\t%s\t%s\n", client, version, step, status, ms, detail >> results
      fflush(); next
    }
    { print; fflush() }
  '
}

run_check() { # name, command...
  local name="$1" status
  shift
  local before
  before="$(wc -l <"$results")"
  set +e
  "$@" 2>"$logs/$name.log" | filter
  status="${PIPESTATUS[0]}"
  set -e
  local after
  after="$(wc -l <"$results")"
  # A check that died, or was killed by its time bound, without reporting: that is a failure too.
  if [ "$status" -ne 0 ] && ! tail -n "+$((before + 1))" "$results" | cut -f4 | grep -qE '^(FAIL|BLOCKED|XFAIL|XPASS)$'; then
    echo "real-client $name ? | check | FAIL (0 ms): the check exited with status $status without a failing step; see $logs/$name.log" | filter
  elif [ "$after" -eq "$before" ]; then
    echo "real-client $name ? | check | FAIL (0 ms): the check reported no step; see $logs/$name.log" | filter
  fi
}

install_ok=1
# The whole of one check is bounded by the check itself; this is the bound for a hung process.
total_ms="${MXC_TOTAL_TIMEOUT_MS:-240000}"
hard=$((total_ms / 1000 + 30))

if "$python" - "$url" <<'PY' 2>/dev/null; then :; else
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/_matrix/client/versions", timeout=10).read()
PY
  echo "real-client summary | $url/_matrix/client/versions does not answer: nothing was run"
  echo "real-clients: 0 passed, 1 failed"
  exit 1
fi

if [ "$only" != "nio" ]; then
  if install_js; then
    run_check matrix-js-sdk timeout -k 5 "$hard" "$(find_node)" "$here/check-js.mjs" "$url"
  else
    install_ok=0
    echo "real-client matrix-js-sdk ? | install | FAIL (0 ms): could not install matrix-js-sdk or Node 22; see $logs/npm-install.log" | filter
  fi
fi
if [ "$only" != "js" ]; then
  if install_nio; then
    run_check matrix-nio timeout -k 5 "$hard" "$here/.venv/bin/python" "$here/check-nio.py" "$url"
  else
    install_ok=0
    echo "real-client matrix-nio ? | install | FAIL (0 ms): could not install matrix-nio; see $logs/pip-install.log" | filter
  fi
fi

# --- summary and report ------------------------------------------------------------------------

summary="$(awk -F'\t' '
  { key = $1 " " $2; if (!(key in seen)) { seen[key] = 1; order[++n] = key }
    count[key, $4]++; total[$4]++ }
  END {
    line = "real-client summary"
    for (i = 1; i <= n; i++) {
      k = order[i]
      line = line sprintf(" | %s: %d passed, %d failed, %d blocked, %d unsupported, %d expected failures, %d unexpected passes",
        k, count[k, "PASS"], count[k, "FAIL"], count[k, "BLOCKED"], count[k, "UNSUPPORTED"], count[k, "XFAIL"], count[k, "XPASS"])
    }
    print line
    printf "real-clients: %d passed, %d failed, %d skipped\n", total["PASS"], total["FAIL"] + total["BLOCKED"] + total["XPASS"], total["UNSUPPORTED"] + total["XFAIL"]
  }' "$results")"
echo "$summary"

if [ -n "$report" ]; then
  {
    echo "# Real-client check"
    echo
    echo "Against \`$url\`${kind:+ (server kind \`$kind\`)}, $(date -u +%Y-%m-%dT%H:%M:%SZ), by \`harness/clients/run.sh\`."
    echo
    echo "| client | version | step | result | time (ms) | note |"
    echo "| --- | --- | --- | --- | ---: | --- |"
    awk -F'\t' '{
      note = ($4 == "PASS") ? "" : $6
      gsub(/\|/, "\\|", note)
      if (length(note) > 300) note = substr(note, 1, 300) "…"
      printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, note
    }' "$results"
    echo
    echo "$summary" | sed -n '2p'
  } >"$report"
fi

if [ "$install_ok" = 1 ] && ! cut -f4 "$results" | grep -qE '^(FAIL|BLOCKED|XPASS)$'; then
  exit 0
fi
exit 1
