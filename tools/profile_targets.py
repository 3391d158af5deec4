"""One benchmark cell per invocation, for profiling under ncu (the cells where a bar is short).

    PYTHONPATH=src python tools/profile_targets.py CASE [--calls 6]

Each case builds its inputs, warms up once, then runs ``--calls`` more calls of the op, then one call inside
the NVTX range ``target`` (profile it with ``ncu --nvtx --nvtx-include "target/"``). Cases:

* ``fwd_w2`` / ``fwd_w2_01`` / ``fwd_w1`` / ``fwd_w1_causal``: the sm90 forward, W2 dense / density 0.1, W1 dense
  and causal dense (d128); ``fwd_w1_d64_05`` (d64, density 0.5), ``fwd_w1_64x64_05`` (64x64 blocks, causal, density
  0.5), ``fwd_vb_05`` (bench_attention's variable blocks, density 0.5)
* ``decode_128k`` / ``decode_128k_025`` / ``decode_2k_025``: block-sparse decode, Hq64/Hkv8, 64-token blocks
* ``fa4_w2`` / ``vb_w2`` / ``fa4_w1`` / ``vb_w1``: FA4's and varblock's sm90 forward on bench_attention's own W2 / W1
  dense point (FA4 must be importable: tools/fa4_env.sh)
* ``layout_w1``: the device-side layout build for W1 at density 0.1 (every kernel of one rebuild)
* ``bwd_w2`` / ``bwd_w2_det``: the backward on W2 dense, default and deterministic
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import varblock  # noqa: E402
from varblock import layout as L  # noqa: E402

W = {"W1": ([512, 1024, 2048, 4096, 8192, 1536, 3072, 6144], 32, 8), "W2": ([32768], 16, 16)}


def _fwd_inputs(wname: str, density: float, causal: bool, d: int = 128, block: int = 128):
    if wname == "VB":
        return _vb_inputs(density)
    lens, hq, hkv = W[wname]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    total = int(cu[-1])
    q = torch.randn(total, hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16)
    lay = L.random_blocks(cu, cu, density=density, num_heads=hkv, head_mode="per_kv_head", causal=causal, seed=1,
                          block_q=block, block_k=block)
    return cu, hq, hkv, d, lay, q, k, v


def _vb_inputs(density: float):
    import bench_attention as ba

    cu = ba.cu_seqlens("VB")
    _, hq, hkv = ba.WORKLOADS["VB"]
    total, d = int(cu[-1]), 128
    lay = ba.variable_layout(total, hkv, density)
    q = torch.randn(total, hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16)
    return cu, hq, hkv, d, lay, q, k, v


def forward(wname: str, density: float, causal: bool, d: int = 128, block: int = 128):
    cu, hq, hkv, d, lay, q, k, v = _fwd_inputs(wname, density, causal, d, block)
    p = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay, backend="attention_fwd_sm90")
    out = torch.empty_like(q)
    print(f"plan family {p.family}, tiles {p.num_tiles if hasattr(p, 'num_tiles') else '?'}", flush=True)
    return lambda: varblock.attention(q, k, v, p, out=out)


def backward(deterministic: bool):
    cu, hq, hkv, d, lay, q, k, v = _fwd_inputs("W2", 1.0, False)
    p = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay)
    out, lse = varblock.attention(q, k, v, p, return_lse=True)
    dout = torch.randn_like(out)
    return lambda: varblock.attention_backward(dout, q, k, v, out, lse, p, deterministic=deterministic)


def decode(B: int, Lk: int, density: float):
    import bench_decode as bd

    rng = np.random.default_rng(0)
    pages = B * Lk // bd.PAGE
    k = torch.randn(pages, bd.PAGE, bd.HKV, bd.D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    pt = torch.from_numpy(rng.permutation(pages).astype(np.int32).reshape(B, Lk // bd.PAGE)).cuda()
    q = torch.randn(B, bd.HQ, bd.D, device="cuda", dtype=torch.bfloat16)
    cu_q = np.arange(B + 1, dtype=np.int32)
    lay = bd._layout(rng, B, Lk, density)
    plan = varblock.plan_decode(cu_q, kv_lens=np.full(B, Lk), page_table=pt, page_size=bd.PAGE, num_heads_q=bd.HQ,
                                num_heads_kv=bd.HKV, head_dim=bd.D, layout=lay)
    print(f"decode items {plan.num_items}", flush=True)
    out = torch.empty_like(q)
    return lambda: varblock.decode(q, k, v, plan, out=out)


def layout_w1():
    import bench_layout as bl

    from varblock import device_layout

    mask_packed, cu = bl.w1_block_mask(32, 0.1)
    lens, nb = np.diff(cu), np.diff(cu) // 128
    cu_nb = np.concatenate([[0], np.cumsum(nb)])
    mb = int(nb.max())
    padded = np.zeros((len(lens), 32, mb, mb), bool)
    for b in range(len(lens)):
        padded[b, :, : nb[b], : nb[b]] = mask_packed[:, cu_nb[b]:cu_nb[b + 1], cu_nb[b]:cu_nb[b + 1]]
    m, c = torch.from_numpy(padded).cuda(), torch.from_numpy(cu).cuda()
    st = torch.cuda.current_stream()
    plan = varblock.plan_device(mask=m, cu_seqlens_q=c, num_heads_q=32, num_heads_kv=8, head_dim=128, stream=st)
    return lambda: device_layout.rebuild(plan, mask=m, cu_seqlens_q=c, stream=st)


def bench_point(system: str, wname: str, density: float):
    """One system on bench_attention's own point (same layout and tensors as its table): ``fa4`` (FA4's block-sparse
    varlen forward, JIT-compiled by the first call) or ``vb`` (varblock's sm90 family)."""
    import bench_attention as ba

    cell = ba.Cell(wname, False, (density,), 128, 128)
    pt = ba.make_point(cell, density, on_gpu=True)
    if system == "fa4":
        import anchors

        return ba.run_fa4(pt, anchors.load_fa4()[0])
    q, k, v, _, _ = pt.tensors
    cu = ba.cu_seqlens(wname)
    p = varblock.plan(cu, cu, num_heads_q=pt.hq, num_heads_kv=pt.hkv, head_dim=128, layout=pt.layout,
                      backend="attention_fwd_sm90")
    out = torch.empty_like(q)
    return lambda: varblock.attention(q, k, v, p, out=out)


CASES = {
    "fa4_w2": lambda: bench_point("fa4", "W2", 1.0),
    "vb_w2": lambda: bench_point("vb", "W2", 1.0),
    "fa4_w1": lambda: bench_point("fa4", "W1", 1.0),
    "vb_w1": lambda: bench_point("vb", "W1", 1.0),
    "fwd_w2": lambda: forward("W2", 1.0, False),
    "fwd_w2_01": lambda: forward("W2", 0.1, False),
    "fwd_w1": lambda: forward("W1", 1.0, False),
    "fwd_w1_d64_05": lambda: forward("W1", 0.5, False, d=64),
    "fwd_w1_64x64_05": lambda: forward("W1", 0.5, True, block=64),
    "fwd_vb_05": lambda: forward("VB", 0.5, False),
    "fwd_w1_causal": lambda: forward("W1", 1.0, True),
    "decode_128k": lambda: decode(1, 131072, 1.0),
    "decode_128k_025": lambda: decode(1, 131072, 0.25),
    "decode_2k_025": lambda: decode(256, 2048, 0.25),
    "layout_w1": layout_w1,
    "bwd_w2": lambda: backward(False),
    "bwd_w2_det": lambda: backward(True),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--calls", type=int, default=6)
    args = ap.parse_args()
    torch.manual_seed(0)
    fn = CASES[args.case]()
    fn()
    torch.cuda.synchronize()
    for _ in range(args.calls):
        fn()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("target")  # ncu --nvtx --nvtx-include "target/" profiles this call's kernels only
    fn()
    torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    print(f"{args.case}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
