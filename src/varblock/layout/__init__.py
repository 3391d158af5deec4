"""Host-side sparsity layouts (NumPy only): the canonical varlen block-sparse format, importers, exporters,
generators and validation. See docs/layout.md and docs/contracts.md section 1."""

from .core import HEAD_MODES, BlockSparseLayout, ColSpans, Partition, RowSpans
from .generators import (
    attention_sinks,
    causal,
    dense,
    document,
    random_blocks,
    sliding_window,
    topk_blocks,
)
from .importers import (
    FA4BlockSparse,
    from_block_mask,
    from_fa4,
    from_flashinfer,
    from_flex,
    from_row_spans,
    from_seer_1d,
    from_seer_2d,
    to_fa4,
    to_flashinfer,
    to_flex,
)
from .mask import ElementMask

__all__ = [
    "BlockSparseLayout", "RowSpans", "ColSpans", "Partition", "ElementMask", "HEAD_MODES", "FA4BlockSparse",
    "from_block_mask", "from_fa4", "to_fa4", "from_flex", "to_flex", "from_seer_2d", "from_seer_1d",
    "from_flashinfer", "to_flashinfer", "from_row_spans", "causal", "sliding_window", "attention_sinks", "document",
    "random_blocks", "topk_blocks", "dense",
]
