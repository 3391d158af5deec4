"""varblock: variable-length, block-sparse attention for NVIDIA GPUs.

Importing varblock loads no GPU framework and no compiler: kernels are prebuilt cubins, loaded on first use.
"""

from varblock.ops.merge import merge_states

__version__ = "0.1.0"
__all__ = ["merge_states", "__version__"]
