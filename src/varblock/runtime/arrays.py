"""Output arrays in the caller's framework (torch, cupy, jax), or a DLPack-exporting view otherwise."""

from __future__ import annotations

from typing import Any

from varblock.runtime.frameworks import compact_strides, empty, framework_of
from varblock.runtime.tensors import DeviceArray


def empty_array(like: Any, name: str, shape: tuple[int, ...], dtype: str, device_id: int, stream: Any
                ) -> tuple[Any, DeviceArray]:
    """A new array of ``like``'s framework (:func:`varblock.runtime.frameworks.empty`) plus its
    :class:`DeviceArray` description (compact strides), without exporting it again."""
    obj, ptr = empty(like, shape, dtype, device_id, stream)
    return obj, DeviceArray(name, ptr, tuple(shape), compact_strides(tuple(shape)), dtype, device_id, obj)


__all__ = ["empty", "empty_array", "framework_of"]
