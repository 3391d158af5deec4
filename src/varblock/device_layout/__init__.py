"""Device-side layouts: the canonical block-sparse layout's kernel-facing tables built ON THE GPU from device
tensors (a block mask or top-k block indices, device ``cu_seqlens``), with no host synchronisation, in fixed-capacity
buffers, capturable in a CUDA graph (docs/device_layouts.md).

* :func:`varblock.plan_device` (``device_layout.plan``): a forward plan built on the GPU; :func:`rebuild` refreshes
  it in place; :func:`status` / :func:`check` read the status word; :func:`tables` copies every table back.
* :mod:`~varblock.device_layout.model`: the exact NumPy model of the kernels (equal to the host builders).
* :mod:`~varblock.device_layout.codes`: table formats, status word and error codes.

The GPU-facing modules are imported on first access (``import varblock`` stays light).
"""

from importlib import import_module
from typing import Any

_LAZY = ("plan_device", "rebuild", "status", "check", "tables", "geometry")

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'varblock.device_layout' has no attribute {name!r}")
    value = getattr(import_module("varblock.device_layout.plan"), name)
    globals()[name] = value
    return value
