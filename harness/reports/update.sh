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
harness/synapse/synapse.sh start >/dev/null
trap 'harness/synapse/synapse.sh stop' EXIT
"$bin" run --quiet --profile synapse --report-md "$out/synapse.md" --report-json "$out/synapse.json" || status=1
"$bin" compare "$out/reference.json" "$out/synapse.json" > "$out/comparison.md"
exit $status
