"""Everything varblock knows about array frameworks (torch, CuPy, JAX, NumPy), in one place.

* :func:`framework_of`: which framework made an object (one idiom: the root of its type's module, cached per type).
* :func:`is_device_array` / :func:`device_ordinal`: does an object live in CUDA device memory, and on which device.
* :func:`to_host`: any array (NumPy, lists, torch / CuPy / JAX tensors on the host or a GPU, other DLPack or
  CUDA-array-interface producers) as a NumPy array on the host. Device arrays are copied with the framework's own
  transfer (``.cpu()``, ``.get()``, ``__array__``) or, for other producers, by one driver memcpy of the bytes their
  elements span (:func:`device_span`, :func:`span_to_host`). Every step runs at most once: no recursion, no loop on
  objects whose ``.detach()`` or ``.cpu()`` returns another object of the same kind.
* :func:`current_stream_handle`: the current CUDA stream of the framework that made an array.
* :func:`empty`: a new device array of the caller's framework (outputs).

No framework is imported at module import; torch / CuPy / JAX are imported only to create outputs or read a
current stream for arrays they made, and cuda.core only to read DLPack producers and allocate generic outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

#: DLPack device types (dlpack.h DLDeviceType)
DL_CPU, DL_CUDA, DL_CUDA_HOST, DL_CUDA_MANAGED = 1, 2, 3, 13
_DEVICE_TYPES = (DL_CUDA, DL_CUDA_MANAGED)

FRAMEWORKS = ("numpy", "torch", "cupy", "jax", "generic")
_ROOTS = {"numpy": "numpy", "torch": "torch", "cupy": "cupy", "cupy_backends": "cupy", "jax": "jax",
          "jaxlib": "jax"}
_framework_by_type: dict[type, str] = {}


def framework_of(obj: Any) -> str:
    """'torch', 'cupy', 'jax', 'numpy' or 'generic': the framework whose type ``obj`` is (cached per type)."""
    t = type(obj)
    fw = _framework_by_type.get(t)
    if fw is None:
        fw = _ROOTS.get(t.__module__.split(".")[0], "generic")
        _framework_by_type[t] = fw
    return fw


def dlpack_device(obj: Any) -> tuple[int, int] | None:
    """(DLPack device type, device id) from ``obj.__dlpack_device__()``; None when it has none or cannot tell."""
    fn = getattr(obj, "__dlpack_device__", None)
    if fn is None:
        return None
    try:
        dev_type, dev_id = fn()
    except Exception:  # a producer that cannot tell: treat as unknown
        return None
    return int(dev_type), int(dev_id)


def device_ordinal(obj: Any) -> int | None:
    """The CUDA device ordinal of a device array (see :func:`is_device_array`), else None."""
    if obj is None or isinstance(obj, (np.ndarray, np.generic, list, tuple, int, float, bool)):
        return None
    dl = dlpack_device(obj)
    if dl is not None:
        return dl[1] if dl[0] in _DEVICE_TYPES else None
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is None:
        return None
    dev = getattr(obj, "device", None)  # CuPy / Numba report their device; the interface itself does not
    ordinal = getattr(dev, "id", None)
    return int(ordinal) if isinstance(ordinal, (int, np.integer)) else 0


def is_device_array(obj: Any) -> bool:
    """True when ``obj`` lives in CUDA device (or managed) memory: its ``__dlpack_device__`` reports kDLCUDA /
    kDLCUDAManaged, or it has only a ``__cuda_array_interface__``. NumPy arrays and Python sequences are host."""
    return device_ordinal(obj) is not None


# ---------------------------------------------------------------------------------------------------------------
# to the host


def to_host(x: Any, name: str) -> np.ndarray:
    """``x`` as a NumPy array on the host (device arrays are copied: a synchronisation with their producer).

    Accepts NumPy arrays, Python sequences and scalars, torch / CuPy / JAX arrays on the host or a GPU, and any
    object exporting ``__dlpack__``, ``__cuda_array_interface__``, ``__array__``, or offering ``.detach()`` /
    ``.cpu()`` / ``.get()`` (torch / CuPy style). bfloat16 arrays come back as float32 (exact; NumPy has no
    bfloat16). Raises ``TypeError`` naming ``name`` otherwise.
    """
    if isinstance(x, np.ndarray):
        return x
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    if isinstance(x, (list, tuple, int, float, bool, complex, np.generic)):
        try:
            return np.asarray(x)
        except Exception as e:
            raise TypeError(f"{name}: cannot convert the {type(x).__name__} to an array ({e})") from e
    errors: list[str] = []
    if framework_of(x) == "torch" and str(getattr(x, "dtype", "")) == "torch.bfloat16":
        x = x.float()  # NumPy has no bfloat16; the widening is exact
    if is_device_array(x):
        a = _device_to_host(x, errors)
    else:
        a = _host_object_to_numpy(x, errors)
    if a is None:
        detail = "; ".join(errors) if errors else "it has neither __dlpack__ nor __array__"
        raise TypeError(f"{name}: expected a NumPy array or a DLPack/array-interface tensor, got "
                        f"{type(x).__name__} ({detail})")
    if a.dtype.name == "bfloat16":  # ml_dtypes arrays (JAX)
        a = a.astype(np.float32)
    return a


def _direct(y: Any, errors: list[str], what: str) -> np.ndarray | None:
    """One host object as NumPy without calling any of its methods that return another tensor."""
    if isinstance(y, np.ndarray):
        return y
    if hasattr(y, "__dlpack__"):
        try:
            return np.from_dlpack(y)
        except Exception as e:  # device tensor, unsupported dtype, requires grad, ...
            errors.append(f"np.from_dlpack({what}): {e}")
    if hasattr(y, "__array__") or hasattr(y, "__array_interface__"):
        try:
            return np.asarray(y)
        except Exception as e:
            errors.append(f"np.asarray({what}): {e}")
    return None


def _host_object_to_numpy(x: Any, errors: list[str]) -> np.ndarray | None:
    """A host-resident non-NumPy array: DLPack / __array__ first, then ``.detach()``, ``.cpu()``, ``.get()``
    (each called once on ``x``, each result converted directly)."""
    a = _direct(x, errors, "x")
    if a is not None:
        return a
    for meth in ("detach", "cpu", "get"):
        fn = getattr(x, meth, None)
        if not callable(fn):
            continue
        try:
            y = fn()
        except Exception as e:
            errors.append(f".{meth}(): {e}")
            continue
        if y is x:
            continue
        a = _direct(y, errors, f"x.{meth}()")
        if a is not None:
            return a
    return None


def _device_to_host(x: Any, errors: list[str]) -> np.ndarray | None:
    """Copy a device array to the host with its framework's own transfer, else through cuda.core."""
    fw = framework_of(x)
    if fw == "jax":  # jax.Array.__array__ fetches device buffers
        try:
            return np.asarray(x)
        except Exception as e:
            errors.append(f"np.asarray: {e}")
            return None
    get = getattr(x, "get", None)
    if fw == "cupy" and callable(get):
        try:
            return np.asarray(get())
        except Exception as e:
            errors.append(f".get(): {e}")
            return None
    cpu = getattr(x, "cpu", None)
    if callable(cpu):  # torch and torch-like: detach (autograd) then move to the host
        try:
            detach = getattr(x, "detach", None)
            y = (detach() if callable(detach) else x).cpu()
        except Exception as e:
            errors.append(f".cpu(): {e}")
            return None
        numpy = getattr(y, "numpy", None)
        if fw == "torch" and callable(numpy):
            try:
                return numpy()
            except Exception as e:
                errors.append(f".cpu().numpy(): {e}")
        return _direct(y, errors, "x.cpu()")
    return _copy_device_view(x, errors)


