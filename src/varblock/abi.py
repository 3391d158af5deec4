"""Constants shared by the build-time kernels (``varblock.kernels``) and the runtime: one definition of each.

Plain Python: no cutlass, no NumPy, so both sides import it freely. The formats these numbers index are described in
``docs/contracts.md`` (section 2 for the work list, the element-mask table for the mask bits).
"""

from __future__ import annotations

from typing import Final

# ---- work list: the ``tiles`` table, int32 [T, TILE_WIDTH]
#: column names of a ``tiles`` row, in order
TILE_FIELDS: Final = ("batch", "head", "q_start", "q_len", "chunk_begin", "n_full", "n_partial", "n_left")
TILE_WIDTH: Final = len(TILE_FIELDS)
TILE_BATCH: Final = 0  #: sequence index
TILE_HEAD: Final = 1  #: query head, or KV head with pack-GQA
TILE_Q_START: Final = 2  #: first query token, relative to the sequence start
TILE_Q_LEN: Final = 3  #: query tokens in the tile
TILE_CHUNK_BEGIN: Final = 4  #: first row of the tile's chunk run in ``chunks``
TILE_N_FULL: Final = 5  #: full chunks (no element mask)
TILE_N_PARTIAL: Final = 6  #: partial chunks (element mask applies)
TILE_N_LEFT: Final = 7  #: chunk i is partial iff i < n_left or i >= n_left + n_full

# ---- work list: the ``chunks`` table, int32 [C, CHUNK_WIDTH]
CHUNK_FIELDS: Final = ("k_start", "k_len")
CHUNK_WIDTH: Final = len(CHUNK_FIELDS)
CHUNK_K_START: Final = 0  #: first key, relative to the sequence start
CHUNK_K_LEN: Final = 1  #: keys in the chunk (1 <= k_len <= tile_n) in the low bits, row-half drop bits above
#: The ``k_len`` word: bits [0, CHUNK_DROP_SHIFT) hold the key count, the 4 bits from ``CHUNK_DROP_SHIFT`` up say
#: which quarters of the (tile_m x tile_n) chunk are masked whole: bit ``CHUNK_DROP_KEY_HALF * key_half +
#: row_half`` (row half 1 = rows [tile_m / 2, tile_m), key half 1 = columns [tile_n / 2, tile_n)). Tile pairing sets
#: them where two query blocks whose key sets differ share a tile (docs/tile_pairing.md); the forward kernels mask
#: those quarters to -inf. Only on partial chunks of host plans built with pairing; 0 everywhere else (device
#: plans, dense plans, the pooling / backward work lists).
CHUNK_DROP_SHIFT: Final = 16
CHUNK_K_LEN_MASK: Final = (1 << CHUNK_DROP_SHIFT) - 1
CHUNK_DROP_LO: Final = 1  #: rows [0, tile_m / 2), key half 0
CHUNK_DROP_HI: Final = 2  #: rows [tile_m / 2, tile_m), key half 0
CHUNK_DROP_KEY_HALF: Final = 2  #: key half 1's bits are key half 0's shifted left by this

# ---- element mask: bits of the ``mask_flags`` kernel scalar (partial chunks only)
MASK_DOC: Final = 1  #: ``doc_q`` / ``doc_k`` are valid: keys of another document are masked
MASK_TOKEN: Final = 2  #: ``tok_mask`` is valid: token-level (query token x key block) mask
#: Attention sinks need no bit: the ``num_sink_tokens`` kernel scalar (0 = none) waives the left window bound for
#: keys ``j < num_sink_tokens``; the right bound / causal still applies.
MASK_FLAG_BITS: Final = {"doc": MASK_DOC, "token": MASK_TOKEN}

# ---- the dynamic persistent scheduler's counter, int32 [TILE_COUNTER_WIDTH], zero between launches
TILE_COUNTER_NEXT: Final = 0  #: next tile index handed out (minus the grid size)
TILE_COUNTER_DONE: Final = 1  #: CTAs finished; the last one resets both words
TILE_COUNTER_WIDTH: Final = 2

# ---- the prepare kernel's ``status`` output, int32 [STATUS_WIDTH] = (num_tiles, error)
STATUS_NUM_TILES: Final = 0
STATUS_ERROR: Final = 1
STATUS_WIDTH: Final = 2
ERR_OK: Final = 0  #: work list written
ERR_CAPACITY: Final = 1  #: max_tiles or max_chunks would be exceeded
ERR_CU_SEQLENS: Final = 2  #: cu_seqlens_q/k negative or decreasing
ERR_PARAMS: Final = 3  #: bad scalar parameters
ERROR_NAMES: Final = {ERR_OK: "ok", ERR_CAPACITY: "capacity", ERR_CU_SEQLENS: "cu_seqlens", ERR_PARAMS: "params"}

# ---- layouts: how a layout's heads map to query heads
HEAD_MODE_PER_Q_HEAD: Final = "per_q_head"  #: one pattern per query head
HEAD_MODE_PER_KV_HEAD: Final = "per_kv_head"  #: one pattern per KV head, shared by its GQA group
HEAD_MODE_BROADCAST: Final = "broadcast"  #: one pattern for every head
HEAD_MODES: Final = (HEAD_MODE_PER_Q_HEAD, HEAD_MODE_PER_KV_HEAD, HEAD_MODE_BROADCAST)

# ---- head dims each kernel family is built for
HEAD_DIMS: Final = {"attention_fwd_mma": (64, 96, 128, 192, 256)}

# ---- numerics
LOG2E: Final = 1.4426950408889634  #: log2(e): softmax runs in base 2 (scale * LOG2E)

__all__ = [name for name in dir() if name.isupper()]
