#!/usr/bin/env bash
# Every benchmark of issues 10-13 with the anchors side by side, each under a time cap, JSON rows into $OUT.
#   PYTHONPATH=src bash tools/bench_all.sh [budget_seconds]     BENCHES=fwd,bwd,decode,pool,layout selects
# FA4 columns need FA4 importable (source tools/fa4_env.sh first); SeerAttention's kernels are read from .seer.
# Files in $OUT: bench_all.log (everything printed) and one <bench>.json per benchmark (plots are drawn on the CPU
# machine afterwards: python benchmarks/plots.py $OUT/*.json --out docs/img).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-src}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT="${OUT:-/tmp/bench_out}"
mkdir -p "$OUT"
BUDGET="${1:-540}"
BENCHES="${BENCHES:-fwd,bwd,decode,pool,layout}"
LOG="$OUT/bench_all.log"
SEER=""
[ -d .seer ] && SEER="--seer-path .seer"
run() {  # run KEY CAP CMD...
    local key=$1 cap=$2
    shift 2
    case ",$BENCHES," in *",$key,"*) ;; *) return ;; esac
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 30 ]; then echo "SKIPPED $key (budget left $left s)" | tee -a "$LOG"; return; fi
    [ "$cap" -gt "$left" ] && cap=$left
    echo "===== $key: $*" >>"$LOG"
    local t0=$SECONDS
    timeout -k 5 "$cap" "$@" >>"$LOG" 2>&1
    echo "===== $key rc=$? $((SECONDS - t0)) s" | tee -a "$LOG"
}
# shellcheck disable=SC2086
run fwd 300 python3 benchmarks/bench_attention.py --suite full $SEER --json "$OUT/fwd.json"
# shellcheck disable=SC2086
run bwd 240 python3 benchmarks/bench_backward.py --suite full $SEER --json "$OUT/bwd.json"
# shellcheck disable=SC2086
run decode 120 python3 benchmarks/bench_decode.py $SEER --json "$OUT/decode.json"
# shellcheck disable=SC2086
run pool 90 python3 benchmarks/bench_pooling.py $SEER --json "$OUT/pool.json"
run layout 45 python3 benchmarks/bench_layout.py --device --json "$OUT/layout.json"
echo "total $SECONDS s"
