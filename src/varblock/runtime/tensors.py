"""Array arguments: zero-copy views of any DLPack / CUDA-array-interface object, and their validation.

``as_device_array`` turns a framework array into a :class:`DeviceArray` (pointer, shape, element strides, dtype
name, device ordinal) through ``cuda.core``'s ``StridedMemoryView``; the ``check_*`` helpers raise
``TypeError``/``ValueError`` naming the argument, so no bad input reaches a kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from varblock.runtime.frameworks import DL_CPU, DL_CUDA_HOST, compact_strides, dlpack_device, framework_of

#: varblock dtype names and their sizes in bytes
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4, "int64": 8, "uint8": 1, "bool": 1}


@dataclass
class DeviceArray:
    """What a kernel needs to know of an array argument."""

    name: str
    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str
    device_id: int
    obj: Any

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]


_dtype_names: dict[Any, str] = {}


def _normalise_dtype(dt: Any) -> str:
    """'float32', 'bfloat16', ... for a NumPy/torch/cupy/jax dtype object (cached per dtype object)."""
    name = _dtype_names.get(dt)
    if name is None:
        text = str(dt)
        name = next((n for n in ITEMSIZE if text == n or text.endswith("." + n)), text)
        _dtype_names[dt] = name
    return name


def _dtype_name(view: Any, obj: Any) -> str:
    """Normalised dtype name; bfloat16 is recognised even where NumPy has no such type."""
    own = getattr(obj, "dtype", None)
    if own is not None and _normalise_dtype(own) == "bfloat16":
        return "bfloat16"
    try:
        return _normalise_dtype(view.dtype)
    except Exception:  # cuda.core cannot express the dtype in NumPy (bfloat16 without ml_dtypes)
        return _normalise_dtype(own) if own is not None else "unknown"


def _torch_view(obj: Any, name: str) -> DeviceArray:
    """Fast path for torch tensors (no DLPack capsule): the same facts StridedMemoryView would report."""
    if not obj.is_cuda:
        raise ValueError(f"{name}: expected an array on a CUDA device, got one in host memory "
                         f"(move it to the GPU first, e.g. .cuda() / cupy.asarray)")
    return DeviceArray(name, obj.data_ptr(), tuple(obj.shape), tuple(obj.stride()), _normalise_dtype(obj.dtype),
                       obj.device.index, obj)


def as_device_array(obj: Any, name: str, *, stream_handle: int = 1) -> DeviceArray:
    """A zero-copy view of ``obj`` on a CUDA device. ``stream_handle``: the stream the consumer orders its work on
    (DLPack producers such as JAX and CuPy make the data ready for it; default: the legacy default stream, where
    varblock launches for frameworks without a current-stream notion; -1: no synchronisation)."""
    from cuda.core.utils import StridedMemoryView

    if obj is None:
        raise TypeError(f"{name}: expected a CUDA device array, got None")
    if framework_of(obj) == "torch" and hasattr(obj, "data_ptr"):
        return _torch_view(obj, name)
    dl = dlpack_device(obj)
    if dl is not None and dl[0] in (DL_CPU, DL_CUDA_HOST):
        raise ValueError(f"{name}: expected an array on a CUDA device, got one in host memory "
                         f"(move it to the GPU first, e.g. .cuda() / cupy.asarray)")
    try:
        if hasattr(obj, "__dlpack__"):
            view = StridedMemoryView.from_dlpack(obj, stream_ptr=stream_handle)
        elif hasattr(obj, "__cuda_array_interface__"):
            view = StridedMemoryView.from_cuda_array_interface(obj, stream_ptr=stream_handle)
        else:
            raise TypeError(f"{name}: expected a CUDA device array exporting __dlpack__ or __cuda_array_interface__ "
                            f"(torch, cupy, jax, ...), got {type(obj).__name__}")
    except (BufferError, RuntimeError, ValueError) as ex:
        raise TypeError(f"{name}: could not view {type(obj).__name__} as a device array: {ex}") from ex
    if not view.is_device_accessible or view.device_id < 0:
        raise ValueError(f"{name}: expected an array on a CUDA device, got one in host memory "
                         f"(move it to the GPU first, e.g. .cuda() / cupy.asarray)")
    shape = tuple(int(s) for s in view.shape)
    strides = view.strides
    if strides is None:  # compact row-major
        strides = compact_strides(shape)
    return DeviceArray(name, int(view.ptr), shape, tuple(int(s) for s in strides), _dtype_name(view, obj),
                       int(view.device_id), obj)


def check_dtype(a: DeviceArray, allowed: Sequence[str]) -> None:
    if a.dtype not in allowed:
        raise TypeError(f"{a.name}: dtype {a.dtype} is not supported; expected one of {', '.join(allowed)}")


def check_ndim(a: DeviceArray, ndim: int, what: str) -> None:
    if len(a.shape) != ndim:
        raise ValueError(f"{a.name}: expected a {ndim}-d array {what}, got shape {a.shape}")


def check_shape(a: DeviceArray, expected: Sequence[int], what: str) -> None:
    if tuple(a.shape) != tuple(expected):
        raise ValueError(f"{a.name}: expected shape {tuple(expected)} {what}, got {a.shape}")


def check_inner_contiguous(a: DeviceArray) -> None:
    if a.shape and a.shape[-1] > 1 and a.strides[-1] != 1:
        raise ValueError(f"{a.name}: the last dimension must be contiguous (stride 1), got strides {a.strides}")
    if any(s < 0 for s in a.strides):
        raise ValueError(f"{a.name}: negative strides are not supported, got {a.strides}")


def check_aligned(a: DeviceArray, alignment: int) -> None:
    if a.ptr % alignment:
        raise ValueError(f"{a.name}: {a.name} address must be a multiple of {alignment} (got 0x{a.ptr:x}; a sliced "
                         f"view? pass a contiguous copy)")


def check_same_device(arrays: Sequence[DeviceArray]) -> int:
    devs = {a.device_id for a in arrays}
    if len(devs) > 1:
        raise ValueError("all arrays must be on one CUDA device, got " +
                         ", ".join(f"{a.name} on cuda:{a.device_id}" for a in arrays))
    return arrays[0].device_id
