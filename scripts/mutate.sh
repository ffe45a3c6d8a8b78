#!/usr/bin/env bash
# `make mutate`: mutation testing of the core modules with mutmut, one module at a time,
# each against its own focused tests so that a run ends in bounded time (a mutant costs one
# pytest start, a few seconds). Prints every surviving mutant and a score per module.
# Usage: scripts/mutate.sh [MODULE...]   (default: every module below)
# Modules: timestamps batching ledger client state rules presets classic dedupe run
# (presets: the package and the actions preset; classic: presets/classic.py; run: the
# run's intake, dispatcher and accounts)
# mutmut 2 mutates the file in place (and puts it back): do not edit ctsync/ while it runs,
# and do not run `mutmut show` or `mutmut results` in this directory meanwhile (they rewrite
# the cache under the running mutmut, which then hangs).
# MUTATE_MINUTES=N stops each module after N minutes (mutants not reached are counted as
# not run); MUTATE_RESUME=1 starts from the module's last results (.mutmut/MODULE.cache),
# re-testing only the survivors (when the tests changed) and the mutants not run.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}


declare -A PATHS=(
  [timestamps]=ctsync/timestamps.py
  [batching]=ctsync/batching.py
  [ledger]=ctsync/ledger.py,ctsync/summary.py
  [client]=ctsync/client.py
  [state]=ctsync/state.py
  [rules]=ctsync/rules.py
  [presets]=ctsync/presets/__init__.py,ctsync/presets/actions.py
  [classic]=ctsync/presets/classic.py
  [dedupe]=ctsync/dedupe.py
  [run]=ctsync/run/intake.py,ctsync/run/dispatch.py,ctsync/run/accounts.py
)
declare -A TESTS=(
  [timestamps]="tests/test_timestamps.py tests/test_local_time.py tests/test_timestamp_rules.py"
  [batching]="tests/test_pipeline.py tests/test_batching.py tests/test_full_requests.py"
  [ledger]="tests/test_ledger.py"
  [client]="tests/test_client.py"
  [state]="tests/test_state.py tests/test_state_resume.py tests/test_ledger.py tests/test_dedupe.py"
  [rules]="tests/test_rules.py"
  [presets]="tests/presets tests/test_actions_preset.py tests/mapping/test_mapping_presets.py"
  [classic]="tests/presets tests/test_actions_preset.py tests/mapping/test_mapping_presets.py"
  [dedupe]="tests/test_dedupe.py tests/test_state.py tests/test_intake.py tests/e2e/test_dedupe_e2e.py"
  [run]="tests/test_pipeline.py tests/test_intake.py tests/test_accounts.py tests/test_dedupe.py tests/test_state_resume.py tests/test_delivery_model.py tests/e2e/test_dedupe_e2e.py tests/test_workers.py"
)

# The command mutmut runs per mutant: pytest in one process (mutmut kills it on a timeout;
# a wrapper's child would outlive it and hang the run), and any failure as exit 1, since
# mutmut 2 counts only exit 1 as killed (a mutant that breaks an import exits 2).
RUNNER="$BIN/python -c 'import sys, pytest; sys.exit(0 if pytest.main(sys.argv[1:]) == 0 else 1)'"
RUNNER+=" -x -q -p no:cacheprovider -p no:randomly"
# The example counts the survivors above were judged at (the slow tier's profile): the
# fast tier's `quick` profile could let a mutant that only a rarer example shows survive.
export HYPOTHESIS_PROFILE=thorough

