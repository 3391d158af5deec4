"""Fixed-capacity decode work lists: the NumPy twin of the ``decode_prepare`` kernel (same formulas, element for
element), so the device builder is tested on the CPU through this twin.

Every (sequence, KV head) group ``g`` owns ``chunk_cap`` chunk slots at ``g * chunk_cap`` and ``row_tiles *
splits`` items at ``g * row_tiles * splits``; nothing depends on another group, so the GPU writes the list with no
scan and no host synchronisation, and the grid size is fixed (CUDA-graph capturable). Dense: chunk ``c`` is keys
``[c * tile_n, ...)`` of the sequence. Top-k: slot ``c`` is piece ``c % cpb`` (``cpb = ceil(block_size /
tile_n)``) of the ``c // cpb``-th listed block; unused slots, ``-1`` entries and pieces past the sequence have
``k_len = 0`` (read nothing, masked). Row tiles past a sequence's ``n_q * G`` rows and their splits read nothing.
Split ``s`` of ``S`` reads chunks ``[s * n // S, (s + 1) * n // S)`` of the ``n`` chunks its group uses.
Every chunk of sequence ``b`` covers keys inside ``[0, kv_lens[b])`` (also when clamped to the capacity), so a paged
cache's table is read at ``page_table[b, j // page_size]`` only for ``j < kv_lens[b]``: it needs
``ceil(kv_lens[b] / page_size)`` columns, not ``ceil(max_kv_len / page_size)``.
"""

from __future__ import annotations

import numpy as np

from varblock.decode_plan import abi

#: ``status`` int32 [2] of a device plan: the item count, and an error code
STATUS_NUM_ITEMS = 0
STATUS_ERROR = 1
ERR_OK = 0
ERR_CAPACITY = 1  #: a KV length exceeds max_kv_len (dense), or a count exceeds top-k: clamped to the capacity


def fixed_worklist(cu_seqlens_q: np.ndarray, kv_lens: np.ndarray, *, num_heads_kv: int, group_size: int,
                   tile_m: int, tile_n: int, row_tiles: int, splits: int, chunk_cap: int, block_size: int = 0,
                   block_idx: np.ndarray | None = None, block_cnt: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(items [W, ITEM_WIDTH], chunks [groups * chunk_cap, CHUNK_WIDTH], status [2])``, int32."""
    B = kv_lens.shape[0]
    ng = B * num_heads_kv
    n_q = np.diff(cu_seqlens_q).astype(np.int64)
    kv = kv_lens.astype(np.int64)
    g = np.arange(ng)
    b = g // num_heads_kv
    err = ERR_OK
    c = np.arange(chunk_cap)[None, :]
    if block_idx is None:
        n = -(-kv[b] // tile_n)
        if (n > chunk_cap).any():
            err = ERR_CAPACITY
        n = np.minimum(n, chunk_cap)
        ks = c * tile_n + 0 * g[:, None]
        kl = np.where(c < n[:, None], np.minimum(tile_n, kv[b][:, None] - ks), 0)
        ks = np.where(c < n[:, None], ks, 0)
    else:
        k = block_idx.shape[2]
        cpb = -(-block_size // tile_n)
        cnt = np.full(ng, k, np.int64) if block_cnt is None else block_cnt.reshape(ng).astype(np.int64)
        if (cnt > k).any() or (cnt < 0).any():
            err = ERR_CAPACITY
        cnt = np.clip(cnt, 0, k)
        n = cnt * cpb
        kk, piece = c // cpb, c % cpb
        listed = kk < cnt[:, None]
        blk = np.where(listed, block_idx.reshape(ng, k)[g[:, None], np.minimum(kk, k - 1)], -1)
        ks = blk * block_size + piece * tile_n
        kl = np.minimum(np.minimum(tile_n, block_size - piece * tile_n), kv[b][:, None] - ks)
        ok = (blk >= 0) & (kl > 0)
        kl = np.where(ok, kl, 0)
        ks = np.where(ok, ks, 0)
    chunks = np.stack([ks, kl, np.full_like(ks, abi.HEAD_MASK_ALL)], axis=2).reshape(ng * chunk_cap, 3)
    w = np.arange(ng * row_tiles * splits)
    s, rt, gw = w % splits, (w // splits) % row_tiles, w // (splits * row_tiles)
    bw = gw // num_heads_kv
    live = rt * tile_m < n_q[bw] * group_size
    nc = np.where(live, n[gw], 0)
    lo, hi = s * nc // splits, (s + 1) * nc // splits
    items = np.zeros((w.shape[0], abi.ITEM_WIDTH), np.int64)
    items[:, abi.ITEM_BATCH] = bw
    items[:, abi.ITEM_KV_HEAD] = gw % num_heads_kv
    items[:, abi.ITEM_ROW_START] = rt * tile_m
    items[:, abi.ITEM_CHUNK_BEGIN] = gw * chunk_cap + lo
    items[:, abi.ITEM_N_CHUNKS] = hi - lo
    items[:, abi.ITEM_SLOT] = w if splits > 1 else 0
    items[:, abi.ITEM_SLOT_BASE] = (w - s) if splits > 1 else 0
    items[:, abi.ITEM_NUM_SPLITS] = splits
    items[:, abi.ITEM_KV_LEN] = kv[bw]
    status = np.array([w.shape[0], err], np.int32)
    return items.astype(np.int32), chunks.astype(np.int32), status
