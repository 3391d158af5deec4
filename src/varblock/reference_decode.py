"""Float64 NumPy reference of ``varblock.decode``: paged or contiguous caches, 1-16 new tokens, kept KV blocks.

Independent of the kernel's work list: it gathers each sequence's keys from the cache (through the page table)
and applies the layout's kept blocks and the causal rule element by element.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from varblock.layout.decode import DecodeLayout
from varblock.runtime.frameworks import to_host


def _f64(x: Any, name: str) -> np.ndarray:
    return np.asarray(to_host(x, name), dtype=np.float64)


def gather_kv(cache: np.ndarray, b: int, kv_len: int, *, page_table: np.ndarray | None,
              cu_seqlens_k: np.ndarray | None) -> np.ndarray:
    """The ``[kv_len, Hkv, D]`` keys (or values) of sequence ``b``."""
    if page_table is None:
        s = int(cu_seqlens_k[b])
        return cache[s:s + kv_len]
    ps = cache.shape[1]
    j = np.arange(kv_len)
    return cache[page_table[b, j // ps], j % ps]


def allowed_keys(layout: DecodeLayout | None, b: int, hq: int, group: int, kv_len: int) -> np.ndarray:
    """bool ``[kv_len]``: keys of sequence ``b`` in query head ``hq``'s kept blocks."""
    if layout is None:
        return np.ones(kv_len, dtype=bool)
    h = hq // group if layout.head_mode == "per_kv_head" else hq
    keep = np.zeros(kv_len, dtype=bool)
    for blk in layout.row(b, h):
        keep[int(blk) * layout.block_size:(int(blk) + 1) * layout.block_size] = True
    return keep


def decode(q: Any, k_cache: Any, v_cache: Any, *, cu_seqlens_q: Any, kv_lens: Any = None, page_table: Any = None,
           cu_seqlens_k: Any = None, layout: DecodeLayout | None = None, causal: bool = True,
           softmax_scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(out [total_q, Hq, D], lse [Hq, total_q])`` in float64; rows with no allowed key give 0 and -inf."""
    qq = _f64(q, "q")
    kc, vc = _f64(k_cache, "k_cache"), _f64(v_cache, "v_cache")
    cu_q = np.asarray(to_host(cu_seqlens_q, "cu_seqlens_q")).astype(np.int64)
    pt = None if page_table is None else np.asarray(to_host(page_table, "page_table")).astype(np.int64)
    cu_k = None if cu_seqlens_k is None else np.asarray(to_host(cu_seqlens_k, "cu_seqlens_k")).astype(np.int64)
    kv = np.diff(cu_k) if kv_lens is None else np.asarray(to_host(kv_lens, "kv_lens")).astype(np.int64)
    total_q, hq, d = qq.shape
    hkv = kc.shape[-2]
    g = hq // hkv
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else float(softmax_scale)
    out = np.zeros((total_q, hq, d))
    lse = np.full((hq, total_q), -np.inf)
    for b in range(cu_q.shape[0] - 1):
        q0, n = int(cu_q[b]), int(cu_q[b + 1] - cu_q[b])
        L = int(kv[b])
        if n == 0 or L == 0:
            continue
        kb = gather_kv(kc, b, L, page_table=pt, cu_seqlens_k=cu_k)  # [L, Hkv, D]
        vb = gather_kv(vc, b, L, page_table=pt, cu_seqlens_k=cu_k)
        t = np.arange(n)
        causal_ok = (np.arange(L)[None, :] <= (L - n + t)[:, None]) if causal else np.ones((n, L), bool)
        for h in range(hq):
            ok = causal_ok & allowed_keys(layout, b, h, g, L)[None, :]  # [n, L]
            s = qq[q0:q0 + n, h] @ kb[:, h // g].T * scale
            s = np.where(ok, s, -np.inf)
            m = s.max(axis=1, initial=-np.inf)
            has = np.isfinite(m)
            p = np.where(ok, np.exp(s - np.where(has, m, 0.0)[:, None]), 0.0)
            tot = p.sum(axis=1)
            out[q0:q0 + n, h] = np.where(has[:, None], (p @ vb[:, h // g]) / np.where(has, tot, 1.0)[:, None], 0.0)
            with np.errstate(divide="ignore"):
                lse[h, q0:q0 + n] = np.where(has, m + np.log(np.where(has, tot, 1.0)), -np.inf)
    return out, lse
