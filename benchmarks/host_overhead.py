"""Host (CPU) time of a cached-plan `varblock.attention` call, and cold start of a fresh process.

    python benchmarks/host_overhead.py

Cold start = import varblock + manifest + module load + first launch + sync (inputs made beforehand, torch already
imported). Host overhead = CPU time per call over 1000 calls with a cached plan (launches queue asynchronously;
the GPU work is tiny so the host is the bottleneck)."""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def main() -> None:
    cu = np.array([0, 128, 384], np.int32)
    q = torch.randn(384, 8, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(384, 2, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    import varblock

    t1 = time.perf_counter()
    prof = cProfile.Profile()
    prof.enable()
    p = varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=128, causal=True)
    prof.disable()
    t2 = time.perf_counter()
    varblock.attention(q, k, v, p)
    torch.cuda.synchronize()
    t3 = time.perf_counter()
    print(f"cold start: import {1e3 * (t1 - t0):.1f} ms + plan {1e3 * (t2 - t1):.1f} ms + first attention call "
          f"(module load + launch + sync) {1e3 * (t3 - t2):.1f} ms = {1e3 * (t3 - t0):.1f} ms")
    pstats.Stats(prof).sort_stats("cumtime").print_stats(14)
    # host overhead on a tiny problem (a few microseconds of GPU work per call), so the launch queue never fills
    # and the CPU time measured is the host's own work
    cu_s = np.array([0, 16, 40], np.int32)
    qs = torch.randn(40, 2, 64, device="cuda", dtype=torch.bfloat16)
    ks, vs = torch.randn(40, 1, 64, device="cuda", dtype=torch.bfloat16), torch.randn(40, 1, 64, device="cuda",
                                                                                    dtype=torch.bfloat16)
    ps = varblock.plan(cu_s, num_heads_q=2, num_heads_kv=1, head_dim=64, causal=True)
    outs, lses = varblock.attention(qs, ks, vs, ps, return_lse=True)
    for label, kw in (("out= and lse= preallocated", {"out": outs, "lse": lses, "return_lse": True}),
                      ("outputs allocated per call", {})):
        for _ in range(50):
            varblock.attention(qs, ks, vs, ps, **kw)
        torch.cuda.synchronize()
        n = 1000
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        c0, w0 = time.process_time(), time.perf_counter()
        e0.record()
        for _ in range(n):
            varblock.attention(qs, ks, vs, ps, **kw)
        e1.record()
        c1, w1 = time.process_time(), time.perf_counter()
        torch.cuda.synchronize()
        print(f"host overhead ({label}): {1e6 * (c1 - c0) / n:.1f} us CPU / call, {1e6 * (w1 - w0) / n:.1f} us wall"
              f" (GPU {1e3 * e0.elapsed_time(e1) / n:.1f} us / call, {ps.num_tiles} tiles)")
    m = torch.randn(4, 4096, 8, 128, device="cuda")
    ml = torch.randn(4, 8, 4096, device="cuda")
    mo, mlse = varblock.merge_states(m, ml)
    n = 1000
    c0 = time.process_time()
    for _ in range(n):
        varblock.merge_states(m, ml, out=mo, lse=mlse)
    c1 = time.process_time()
    torch.cuda.synchronize()
    print(f"host overhead (merge_states, preallocated): {1e6 * (c1 - c0) / n:.1f} us CPU / call")


if __name__ == "__main__":
    main()
