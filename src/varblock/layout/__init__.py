"""Host-side sparsity layouts (NumPy only): the canonical varlen block-sparse format, importers, exporters,
generators and validation. See docs/layout.md and docs/contracts.md section 1.

Module map: ``core`` (the layout and its row / column expansions), ``partition`` (token spans tiling sequences),
``build`` (layouts from classified cells), ``mask`` (element masks), one module per source format (``block_mask``,
``fa4``, ``flex``, ``seer``, ``flashinfer``, ``spans``; shared pieces in ``_common``, ``_lists``, ``packed``) and
``generators``. This package binds the format functions to ``BlockSparseLayout`` (``from_*`` / ``to_*``), so that
no format module and ``core`` import each other in a cycle.
"""

from ..abi import HEAD_MODES
from .block_mask import from_block_mask
from .core import BlockSparseLayout, ColSpans, RowSpans
from .fa4 import FA4BlockSparse, from_fa4, to_fa4
from .flashinfer import from_flashinfer, to_flashinfer
from .flex import from_flex, to_flex
from .generators import (
    attention_sinks,
    causal,
    dense,
    document,
    random_blocks,
    sliding_window,
    topk_blocks,
)
from .mask import ElementMask
from .partition import Partition
from .seer import from_seer_1d, from_seer_2d
from .spans import from_row_spans

for _f in (from_block_mask, from_fa4, from_flex, from_seer_2d, from_seer_1d, from_flashinfer, from_row_spans):
    setattr(BlockSparseLayout, _f.__name__, staticmethod(_f))
for _f in (to_fa4, to_flex, to_flashinfer):
    setattr(BlockSparseLayout, _f.__name__, _f)
del _f

__all__ = [
    "BlockSparseLayout", "RowSpans", "ColSpans", "Partition", "ElementMask", "HEAD_MODES", "FA4BlockSparse",
    "from_block_mask", "from_fa4", "to_fa4", "from_flex", "to_flex", "from_seer_2d", "from_seer_1d",
    "from_flashinfer", "to_flashinfer", "from_row_spans", "causal", "sliding_window", "attention_sinks", "document",
    "random_blocks", "topk_blocks", "dense",
]