modules=("$@")
[ ${#modules[@]} -eq 0 ] && modules=(timestamps batching ledger client state rules presets classic dedupe run)
mkdir -p .mutmut
stop=
for module in "${modules[@]}"; do
  path=${PATHS[$module]:-}
  if [ -z "$path" ]; then
    echo "mutate: unknown module $module (known: ${!PATHS[*]})" >&2
    exit 2
  fi
  echo "== $module: mutating $path against ${TESTS[$module]}"
  # One cache per module: mutmut's cache is keyed by the whole run.
  if [ -n "${MUTATE_RESUME:-}" ] && [ -f ".mutmut/$module.cache" ]; then
    cp ".mutmut/$module.cache" .mutmut-cache
  else
    rm -f .mutmut-cache
  fi
  limit=()
  # mutmut writes each mutant into the source and puts the original back from FILE.bak;
  # stopped (Ctrl-C, the time limit) it can leave a mutant in place: keep a copy of the
  # sources, wait for every process of the run, and put the original back ourselves.
  keep=".mutmut/$module.orig.tar"
  tar -cf "$keep" ${path//,/ }
  [ -n "${MUTATE_MINUTES:-}" ] && limit=(timeout -k 1m "${MUTATE_MINUTES}m")
  # -x: the first failing test kills the mutant; no Hypothesis database between mutants.
  # Job control (-m): the run is a process group of its own, so that all of it can be
  # stopped and waited for.
  set -m
  "${limit[@]}" nice "$BIN/mutmut" run --paths-to-mutate "$path" --tests-dir tests \
    --no-progress --runner "$RUNNER ${TESTS[$module]}" \
    >".mutmut/$module.log" 2>&1 &
  group=$!
  set +m
  # In its own group mutmut does not see the terminal's Ctrl-C: stop it, and stop after
  # this module. TERM, not INT: mutmut 2 ignores SIGINT while a mutant's tests run (it
  # goes on to the next mutant); the mutant it leaves in place is put back below.
  trap 'stop=1; kill -TERM -- "-$group" 2>/dev/null' INT TERM
  wait "$group"
  while kill -0 "$group" 2>/dev/null; do wait "$group"; done
  trap - INT TERM
  for _ in $(seq 60); do
    pgrep -g "$group" >/dev/null || break
    sleep 1
  done
  pkill -KILL -g "$group" 2>/dev/null && sleep 1
  # (mutmut rewrites the file when it puts it back: compare contents, not times; not in
  # a pipe, where pipefail would take tar's "differs" status for the pipe's)
  compared=$(tar -df "$keep" 2>&1)
  if grep -qE "Contents differ|Size differs" <<<"$compared"; then
    tar -xf "$keep"
    echo "mutate: mutmut was stopped with a mutant in $path: put the original back" >&2
  fi
  for file in $(tar -tf "$keep"); do rm -f "$file.bak"; done
  rm -f "$keep"
  "$BIN/python" - "$module" <<'PY'
import sqlite3
import sys

# ok_killed, ok_suspicious (killed, slowly) and bad_timeout (the mutant hung the tests:
# caught) are killed; bad_survived survived; untested/skipped ones are not counted.
module = sys.argv[1]
counts = dict(sqlite3.connect(".mutmut-cache").execute(
    "SELECT status, COUNT(*) FROM Mutant GROUP BY status"
).fetchall())
killed = sum(counts.get(s, 0) for s in ("ok_killed", "ok_suspicious", "bad_timeout"))
survived = counts.get("bad_survived", 0)
total = killed + survived
untested = counts.get("untested", 0)
late = f", {untested} not run (time limit or stopped)" if untested else ""
print(f"{module}: {killed}/{total} mutants killed ({survived} survived{late})", flush=True)
PY
  survivors=$("$BIN/python" -c "import sqlite3; print(*(r[0] for r in sqlite3.connect('.mutmut-cache').execute(\"SELECT id FROM Mutant WHERE status = 'bad_survived' ORDER BY id\")))")
  for id in $survivors; do
    echo "  survived: mutant $id"
    "$BIN/mutmut" show "$id" | grep -E '^[-+][^-+]' | sed 's/^/    /'
  done
  cp .mutmut-cache ".mutmut/$module.cache" 2>/dev/null
  [ -n "$stop" ] && break
done
[ -n "$stop" ] && exit 130  # stopped by Ctrl-C or SIGTERM: the run is incomplete
exit 0
