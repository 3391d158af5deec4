"""CUDA devices, streams and loaded kernels, through cuda.core.

Kernels are loaded lazily, once per (device, variant), and cached. A stream is adopted from the caller: anything
with ``__cuda_stream__``, a cuda.core ``Stream``, a raw handle, a torch/cupy stream object, or by default the
current stream of the framework that owns the input arrays.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from varblock.runtime.frameworks import current_stream_handle

_lock = threading.Lock()
_devices: dict[int, Any] = {}
_kernels: dict[tuple[int, str, str], Any] = {}
_streams: dict[tuple[int, int], Any] = {}


class NoGPUError(RuntimeError):
    """No usable CUDA device/driver."""


def device(ordinal: int) -> Any:
    """cuda.core ``Device`` for ``ordinal``, made current on this thread (primary context)."""
    dev = _devices.get(ordinal)
    if dev is None:
        from cuda.core import Device

        try:
            dev = Device(ordinal)
            dev.set_current()
        except Exception as ex:
            raise NoGPUError(f"cannot use CUDA device {ordinal}: {ex}") from ex
        _devices[ordinal] = dev
    else:
        dev.set_current()
    return dev


def compute_capability(ordinal: int) -> tuple[int, int]:
    cc = device(ordinal).compute_capability
    return int(cc.major), int(cc.minor)


def kernel(ordinal: int, entry: dict[str, Any], cubin_dir: str) -> Any:
    """The loaded cuda.core ``Kernel`` for a manifest entry on a device (loads and configures it once)."""
    key = (ordinal, entry["arch"], entry["name"])
    k = _kernels.get(key)
    if k is not None:
        return k
    with _lock:
        k = _kernels.get(key)
        if k is not None:
            return k
        from cuda.core import ObjectCode

        dev = device(ordinal)
        path = Path(cubin_dir) / entry["arch"] / entry["cubin"]
        obj = ObjectCode.from_cubin(path.read_bytes(), name=entry["name"])
        k = obj.get_kernel(entry["entry"])
        smem = int(entry.get("dynamic_smem_bytes") or 0)
        if smem > 48 * 1024:
            _set_kernel_attr(k, dev, "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES", smem)
        if entry.get("cluster_dims"):
            _set_kernel_attr(k, dev, "CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED", 1)
        _kernels[key] = (k, obj)
        return _kernels[key]


def _set_kernel_attr(k: Any, dev: Any, attr: str, value: int) -> None:
    from cuda.bindings import driver

    a = getattr(driver.CUfunction_attribute, attr)
    err, = driver.cuKernelSetAttribute(a, value, k.handle, dev.device_id)
    if int(err) != 0:
        raise RuntimeError(f"cuKernelSetAttribute({attr}={value}) failed: {err}")


def stream_for(stream: Any, ordinal: int, like: Any = None) -> Any:
    """A cuda.core stream to launch on: the caller's ``stream`` if given, else the current stream of the
    framework that produced ``like`` (torch, cupy), else the device's default stream."""
    handle = None
    if stream is None and like is not None:
        handle = current_stream_handle(like, ordinal)
        if handle is None:
            return device(ordinal).default_stream
    elif stream is not None:
        if hasattr(stream, "__cuda_stream__"):
            from cuda.core import Stream

            if isinstance(stream, Stream):
                return stream
            handle = int(stream.__cuda_stream__()[1])
        elif isinstance(stream, int):
            handle = stream
        elif hasattr(stream, "cuda_stream"):  # torch.cuda.Stream
            handle = int(stream.cuda_stream)
        elif hasattr(stream, "ptr"):  # cupy.cuda.Stream
            handle = int(stream.ptr)
        else:
            raise TypeError(f"stream: expected an object with __cuda_stream__, a cuda.core Stream, a torch/cupy "
                            f"stream or an integer handle, got {type(stream).__name__}")
    else:
        return device(ordinal).default_stream
    key = (ordinal, handle)
    s = _streams.get(key)
    if s is None:
        from cuda.core import Stream

        device(ordinal)
        s = Stream.from_handle(handle)
        _streams[key] = s
    return s

