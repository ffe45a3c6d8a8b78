#!/usr/bin/env bash
# make demo: start a local CleverTap sandbox, upload the sample Segment export to it,
# show the summary and what the sandbox now holds, stop the sandbox. No account needed.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
work=$(mktemp -d)
db="$work/sandbox.db"

# Made first: the background job opens it in its own time, and the loop below reads it
# at once (sed on a file not there yet failed, and set -e ended the demo).
: >"$work/sandbox.out"
"$BIN/ctsync" sandbox --port 0 --db "$db" --latency-ms 20 >"$work/sandbox.out" 2>&1 &
sandbox=$!
trap 'kill "$sandbox" 2>/dev/null; wait "$sandbox" 2>/dev/null || true' EXIT

url=""
for _ in $(seq 1 100); do
  url=$(sed -n 's/^ctsync sandbox listening on //p' "$work/sandbox.out")
  [ -n "$url" ] && break
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "the sandbox did not start:" >&2
  cat "$work/sandbox.out" >&2
  exit 1
fi
echo "== sandbox listening on $url"

echo "== ctsync upload samples/segment-export.ndjson.gz --preset classic --endpoint $url"
status=0
CLEVERTAP_ACCOUNT_ID=sandbox CLEVERTAP_PASSCODE=sandbox \
  "$BIN/ctsync" upload samples/segment-export.ndjson.gz --preset classic \
  --endpoint "$url" --report "$work/report.ndjson" --failed "$work/failed.ndjson" || status=$?
echo "== exit code $status (1 means some records did not go through: see the report)"
echo "== first lines of the per-record report ($work/report.ndjson):"
head -n 3 "$work/report.ndjson" || true

kill "$sandbox" && wait "$sandbox" 2>/dev/null || true
trap - EXIT
echo "== what the sandbox holds"
"$BIN/ctsync" sandbox show --db "$db"
echo "== the report, the dead letters and the sandbox's database are in $work"
echo "   (look at them, then: rm -r $work)"
