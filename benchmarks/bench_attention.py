"""Forward attention, varblock vs FlexAttention, side by side in one run (workloads W1-W3 of shared/anchors.md).

    python benchmarks/bench_attention.py [--workloads W1,W2,W3] [--densities 1.0,0.5,0.1] [--no-flex]

Random 128x128 blocks at the given density (diagonal always kept), shared by the query heads of a GQA group, bf16,
head dim 128. TFLOP/s count computed pairs only (4 * D per pair; a causal diagonal block counts its allowed pairs,
about half). CUDA-event median after warm-up. Prints one table; the last column is FlexAttention time / varblock
time (> 1: varblock is faster). Also checks that on W2 the time at density 0.1 is at most 0.15 x the time at 1.0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import varblock  # noqa: E402
from varblock import layout as L  # noqa: E402

WORKLOADS = {
    "W1": ([512, 1024, 2048, 4096, 8192, 1536, 3072, 6144], 32, 8),
    "W2": ([32768], 16, 16),
    "W3": ([512] * 64, 16, 16),
}
D = 128
BS = 128


def bench(fn, warmup=3, rep=15) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return float(np.median(times))


def flex_block_mask(lay, hq: int, hkv: int, total: int, causal: bool):
    """FlexAttention BlockMask over the packed sequence, from the layout's rows (128-aligned sequences)."""
    from torch.nn.attention.flex_attention import BlockMask

    rs = lay.rows()
    nb = total // BS
    cu_q = lay.cu_seqlens_q.astype(np.int64) // BS
    cu_k = lay.cu_seqlens_k.astype(np.int64) // BS
    counts = np.diff(rs.ent_ptr)
    e_row = np.repeat(np.arange(rs.num_rows), counts)
    gq = cu_q[rs.batch[e_row]] + rs.q_start[e_row] // BS
    gk = cu_k[rs.batch[e_row]] + rs.k_start // BS
    full = lay.entry_is_full()
    group = hq // hkv
    heads = np.arange(hq)
    hl_of = {"per_q_head": heads, "per_kv_head": heads // group, "broadcast": np.zeros_like(heads)}[lay.head_mode]

    def lists(sel):
        cnt = np.zeros((lay.num_heads, nb), np.int32)
        idx = np.zeros((lay.num_heads, nb, nb), np.int32)
        hl, r, c = rs.head[e_row[sel]], gq[sel], gk[sel]
        order = np.lexsort((c, r, hl))
        hl, r, c = hl[order], r[order], c[order]
        np.add.at(cnt, (hl, r), 1)
        flat = hl * nb + r
        first = np.r_[0, np.flatnonzero(np.diff(flat)) + 1]
        pos = np.arange(flat.size) - np.repeat(first, np.diff(np.r_[first, flat.size]))
        idx[hl, r, pos] = c
        t = lambda a: torch.from_numpy(a[hl_of][None]).cuda()  # noqa: E731
        return t(cnt), t(idx)

    full_cnt, full_idx = lists(full)
    part_cnt, part_idx = lists(~full)
    mask_mod = (lambda b, h, qi, ki: qi >= ki) if causal else None
    if mask_mod is None:
        return BlockMask.from_kv_blocks(part_cnt, part_idx, full_cnt, full_idx, BLOCK_SIZE=BS,
                                        seq_lengths=(total, total))
    return BlockMask.from_kv_blocks(part_cnt, part_idx, full_cnt, full_idx, BLOCK_SIZE=BS, mask_mod=mask_mod,
                                    seq_lengths=(total, total))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="W1,W2,W3")
    ap.add_argument("--densities", default="1.0,0.5,0.1")
    ap.add_argument("--no-flex", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, varblock {varblock.__version__}", flush=True)
    flex = None
    if not args.no_flex:
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False)
    rows, w2 = [], {}
    for wname in args.workloads.split(","):
        lens, hq, hkv = WORKLOADS[wname]
        cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        total = int(cu[-1])
        q = torch.randn(total, hq, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(total, hkv, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(total, hkv, D, device="cuda", dtype=torch.bfloat16)
        for causal in (False, True):
            for density in (float(x) for x in args.densities.split(",")):
                lay = L.random_blocks(cu, cu, density=density, num_heads=hkv, head_mode="per_kv_head",
                                      causal=causal, seed=1, block_q=BS, block_k=BS)
                p = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=D, layout=lay)
                out = torch.empty_like(q)
                t_vb = bench(lambda p=p, out=out: varblock.attention(q, k, v, p, out=out))
                flops = p.flops()
                t_fx = float("nan")
                if flex is not None:
                    try:
                        bm = flex_block_mask(lay, hq, hkv, total, causal)
                        qf, kf, vf = (x.transpose(0, 1)[None] for x in (q, k, v))
                        t_fx = bench(lambda bm=bm: flex(qf, kf, vf, block_mask=bm, enable_gqa=hq != hkv))
                    except Exception as ex:  # report, keep going
                        print(f"flex failed on {wname} causal={causal} density={density}: {ex}", flush=True)
                rows.append((wname, causal, density, t_vb, flops / t_vb / 1e9, t_fx, flops / t_fx / 1e9,
                             t_fx / t_vb))
                print("%-3s causal=%-5s density=%.1f  varblock %8.3f ms %6.1f TFLOP/s   flex %8.3f ms %6.1f TFLOP/s"
                      "   flex/varblock %.2f" % rows[-1], flush=True)
                if wname == "W2" and not causal:
                    w2[density] = t_vb
    print("\n| workload | causal | density | varblock ms | varblock TFLOP/s | flex ms | flex TFLOP/s | flex/varblock |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| %s | %s | %.1f | %.3f | %.1f | %.3f | %.1f | %.2f |" % r)
    if 1.0 in w2 and 0.1 in w2:
        ratio = w2[0.1] / w2[1.0]
        print(f"\nW2 non-causal: time(density 0.1) / time(density 1.0) = {ratio:.3f} (bar: <= 0.15) -> "
              f"{'OK' if ratio <= 0.15 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
