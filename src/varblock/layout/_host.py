"""Host-side helpers shared by the layout package: input conversion, validation, ragged index arithmetic.

Arrays reach the host through :func:`varblock.runtime.frameworks.to_host` (re-exported here), the one adapter for
NumPy, sequences, and torch / CuPy / JAX / DLPack tensors on the host or a GPU. No framework is imported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..runtime.frameworks import to_host

INT32_MAX = 2**31 - 1

#: kernel-supported fixed block sizes: multiples of 16 in [16, 1024]
BLOCK_MIN, BLOCK_MAX, BLOCK_MULTIPLE = 16, 1024, 16


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
    """Host bool array (0/1 integers accepted), checked for ndim."""
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
    """Raise when ``value`` exceeds the int32 range the kernels index with."""
    if value > INT32_MAX:
        raise ValueError(f"{name}: {what} = {value} exceeds the int32 range (2^31 - 1) that the kernels index with")


def cdiv(a, b):
    """Ceiling division (ints or integer arrays)."""
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
    """A C-contiguous read-only array."""
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a
