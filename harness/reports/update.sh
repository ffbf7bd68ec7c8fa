#!/usr/bin/env bash
# Remakes the compliance reports in this folder: the reference server (embedded) and a fresh
# test Synapse (harness/synapse/synapse.sh). Exits non-zero when a run fails.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
out="harness/reports"
cargo build -q -p mxconform
bin="target/debug/mxconform"
status=0
"$bin" run --quiet --report-md "$out/reference.md" --report-json "$out/reference.json" || status=1
# Suite strength: each state-changing operation of the reference server made a no-op in turn.
"$bin" mutants --report-md "$out/mutants.md" > "$out/.mutants.txt" || status=1
harness/synapse/synapse.sh start >/dev/null
trap 'harness/synapse/synapse.sh stop' EXIT
harness/synapse/synapse.sh start-partners >/dev/null
"$bin" run --quiet --profile synapse --report-md "$out/synapse.md" --report-json "$out/synapse.json" || status=1
"$bin" compare "$out/reference.json" "$out/synapse.json" > "$out/comparison.md"
# The real-client check (harness/clients/): matrix-js-sdk and matrix-nio on both servers.
"$bin" serve --addr 127.0.0.1:18302 --server-name localhost --in-memory >/dev/null 2>&1 &
ref_pid=$!
for _ in $(seq 1 100); do curl -fsS http://127.0.0.1:18302/_matrix/client/versions >/dev/null 2>&1 && break; sleep 0.1; done
harness/clients/run.sh http://127.0.0.1:18302 --server-kind reference --report "$out/.clients-reference.md" >/dev/null || status=1
kill "$ref_pid" 2>/dev/null || true
harness/clients/run.sh http://127.0.0.1:18008 --server-kind synapse --report "$out/.clients-synapse.md" >/dev/null || status=1
# Each compliance report ends with its server's real-client results.
for kind in reference synapse; do
  { echo; cat "$out/.clients-$kind.md"; } >> "$out/$kind.md"
done
# The reference report names its suite strength (details in mutants.md).
{ echo; echo "## Suite strength"; echo; echo "No-op mutants of the reference server's state-changing operations ([mutants.md](mutants.md)): \`$(grep '^mutants:' "$out/.mutants.txt")\`."; } >> "$out/reference.md"
rm -f "$out/.clients-reference.md" "$out/.clients-synapse.md" "$out/.mutants.txt"
exit $status
