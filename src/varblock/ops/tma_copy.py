"""``tma_copy``: a 2-D array copy through TMA (sm90). Internal: it exists to exercise the ``tensormap`` kernel
parameter kind end to end (descriptors built from a manifest recipe, re-encoded when pointers or shapes change);
it is not part of the public API."""

from __future__ import annotations

from typing import Any

from varblock.runtime.device import stream_for
from varblock.runtime.launch import PreparedLaunch
from varblock.runtime.select import variant_for
from varblock.runtime.tensors import (
    as_device_array,
    check_aligned,
    check_dtype,
    check_inner_contiguous,
    check_ndim,
    check_same_device,
    check_shape,
)

DTYPES = ("bfloat16", "float16", "float32")
_POINTERS = ("src", "dst")
_prepared: dict[tuple, PreparedLaunch] = {}
_CACHE_LIMIT = 256


def tma_copy(src: Any, dst: Any, *, stream: Any = None) -> Any:
    """Copy ``src`` into ``dst`` (both ``[rows, cols]``, same dtype, last dimension contiguous, 16-byte aligned
    addresses and row strides, rows of whole 16-byte units). Returns ``dst``."""
    s = as_device_array(src, "src")
    d = as_device_array(dst, "dst")
    for a in (s, d):
        check_dtype(a, DTYPES)
        check_ndim(a, 2, "[rows, cols]")
        check_inner_contiguous(a)
        check_aligned(a, 16)
    if d.dtype != s.dtype:
        raise TypeError(f"dst: dtype {d.dtype} differs from src's {s.dtype}")
    check_shape(d, s.shape, "(that of src)")
    rows, cols = s.shape
    if rows == 0 or cols == 0:
        return dst
    if (cols * s.itemsize) % 16:
        raise ValueError(f"src: a row must be a whole number of 16-byte units for TMA (TMA stores write whole units); "
                         f"got {cols} elements of {s.itemsize} B")
    ordinal = check_same_device([s, d])
    lds = [_row_stride(a) for a in (s, d)]
    entry = variant_for("tma_copy", ordinal, {"dtype": s.dtype})
    st = stream_for(stream, ordinal, like=src)
    key = (entry["name"], ordinal, rows, cols, *lds)
    prepared = _prepared.get(key)
    if prepared is None:
        values = {"src": s.ptr, "dst": d.ptr, "rows": rows, "cols": cols, "ld_src": lds[0], "ld_dst": lds[1]}
        prepared = PreparedLaunch(entry, ordinal, values, pointers=_POINTERS, what="tma_copy")
        if len(_prepared) >= _CACHE_LIMIT:
            _prepared.clear()
        _prepared[key] = prepared
    prepared(st, (s.ptr, d.ptr))
    return dst


def _row_stride(a: Any) -> int:
    """Row stride in elements. A single row's stride is arbitrary (DLPack may report 1) and never used for
    addressing: take the width rounded up to 16 bytes."""
    rows, cols = a.shape
    per16 = 16 // a.itemsize
    ld = a.strides[0] if rows > 1 else -(-cols // per16) * per16
    if (ld * a.itemsize) % 16:
        raise ValueError(f"{a.name}: the row stride must be a multiple of 16 bytes for TMA (got {ld} elements of "
                         f"{a.itemsize} B)")
    return ld
