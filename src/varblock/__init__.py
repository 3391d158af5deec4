"""varblock: variable-length, block-sparse attention for NVIDIA GPUs.

Importing varblock loads no GPU framework and no compiler: kernels are prebuilt cubins, loaded on first use.
"""

from varblock import families, layout, reference
from varblock.layout import BlockSparseLayout
from varblock.ops.attention import attention
from varblock.ops.decode import decode, plan_decode
from varblock.ops.merge import merge_states
from varblock.plan import Plan, plan

__version__ = "0.1.0"
__all__ = ["BlockSparseLayout", "Plan", "attention", "families", "layout", "merge_states", "plan", "reference",
           "__version__", "decode", "plan_decode"]