class DeviceSpan(NamedTuple):
    """Where a generic device array's elements live: device address, dtype, shape, element strides, device
    ordinal, the producer stream to wait for (CUDA array interface v3; None: nothing to wait for) and the object
    keeping the memory alive during the copy."""

    ptr: int
    dtype: np.dtype
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    ordinal: int
    stream: int | None = None
    owner: Any = None


#: ``copy(ptr, nbytes, ordinal, stream) -> uint8 host array``: a synchronous device-to-host byte copy
HostCopy = Callable[[int, int, int, "int | None"], np.ndarray]


def _copy_device_view(x: Any, errors: list[str]) -> np.ndarray | None:
    """Generic DLPack / CUDA-array-interface producer: the bytes its elements span are copied with one driver
    memcpy (:func:`varblock.runtime.memory.copy_to_host`), then arranged on the host with NumPy strides."""
    try:
        from varblock.runtime import memory

        return span_to_host(device_span(x), memory.copy_to_host)
    except Exception as e:
        errors.append(f"device-to-host copy: {type(e).__name__}: {e}")
        return None


def device_span(x: Any) -> DeviceSpan:
    """The :class:`DeviceSpan` of a device array exporting ``__dlpack__`` (read through cuda.core's
    ``StridedMemoryView``, ordered on the legacy default stream) or else ``__cuda_array_interface__`` (the dict
    read directly, any version >= 2)."""
    if hasattr(x, "__dlpack__"):
        from cuda.core.utils import StridedMemoryView

        # stream 1 (legacy default): the producer orders its pending work before it, and so before the memcpy
        view = StridedMemoryView.from_dlpack(x, stream_ptr=1)
        shape = tuple(int(d) for d in view.shape)
        strides = compact_strides(shape) if view.strides is None else tuple(int(t) for t in view.strides)
        return DeviceSpan(int(view.ptr), np.dtype(view.dtype), shape, strides, int(view.device_id), None, view)
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is None:
        raise TypeError(f"{type(x).__name__} exports neither __dlpack__ nor __cuda_array_interface__")
    return cai_span(cai, device_ordinal(x) or 0, owner=x)


