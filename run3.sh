#!/usr/bin/env bash
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p $OUT; S=$OUT/summary.txt; : > $S
t0=$SECONDS
timeout 200 python3 tools/fwd_shapes.py --streams 1 --chunk-orders plan,rotate,shuffle --cases 0,2,4,5,6,9,10 > $OUT/shapes.log 2>&1
echo "shapes rc=$? $((SECONDS-t0)) s" | tee -a $S
cat $OUT/shapes.log | tee -a $S
echo "total $((SECONDS-t0)) s" | tee -a $S
t1=$SECONDS
OUT=$OUT bash tools/profile_gaps.sh 200 fwd_w1_d64_05 fwd_vb_05 fwd_w1_64x64_05 > $OUT/prof.log 2>&1
echo "profile rc=$? $((SECONDS-t1)) s" | tee -a $S
tail -40 $OUT/prof.log | tee -a $S
