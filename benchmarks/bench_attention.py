"""Forward attention, varblock vs FlexAttention, side by side in one run (workloads W1-W3 of shared/anchors.md).

    python benchmarks/bench_attention.py [--workloads W1,W2,W3] [--densities 1.0,0.5,0.1] [--no-flex]
                                         [--backends attention_fwd_mma,attention_fwd_sm90] [--head-dim 128]
                                         [--block 128]

Random ``block`` x ``block`` blocks at the given density (diagonal always kept), shared by the query heads of a GQA
group, bf16. One column per varblock kernel family (``--backends``, default every ``attention_fwd`` family; a family
that declines a problem shows its reason once and n/a). TFLOP/s count computed pairs only (4 * D per pair; a causal
diagonal block counts its allowed pairs, about half). CUDA-event median after warm-up. Prints one table; the last
column is FlexAttention time / the fastest varblock family's time (> 1: varblock is faster). Also checks that on W2
the time at density 0.1 is at most 0.15 x the time at 1.0 (for each family).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from anchors import bench  # noqa: E402,F401  (re-exported: bench_backward / bench_pooling import it from here)

import varblock  # noqa: E402
from varblock import layout as L  # noqa: E402

WORKLOADS = {
    "W1": ([512, 1024, 2048, 4096, 8192, 1536, 3072, 6144], 32, 8),
    "W2": ([32768], 16, 16),
    "W3": ([512] * 64, 16, 16),
}
D = 128
BS = 128


def flex_block_mask(lay, hq: int, hkv: int, total: int, causal: bool, bs: int = BS):
    """FlexAttention BlockMask over the packed sequence, from the layout's rows (``bs``-aligned sequences)."""
    from torch.nn.attention.flex_attention import BlockMask

    rs = lay.rows()
    nb = total // bs
    cu_q = lay.cu_seqlens_q.astype(np.int64) // bs
    cu_k = lay.cu_seqlens_k.astype(np.int64) // bs
    counts = np.diff(rs.ent_ptr)
    e_row = np.repeat(np.arange(rs.num_rows), counts)
    gq = cu_q[rs.batch[e_row]] + rs.q_start[e_row] // bs
    gk = cu_k[rs.batch[e_row]] + rs.k_start // bs
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
        return BlockMask.from_kv_blocks(part_cnt, part_idx, full_cnt, full_idx, BLOCK_SIZE=bs,
                                        seq_lengths=(total, total))
    return BlockMask.from_kv_blocks(part_cnt, part_idx, full_cnt, full_idx, BLOCK_SIZE=bs, mask_mod=mask_mod,
                                    seq_lengths=(total, total))


def _time_family(backend, cu, hq, hkv, d, lay, q, k, v, declined):
    """(ms, plan) of one varblock family on one problem, or (nan, None) when it declines (reason kept once)."""
    try:
        p = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay, backend=backend)
    except ValueError as ex:
        if backend not in declined:
            declined[backend] = str(ex)
            print(f"{backend} declined: {ex}", flush=True)
        return float("nan"), None
    out = torch.empty_like(q)
    return bench(lambda: varblock.attention(q, k, v, p, out=out)), p


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="W1,W2,W3")
    ap.add_argument("--densities", default="1.0,0.5,0.1")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--backends", default=",".join(varblock.families.family_names("attention_fwd")))
    ap.add_argument("--head-dim", type=int, default=D)
    ap.add_argument("--block", type=int, default=BS, help="block size of the random layouts (and of FlexAttention)")
    args = ap.parse_args()
    backends = args.backends.split(",")
    d, bs = args.head_dim, args.block
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, varblock {varblock.__version__}, d{d}, "
          f"blocks {bs}x{bs}", flush=True)
    flex = None
    if not args.no_flex:
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False)
    rows, w2, declined = [], {}, {}
    for wname in args.workloads.split(","):
        lens, hq, hkv = WORKLOADS[wname]
        cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        total = int(cu[-1])
        q = torch.randn(total, hq, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16)
        for causal in (False, True):
            for density in (float(x) for x in args.densities.split(",")):
                lay = L.random_blocks(cu, cu, density=density, num_heads=hkv, head_mode="per_kv_head",
                                      causal=causal, seed=1, block_q=bs, block_k=bs)
                flops, cells = float("nan"), []
                for b in backends:
                    t, p = _time_family(b, cu, hq, hkv, d, lay, q, k, v, declined)
                    if p is not None:
                        flops = p.flops()
                    cells.append(t)
                t_fx = float("nan")
                if flex is not None:
                    try:
                        bm = flex_block_mask(lay, hq, hkv, total, causal, bs)
                        qf, kf, vf = (x.transpose(0, 1)[None] for x in (q, k, v))
                        t_fx = bench(lambda bm=bm: flex(qf, kf, vf, block_mask=bm, enable_gqa=hq != hkv))
                    except Exception as ex:  # report, keep going
                        print(f"flex failed on {wname} causal={causal} density={density}: {ex}", flush=True)
                best = min((t for t in cells if t == t), default=float("nan"))
                rows.append((wname, causal, density, [(t, flops / t / 1e9) for t in cells], t_fx,
                             flops / t_fx / 1e9, t_fx / best))
                fams = "   ".join(f"{b} {t:8.3f} ms {tf:6.1f} TFLOP/s" for b, (t, tf) in zip(backends, rows[-1][3]))
                print(f"{wname:3s} causal={causal!s:5s} density={density:.1f}  {fams}   flex {t_fx:8.3f} ms "
                      f"{rows[-1][5]:6.1f} TFLOP/s   flex/varblock {rows[-1][6]:.2f}", flush=True)
                if wname == "W2" and not causal:
                    w2[density] = cells
    heads = " | ".join(f"{b} ms | {b} TFLOP/s" for b in backends)
    print(f"\n| workload | causal | density | {heads} | flex ms | flex TFLOP/s | flex/best varblock |")
    print("|---|---|---:|" + "---:|" * (2 * len(backends) + 3))
    for wname, causal, density, cells, t_fx, tf_fx, ratio in rows:
        fams = " | ".join(f"{t:.3f} | {tf:.1f}" for t, tf in cells)
        print(f"| {wname} | {causal} | {density:.1f} | {fams} | {t_fx:.3f} | {tf_fx:.1f} | {ratio:.2f} |")
    if 1.0 in w2 and 0.1 in w2:
        for b, t1, t01 in zip(backends, w2[1.0], w2[0.1]):
            ratio = t01 / t1
            print(f"\nW2 non-causal {b}: time(density 0.1) / time(density 1.0) = {ratio:.3f} (bar: <= 0.15) -> "
                  f"{'OK' if ratio <= 0.15 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
