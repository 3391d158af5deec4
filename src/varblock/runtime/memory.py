"""Device buffers owned by varblock (plans, work lists, semaphores), allocated through cuda.core."""

from __future__ import annotations

from typing import Any

import numpy as np

from varblock.runtime.device import device


class DeviceBuffer:
    """A cuda.core device allocation with its pointer; freed when the object is garbage-collected."""

    def __init__(self, ordinal: int, nbytes: int, stream: Any = None):
        """Allocate ``nbytes``. Without ``stream`` the allocation is complete on return (usable from any
        stream); with a cuda.core ``stream`` it is stream-ordered on that stream, with no host synchronisation."""
        self.ordinal = ordinal
        self.nbytes = int(nbytes)
        dev = device(ordinal)
        self._buf = dev.allocate(max(self.nbytes, 16), stream=stream if stream is not None else dev.default_stream)
        if stream is None:
            dev.default_stream.sync()
        self.ptr = int(self._buf.handle)

    @classmethod
    def from_host(cls, ordinal: int, array: np.ndarray) -> DeviceBuffer:
        """A synchronous copy of a host array (C order) to a new device buffer."""
        from cuda.bindings import driver

        a = np.ascontiguousarray(array)
        b = cls(ordinal, a.nbytes)
        if a.nbytes:
            (err,) = driver.cuMemcpyHtoD(b.ptr, a.ctypes.data, a.nbytes)
            if int(err) != 0:
                raise RuntimeError(f"cuMemcpyHtoD failed: {err}")
        return b

    @classmethod
    def zeros(cls, ordinal: int, nbytes: int, stream: Any = None) -> DeviceBuffer:
        """A zeroed buffer; with ``stream``, allocated and cleared in that stream's order (no host sync)."""
        from cuda.bindings import driver

        b = cls(ordinal, nbytes, stream)
        if stream is None:
            (err,) = driver.cuMemsetD8(b.ptr, 0, max(b.nbytes, 16))
        else:
            (err,) = driver.cuMemsetD8Async(b.ptr, 0, max(b.nbytes, 16), int(stream.handle))
        if int(err) != 0:
            raise RuntimeError(f"cuMemsetD8 failed: {err}")
        return b

    @classmethod
    def copy_of(cls, ordinal: int, src_ptr: int, nbytes: int, stream: Any) -> DeviceBuffer:
        """A stream-ordered device-to-device copy of ``nbytes`` at ``src_ptr`` (no host sync)."""
        from cuda.bindings import driver

        b = cls(ordinal, nbytes, stream)
        if nbytes:
            (err,) = driver.cuMemcpyDtoDAsync(b.ptr, src_ptr, nbytes, int(stream.handle))
            if int(err) != 0:
                raise RuntimeError(f"cuMemcpyDtoDAsync failed: {err}")
        return b

    def to_host(self, dtype: Any, count: int) -> np.ndarray:
        """A synchronous copy back to the host (tests, debugging)."""
        from cuda.bindings import driver

        out = np.empty(count, dtype=dtype)
        if out.nbytes:
            (err,) = driver.cuMemcpyDtoH(out.ctypes.data, self.ptr, out.nbytes)
            if int(err) != 0:
                raise RuntimeError(f"cuMemcpyDtoH failed: {err}")
        return out


def copy_to_host(ptr: int, nbytes: int, ordinal: int, after_stream: int | None = None) -> np.ndarray:
    """A synchronous copy of the ``nbytes`` at device address ``ptr`` (device ``ordinal``) into a new host
    ``uint8`` array, by ``cuMemcpyDtoH`` (ordered after the legacy default stream's work). ``after_stream``: a raw
    stream handle whose pending work is waited for first (a CUDA array interface v3 producer's stream)."""
    from cuda.bindings import driver

    device(ordinal)  # its primary context current on this thread
    if after_stream is not None:
        (err,) = driver.cuStreamSynchronize(int(after_stream))
        if int(err) != 0:
            raise RuntimeError(f"cuStreamSynchronize({after_stream:#x}) failed: {err}")
    out = np.empty(int(nbytes), dtype=np.uint8)
    if out.nbytes:
        (err,) = driver.cuMemcpyDtoH(out.ctypes.data, int(ptr), out.nbytes)
        if int(err) != 0:
            raise RuntimeError(f"cuMemcpyDtoH failed: {err}")
    return out
