"""Everything varblock knows about array frameworks (torch, CuPy, JAX, NumPy), in one place.

* :func:`framework_of`: which framework made an object (one idiom: the root of its type's module, cached per type).
* :func:`is_device_array` / :func:`device_ordinal`: does an object live in CUDA device memory, and on which device.
* :func:`to_host`: any array (NumPy, lists, torch / CuPy / JAX tensors on the host or a GPU, other DLPack or
  CUDA-array-interface producers) as a NumPy array on the host. Device arrays are copied with the framework's own
  transfer (``.cpu()``, ``.get()``, ``__array__``) or, for other producers, through a cuda.core
  ``StridedMemoryView`` copy. Every step runs at most once: no recursion, no loop on objects whose ``.detach()`` or
  ``.cpu()`` returns another object of the same kind.
* :func:`current_stream_handle`: the current CUDA stream of the framework that made an array.
* :func:`empty`: a new uninitialised device array of the caller's framework (outputs).

No framework is imported at module import; torch / CuPy / JAX are imported only to create outputs or read a
current stream for arrays they made, and cuda.core only for the generic device-to-host copy.
"""

from __future__ import annotations

from typing import Any

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


def _copy_device_view(x: Any, errors: list[str]) -> np.ndarray | None:
    """Generic DLPack / CUDA-array-interface producer: the bytes its elements span are copied contiguously through
    cuda.core (a plain memcpy, never a JIT-compiled strided copy), then arranged on the host."""
    try:
        from cuda.core import Buffer
        from cuda.core.utils import StridedMemoryView

        from varblock.runtime.device import device

        # stream 1 (legacy default): producers order their pending work before it
        src = StridedMemoryView.from_any_interface(x, stream_ptr=1)
        dtype = np.dtype(src.dtype)
        shape = tuple(int(d) for d in src.shape)
        strides = compact_strides(shape) if src.strides is None else tuple(int(t) for t in src.strides)
        if min(shape, default=1) == 0:
            return np.empty(shape, dtype=dtype)
        raw = np.empty(span_bytes(shape, strides, dtype.itemsize), dtype=np.uint8)
        span = StridedMemoryView.from_buffer(Buffer.from_handle(int(src.ptr), raw.size, owner=src), (raw.size,),
                                             dtype=np.dtype(np.uint8))
        span.copy_to(StridedMemoryView.from_array_interface(raw), stream=device(int(src.device_id)).default_stream,
                     blocking=True)
        return from_span(raw, dtype, shape, strides)
    except Exception as e:
        errors.append(f"device-to-host copy: {type(e).__name__}: {e}")
        return None


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
    """A new uninitialised device array of the same framework as ``like`` (torch, CuPy, JAX; otherwise a cuda.core
    view exporting DLPack); returns (array, device pointer). ``stream``: the cuda.core stream the allocation is
    ordered on where varblock allocates itself."""
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
    """A cuda.core allocation viewed as an array exporting DLPack."""
    from cuda.core.utils import StridedMemoryView

    from varblock.runtime.device import device

    dt = numpy_dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    buf = device(device_id).allocate(max(n, 1), stream=stream)
    return StridedMemoryView.from_buffer(buf, shape, dtype=dt)


__all__ = [
    "FRAMEWORKS", "DL_CPU", "DL_CUDA", "DL_CUDA_HOST", "DL_CUDA_MANAGED", "framework_of", "dlpack_device",
    "is_device_array", "device_ordinal", "to_host", "compact_strides", "current_stream_handle", "numpy_dtype", "empty",
]