def cai_span(cai: Any, ordinal: int, owner: Any = None) -> DeviceSpan:
    """A :class:`DeviceSpan` from a ``__cuda_array_interface__`` dict (version 2 or later; byte strides become
    element strides; v3's ``stream`` is kept for the copy to wait on). Raises ValueError / TypeError on a
    malformed or unsupported interface."""
    what = "__cuda_array_interface__"
    if not isinstance(cai, dict):
        raise TypeError(f"{what}: expected a dict, got {type(cai).__name__}")
    missing = [k for k in ("version", "data", "shape", "typestr") if k not in cai]
    if missing:
        raise ValueError(f"{what}: missing {', '.join(missing)}")
    version = cai["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 2:
        raise ValueError(f"{what}: version {version!r} is not supported (need 2 or later)")
    if cai.get("mask") is not None:
        raise ValueError(f"{what}: masked arrays are not supported")
    data = cai["data"]
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (int, np.integer))):
        raise ValueError(f"{what}: data must be (pointer, read_only), got {data!r}")
    dtype = np.dtype(cai["typestr"])
    shape = tuple(int(d) for d in cai["shape"])
    byte_strides = cai.get("strides")
    if byte_strides is None:
        strides = compact_strides(shape)
    else:
        byte_strides = tuple(int(t) for t in byte_strides)
        if len(byte_strides) != len(shape) or any(t % dtype.itemsize for t in byte_strides):
            raise ValueError(f"{what}: strides {byte_strides} do not fit shape {shape} of {dtype} elements")
        strides = tuple(t // dtype.itemsize for t in byte_strides)
    stream = cai.get("stream") if version >= 3 else None
    if stream is not None and (isinstance(stream, bool) or not isinstance(stream, int) or stream == 0):
        raise ValueError(f"{what}: stream must be None or a non-zero stream handle, got {stream!r}")
    return DeviceSpan(int(data[0]), dtype, shape, strides, int(ordinal), stream, owner)


def span_to_host(span: DeviceSpan, copy: HostCopy) -> np.ndarray:
    """A C-contiguous host array of ``span``'s elements: ``copy`` fetches the bytes from the first to the last
    element in one piece, NumPy strides pick the elements out."""
    if min(span.shape, default=1) == 0:
        return np.empty(span.shape, dtype=span.dtype)
    nbytes = span_bytes(span.shape, span.strides, span.dtype.itemsize)
    raw = copy(span.ptr, nbytes, span.ordinal, span.stream)
    if raw.dtype != np.uint8 or raw.shape != (nbytes,):
        raise RuntimeError(f"host copy returned {raw.dtype} {raw.shape}, expected {nbytes} bytes")
    return from_span(raw, span.dtype, span.shape, span.strides)


def span_bytes(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> int:
    """Bytes from the first to the last element of a non-empty strided array (element strides >= 0)."""
    if any(t < 0 for t in strides):
        raise ValueError(f"negative strides {strides} are not supported")
    return (1 + sum((d - 1) * t for d, t in zip(shape, strides))) * itemsize


def from_span(raw: np.ndarray, dtype: np.dtype, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """A C-contiguous copy of the strided array whose element span ``raw`` (bytes) holds."""
    steps = tuple(t * dtype.itemsize for t in strides)
    return np.lib.stride_tricks.as_strided(raw.view(dtype), shape, steps, writeable=False).copy()


def compact_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-contiguous array of ``shape``."""
    acc, st = 1, []
    for d in reversed(shape):
        st.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(st))


# ---------------------------------------------------------------------------------------------------------------
# streams and outputs


def current_stream_handle(obj: Any, ordinal: int) -> int | None:
    """The raw handle of the current stream of the framework that made ``obj`` on device ``ordinal`` (torch,
    CuPy); None for frameworks without a current-stream notion."""
    fw = framework_of(obj)
    if fw == "torch":
        import torch

        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # the fast accessor Triton uses
        return int(raw(ordinal)) if raw is not None else int(torch.cuda.current_stream(ordinal).cuda_stream)
    if fw == "cupy":
        import cupy

        with cupy.cuda.Device(ordinal):
            return int(cupy.cuda.get_current_stream().ptr)
    return None


def numpy_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype of a varblock dtype name (bfloat16 through ml_dtypes)."""
    if dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("bfloat16 outputs for this array type need the ml_dtypes package "
                            "(or pass torch/jax arrays)") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def empty(like: Any, shape: tuple[int, ...], dtype: str, device_id: int, stream: Any) -> tuple[Any, int]:
    """A new device array of the same framework as ``like`` (torch, CuPy: uninitialised; JAX: zero-filled and
    allocated by JAX; otherwise a cuda.core view exporting DLPack); returns (array, device pointer). ``stream``:
    the cuda.core stream the allocation is ordered on where varblock allocates itself."""
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
    if fw == "jax":
        return _jax_empty(like, shape, dtype, device_id)
    view = _cuda_core_empty(shape, dtype, device_id, stream)
    return view, int(view.ptr)


def _jax_empty(like: Any, shape: tuple[int, ...], dtype: str, device_id: int) -> tuple[Any, int]:
    """A zero-filled JAX array on ``like``'s GPU (on device ``device_id`` when ``like`` is not a single-device
    array) and its buffer pointer. JAX allocates it (no DLPack export, so bfloat16 works) and the fill has finished
    on return, so a kernel on any stream may overwrite it; the caller must finish its writes before JAX reads it
    (varblock.jax synchronises the launch stream)."""
    import jax
    import jax.numpy as jnp

    devs = getattr(like, "devices", None)
    devices = list(devs()) if callable(devs) else []
    if len(devices) == 1 and devices[0].platform == "gpu":
        dev = devices[0]
    else:
        gpus = [d for d in jax.devices() if d.platform == "gpu" and d.id == device_id]
        if not gpus:
            raise ValueError(f"out: JAX has no GPU device with id {device_id}")
        dev = gpus[0]
    a = jnp.zeros(shape, dtype=getattr(jnp, dtype), device=dev)
    a.block_until_ready()  # the fill runs on JAX's stream: finish it before a kernel writes the buffer
    return a, int(a.unsafe_buffer_pointer())


def _cuda_core_empty(shape: tuple[int, ...], dtype: str, device_id: int, stream: Any) -> Any:
    """A cuda.core allocation viewed as an array exporting DLPack."""
    from cuda.core.utils import StridedMemoryView

    from varblock.runtime.device import device

    dt = numpy_dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    buf = device(device_id).allocate(max(n, 1), stream=stream)
    return StridedMemoryView.from_buffer(buf, shape, dtype=dt)


__all__ = [
    "FRAMEWORKS", "DL_CPU", "DL_CUDA", "DL_CUDA_HOST", "DL_CUDA_MANAGED", "framework_of", "dlpack_device",
    "is_device_array", "device_ordinal", "to_host", "compact_strides", "DeviceSpan", "device_span", "cai_span",
    "span_to_host", "span_bytes", "from_span", "current_stream_handle", "numpy_dtype", "empty",
]
