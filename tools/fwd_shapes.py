"""Forward throughput on shape variants of W1 / W2, to separate the causes of a gap (GPU machine).

    PYTHONPATH=src python tools/fwd_shapes.py [--backend attention_fwd_sm90] [--reps 10]

Each row changes one thing against W2 (1 x 32k, H16, d128, dense, non-causal): the KV head count (K/V traffic
per FLOP), the head count (the last wave's fill: 4096 tiles are 31.03 waves of 132 CTAs, 8448 tiles 64.0), the
sequence split (tile length) and the scheduler. Prints TFLOP/s per row (4 * pairs * d per call).
``--chunk-orders plan,rotate,shuffle``: each case also with per-tile chunk lists rotated by the tile's rank in its
stream or shuffled (same pairs, other summation order: do CTAs reading the same K / V chunk at once slow down?).
``--trace N``: N back-to-back calls first, mean TFLOP/s of the first and last tenth (clock drift under the power cap).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from anchors import bench  # noqa: E402

import varblock  # noqa: E402
from varblock import layout as L  # noqa: E402
from varblock.abi import TILE_BATCH, TILE_CHUNK_BEGIN, TILE_HEAD, TILE_N_FULL, TILE_N_LEFT, TILE_N_PARTIAL  # noqa: E402
from varblock.worklist import WorkList  # noqa: E402

plan_host = importlib.import_module("varblock.plan.host")  # varblock.plan is the function
ORIGINAL = plan_host._worklist
TRACE = 0  # --trace N
FIRST_OUT: dict = {}  # case name -> output of its first run (orders change the summation order only)

W1 = [512, 1024, 2048, 4096, 8192, 1536, 3072, 6144]
CASES: list[tuple] = [  # name, lengths, hq, hkv, density, scheduler[, causal]
    ("W2 H16/16", [32768], 16, 16, 1.0, "auto"),
    ("W2 H16/16 persistent", [32768], 16, 16, 1.0, "persistent"),
    ("W2 H16/4 (GQA)", [32768], 16, 4, 1.0, "auto"),
    ("W2 H33/33 (64.0 waves)", [32768], 33, 33, 1.0, "auto"),
    ("W2 H16/16 as 4 x 8k", [8192] * 4, 16, 16, 1.0, "auto"),
    ("W2 H16/16 density 0.5", [32768], 16, 16, 0.5, "auto"),
    ("W1 H32/8", W1, 32, 8, 1.0, "auto"),
    ("W1 H32/32", W1, 32, 32, 1.0, "auto"),
    ("W1 H32/8 density 0.5", W1, 32, 8, 0.5, "auto"),
    ("W1 H32/8 causal", W1, 32, 8, 1.0, "auto", True),
    ("W2 H16/16 density 0.1", [32768], 16, 16, 0.1, "auto"),
]


def run(name: str, lens: list[int], hq: int, hkv: int, density: float, scheduler: str, causal: bool = False, *,
        backend: str, reps: int, chunk_order: str = "plan") -> None:
    d = 128
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    total = int(cu[-1])
    torch.manual_seed(0)
    q = torch.randn(total, hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16)
    lay = L.random_blocks(cu, cu, density=density, num_heads=hkv, head_mode="per_kv_head", seed=1,
                          block_q=128, block_k=128, causal=causal)
    p = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay, backend=backend,
                      scheduler=scheduler, cache=False)
    out = torch.empty_like(q)
    if TRACE:  # back-to-back calls: per-call times over a long run (clock / power drift), then the usual median
        fn = lambda: varblock.attention(q, k, v, p, out=out)  # noqa: E731
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(TRACE + 1)]
        torch.cuda.synchronize()
        ev[0].record()
        for i in range(TRACE):
            fn()
            ev[i + 1].record()
        torch.cuda.synchronize()
        ts = np.array([ev[i].elapsed_time(ev[i + 1]) for i in range(TRACE)])
        tfs = 4.0 * d * lay.num_pairs(hq, hkv) / ts / 1e9
        k10 = max(TRACE // 10, 1)
        print(f"  trace {name}: {TRACE} calls in {ts.sum():.0f} ms, TFLOP/s first {k10}: {tfs[:k10].mean():.1f}, "
              f"last {k10}: {tfs[-k10:].mean():.1f}, max {tfs.max():.1f}, min {tfs.min():.1f}", flush=True)
    ms = bench(lambda: varblock.attention(q, k, v, p, out=out), warmup=3, rep=reps)
    tf = 4.0 * d * lay.num_pairs(hq, hkv) / ms / 1e9
    ref = FIRST_OUT.setdefault(name, out.clone())
    diff = f"max diff vs first {float((out.float() - ref.float()).abs().max()):.1e}"
    print(f"{name:28s} chunks {chunk_order:7s} {ms:8.3f} ms  "
          f"{tf:7.1f} TFLOP/s  {p.scheduler}  {diff}", flush=True)


def reorder_chunks(wl: WorkList, how: str) -> WorkList:
    """``wl`` with a private chunk list per tile of only full chunks, rotated by the tile's rank in its (batch,
    head) stream (``rotate``: CTAs on one stream at one time read different chunks) or shuffled per tile
    (``shuffle``); tiles with partial chunks keep their lists. Same pairs, other summation order."""
    t = wl.tiles.astype(np.int64).copy()
    n = t[:, TILE_N_FULL] + t[:, TILE_N_PARTIAL]
    only_full = (t[:, TILE_N_PARTIAL] == 0) & (t[:, TILE_N_LEFT] == 0)
    key = t[:, TILE_BATCH] * 100000 + t[:, TILE_HEAD]
    order = np.argsort(key, kind="stable")
    rank = np.empty(len(t), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, key[order][1:] != key[order][:-1]])
    rank[order] = np.arange(len(t)) - np.repeat(starts, np.diff(np.r_[starts, len(t)]))
    rng = np.random.default_rng(0)
    parts, begin, pos = [], np.empty(len(t), dtype=np.int64), 0
    for i in range(len(t)):
        idx = t[i, TILE_CHUNK_BEGIN] + np.arange(n[i])
        if only_full[i] and n[i] > 1:
            idx = np.roll(idx, -int(rank[i] % n[i])) if how == "rotate" else rng.permutation(idx)
        parts.append(wl.chunks[idx])
        begin[i], pos = pos, pos + n[i]
    t[:, TILE_CHUNK_BEGIN] = begin
    return dataclasses.replace(wl, tiles=t.astype(np.int32), chunks=np.ascontiguousarray(np.concatenate(parts)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", default="attention_fwd_sm90")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--chunk-orders", default="plan", help="comma-separated: plan, rotate, shuffle")
    ap.add_argument("--cases", default=None, help="comma-separated case numbers (default: all)")
    ap.add_argument("--trace", type=int, default=0, help="also time N back-to-back calls per case (drift)")
    a = ap.parse_args()
    global TRACE
    TRACE = a.trace
    print(torch.cuda.get_device_name())
    cases = CASES if a.cases is None else [CASES[int(i)] for i in a.cases.split(",")]
    for c in cases:
        for how in a.chunk_orders.split(","):
            plan_host._worklist = (lambda *x, _h=how, **k: reorder_chunks(ORIGINAL(*x, **k), _h)) if how != "plan" \
                else ORIGINAL
            run(*c, backend=a.backend, reps=a.reps, chunk_order=how)


if __name__ == "__main__":
    main()
