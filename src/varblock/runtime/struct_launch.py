"""Launching variants whose parameters include by-value structs (``tensormap``, ``i32xN``).

``cuda.core.launch`` passes only scalars, pointers and its own ``TensorMapDescriptor`` (which is built from a
``StridedMemoryView`` and cannot hold bytes made from a manifest recipe), so these variants are launched with the
driver's ``cuLaunchKernelEx`` and an array of pointers to each parameter's bytes: exactly the bytes
:func:`varblock.runtime.params.pack_bytes` gives, which launch capture compares with the DSL's.

:class:`StructLaunch` keeps one aligned buffer per parameter. A call writes the new pointers and the descriptors
that depend on them; descriptors are cached per (parameter, pointer), and :func:`varblock.runtime.tensormap.encode`
caches per full argument tuple, so a repeated call costs dictionary lookups, not driver encodes. Shapes are fixed
per ``StructLaunch`` (ops cache one per shape), so a shape change builds a new one and re-encodes.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from varblock.runtime import device as _device
from varblock.runtime import tensormap
from varblock.runtime.manifest import load_manifest
from varblock.runtime.params import check_requires, grid_of, is_struct, pack_param, pointer_alignments

_DESC_CACHE_LIMIT = 64


def has_struct_params(entry: Mapping[str, Any]) -> bool:
    """Whether ``entry`` needs this launcher (any ``tensormap`` or ``i32xN`` parameter)."""
    return any(is_struct(p["kind"]) for p in entry["params"])


def _aligned_buffer(size: int, align: int) -> tuple[Any, int]:
    """A ctypes buffer and an address inside it aligned to ``align`` with ``size`` bytes available."""
    raw = ctypes.create_string_buffer(size + align)
    addr = ctypes.addressof(raw)
    return raw, addr + (-addr % align)


class StructLaunch:
    """A variant ready to launch from parameter bytes; ``pointers`` name the per-call values (data pointers,
    which may feed ``ptr`` parameters or descriptor recipes)."""

    def __init__(self, entry: Mapping[str, Any], ordinal: int, values: Mapping[str, Any],
                 pointers: Sequence[str] = (), what: str = ""):
        from cuda.bindings import driver

        self.what = what or entry["family"]
        bad = check_requires(entry["requires"], values)
        if bad:
            raise ValueError(f"{self.what}: " + "; ".join(bad))
        self.grid = grid_of(entry["grid"], values)
        self.params = list(entry["params"])
        self.values = dict(values)
        self.pointer_names = list(pointers)
        self.align = pointer_alignments(entry["requires"], self.pointer_names)
        kernel, _ = _device.kernel(ordinal, entry, load_manifest()["_dir"])
        err, self.func = driver.cuKernelGetFunction(kernel.handle)  # bound to this device's primary context
        _check(err, "cuKernelGetFunction")
        self._check_abi(driver)
        self._bufs = [_aligned_buffer(int(p["size"]), max(8, int(p.get("align") or 8))) for p in self.params]
        self._ptrs = (ctypes.c_void_p * max(1, len(self.params)))(*[a for _, a in self._bufs])
        self.empty = 0 in self.grid  # nothing to launch (and descriptors of empty extents do not exist)
        for i, p in enumerate(self.params if not self.empty else ()):  # once; calls rewrite what pointers change
            self._write(i, pack_param(p, self.values))
        # per call: ptr params named in `pointers`, and descriptors whose recipe reads one of them
        self._ptr_slots = [i for i, p in enumerate(self.params) if p["kind"] == "ptr" and p["name"] in pointers]
        self._desc_slots = [i for i, p in enumerate(self.params)
                            if p["kind"] == "tensormap" and p["recipe"]["pointer"] in pointers]
        self._descs: dict[tuple[int, int], bytes] = {}
        self._lock = threading.Lock()  # the buffers are shared: one call at a time fills and launches them
        self.config = _launch_config(driver, entry, self.grid)

    def _check_abi(self, driver: Any) -> None:
        """The driver's view of the kernel's parameter sizes must equal the manifest's."""
        for i, p in enumerate(self.params):
            err, _offset, size = driver.cuFuncGetParamInfo(self.func, i)
            _check(err, f"cuFuncGetParamInfo({i})")
            if int(size) != int(p["size"]):
                raise RuntimeError(f"{self.what}: kernel parameter {i} ({p['name']}) has {size} bytes in the cubin, "
                                   f"the manifest says {p['size']}")

    def _write(self, i: int, data: bytes) -> None:
        ctypes.memmove(self._bufs[i][1], data, len(data))

    def __call__(self, stream: Any, pointers: Sequence[int]) -> None:
        with self._lock:
            self._fill_and_launch(stream, pointers)

    def _fill_and_launch(self, stream: Any, pointers: Sequence[int]) -> None:
        from cuda.bindings import driver

        if self.empty:
            return
        values = self.values
        for name, al, ptr in zip(self.pointer_names, self.align, pointers):
            if ptr % al:
                raise ValueError(f"{self.what}: {name} address must be a multiple of {al} (got 0x{ptr:x})")
            values[name] = ptr
        for i in self._ptr_slots:
            self._write(i, int(values[self.params[i]["name"]]).to_bytes(8, "little"))
        for i in self._desc_slots:
            p = self.params[i]
            key = (i, int(values[p["recipe"]["pointer"]]))
            desc = self._descs.get(key)
            if desc is None:
                desc = tensormap.encode(tensormap.tensormap_args(p["name"], p["recipe"], values))
                if len(self._descs) >= _DESC_CACHE_LIMIT:
                    self._descs.clear()
                self._descs[key] = desc
            self._write(i, desc)
        self.config.hStream = driver.CUstream(int(stream.handle) if hasattr(stream, "handle") else int(stream))
        (err,) = driver.cuLaunchKernelEx(self.config, self.func, ctypes.addressof(self._ptrs), 0)
        _check(err, f"cuLaunchKernelEx({self.what})")


def _launch_config(driver: Any, entry: Mapping[str, Any], grid: tuple[int, int, int]) -> Any:
    """A ``CUlaunchConfig`` with the grid, block, shared memory and the launch attributes ``entry`` asks for
    (cluster dims, programmatic dependent launch, cooperative)."""
    cfg = driver.CUlaunchConfig()
    cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = (int(g) for g in grid)
    cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = (int(b) for b in entry["block"])
    cfg.sharedMemBytes = int(entry.get("dynamic_smem_bytes") or 0)
    attrs = []
    ids = driver.CUlaunchAttributeID
    if entry.get("cluster_dims"):
        a = driver.CUlaunchAttribute()
        a.id = ids.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
        a.value.clusterDim.x, a.value.clusterDim.y, a.value.clusterDim.z = (int(c) for c in entry["cluster_dims"])
        attrs.append(a)
    if entry.get("pdl"):
        a = driver.CUlaunchAttribute()
        a.id = ids.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        a.value.programmaticStreamSerializationAllowed = 1
        attrs.append(a)
    if entry.get("cooperative"):
        a = driver.CUlaunchAttribute()
        a.id = ids.CU_LAUNCH_ATTRIBUTE_COOPERATIVE
        a.value.cooperative = 1
        attrs.append(a)
    cfg.attrs = attrs
    cfg.numAttrs = len(attrs)
    return cfg


def _check(err: Any, what: str) -> None:
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err}")
