"""varblock: variable-length, block-sparse attention for NVIDIA GPUs.

Importing varblock loads no GPU framework and no compiler: kernels are prebuilt cubins, loaded on first use. The
forward path (layouts, plans, ``attention``, ``merge_states``) is imported eagerly; the other ops and the float64
reference are imported on first access (they are not on the cold-start path of a forward call).
"""

from importlib import import_module
from typing import Any

from varblock import families, layout
from varblock.layout import BlockSparseLayout
from varblock.ops.attention import attention
from varblock.ops.merge import merge_states
from varblock.plan import Plan, plan

__version__ = "0.1.0"

#: public name -> (module, attribute or None for the module itself), imported on first access
_LAZY = {
    "reference": ("varblock.reference", None),
    "attention_backward": ("varblock.ops.attention_backward", "attention_backward"),
    "decode": ("varblock.ops.decode", "decode"),
    "plan_decode": ("varblock.ops.decode", "plan_decode"),
    "plan_device": ("varblock.device_layout.plan", "plan_device"),
    "attention_pooling": ("varblock.ops.attention_pooling", "attention_pooling"),
}

__all__ = ["BlockSparseLayout", "Plan", "attention", "families", "layout", "merge_states", "plan", "__version__",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'varblock' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = import_module(module) if attr is None else getattr(import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
