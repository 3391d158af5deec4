"""Exact NumPy model of the device layout kernels for a SeerAttention 1D token mask ``[Bm, H, T, NB]`` (bool,
query token x key block of ``block_k`` tokens, padded per sequence): the ``pack`` kernel (the token mask in the
forward kernels' packed form ``[H, cap, NB]``, ``cap = B * T``) and the ``cells`` kernel's token variant (a block
pair is kept when some query token of the block selects the key block, full when every token does and the band
allows every pair, as ``layout.from_seer_1d``). Scan and fill are :mod:`varblock.device_layout.model`'s."""

from __future__ import annotations

from typing import Any

import numpy as np

from varblock.device_layout.model import (
    Cells,
    DeviceLayoutArrays,
    Geometry,
    _cdiv,
    _seq_lengths,
    band_classes,
    cells_from_classes,
    check_geometry,
    fill,
    scan,
)


def pack_token_mask(tm: np.ndarray, cu_q: np.ndarray, cu_k: np.ndarray, g: Geometry) -> np.ndarray:
    """The packed token mask ``uint8 [H, B * T, NB]``: ``packed[h, cu_q[b] + t, n] = tm[b or 0, h, t, n]`` for
    ``t < len_q_b`` and ``n < N_b`` (other cells 0); tokens beyond the buffer (a too-short ``T``) are not written."""
    a = np.asarray(tm).astype(np.uint8)
    Bm, H, T, NB = a.shape
    cap = g.batch * T
    out = np.zeros((H, cap, NB), np.uint8)
    cq = cu_q.astype(np.int64)
    lq, lk, _ = _seq_lengths(cq, cu_k.astype(np.int64))
    nblk = _cdiv(lk, g.block_k)
    for b in range(g.batch):
        n_t = int(min(lq[b], T))
        lo, hi = int(cq[b]), int(cq[b]) + n_t
        if n_t == 0 or lo < 0 or lo >= cap:
            continue
        hi = min(hi, cap)
        out[:, lo:hi, :] = a[min(b, Bm - 1), :, : hi - lo, :] * (np.arange(NB) < nblk[b])[None, None, :]
    return out


def token_cells(tm: np.ndarray, cu_q: np.ndarray, cu_k: np.ndarray, g: Geometry) -> Cells:
    """Stage 1 for a token mask: per cell, any / all over the query block's tokens, then the band."""
    a = np.asarray(tm).astype(np.bool_)
    Bm, H, T, NB = a.shape
    B, MB, bq = g.batch, g.mb, g.block_q
    lq, _, _ = _seq_lengths(cu_q.astype(np.int64), cu_k.astype(np.int64))
    any_ = np.zeros((H, B, MB, NB), np.bool_)
    all_ = np.zeros((H, B, MB, NB), np.bool_)
    for b in range(B):
        src = a[min(b, Bm - 1)]  # [H, T, NB]
        for m in range(MB):
            t0, t1 = m * bq, min((m + 1) * bq, int(lq[b]), T)
            if t1 > t0:
                any_[:, b, m] = src[:, t0:t1].any(axis=1)
                all_[:, b, m] = src[:, t0:t1].all(axis=1)
    cls = band_classes(any_, all_, cu_q, cu_k, g)
    return cells_from_classes(cls, np.full(H * B * MB, -1, np.int64), cu_q, cu_k, g)


def build_from_token_mask(tm: Any, cu_q: Any, cu_k: Any, g: Geometry) -> tuple[DeviceLayoutArrays, np.ndarray]:
    """All stages for a token mask: the tables and the packed token mask (``g.q_tokens`` = T)."""
    check_geometry(g)
    cq = np.asarray(cu_q).astype(np.int64).reshape(-1)
    ck = np.asarray(cu_k).astype(np.int64).reshape(-1)
    packed = pack_token_mask(np.asarray(tm), cq, ck, g)
    cells = token_cells(np.asarray(tm), cq, ck, g)
    return fill(cells, scan(cells, cq, ck, g), cq, ck, g), packed
