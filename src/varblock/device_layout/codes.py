"""Constants of the device-side layout builder (``varblock.device_layout``), shared by its build-time kernels
(``varblock/kernels/layout_device.py``) and the runtime. Plain Python: no NumPy, no cutlass.

Status word, int32 ``[STATUS_WIDTH]``. Words 0 and 1 are the forward kernels' ``status`` contract
(``(num_tiles, error)``, ``varblock.abi``), so the buffer is handed to the attention kernel as is; the other words
count what was written.
"""

from __future__ import annotations

from typing import Final

from varblock.abi import (  # noqa: F401  (re-exported: one import site for the status word)
    ERR_CAPACITY,
    ERR_CU_SEQLENS,
    ERR_OK,
    ERR_PARAMS,
    STATUS_ERROR,
    STATUS_NUM_TILES,
)

STATUS_NUM_ROWS: Final = 2  #: layout rows (one per (layout head, sequence, query block))
STATUS_NUM_ENTRIES: Final = 3  #: kept blocks (layout entries)
STATUS_NUM_CHUNKS: Final = 4  #: rows of the forward ``chunks`` table
STATUS_NUM_COLS: Final = 5  #: key-major columns (one per (layout head, sequence, key block))
STATUS_DETAIL: Final = 6  #: on error: the flat index of the first offending mask / index cell (-1 = none)
STATUS_WIDTH: Final = 8

#: error codes beyond ``varblock.abi``'s (which the device layout uses with the same meaning)
ERR_MASK_SHAPE: Final = 4  #: a sequence has more query / key blocks than the padded mask has rows / columns
ERR_MASK_VALUE: Final = 5  #: an integer block code outside 0 (skip), 1 (partial), 2 (full)
ERR_INDEX: Final = 6  #: a top-k block index outside its sequence's key blocks, or a count outside [0, K]
ERROR_NAMES: Final = {ERR_OK: "ok", ERR_CAPACITY: "capacity", ERR_CU_SEQLENS: "cu_seqlens", ERR_PARAMS: "params",
                      ERR_MASK_SHAPE: "mask_shape", ERR_MASK_VALUE: "mask_value", ERR_INDEX: "index"}

#: ``rows`` table, int32 ``[R, ROW_WIDTH]``: one per (layout head, sequence, query block), empty rows included
ROW_FIELDS: Final = ("head", "batch", "q_start", "q_len", "ent_begin", "n_full", "n_partial")
ROW_WIDTH: Final = len(ROW_FIELDS)
#: ``entries`` table, int32 ``[E, ENTRY_WIDTH]``: kept key span of each entry (full ones of a row first)
ENTRY_FIELDS: Final = ("k_start", "k_len")
ENTRY_WIDTH: Final = len(ENTRY_FIELDS)
#: ``cols`` table, int32 ``[C, COL_WIDTH]``: one per (layout head, sequence, key block), empty columns included
COL_FIELDS: Final = ("head", "batch", "k_start", "k_len", "ent_begin", "n_full", "n_partial")
COL_WIDTH: Final = len(COL_FIELDS)
#: ``col_entries`` table, int32 ``[E, COL_ENTRY_WIDTH]``: per key-major entry its query span, forward row and entry
COL_ENTRY_FIELDS: Final = ("q_start", "q_len", "row", "entry")
COL_ENTRY_WIDTH: Final = len(COL_ENTRY_FIELDS)

#: cell classes in the ``cell_info`` scratch (low 2 bits; the position inside the row's class group above them)
CELL_SKIP: Final = 0
CELL_PARTIAL: Final = 1
CELL_FULL: Final = 2
CELL_POS_SHIFT: Final = 2

#: padded rows (or columns) per partial-sum group: one CTA of the ``cells`` / ``fill`` kernels (a warp each). The
#: ``scan`` kernel scans the groups' sums; ``fill`` adds the sums of the rows before a row inside its group.
GROUP: Final = 8
#: per row group (SoA ``[ROW_PART_WIDTH, groups]``): existing rows, entries, chunks, tiles, first bad cell (-1 none)
ROW_PART_WIDTH: Final = 5
#: per column group (SoA ``[COL_PART_WIDTH, groups]``): existing columns, entries
COL_PART_WIDTH: Final = 2

__all__ = [name for name in dir() if name.isupper()]
