"""Forward throughput on shape variants of W1 / W2, to separate the causes of a gap (GPU machine).

    PYTHONPATH=src python tools/fwd_shapes.py [--backend attention_fwd_sm90] [--reps 10]

Each row changes one thing against W2 (1 x 32k, H16, d128, dense, non-causal): the KV head count (K/V traffic
per FLOP), the head count (the last wave's fill: 4096 tiles are 31.03 waves of 132 CTAs, 8448 tiles 64.0), the
sequence split (tile length) and the scheduler. Prints TFLOP/s per row (4 * pairs * d per call).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from anchors import bench  # noqa: E402

import varblock  # noqa: E402
from varblock import layout as L  # noqa: E402

W1 = [512, 1024, 2048, 4096, 8192, 1536, 3072, 6144]
CASES = [  # name, lengths, hq, hkv, density, scheduler
    ("W2 H16/16", [32768], 16, 16, 1.0, "auto"),
    ("W2 H16/16 persistent", [32768], 16, 16, 1.0, "persistent"),
    ("W2 H16/4 (GQA)", [32768], 16, 4, 1.0, "auto"),
    ("W2 H33/33 (64.0 waves)", [32768], 33, 33, 1.0, "auto"),
    ("W2 H16/16 as 4 x 8k", [8192] * 4, 16, 16, 1.0, "auto"),
    ("W2 H16/16 density 0.5", [32768], 16, 16, 0.5, "auto"),
    ("W1 H32/8", W1, 32, 8, 1.0, "auto"),
    ("W1 H32/32", W1, 32, 32, 1.0, "auto"),
]


def run(name: str, lens: list[int], hq: int, hkv: int, density: float, scheduler: str, backend: str,
        reps: int) -> None:
    d = 128
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    total = int(cu[-1])
    q = torch.randn(total, hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16)
    lay = L.random_blocks(cu, cu, density=density, num_heads=hkv, head_mode="per_kv_head", seed=1,
                          block_q=128, block_k=128)
    p = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay, backend=backend,
                      scheduler=scheduler)
    out = torch.empty_like(q)
    ms = bench(lambda: varblock.attention(q, k, v, p, out=out), warmup=3, rep=reps)
    tf = 4.0 * d * lay.num_pairs(hq, hkv) / ms / 1e9
    print(f"{name:28s} {ms:8.3f} ms  {tf:7.1f} TFLOP/s  {p.scheduler}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", default="attention_fwd_sm90")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    print(torch.cuda.get_device_name())
    for c in CASES:
        run(*c, backend=a.backend, reps=a.reps)


if __name__ == "__main__":
    main()
