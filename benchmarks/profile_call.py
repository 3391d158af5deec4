"""cProfile of cached-plan varblock.attention calls (host side)."""

from __future__ import annotations

import cProfile
import pstats
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import varblock  # noqa: E402


def main():
    cu = np.array([0, 128, 384], np.int32)
    q = torch.randn(384, 8, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(384, 2, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    p = varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=128, causal=True)
    out = varblock.attention(q, k, v, p)
    lse = torch.empty(8, 384, device="cuda")
    for _ in range(100):
        varblock.attention(q, k, v, p, out=out, lse=lse)
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(2000):
        varblock.attention(q, k, v, p, out=out, lse=lse)
    pr.disable()
    torch.cuda.synchronize()
    pstats.Stats(pr).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
