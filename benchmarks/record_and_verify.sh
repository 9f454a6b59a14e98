#!/usr/bin/env bash
# Record this GPU's baselines, then check them: two more runs must report no regression.
#
#   bash benchmarks/record_and_verify.sh OUT_DIR [pytest args...]
#
# 1. `pytest -m gpu --perf-update-baselines` (refused, non-zero, if any test fails)
# 2. two verification runs against the new baseline, each saved with --perf-save
# 3. `python -m harness compare` of the two saved runs (same verdict engine)
# Logs, saved results and the per-file wall times land in OUT_DIR.
# LAUNCH runs pytest under a launcher instead of plain python, e.g. several GPUs:
#   LAUNCH="torchrun --nproc-per-node 2" bash benchmarks/record_and_verify.sh OUT -m distributed
# (the last -m wins over the script's -m gpu).
set -uo pipefail
out=${1:?usage: record_and_verify.sh OUT_DIR [pytest args...]}
shift
mkdir -p "$out"
py=${PYTHON:-python3}
read -r -a launch <<<"${LAUNCH:-$py}"
export PYTHONUNBUFFERED=1

step() {  # step NAME ARGS...: one pytest run, its log and exit code
    local name=$1; shift
    local start=$SECONDS
    "${launch[@]}" -m pytest -m gpu -p no:cacheprovider --durations=0 "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s"
    return $rc
}

step record --perf-update-baselines "$@" || { tail -40 "$out/record.log"; exit 1; }
step verify1 --perf-save="$out/verify1.json" "$@"; rc1=$?
step verify2 --perf-save="$out/verify2.json" "$@"; rc2=$?
"$py" -m harness compare "$out/verify1.json" "$out/verify2.json" >"$out/compare.txt" 2>&1
echo "compare verify1 -> verify2: exit $?"
# Wall time per test file, summed from the --durations report of the recording run.
awk '/s (setup|call|teardown) /{split($3,f,"::"); t[f[1]]+=$1} END{for (k in t) printf "%-40s %6.1f s\n", k, t[k]}' \
    "$out/record.log" | sort >"$out/durations.txt"
cat "$out/durations.txt"
exit $((rc1 || rc2))
