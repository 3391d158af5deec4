#!/usr/bin/env bash
# One GPU session's verification in one command (device time is scarce: everything in one call, each step under a
# time cap, a short summary printed last). Run from the repo root with cubins built for the GPU's arch:
#   PYTHONPATH=src bash tools/gpu_check.sh [budget_seconds]      (STEPS=tests,sanitize,... selects steps)
# Steps, in priority order (a step is skipped when the remaining budget is below its cap):
#   1. forward fingerprints vs build/gpu/fp_base.json (bit-identical forward across a refactor), if that file exists
#   2. the GPU test suite (every family), 8 workers
#   3. compute-sanitizer memcheck, racecheck, synccheck over every family's smoke set (tools/sanitize.py --grouped)
#   4. the sm90 forward's first check (tools/hopper_check.sh smoke: timeouts, never hangs the session)
#   5. compute-sanitizer initcheck
#   6. cold start, then short benchmarks (forward W1, device layouts, decode, backward W2, pooling) while budget lasts
# Logs go to $OUT (at most 8 files): summary.txt, pytest.log, fingerprint.log, sanitize.tar.gz, hopper.log, bench.log
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-src}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
BUDGET="${1:-540}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - SECONDS)); }
STEPS="${STEPS:-fingerprint,tests,sanitize,hopper,initcheck,bench}"
step() {  # step KEY NAME CAP LOG CMD...: run CMD with a time cap if KEY is in $STEPS and the budget allows
    local key=$1 name=$2 cap=$3 log=$4
    shift 4
    case ",$STEPS," in *",$key,"*) ;; *) return ;; esac
    if [ "$(left)" -lt $((cap / 3 + 10)) ]; then say "SKIPPED  $name (budget left $(left) s)"; return; fi
    [ "$cap" -gt "$(left)" ] && cap=$(left)
    local t0=$SECONDS
    timeout -k 5 "$cap" "$@" >>"$log" 2>&1
    local rc=$?
    say "$( [ $rc -eq 0 ] && echo 'OK      ' || echo "FAIL $rc ")$name ($((SECONDS - t0)) s): $(grep -E -a \
        'passed|failed|fingerprints:|sanitizer:|OK  |FAIL' "$log" | tail -n 3 | tr '\n' ' ' | cut -c1-400)"
}

say "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader) | $(python3 -c 'import torch, cuda.core as c; print("torch", torch.__version__, "cuda.core", c.__version__)' 2>&1 | tail -1)"
if [ -f build/gpu/fp_base.json ]; then
    step fingerprint "forward fingerprints vs base" 90 "$OUT/fingerprint.log" python3 tools/fwd_fingerprint.py --compare build/gpu/fp_base.json
fi
step tests "GPU tests" 300 "$OUT/pytest.log" python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider --timeout 150 tests/ \
    --ignore=tests/test_backward_perf_gpu.py -rfs
step sanitize "sanitizer memcheck/racecheck/synccheck" 240 "$OUT/sanitize.log" python3 tools/sanitize.py --grouped \
    --tools memcheck,racecheck,synccheck --timeout 100 --log-dir /tmp/sanitize_logs
step hopper "sm90 forward first check" 100 "$OUT/hopper.log" bash tools/hopper_check.sh
step initcheck "sanitizer initcheck (merge_states)" 45 "$OUT/sanitize.log" python3 tools/sanitize.py --tools initcheck \
    --only merge_states --timeout 40 --log-dir /tmp/sanitize_logs
step initcheck "sanitizer initcheck (all, grouped)" 120 "$OUT/sanitize.log" python3 tools/sanitize.py --grouped \
    --tools initcheck --timeout 110 --log-dir /tmp/sanitize_logs
step bench "cold start" 45 "$OUT/bench.log" python3 benchmarks/cold_start.py --runs 3
step bench "forward benchmark W1" 90 "$OUT/bench.log" python3 benchmarks/bench_attention.py --workloads W1
step bench "device layout build time" 40 "$OUT/bench.log" python3 benchmarks/bench_layout.py --device
step bench "decode benchmark" 90 "$OUT/bench.log" python3 benchmarks/bench_decode.py
step bench "backward benchmark W2" 90 "$OUT/bench.log" python3 benchmarks/bench_backward.py --workloads W2 --causal no
step bench "pooling benchmark" 90 "$OUT/bench.log" python3 benchmarks/bench_pooling.py
tar czf "$OUT/sanitize.tar.gz" -C /tmp sanitize_logs 2>/dev/null
say "total $SECONDS s"
echo "== failures =="
grep -E -a "^FAILED|^ERROR" "$OUT/pytest.log" | head -40
echo "== summary =="
cat "$SUMMARY"
