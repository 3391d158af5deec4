"""Host-side helpers shared by the layout package: input conversion, validation, ragged index arithmetic.

Only NumPy and the standard library are imported here (the runtime must not import a framework at module import).
"""

from __future__ import annotations

from typing import Any

import numpy as np

INT32_MAX = 2**31 - 1

#: kernel-supported fixed block sizes: multiples of 16 in [16, 1024]
BLOCK_MIN, BLOCK_MAX, BLOCK_MULTIPLE = 16, 1024, 16


def to_host(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a NumPy array on the host.

    Accepts NumPy arrays, Python sequences, and any object exposing ``__dlpack__`` or ``__array__`` (PyTorch,
    CuPy, JAX, ...). Device tensors are copied to the host: ``np.from_dlpack`` first, then ``np.asarray``, then
    the object's own ``.detach()`` / ``.cpu()`` (PyTorch style) or ``.get()`` (CuPy style). No framework is
    imported.
    """
    if isinstance(x, np.ndarray):
        return x
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    errors = []
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except Exception as e:  # device tensor, unsupported dtype, ...
            errors.append(f"np.from_dlpack: {e}")
    if hasattr(x, "__array__") or isinstance(x, (list, tuple, int, float, bool, np.generic)):
        try:
            return np.asarray(x)
        except Exception as e:
            errors.append(f"np.asarray: {e}")
    for meth in ("detach", "cpu", "get"):
        fn = getattr(x, meth, None)
        if callable(fn):
            try:
                y = fn()
            except Exception as e:
                errors.append(f".{meth}(): {e}")
                continue
            if y is x:
                continue
            if isinstance(y, np.ndarray):
                return y
            return to_host(y, name)
    detail = "; ".join(errors) if errors else "it has neither __dlpack__ nor __array__"
    raise TypeError(f"{name}: expected a NumPy array or a DLPack/array-interface tensor, got {type(x).__name__} "
                    f"({detail})")


def as_int(x: Any, name: str, *, ndim: int | None = None, shape: tuple | None = None) -> np.ndarray:
    """Host integer array (bool rejected), checked for ndim/shape; returned as int64."""
    a = to_host(x, name)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(a.shape)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    return a.astype(np.int64, copy=False)


def as_bool(x: Any, name: str, *, ndim: int | None = None) -> np.ndarray:
    a = to_host(x, name)
    if a.dtype != np.bool_:
        if np.issubdtype(a.dtype, np.integer):
            bad = (a != 0) & (a != 1)
            if bad.any():
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(f"{name}: expected a boolean (0/1) mask, found {a[idx]} at {idx}")
            a = a.astype(np.bool_)
        else:
            raise TypeError(f"{name}: expected a boolean array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(a.shape)}")
    return a


def check_cu_seqlens(x: Any, name: str) -> np.ndarray:
    """Validate a cumulative sequence-length vector; return an int32 host copy."""
    a = as_int(x, name, ndim=1)
    if a.shape[0] < 1:
        raise ValueError(f"{name}: expected shape [B+1] with B >= 0, got an empty array")
    if a[0] != 0:
        raise ValueError(f"{name}: must start at 0, got {name}[0] = {int(a[0])}")
    d = np.diff(a)
    if (d < 0).any():
        i = int(np.argmax(d < 0))
        raise ValueError(f"{name}: must be non-decreasing (cumulative lengths), but {name}[{i + 1}] = {int(a[i + 1])}"
                         f" < {name}[{i}] = {int(a[i])}")
    if a[-1] > INT32_MAX:
        raise ValueError(f"{name}: total of {int(a[-1])} tokens exceeds the int32 range (2^31 - 1) that the kernels "
                         f"index with")
    out = a.astype(np.int32)
    out.setflags(write=False)
    return out


def check_block_size(v: Any, name: str) -> int:
    """A fixed kernel block size: an int, multiple of 16, in [16, 1024]."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int block size, got {v!r}")
    v = int(v)
    if v < BLOCK_MIN or v > BLOCK_MAX or v % BLOCK_MULTIPLE:
        raise ValueError(f"{name}: block size {v} is not supported by the kernels; expected a multiple of "
                         f"{BLOCK_MULTIPLE} in [{BLOCK_MIN}, {BLOCK_MAX}]")
    return v


def check_int32(value: int, name: str, what: str) -> None:
    if value > INT32_MAX:
        raise ValueError(f"{name}: {what} = {value} exceeds the int32 range (2^31 - 1) that the kernels index with")


def cdiv(a, b):
    return -(-a // b)


def ragged_arange(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For segments of the given lengths: (segment id of each element, position inside its segment).

    Vectorised replacement for ``for s, c in enumerate(counts): for j in range(c): ...``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum()) if counts.size else 0
    seg = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    starts = np.zeros(counts.size, dtype=np.int64)
    if counts.size > 1:
        np.cumsum(counts[:-1], out=starts[1:])
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    return seg, pos


def exclusive_cumsum(counts: np.ndarray) -> np.ndarray:
    """[0, c0, c0+c1, ...] as int64, length len(counts)+1."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a
