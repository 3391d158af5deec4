"""W1 host build time stays under the bar (benchmarks/bench_layout.py measures it in detail; ~5 ms here)."""

from __future__ import annotations

import time

import numpy as np

import varblock.layout as vl

W1_SEQLENS = [512, 1024, 2048, 4096, 8192, 1536, 3072, 6144]
BAR_S = 0.050


def test_w1_build_from_dense_block_mask_under_50ms():
    lens = np.array(W1_SEQLENS)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    nb = lens // 128
    seq = np.repeat(np.arange(len(lens)), nb)
    T = int(nb.sum())
    rng = np.random.default_rng(0)
    mask = (rng.random((32, T, T)) < 0.1) & (seq[:, None] == seq[None, :])[None]
    mask[:, np.arange(T), np.arange(T)] = True
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        lay = vl.BlockSparseLayout.from_block_mask(mask, cu, cu, block_q=128, block_k=128)
        rows = lay.rows()
        times.append(time.perf_counter() - t0)
    assert rows.num_rows == 32 * T and rows.num_entries == int(mask.sum())
    assert np.median(times) < BAR_S, f"W1 layout build took {np.median(times) * 1e3:.1f} ms (bar 50 ms)"
