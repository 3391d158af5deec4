"""Block-sparse decode bandwidth: varblock.decode over a paged KV cache next to torch SDPA dense decode.

Effective bandwidth = (kept K and V bytes + q bytes + out bytes) / time; CUDA events around 10 back-to-back calls
(the Python launch cost of a call overlaps the previous kernel), median of many runs after warm-up, caches larger
than L2. Shapes (issue 12): Hq 64 / Hkv 8, d128, bf16, 64-token blocks, one new token per
sequence: batch 64 x 32k, 1 x 128k, 256 x 2k at density 1.0 and 0.25 (random 25% of each (sequence, KV head)'s
blocks). varblock reads a paged cache ([num_pages, 64, Hkv, D], pages in random order); SDPA reads a contiguous
[B, Hkv, L, D] cache (dense only).

    PYTHONPATH=src python benchmarks/bench_decode.py [--iters 30] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import varblock
from varblock.decode_plan import abi
from varblock.layout import decode as LD

HQ, HKV, D, BLOCK, PAGE = 64, 8, 128, 64, 64
SHAPES = ((64, 32768), (1, 131072), (256, 2048))
DENSITIES = (1.0, 0.25)


def _time(torch, fn, iters: int, reps: int = 10) -> float:
    """Median milliseconds per call of ``fn``: ``reps`` back-to-back calls between two CUDA events (so the Python
    launch overhead of one call overlaps the previous call's kernel), ``iters`` times, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / reps)
    return statistics.median(times)


def _layout(rng, B: int, L: int, density: float):
    kv = np.full(B, L)
    if density >= 1.0:
        return LD.dense_decode(kv, block_size=BLOCK, num_heads=HKV)
    nb = L // BLOCK
    keep = max(1, int(round(density * nb)))
    rows = np.repeat(np.arange(B * HKV), keep)
    blocks = np.concatenate([rng.permutation(nb)[:keep] for _ in range(B * HKV)])
    return LD.from_block_lists(rows, blocks, kv_lens=kv, block_size=BLOCK, num_heads=HKV)


def bench_varblock(torch, rng, B: int, L: int, density: float, iters: int) -> dict:
    pages = B * L // PAGE
    k = torch.randn(pages, PAGE, HKV, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    pt = torch.from_numpy(rng.permutation(pages).astype(np.int32).reshape(B, L // PAGE)).cuda()
    q = torch.randn(B, HQ, D, device="cuda", dtype=torch.bfloat16)
    cu_q = np.arange(B + 1, dtype=np.int32)
    lay = _layout(rng, B, L, density)
    t0 = time.perf_counter()
    plan = varblock.plan_decode(cu_q, kv_lens=np.full(B, L), page_table=pt, page_size=PAGE, num_heads_q=HQ,
                                num_heads_kv=HKV, head_dim=D, layout=lay)
    plan_ms = (time.perf_counter() - t0) * 1e3
    out = torch.empty_like(q)
    ms = _time(torch, lambda: varblock.decode(q, k, v, plan, out=out), iters)
    kept = int(lay.kept_keys().sum())
    nbytes = kept * D * 2 * 2 + 2 * q.numel() * 2
    return {"ms": ms, "tbs": nbytes / ms / 1e9, "plan_ms": plan_ms, "items": plan.num_items,
            "splits": int(plan.worklist.items[:, abi.ITEM_NUM_SPLITS].max(initial=1))}


def bench_sdpa(torch, B: int, L: int, iters: int) -> dict:
    import torch.nn.functional as F

    k = torch.randn(B, HKV, L, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(B, HQ, 1, D, device="cuda", dtype=torch.bfloat16)
    try:
        ms = _time(torch, lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), iters)
    except (RuntimeError, TypeError) as ex:
        return {"ms": float("nan"), "tbs": float("nan"), "note": f"unavailable: {ex}"}
    nbytes = k.numel() * 2 * 2 + 2 * q.numel() * 2
    return {"ms": ms, "tbs": nbytes / ms / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    import torch

    rng = np.random.default_rng(0)
    print(f"{torch.cuda.get_device_name()}, Hq {HQ} / Hkv {HKV}, d{D}, bf16, {BLOCK}-token blocks, page {PAGE}")
    print(f"{'shape':>12} {'density':>7} | {'varblock ms':>11} {'TB/s':>6} {'items':>6} {'splits':>6} "
          f"{'plan ms':>7} | {'SDPA ms':>8} {'TB/s':>6}")
    rows = []
    for B, L in SHAPES:
        sd = bench_sdpa(torch, B, L, args.iters)
        torch.cuda.empty_cache()
        for dens in DENSITIES:
            r = bench_varblock(torch, rng, B, L, dens, args.iters)
            torch.cuda.empty_cache()
            s = sd if dens >= 1.0 else {"ms": float("nan"), "tbs": float("nan")}
            print(f"{B:>4} x {L // 1024:>4}k {dens:>7.2f} | {r['ms']:>11.3f} {r['tbs']:>6.2f} {r['items']:>6} "
                  f"{r['splits']:>6} {r['plan_ms']:>7.1f} | {s['ms']:>8.3f} {s['tbs']:>6.2f}")
            rows.append((B, L, dens, r["ms"], r["tbs"], r["items"], r["splits"], s["ms"], s["tbs"]))
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("batch,kv_len,density,varblock_ms,varblock_tbs,items,max_splits,sdpa_ms,sdpa_tbs\n")
            for row in rows:
                f.write(",".join(str(x) for x in row) + "\n")


if __name__ == "__main__":
    main()
