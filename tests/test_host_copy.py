"""The generic device-to-host path on the CPU: reading ``__cuda_array_interface__`` dicts (v2 and v3) and arranging
the bytes one memcpy brings back, with a fake memcpy over a NumPy buffer standing in for device memory."""

from __future__ import annotations

import numpy as np
import pytest

from varblock.runtime import frameworks as fw

BASE_ADDR = 0x7F0000001000  # the fake device address of the first byte of the backing buffer


def _fake_device(base: np.ndarray):
    """A fake ``copy(ptr, nbytes, ordinal, stream)`` reading ``base``'s bytes as if they lived at BASE_ADDR; it
    records its calls."""
    mem = base.view(np.uint8).reshape(-1)
    calls: list[tuple[int, int, int, int | None]] = []

    def copy(ptr: int, nbytes: int, ordinal: int, stream: int | None) -> np.ndarray:
        calls.append((ptr, nbytes, ordinal, stream))
        off = ptr - BASE_ADDR
        assert 0 <= off and off + nbytes <= mem.size, "copy outside the fake allocation"
        return np.array(mem[off:off + nbytes])

    return copy, calls


def _cai_of(base: np.ndarray, v: np.ndarray, version: int, **extra) -> dict:
    """The CUDA array interface a producer would give for the view ``v`` of ``base`` at BASE_ADDR."""
    off = v.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    strides = None if v.flags.c_contiguous else v.strides
    return dict(version=version, data=(BASE_ADDR + off, False), shape=v.shape, typestr=v.dtype.str,
                strides=strides, **extra)


VIEWS = {
    "contiguous": lambda b: b,
    "sliced": lambda b: b[3::2, 1:4],
    "transposed": lambda b: b.T,
    "column": lambda b: b[:, 2],
    "broadcast_row": lambda b: np.broadcast_to(b[4], (6, 5)),
    "empty": lambda b: b[:0],
}


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("view", sorted(VIEWS))
@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.float64])
def test_cai_dict_copied_and_arranged_on_the_host(view, version, dtype):
    base = np.random.default_rng().integers(-1000, 1000, size=(37, 5)).astype(dtype)
    v = VIEWS[view](base)
    stream = 0x5A5A00 if version == 3 else None
    cai = _cai_of(base, v, version, **({"stream": stream} if version == 3 else {}))
    span = fw.cai_span(cai, 3)
    assert span.ordinal == 3 and span.dtype == np.dtype(dtype) and span.shape == v.shape
    assert span.stream == stream
    copy, calls = _fake_device(base)
    got = fw.span_to_host(span, copy)
    assert got.dtype == np.dtype(dtype) and got.flags.c_contiguous and np.array_equal(got, v)
    if v.size == 0:
        assert calls == []
    else:  # one memcpy of exactly the bytes from the first to the last element
        first = v.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        last = first + sum((d - 1) * s for d, s in zip(v.shape, v.strides)) + v.itemsize
        assert calls == [(BASE_ADDR + first, last - first, 3, stream)]


def test_cai_stream_is_ignored_before_v3():
    base = np.arange(6, dtype=np.int32)
    assert fw.cai_span(_cai_of(base, base, 2, stream=77), 0).stream is None


@pytest.mark.parametrize("bad, match", [
    ({"version": 1}, "version 1 is not supported"),
    ({"version": True}, "version True"),
    ({"version": None}, "version None"),
    ({"mask": object()}, "masked"),
    ({"data": 1234}, "data must be"),
    ({"strides": (6, 4)}, "do not fit"),
    ({"strides": (20,)}, "do not fit"),
    ({"stream": 0}, "stream must be"),
    ({"stream": "s"}, "stream must be"),
])
def test_cai_dict_errors(bad, match):
    base = np.zeros((3, 5), dtype=np.int32)
    cai = dict(_cai_of(base, base, 3), **bad)
    with pytest.raises(ValueError, match=match):
        fw.cai_span(cai, 0)
    with pytest.raises(ValueError, match="missing typestr"):
        fw.cai_span({k: x for k, x in _cai_of(base, base, 3).items() if k != "typestr"}, 0)
    with pytest.raises(TypeError, match="expected a dict"):
        fw.cai_span([1, 2], 0)


def test_span_to_host_checks_what_the_copy_returns():
    span = fw.DeviceSpan(BASE_ADDR, np.dtype(np.int32), (4,), (1,), 0)
    with pytest.raises(RuntimeError, match="expected 16 bytes"):
        fw.span_to_host(span, lambda ptr, n, o, s: np.zeros(n - 1, np.uint8))


class _CAIProducer:
    """A device array varblock knows nothing about, exporting only a v3 interface."""

    def __init__(self, cai: dict):
        self.__cuda_array_interface__ = cai


def test_to_host_of_a_cai_producer_goes_through_memory_copy(monkeypatch):
    """fw.to_host on a CUDA-array-interface-only object: one varblock.runtime.memory.copy_to_host call, the
    producer's v3 stream handed to it, the strided elements arranged on the host."""
    from varblock.runtime import memory

    base = np.random.default_rng().integers(-1000, 1000, size=(37, 5)).astype(np.int32)
    v = base[::2, 1:4]
    copy, calls = _fake_device(base)
    monkeypatch.setattr(memory, "copy_to_host", copy)
    obj = _CAIProducer(_cai_of(base, v, 3, stream=1))
    assert fw.framework_of(obj) == "generic" and fw.is_device_array(obj)
    got = fw.to_host(obj, "x")
    assert np.array_equal(got, v) and len(calls) == 1 and calls[0][2:] == (0, 1)
    bad = _CAIProducer(dict(_cai_of(base, v, 3), version=1))
    with pytest.raises(TypeError, match=r"x: .*version 1 is not supported"):
        fw.to_host(bad, "x")


def test_memory_copy_to_host_calls_the_driver_and_checks_its_codes(monkeypatch):
    """varblock.runtime.memory.copy_to_host with the driver calls faked: stream wait first, then one DtoH memcpy
    into a fresh uint8 array; a failing code raises."""
    driver = pytest.importorskip("cuda.bindings.driver")
    from varblock.runtime import memory

    src = np.arange(10, dtype=np.uint8) * 3
    log: list[tuple] = []

    def memcpy(dst, ptr, n):
        log.append(("memcpy", ptr, n))
        np.copyto(np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * n).from_address(dst)), src[:n])
        return (0,)

    monkeypatch.setattr(memory, "device", lambda ordinal: log.append(("device", ordinal)))
    monkeypatch.setattr(driver, "cuMemcpyDtoH", memcpy)
    monkeypatch.setattr(driver, "cuStreamSynchronize", lambda s: (log.append(("sync", s)), (0,))[1])
    got = memory.copy_to_host(0xABC0, 7, 2, after_stream=0x99)
    assert got.dtype == np.uint8 and np.array_equal(got, src[:7])
    assert log == [("device", 2), ("sync", 0x99), ("memcpy", 0xABC0, 7)]
    log.clear()
    assert memory.copy_to_host(0xABC0, 0, 0).shape == (0,) and ("sync", None) not in log
    monkeypatch.setattr(driver, "cuMemcpyDtoH", lambda dst, ptr, n: (1,))
    with pytest.raises(RuntimeError, match="cuMemcpyDtoH failed"):
        memory.copy_to_host(0xABC0, 4, 0)
    monkeypatch.setattr(driver, "cuStreamSynchronize", lambda s: (700,))
    with pytest.raises(RuntimeError, match="cuStreamSynchronize"):
        memory.copy_to_host(0xABC0, 4, 0, after_stream=5)
