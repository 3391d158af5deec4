"""Attention pooling (SeerAttention gate distillation) time next to the forward's, on workloads W1-W3 of
shared/anchors.md, and against SeerAttention's own Triton kernel when its sources are given.

    PYTHONPATH=src python benchmarks/bench_pooling.py [--workloads W1,W2,W3] [--seer-path DIR] [--block 64]

Dense causal attention (what SeerAttention distils from), bf16, head dim 128, pooling blocks of ``--block`` tokens.
Columns: the varblock forward (with LSE, portable family), ``varblock.attention_pooling`` (1D and 2D maps, from the
forward's LSE), their ratio (bar: pooling <= 0.6 x forward), and with ``--seer-path`` (a checkout of
microsoft/SeerAttention: ``seer_attn/kernels/varlen/attn_pooling_qkv_varlen_1d.py``) SeerAttention's fused
forward + 1D pooling kernel and the speed-up of varblock's forward + pooling over it (bar: >= 1.5x).
CUDA-event median after warm-up.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import WORKLOADS, D, bench  # noqa: E402

import varblock  # noqa: E402

POOL_BAR, SEER_BAR = 0.6, 1.5


def load_seer(path: str | None):
    """SeerAttention's ``attn_pooling_qkv_varlen`` from a local checkout (None when not given)."""
    if not path:
        return None
    f = Path(path) / "seer_attn" / "kernels" / "varlen" / "attn_pooling_qkv_varlen_1d.py"
    spec = importlib.util.spec_from_file_location("seer_pool_1d", f)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.attn_pooling_qkv_varlen


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="W1,W2,W3")
    ap.add_argument("--seer-path", default=None)
    ap.add_argument("--block", type=int, default=64)
    args = ap.parse_args()
    seer = load_seer(args.seer_path)
    bs = args.block
    print(f"{'workload':8} {'fwd ms':>8} {'pool ms':>8} {'pool/fwd':>9} {'seer ms':>8} {'seer/(fwd+pool)':>16}")
    ok = True
    for name in args.workloads.split(","):
        lens, hq, hkv = WORKLOADS[name]
        cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        total = int(cu[-1])
        q, k, v = (torch.randn(total, h, D, device="cuda", dtype=torch.bfloat16) for h in (hq, hkv, hkv))
        plan = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=D, causal=True,
                             backend="attention_fwd_mma")
        out, lse = varblock.attention(q, k, v, plan, return_lse=True)
        t_fwd = bench(lambda: varblock.attention(q, k, v, plan, out=out, lse=lse, return_lse=True))
        t_pool = bench(lambda: varblock.attention_pooling(q, k, lse, plan, block_q=bs, block_k=bs,
                                                          per_sequence=False))
        ratio = t_pool / t_fwd
        ok &= ratio <= POOL_BAR
        seer_txt = speed_txt = "n/a"
        if seer is not None:
            cu_t = torch.from_numpy(cu).cuda()
            t_seer = bench(lambda: seer(q, k, v, cu_t, max(lens), D ** -0.5, bs))
            speed = t_seer / (t_fwd + t_pool)
            ok &= speed >= SEER_BAR
            seer_txt, speed_txt = f"{t_seer:.3f}", f"{speed:.2f}x"
        print(f"{name:8} {t_fwd:8.3f} {t_pool:8.3f} {ratio:9.2f} {seer_txt:>8} {speed_txt:>16}")
    print(f"bars: pooling <= {POOL_BAR} x forward; varblock forward + pooling >= {SEER_BAR}x SeerAttention -> "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
