#!/usr/bin/env python3
"""Fingerprints (SHA-256 of the output and LSE bytes) of the forward on fixed inputs, to prove that a refactor keeps
results bit-identical: run it before and after on the same GPU and compare the JSON.

    PYTHONPATH=src python tools/fwd_fingerprint.py > before.json
    PYTHONPATH=src python tools/fwd_fingerprint.py --compare before.json      # exit 1 on any difference

Inputs are drawn on the CPU from fixed seeds (identical on every run); only the public API is used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import numpy as np


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def cases():
    from varblock import layout as L

    lens = [1, 3, 113, 0, 1023, 200]
    cu = _cu(lens)
    cu_k = _cu([5, 1, 300, 0, 64, 999])
    rng = np.random.default_rng(0)
    t = max(lens)
    m1d = rng.random((len(lens), 2, t, (t + 63) // 64)) < 0.4
    doc = np.concatenate([np.repeat(np.arange(3), [n // 3, n // 3, n - 2 * (n // 3)]) for n in lens]).astype(np.int32)
    row = np.array([[100, 28, 300], [128, 128, 172]])
    col = np.array([[64, 200, 164], [1, 255, 172]])
    out = []
    for d in (64, 96, 128, 192, 256):
        for causal in (False, True):
            out.append((f"dense d{d} causal={causal}", cu, cu, None, 8, 2, d, {"causal": causal}))
    out += [
        ("window", cu, cu, None, 4, 4, 128, {"causal": True, "window": (100, 0)}),
        ("random per_kv_head", cu, cu, L.random_blocks(cu, cu, density=0.5, num_heads=2, head_mode="per_kv_head",
                                                        causal=True, seed=1), 8, 2, 128, {}),
        ("random per_q_head q!=k", cu, cu_k, L.random_blocks(cu, cu_k, density=0.5, num_heads=4,
                                                             head_mode="per_q_head", causal=True, seed=2,
                                                             block_q=64, block_k=64), 4, 1, 64, {}),
        ("document", cu, cu, L.document(cu, cu, doc_ids_q=doc, causal=True, num_heads=1), 4, 2, 128, {}),
        ("seer 1d", cu, cu, L.from_seer_1d(m1d, cu, cu, block_size=64, head_mode="per_kv_head"), 8, 2, 128, {}),
        ("flashinfer", _cu([428]), _cu([428]), L.from_flashinfer(np.random.default_rng(2).random((2, 3, 3)) < 0.6,
                                                                 row, col, _cu([428]), _cu([428])), 4, 2, 96, {}),
    ]
    return out


def fingerprints(backend: str) -> dict[str, str]:
    """Fingerprints of every case with forward family ``backend`` (the portable one's baseline predates the
    dispatcher)."""
    import torch

    import varblock

    res = {}
    for i, (name, cq, ck, lay, hq, hkv, d, kw) in enumerate(cases()):
        g = torch.Generator().manual_seed(1000 + i)
        q = torch.randn(int(cq[-1]), hq, d, generator=g).to(torch.bfloat16).cuda()
        k = torch.randn(int(ck[-1]), hkv, d, generator=g).to(torch.bfloat16).cuda()
        v = torch.randn(int(ck[-1]), hkv, d, generator=g).to(torch.bfloat16).cuda()
        for sched in ("single", "persistent"):
            p = varblock.plan(cq, ck, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay, scheduler=sched,
                              cache=False, backend=backend, **kw)
            o, lse = varblock.attention(q, k, v, p, return_lse=True)
            torch.cuda.synchronize()
            h = hashlib.sha256(o.view(torch.int16).cpu().numpy().tobytes())
            h.update(lse.cpu().numpy().tobytes())
            res[f"{name} [{sched}]"] = h.hexdigest()[:16]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--compare", default=None, help="JSON written by an earlier run")
    ap.add_argument("--backend", default="attention_fwd_mma", help="forward kernel family to fingerprint")
    args = ap.parse_args()
    fp = fingerprints(args.backend)
    if args.compare is None:
        print(json.dumps(fp, indent=1))
        return 0
    before = json.load(open(args.compare))
    diff = [k for k in before if fp.get(k) != before[k]]
    for k in diff:
        print(f"DIFFERS: {k}: {before[k]} -> {fp.get(k)}")
    print(f"fingerprints: {len(before) - len(diff)}/{len(before)} bit-identical")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
