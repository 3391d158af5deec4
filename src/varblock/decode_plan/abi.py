"""Constants of the decode work list, shared by the build-time kernels (``varblock/kernels/decode_fwd.py``,
``decode_prepare.py``) and the runtime plans. Plain Python (no NumPy, no cutlass). Format: ``docs/decode.md``.
"""

from __future__ import annotations

from typing import Final

# ---- the ``items`` table, int32 [W, ITEM_WIDTH]: one CTA each
ITEM_FIELDS: Final = ("batch", "kv_head", "row_start", "chunk_begin", "n_chunks", "slot", "slot_base",
                      "num_splits", "kv_len")
ITEM_WIDTH: Final = len(ITEM_FIELDS)
ITEM_BATCH: Final = 0  #: sequence index b
ITEM_KV_HEAD: Final = 1  #: KV head h (the item's query heads are h * G .. h * G + G - 1)
ITEM_ROW_START: Final = 2  #: first (token, head-in-group) pair p = t * G + g of the item's row tile
ITEM_CHUNK_BEGIN: Final = 3  #: first row of the item's chunk run in ``chunks``
ITEM_N_CHUNKS: Final = 4  #: chunks the item reads (0: empty; its rows give O = 0, LSE = -inf)
ITEM_SLOT: Final = 5  #: this split's partial slot in the workspace (unused when num_splits == 1)
ITEM_SLOT_BASE: Final = 6  #: first slot of the row tile's splits; also the index of its semaphore
ITEM_NUM_SPLITS: Final = 7  #: splits of the row tile (1: the item writes ``out`` directly)
ITEM_KV_LEN: Final = 8  #: KV length of the sequence (causal anchor: token t of n sees keys j <= kv_len - n + t)

# ---- the ``chunks`` table, int32 [C, CHUNK_WIDTH]
CHUNK_FIELDS: Final = ("k_start", "k_len", "head_mask")
CHUNK_WIDTH: Final = len(CHUNK_FIELDS)
CHUNK_K_START: Final = 0  #: first key, relative to the sequence start
CHUNK_K_LEN: Final = 1  #: keys in the chunk, 1 <= k_len <= tile_n
CHUNK_HEAD_MASK: Final = 2  #: bit g set: query head g of the group keeps the chunk; -1 (all bits): every head

HEAD_MASK_ALL: Final = -1
#: largest GQA group with per-query-head sparsity (one mask bit per head of the group)
MAX_GROUP_PER_Q_HEAD: Final = 32
#: most new tokens per sequence
MAX_QUERY_TOKENS: Final = 16

#: head dims the decode kernel is built for
HEAD_DIMS: Final = (64, 128, 256)
#: row-tile heights (tile_m) of the built variants: (token, head-in-group) pairs per CTA
TILE_MS: Final = (16, 64)

__all__ = [name for name in dir() if name.isupper()]
