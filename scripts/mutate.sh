#!/usr/bin/env bash
# `make mutate`: mutation testing of the core modules with mutmut, one module at a time,
# each against its own focused tests so that a run ends in bounded time (a mutant costs one
# pytest start, a few seconds). Prints every surviving mutant and a score per module.
# Usage: scripts/mutate.sh [MODULE...]   (default: every module below)
# Modules: timestamps batching ledger client state rules presets
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}

declare -A PATHS=(
  [timestamps]=ctsync/timestamps.py
  [batching]=ctsync/batching.py
  [ledger]=ctsync/ledger.py
  [client]=ctsync/client.py
  [state]=ctsync/state.py
  [rules]=ctsync/rules.py
  [presets]=ctsync/presets/
)
declare -A TESTS=(
  [timestamps]="tests/test_timestamps.py tests/test_local_time.py"
  [batching]="tests/test_pipeline.py tests/test_delivery_model.py"
  [ledger]="tests/test_ledger.py tests/test_pipeline.py"
  [client]="tests/test_client.py"
  [state]="tests/test_state.py"
  [rules]="tests/test_rules.py"
  [presets]="tests/presets tests/test_actions_preset.py tests/mapping/test_mapping_presets.py"
)

modules=("$@")
[ ${#modules[@]} -eq 0 ] && modules=(timestamps batching ledger client state rules presets)
mkdir -p .mutmut
status=0
for module in "${modules[@]}"; do
  path=${PATHS[$module]:-}
  if [ -z "$path" ]; then
    echo "mutate: unknown module $module (known: ${!PATHS[*]})" >&2
    exit 2
  fi
  echo "== $module: mutating $path against ${TESTS[$module]}"
  rm -f .mutmut-cache  # one cache per module: mutmut's cache is keyed by the whole run
  # -x: the first failing test kills the mutant; no Hypothesis database between mutants.
  nice "$BIN/mutmut" run --paths-to-mutate "$path" --tests-dir tests --no-progress \
    --runner "$BIN/python -m pytest -x -q -p no:cacheprovider -p no:randomly ${TESTS[$module]}" \
    >".mutmut/$module.log" 2>&1
  "$BIN/mutmut" results >".mutmut/$module.results" 2>&1
  "$BIN/mutmut" junitxml >".mutmut/$module.xml" 2>/dev/null
  "$BIN/python" - "$module" <<'PY'
import sys
import xml.etree.ElementTree as ET

module = sys.argv[1]
suite = ET.parse(f".mutmut/{module}.xml").getroot()
cases = suite.findall(".//testcase")
survived = [c for c in cases if c.find("failure") is not None]
skipped = [c for c in cases if c.find("skipped") is not None]
total = len(cases) - len(skipped)
print(f"{module}: {total - len(survived)}/{total} mutants killed ({len(survived)} survived)")
PY
  grep -Ev '^(To |    mutmut |$)' ".mutmut/$module.results"
  ids=$(sed -n 's/^\([0-9][0-9,-]*\)$/\1/p' ".mutmut/$module.results" | tr ',' '\n' | tr -d ' ')
  for range in $ids; do
    for id in $(seq ${range%-*} ${range#*-}); do
      "$BIN/mutmut" show "$id" | grep -E '^[-+][^-+]|^--- ' | sed "s/^/  $id /"
    done
  done
  cp .mutmut-cache ".mutmut/$module.cache" 2>/dev/null
done
exit $status
