"""Work list of DENSE varlen attention with an optional causal / sliding-window band: the exact NumPy model of the
device PREPARE kernel ``attention_prepare`` (``varblock/kernels/attention_prepare.py``), also usable by the host
plan for dense plans (the chunk table is linear in the number of keys, shared by every tile of a sequence).

Pure NumPy and vectorised (no Python loop per sequence, tile, chunk or token).

Output for tile size ``(tile_m, tile_n)``, ``num_tile_heads`` tile heads and pack-GQA factor ``G`` (1 = off; a tile
holds ``tpt = tile_m // G`` query tokens, all ``G`` heads of the group):

* ``tiles`` int32 ``[T, 8]`` = ``(batch, head, q_start, q_len, chunk_begin, n_full, n_partial, n_left)``: query
  tokens ``q_start .. q_start + q_len - 1`` of sequence ``batch`` (relative to its start), tile head ``head``; its
  chunks are ``chunks[chunk_begin : chunk_begin + n_full + n_partial]``; chunk ``i`` of the tile is PARTIAL (element
  mask applies) iff ``i < n_left or i >= n_left + n_full``, else FULL. Order: sequences in batch order, m-blocks of a
  sequence from last to first, tile heads innermost. A sequence with ``len_q = 0`` has no tile; ``len_k = 0`` gives
  tiles with no chunk (``chunk_begin`` = the sequence's chunk offset, counts 0).
* ``chunks`` int32 ``[C, 2]`` = ``(k_start, k_len)``, per sequence: ``(j * tile_n, min(tile_n, len_k - j * tile_n))``
  for ``j < N_b = ceil(len_k / tile_n)``, at offset ``sum_{b' < b} N_b'``. A tile references the contiguous run of its
  sequence's chunks that its rows may touch: ``[left partial | full | right partial]``.

Band (query ``i``, key ``j`` relative to their sequences, ``off = len_k - len_q``, bottom-right aligned): allowed iff
``(window_left < 0 or j >= i + off - window_left) and (window_right < 0 or j <= i + off + window_right)``; causal is
``window_right = 0``. A chunk is FULL for a tile if every (row, key) pair of it is allowed, PARTIAL if some are,
dropped if none is. Canonical counts: with no full chunk, every chunk is counted as left partial
(``n_left = n_partial``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .abi import CHUNK_WIDTH, ERR_CAPACITY, ERR_CU_SEQLENS, ERR_OK, ERR_PARAMS, TILE_WIDTH


def _cdiv(a: Any, b: Any) -> Any:
    return -(-a // b)


def _check_params(num_tile_heads: int, pack_gqa: int, tile_m: int, tile_n: int) -> int:
    """tokens per tile; ValueError on what the kernel reports as ERR_PARAMS."""
    if num_tile_heads < 1 or pack_gqa < 1 or tile_n < 1 or tile_m // max(pack_gqa, 1) < 1:
        raise ValueError(f"bad parameters: num_tile_heads={num_tile_heads} pack_gqa={pack_gqa} tile_m={tile_m} "
                         f"tile_n={tile_n} (need num_tile_heads >= 1, pack_gqa >= 1, tile_m >= pack_gqa, "
                         "tile_n >= 1)")
    return tile_m // pack_gqa


def _lengths(cu_seqlens_q: Any, cu_seqlens_k: Any) -> tuple[np.ndarray, np.ndarray]:
    cu_q = np.asarray(cu_seqlens_q).astype(np.int64).reshape(-1)
    cu_k = np.asarray(cu_seqlens_k).astype(np.int64).reshape(-1)
    if cu_q.shape != cu_k.shape or cu_q.shape[0] < 1:
        raise ValueError("cu_seqlens_q / cu_seqlens_k must be 1-D of the same length B + 1 >= 1")
    lq, lk = np.diff(cu_q), np.diff(cu_k)
    if cu_q.shape[0] > 1 and ((cu_q < 0).any() or (cu_k < 0).any() or (lq < 0).any() or (lk < 0).any()):
        raise ValueError("cu_seqlens_q / cu_seqlens_k must be non-negative and non-decreasing")
    return lq, lk


def capacities(total_q: int, total_k: int, batch: int, num_tile_heads: int, pack_gqa: int, tile_m: int,
               tile_n: int) -> tuple[int, int]:
    """(max_tiles, max_chunks) that hold the work list of ANY batch of ``batch`` sequences with these totals:
    ``num_tile_heads * (ceil(total_q / tpt) + B)`` and ``ceil(total_k / tile_n) + B``
    (``sum_b ceil(l_b / t) <= ceil(sum_b l_b / t) + B``)."""
    tpt = _check_params(num_tile_heads, pack_gqa, tile_m, tile_n)
    b = int(batch)
    return int(num_tile_heads) * (_cdiv(int(total_q), tpt) + b), _cdiv(int(total_k), int(tile_n)) + b


def dense_worklist(cu_seqlens_q: Any, cu_seqlens_k: Any, *, num_tile_heads: int, pack_gqa: int = 1,
                   tile_m: int, tile_n: int, window_left: int = -1,
                   window_right: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """``(tiles int32 [T, 8], chunks int32 [C, 2])``: exactly what the attention_prepare kernel writes.

    Raises ``ValueError`` where the kernel reports ERR_PARAMS or ERR_CU_SEQLENS (capacity is the caller's:
    see :func:`prepare_status`)."""
    num_tile_heads, pack_gqa, tile_m, tile_n = int(num_tile_heads), int(pack_gqa), int(tile_m), int(tile_n)
    tpt = _check_params(num_tile_heads, pack_gqa, tile_m, tile_n)
    lq, lk = _lengths(cu_seqlens_q, cu_seqlens_k)
    wl, wr = int(window_left), int(window_right)
    nb = lq.shape[0]
    H, tn = num_tile_heads, tile_n

    n_mb = _cdiv(lq, tpt)  # m-blocks per sequence
    n_ch = _cdiv(lk, tn)  # chunks per sequence
    ch_ofs = np.cumsum(n_ch) - n_ch

    # ---- chunks
    c_b = np.repeat(np.arange(nb, dtype=np.int64), n_ch)
    ks = (np.arange(c_b.shape[0], dtype=np.int64) - ch_ofs[c_b]) * tn
    chunks = np.stack([ks, np.minimum(tn, lk[c_b] - ks)], axis=1).reshape(-1, CHUNK_WIDTH)

    # ---- tiles: global m-block index = t // H (m-blocks of a sequence from last to first), head = t % H
    mb_b = np.repeat(np.arange(nb, dtype=np.int64), n_mb)
    mb_ofs = np.cumsum(n_mb) - n_mb
    mrev = np.arange(mb_b.shape[0], dtype=np.int64) - mb_ofs[mb_b]
    m = n_mb[mb_b] - 1 - mrev
    b = np.repeat(mb_b, H)
    head = np.tile(np.arange(H, dtype=np.int64), mb_b.shape[0])
    qs = np.repeat(m * tpt, H)
    ql = np.minimum(tpt, lq[b] - qs)
    len_k = lk[b]
    off = len_k - lq[b]
    qe = qs + ql - 1
    jlo = np.maximum(qs + off - wl, 0) if wl >= 0 else np.zeros_like(qs)
    jhi = np.minimum(qe + off + wr, len_k - 1) if wr >= 0 else len_k - 1
    some = jhi >= jlo
    klo = jlo // tn
    khi = jhi // tn
    flo = np.maximum(_cdiv(np.maximum(qe + off - wl, 0), tn), klo) if wl >= 0 else klo
    if wr >= 0:
        bv = qs + off + wr
        fhi = np.where(bv < len_k - 1, np.minimum(np.maximum(bv + 1, 0) // tn - 1, khi), khi)
    else:
        fhi = khi
    nf = np.maximum(fhi - flo + 1, 0)
    npart = khi - klo + 1 - nf
    nl = np.where(nf > 0, flo - klo, npart)
    zero = np.zeros_like(qs)
    cb = ch_ofs[b] + np.where(some, klo, 0)
    tiles = np.stack([b, head, qs, ql, cb, np.where(some, nf, zero), np.where(some, npart, zero),
                      np.where(some, nl, zero)], axis=1).reshape(-1, TILE_WIDTH)
    return tiles.astype(np.int32), chunks.astype(np.int32)


def prepare_status(cu_seqlens_q: Any, cu_seqlens_k: Any, *, num_tile_heads: int, pack_gqa: int, tile_m: int,
                   tile_n: int, max_tiles: int, max_chunks: int) -> tuple[int, int]:
    """``(num_tiles, error)``: what the kernel writes to ``status`` (error codes ``ERR_*``)."""
    try:
        tpt = _check_params(int(num_tile_heads), int(pack_gqa), int(tile_m), int(tile_n))
    except ValueError:
        return 0, ERR_PARAMS
    try:
        lq, lk = _lengths(cu_seqlens_q, cu_seqlens_k)
    except ValueError:
        return 0, ERR_CU_SEQLENS
    t = int(num_tile_heads) * int(_cdiv(lq, tpt).sum())
    c = int(_cdiv(lk, int(tile_n)).sum())
    if t > max_tiles or c > max_chunks:
        return 0, ERR_CAPACITY
    return t, ERR_OK
