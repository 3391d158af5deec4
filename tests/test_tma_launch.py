"""The byte launcher (runtime/struct_launch.py) on the CPU, against a stand-in driver: the bytes handed to
cuLaunchKernelEx are exactly pack_bytes of the current values, descriptors are re-encoded when (and only when) a
pointer they read changes, and the PreparedLaunch of runtime/launch.py delegates to it."""

from __future__ import annotations

import ctypes
import struct

import pytest

from varblock.kernels import tma_copy
from varblock.runtime import launch as launch_mod
from varblock.runtime import struct_launch, tensormap
from varblock.runtime.params import pack_bytes


class FakeDriver:
    """Records launches (parameter bytes read through the kernelParams pointer array) and encodes."""

    def __init__(self, sizes: list[int]):
        self.sizes = sizes
        self.launches: list[tuple[object, list[bytes]]] = []
        self.encodes = 0

    def cuKernelGetFunction(self, handle):
        return 0, ("function", handle)

    def cuFuncGetParamInfo(self, func, i):
        return 0, 0, self.sizes[i]

    def cuLaunchKernelEx(self, cfg, func, params_addr, extra):
        ptrs = (ctypes.c_void_p * len(self.sizes)).from_address(params_addr)
        self.launches.append((int(cfg.hStream), [ctypes.string_at(p, n) for p, n in zip(ptrs, self.sizes)]))
        return (0,)

    def cuTensorMapEncodeTiled(self, dtype, rank, addr, dims, strides, box, estr, *rest):
        self.encodes += 1
        words = [int(addr), int(rank), *(int(d) for d in dims), *(int(s) for s in strides)]
        return 0, type("Map", (), {"opaque": words + [0] * (16 - len(words))})()


@pytest.fixture
def fake(monkeypatch):
    from cuda.bindings import driver

    entry = dict(tma_copy.variants("sm90")[0].manifest_entry(), dynamic_smem_bytes=8200)
    fd = FakeDriver([p["size"] for p in entry["params"]])
    for name in ("cuKernelGetFunction", "cuFuncGetParamInfo", "cuLaunchKernelEx", "cuTensorMapEncodeTiled"):
        monkeypatch.setattr(driver, name, getattr(fd, name))
    monkeypatch.setattr(struct_launch._device, "kernel", lambda ordinal, e, d: (type("K", (), {"handle": 7})(), None))
    monkeypatch.setattr(struct_launch, "load_manifest", lambda: {"_dir": "."})
    monkeypatch.setattr(launch_mod, "load_manifest", lambda: {"_dir": "."})
    tensormap._cache.clear()
    return fd, entry


def _values(src=0x7F0000000000, dst=0x7F0000100000, rows=100, cols=200) -> dict:
    return {"src": src, "dst": dst, "rows": rows, "cols": cols, "ld_src": cols + 8, "ld_dst": cols}


def test_launched_bytes_are_pack_bytes_and_pointers_re_encode(fake):
    fd, entry = fake
    pl = launch_mod.PreparedLaunch(entry, 0, _values(), pointers=("src", "dst"), what="tma_copy")
    assert pl.struct is not None and pl.grid == (4, 2, 1)
    pl(0x55, (0x7F0000000000, 0x7F0000100000))
    pl(0x56, (0x7F0000200000, 0x7F0000100000))
    pl(0x57, (0x7F0000000000, 0x7F0000100000))  # back to the first pointers: served from the cache
    assert [s for s, _ in fd.launches] == [0x55, 0x56, 0x57]
    for (_, got), src in zip(fd.launches, (0x7F0000000000, 0x7F0000200000, 0x7F0000000000)):
        assert got == pack_bytes(entry["params"], _values(src=src))
        assert struct.unpack_from("<Q", got[0])[0] == src
    assert fd.encodes == 3, "one encode per distinct (pointer, shape): src twice, dst once"


def test_alignment_and_requirements_are_checked(fake):
    _, entry = fake
    pl = struct_launch.StructLaunch(entry, 0, _values(), pointers=("src", "dst"), what="tma_copy")
    with pytest.raises(ValueError, match="src address must be a multiple of 16"):
        pl(0, (0x7F0000000008, 0x7F0000100000))
    with pytest.raises(ValueError, match="row stride"):
        struct_launch.StructLaunch(entry, 0, dict(_values(), ld_src=201), pointers=("src", "dst"))


def test_param_size_mismatch_is_reported(fake):
    fd, entry = fake
    fd.sizes = [128, 8, 128, 16]
    with pytest.raises(RuntimeError, match="dst_coords"):
        struct_launch.StructLaunch(entry, 0, _values(), pointers=("src", "dst"))


def test_empty_grid_launches_nothing(fake):
    fd, entry = fake
    entry = dict(entry, requires=[])
    pl = struct_launch.StructLaunch(entry, 0, _values(cols=0), pointers=("src", "dst"))
    pl(0, (0x7F0000000000, 0x7F0000100000))
    assert fd.launches == []
