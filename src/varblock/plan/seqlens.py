"""cu_seqlens arguments: host copies validated once (``layout._host.check_cu_seqlens``), device views checked for
what can be checked without reading them (dtype, rank, contiguity; the prepare kernel validates the contents)."""

from __future__ import annotations

from typing import Any

import numpy as np

from varblock.layout._host import check_cu_seqlens
from varblock.runtime.frameworks import device_ordinal
from varblock.runtime.tensors import DeviceArray, as_device_array, check_same_device


def host_seqlens(x: Any, name: str) -> tuple[np.ndarray, int | None]:
    """A validated int32 host copy of a cumulative-length vector (host or device array; a device array is copied:
    a synchronisation) and the device ordinal it came from (None for host arrays)."""
    if x is None:
        raise TypeError(f"{name}: expected a 1-D int32 array [batch + 1], got None")
    return check_cu_seqlens(x, name), device_ordinal(x)


def device_seqlens(cu_q: Any, cu_k: Any) -> tuple[DeviceArray, DeviceArray]:
    """Views of device ``cu_seqlens_q/k``: contiguous 1-D int32 ``[B+1]`` of one length, on one device."""
    views = []
    for x, name in ((cu_q, "cu_seqlens_q"), (cu_k, "cu_seqlens_k")):
        a = as_device_array(x, name)
        if a.dtype != "int32" or len(a.shape) != 1 or a.shape[0] < 1 or (a.shape[0] > 1 and a.strides[0] != 1):
            raise ValueError(f"{name}: expected a contiguous 1-D int32 array [batch + 1], got {a.dtype} {a.shape}")
        views.append(a)
    cq, ck = views
    if cq.shape != ck.shape:
        raise ValueError(f"cu_seqlens_k: expected {cq.shape[0]} entries like cu_seqlens_q, got {ck.shape[0]}")
    check_same_device(views)
    return cq, ck
