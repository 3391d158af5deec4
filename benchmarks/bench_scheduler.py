"""Persistent (dynamic, longest-first) vs single-tile schedule of the portable forward, side by side in one run,
on W1 and W3 of shared/anchors.md (random 128x128 blocks, diagonal kept, bf16, d128).

    python benchmarks/bench_scheduler.py [--workloads W1,W3] [--densities 1.0,0.5,0.1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from bench_attention import BS, WORKLOADS, D, bench  # noqa: E402

import varblock  # noqa: E402
from varblock import layout as L  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="W1,W3")
    ap.add_argument("--densities", default="1.0,0.5,0.1")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, varblock {varblock.__version__}", flush=True)
    rows = []
    for wname in args.workloads.split(","):
        lens, hq, hkv = WORKLOADS[wname]
        cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        total = int(cu[-1])
        q = torch.randn(total, hq, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(total, hkv, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(total, hkv, D, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(q)
        for causal in (False, True):
            for density in (float(x) for x in args.densities.split(",")):
                lay = L.random_blocks(cu, cu, density=density, num_heads=hkv, head_mode="per_kv_head",
                                      causal=causal, seed=1, block_q=BS, block_k=BS)
                t = {}
                for sched in ("single", "persistent"):
                    p = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=D, layout=lay,
                                      scheduler=sched)
                    t[sched] = bench(lambda p=p: varblock.attention(q, k, v, p, out=out))
                    flops = p.flops()
                auto = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=D, layout=lay)
                rows.append((wname, causal, density, p.num_tiles, p.num_ctas, t["single"],
                             flops / t["single"] / 1e9, t["persistent"], flops / t["persistent"] / 1e9,
                             t["single"] / t["persistent"], auto.scheduler))
                print("%-3s causal=%-5s density=%.1f tiles %6d ctas %4d  single %7.3f ms %6.1f TF/s  persistent "
                      "%7.3f ms %6.1f TF/s  single/persistent %.2f  auto=%s" % rows[-1], flush=True)
    print("\n| workload | causal | density | tiles | persistent CTAs | single ms | single TFLOP/s | persistent ms |"
          " persistent TFLOP/s | single/persistent | auto picks |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print("| %s | %s | %.1f | %d | %d | %.3f | %.1f | %.3f | %.1f | %.2f | %s |" % r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
