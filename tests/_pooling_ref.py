"""Float64 reference of ``varblock.attention_pooling(..., pool_gqa=True)``, shared by the GPU test and the CPU test
with the device simulated (so CI exercises it): built from ``varblock.reference.attention_pooling_1d``; and the
case grid both pooling families' GPU tests check against the reference (``reference_grid``, ``grid_layout``)."""

from __future__ import annotations

import numpy as np
import pytest

from varblock import layout as L

LENS = [1, 3, 113, 0, 1023, 200, 64]  #: the pooling GPU tests' sequence lengths (odd, empty, one token)


def reference_grid(fn):
    """Parametrize a test over dtype x head dim x causal x density (the pooling GPU tests' reference grid)."""
    for name, values in (("density", [1.0, 0.3]), ("causal", [False, True]), ("d", [64, 128]),
                         ("dtype", ["bfloat16", "float16"])):
        fn = pytest.mark.parametrize(name, values)(fn)
    return fn


def grid_layout(d: int, causal: bool, density: float) -> L.BlockSparseLayout:
    """The grid's layout: random 64 x 64 blocks over ``LENS``, one per query head of 8."""
    cu = np.concatenate([[0], np.cumsum(LENS)]).astype(np.int32)
    return L.random_blocks(cu, cu, density=density, num_heads=8, head_mode="per_q_head", causal=causal,
                           block_q=64, block_k=64, seed=d)


def group_pooling_ref(p1: np.ndarray, lay, group: int, bq: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps pooled over GQA groups from the reference 1D map ``p1 [Hq, total_q, nb]``: 1D = max over each group's
    heads ``[Hq / group, total_q, nb]``; 2D ``[B, Hq / group, max M_b, nb]`` = that 1D's max over each query block
    of ``bq`` tokens, every block row divided by its sum (rows with nothing attended stay 0)."""
    hq, total, nb = p1.shape
    g1 = p1.reshape(hq // group, group, total, nb).max(axis=1)
    lq = lay.seqlens_q.astype(np.int64)
    mb = int((-(-lq // bq)).max(initial=0))
    out = np.zeros((lay.batch_size, hq // group, mb, nb))
    cu = lay.cu_seqlens_q.astype(np.int64)
    for b in range(lay.batch_size):
        for m in range(-(-int(lq[b]) // bq)):
            out[b, :, m] = g1[:, cu[b] + m * bq: min(cu[b] + (m + 1) * bq, cu[b + 1])].max(axis=1)
    s = out.sum(axis=3, keepdims=True)
    return g1, np.where(s > 0, out / np.where(s > 0, s, 1.0), 0.0)
