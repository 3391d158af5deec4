#!/usr/bin/env bash
# ncu profiles of the benchmark cells where a bar is short (one call of each case, inside the NVTX range "target"
# of tools/profile_targets.py). Run from the repo root on the GPU machine:
#   PYTHONPATH=src bash tools/profile_gaps.sh [budget_seconds] [case ...]
# Writes $OUT/ncu_gaps.log (text details of every profiled kernel) and prints one line per kernel last.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-src}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/profile_out}"
mkdir -p "$OUT"
BUDGET="${1:-300}"
shift || true
CASES="${*:-fwd_w2 fwd_w2_01 fwd_w1_causal decode_128k decode_128k_025 decode_2k_025 layout_w1 bwd_w2 bwd_w2_det}"
LOG="$OUT/ncu_gaps.log"
: >"$LOG"
SECTIONS="${SECTIONS:---section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
--section SchedulerStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis}"
for c in $CASES; do
    left=$((BUDGET - SECONDS))
    if [ "$left" -lt 25 ]; then echo "SKIPPED $c (budget)" | tee -a "$LOG"; continue; fi
    cap=$(( left < 120 ? left : 120 ))
    echo "===== $c" >>"$LOG"
    t0=$SECONDS
    # shellcheck disable=SC2086
    timeout -k 5 "$cap" ncu --nvtx --nvtx-include "target/" $SECTIONS python3 tools/profile_targets.py "$c" \
        >>"$LOG" 2>&1
    echo "===== $c rc=$? $((SECONDS - t0)) s" | tee -a "$LOG"
done
echo "== per kernel: case, name, duration, SM / memory throughput =="
python3 - "$LOG" <<'PY'
import re, sys
case = None
name = None
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("===== ") and " rc=" not in line:
        case = line.split()[1]
    m = re.match(r"\s{2}(\S+)\s.*\(\d+, \d+, \d+\)x\(\d+, \d+, \d+\)", line)
    if m:
        name = m.group(1)[:60]
    for key in ("Duration", "Compute (SM) Throughput", "Memory Throughput", "Registers Per Thread",
                "Achieved Occupancy"):
        if line.strip().startswith(key) and name:
            print(f"{case:16s} {name:60s} {key:26s} {line.split()[-1]:>10s} {line.split()[-2]}")
PY
