"""Output arrays in the caller's framework (torch, cupy, jax), or a DLPack-exporting view otherwise."""

from __future__ import annotations

from typing import Any

import numpy as np

from varblock.runtime.tensors import ITEMSIZE, DeviceArray, compact_strides


def framework_of(obj: Any) -> str:
    root = type(obj).__module__.split(".")[0]
    if root in ("jax", "jaxlib"):
        return "jax"
    return root if root in ("torch", "cupy") else "generic"


def _numpy_dtype(dtype: str) -> Any:
    if dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("bfloat16 outputs for this array type need the ml_dtypes package "
                            "(or pass torch/jax arrays)") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def empty(like: Any, shape: tuple[int, ...], dtype: str, device_id: int, stream: Any) -> tuple[Any, int]:
    """A new uninitialised array of the same framework as ``like``; returns (array, device pointer)."""
    fw = framework_of(like)
    if fw == "torch":
        import torch

        t = torch.empty(shape, dtype=getattr(torch, dtype), device=f"cuda:{device_id}")
        return t, int(t.data_ptr())
    if fw == "cupy":
        import cupy

        if dtype == "bfloat16":
            raise TypeError("cupy has no bfloat16 arrays; use float16/float32 or torch/jax arrays")
        with cupy.cuda.Device(device_id):
            a = cupy.empty(shape, dtype=dtype)
        return a, int(a.data.ptr)
    view = _cuda_core_empty(shape, dtype, device_id, stream)
    if fw == "jax":
        import jax.dlpack

        return jax.dlpack.from_dlpack(view), int(view.ptr)
    return view, int(view.ptr)


def _cuda_core_empty(shape: tuple[int, ...], dtype: str, device_id: int, stream: Any) -> Any:
    from cuda.core.utils import StridedMemoryView

    from varblock.runtime.device import device

    n = int(np.prod(shape)) * ITEMSIZE[dtype]
    buf = device(device_id).allocate(max(n, 1), stream=stream)
    return StridedMemoryView.from_buffer(buf, shape, dtype=_numpy_dtype(dtype))


def empty_array(like: Any, name: str, shape: tuple[int, ...], dtype: str, device_id: int, stream: Any
                ) -> tuple[Any, DeviceArray]:
    """``empty`` plus its :class:`DeviceArray` description (compact strides), without exporting it again."""
    obj, ptr = empty(like, shape, dtype, device_id, stream)
    return obj, DeviceArray(name, ptr, tuple(shape), compact_strides(tuple(shape)), dtype, device_id, obj)
