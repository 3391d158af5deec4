#!/usr/bin/env bash
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p $OUT; S=$OUT/summary.txt; : > $S
t0=$SECONDS
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader -lms 25 > $OUT/smi.csv &
SMI=$!
timeout 200 python3 tools/fwd_shapes.py --trace 60 --cases 6,4,0,5,6 > $OUT/trace.log 2>&1
echo "trace rc=$? $((SECONDS-t0)) s" | tee -a $S
kill $SMI
cat $OUT/trace.log | tee -a $S
nvidia-smi -q -d POWER,CLOCK | grep -E "Power Limit|Max|SM  " | head -12 | tee -a $S
