"""A tiny SIMT emulator for the ``layout_device`` CuTe DSL kernels, on the CPU: stand-in ``cutlass`` /
``cutlass.cute`` modules (decorators are the identity, ``Int32`` is ``int``, tensors index NumPy views of fake
device memory with bounds checks) and a runner that executes every thread of a CTA as a Python thread, with warp
collectives (ballot, butterfly / up shuffles) and CTA barriers implemented by barriers. So the kernels' own source
(index math, loop bounds, ballots, the group scans) runs here. Threads run one at a time and switch only at
collectives, barriers and exits; a collective not reached by all 32 lanes of a warp (or reached from different
source lines) is reported as an error.

Use only in a fresh interpreter: :func:`install` puts the stand-ins into ``sys.modules`` before any kernel module
is imported (tests/test_device_layout_emulated.py runs it in a subprocess).
"""

from __future__ import annotations

import sys
import threading
import types
from collections import deque
from typing import Any

import numpy as np

_TLS = threading.local()
TIMEOUT_S = 60.0


class _Any:
    """Attribute sink for DSL names the kernels only mention (types in annotations, address spaces)."""

    def __getattr__(self, name: str) -> Any:
        return _Any()

    def __call__(self, *a: Any, **k: Any) -> Any:
        return _Any()


def _identity_decorator(fn: Any = None, **kwargs: Any) -> Any:
    if fn is None:
        return lambda f: f
    return fn


class Layout:
    def __init__(self, shape: Any, stride: Any = None):
        self.shape = tuple(shape) if isinstance(shape, tuple) else (int(shape),)
        if stride is None:
            if len(self.shape) != 1:
                raise AssertionError("emulator: multi-dimensional layouts need explicit strides")
            stride = (1,)
        self.stride = tuple(stride) if isinstance(stride, tuple) else (int(stride),)


class Ptr:
    """A device pointer: a flat NumPy array of the pointee type and an element offset into it."""

    def __init__(self, buf: np.ndarray | None, offset: int, name: str):
        self.buf, self.offset, self.name = buf, offset, name


class Tensor:
    def __init__(self, ptr: Ptr, layout: Layout):
        self.ptr, self.layout = ptr, layout

    def _at(self, idx: Any) -> int:
        idx = idx if isinstance(idx, tuple) else (idx,)
        if len(idx) != len(self.layout.stride):
            raise AssertionError(f"{self.ptr.name}: index {idx} for a rank-{len(self.layout.stride)} tensor")
        for i, n in zip(idx, self.layout.shape):
            if not 0 <= int(i) < int(n):
                raise AssertionError(f"{self.ptr.name}: index {idx} outside the tensor's shape {self.layout.shape}")
        off = self.ptr.offset + sum(int(i) * int(s) for i, s in zip(idx, self.layout.stride))
        if self.ptr.buf is None or not 0 <= off < self.ptr.buf.shape[0]:
            size = 0 if self.ptr.buf is None else self.ptr.buf.shape[0]
            raise AssertionError(f"{self.ptr.name}: element {off} outside its allocation of {size}")
        return off

    def __getitem__(self, idx: Any) -> int:
        return int(self.ptr.buf[self._at(idx)])

    def __setitem__(self, idx: Any, value: Any) -> None:
        self.ptr.buf[self._at(idx)] = int(value)


class Deadlock(RuntimeError):
    """Some thread waits at a collective or barrier that the others never reach."""


class _Cta:
    """One CTA: its threads run one at a time (a baton passed through per-thread semaphores), switching only at
    warp collectives, barriers and exits, so an exchange needs no locks and wakes one thread per switch."""

    def __init__(self, threads: int):
        self.n = threads
        self.sem = [_Baton() for _ in range(threads)]
        self.ready: deque[int] = deque()
        self.finished = 0
        self.failed: BaseException | None = None
        self.main = _Baton()
        self.smem: list[np.ndarray] = []
        self.warps = [_Warp() for _ in range(threads // 32)]
        self.bar_waiting: list[int] = []

    def _pass_baton(self) -> None:
        if self.ready:
            self.sem[self.ready.popleft()].release()
        elif self.finished == self.n or self.failed is not None:
            self.main.release()
        else:
            self.failed = Deadlock("a barrier or warp collective is not reached by every thread")
            self.main.release()

    def wait_turn(self, tid: int) -> None:
        """Give up the baton and sleep until woken (raises when the CTA failed meanwhile)."""
        self._pass_baton()
        self.sem[tid].acquire()
        if self.failed is not None:
            raise _Aborted()

    def barrier(self, tid: int) -> None:
        self.bar_waiting.append(tid)
        if len(self.bar_waiting) < self.n - self.finished:
            self.wait_turn(tid)
            return
        others = [t for t in self.bar_waiting if t != tid]
        self.bar_waiting = []
        self.ready.extend(others)

    def exit(self, error: BaseException | None) -> None:
        self.finished += 1
        if error is not None and self.failed is None:
            self.failed = error
        if self.failed is not None:  # wake everyone so that they abort
            for t in range(self.n):
                self.sem[t].release()
            self.main.release()
            return
        self._pass_baton()


class _Aborted(Exception):
    pass


class _Baton:
    """A binary semaphore on a plain lock (released by another thread): faster than ``threading.Semaphore``."""

    def __init__(self):
        self.lock = threading.Lock()
        self.lock.acquire()

    def acquire(self, timeout: float = -1) -> bool:
        return self.lock.acquire(timeout=timeout)

    def release(self) -> None:
        try:
            self.lock.release()
        except RuntimeError:  # already released (the abort path wakes everyone)
            pass


class _Warp:
    def __init__(self):
        self.slots: list[Any] = [0] * 32
        self.sites: list[Any] = [None] * 32
        self.results: list[Any] = [None] * 32
        self.arrived: list[int] = []

    def exchange(self, lane: int, value: Any) -> list[Any]:
        """Every lane's ``value``; every lane must call from the same source line (else: divergent collective)."""
        f2, f3 = sys._getframe(2), sys._getframe(3)
        self.slots[lane], self.sites[lane] = value, (f2.f_code.co_filename, f2.f_lineno, f3.f_lineno)
        self.arrived.append(lane)
        if len(self.arrived) < 32:
            _TLS.cta.wait_turn(_TLS.tid)
            return self.results[lane]
        if len(set(self.sites)) != 1:
            raise AssertionError(f"divergent warp collective: lanes at {sorted(set(self.sites))}")
        got = list(self.slots)
        base = _TLS.tid - lane
        for other in self.arrived:
            self.results[other] = got
            if other != lane:
                _TLS.cta.ready.append(base + other)
        self.arrived = []
        return got


def _lane() -> int:
    return _TLS.tid % 32


def _warp() -> _Warp:
    return _TLS.cta.warps[_TLS.tid // 32]


def _ballot(pred: Any) -> int:
    return sum(1 << i for i, x in enumerate(_warp().exchange(_lane(), bool(pred))) if x)


def _bfly(v: Any, offset: int = 1, **_: Any) -> Any:
    return _warp().exchange(_lane(), v)[_lane() ^ int(offset)]


def _up(v: Any, offset: int = 1, mask: int = -1, mask_and_clamp: int = 0) -> Any:
    got = _warp().exchange(_lane(), v)
    return got[_lane() - offset] if _lane() >= offset else v


def _sync_warp() -> None:
    _warp().exchange(_lane(), 0)


class SmemAllocator:
    """Each thread's k-th allocation is its CTA's k-th (zero-filled int64 storage)."""

    def __init__(self):
        self.count = 0

    def allocate_tensor(self, dtype: Any, layout: Layout, align: int = 16) -> Tensor:
        cta, k = _TLS.cta, self.count
        self.count += 1
        while len(cta.smem) <= k:  # (one thread runs at a time: no lock)
            cta.smem.append(np.zeros(max(int(np.prod(layout.shape)), 1), np.int64))
        return Tensor(Ptr(cta.smem[k], 0, f"smem{k}"), layout)


def _range(*args: Any, unroll: int = 0, unroll_full: bool = False, **_: Any) -> range:
    return range(*(int(a) for a in args))


def install() -> None:
    """Put the stand-in ``cutlass`` modules into ``sys.modules`` (before any kernel module is imported)."""
    cutlass = types.ModuleType("cutlass")
    cute = types.ModuleType("cutlass.cute")
    utils = types.ModuleType("cutlass.utils")
    arch = types.SimpleNamespace(
        thread_idx=lambda: (_TLS.tid, 0, 0), block_idx=lambda: (_TLS.bid, 0, 0),
        barrier=lambda: _TLS.cta.barrier(_TLS.tid),
        vote_ballot_sync=_ballot, shuffle_sync_bfly=_bfly, shuffle_sync_up=_up, sync_warp=_sync_warp,
        popc=lambda x: bin(int(x) & 0xFFFFFFFF).count("1"), lanemask_lt=lambda: (1 << _lane()) - 1,
        fmax=max)
    for name, fn in (("Int32", int), ("Int64", int), ("Uint32", int), ("Uint8", lambda x: int(x) & 0xFF),
                     ("Float32", float), ("Boolean", bool)):
        setattr(cutlass, name, fn)
    cutlass.Constexpr = _Any()
    cutlass.const_expr = lambda x: x
    cutlass.range = _range
    cutlass.range_constexpr = _range
    cutlass.range_dynamic = _range
    cutlass.min = min
    cutlass.max = max
    cutlass.utils = utils
    cutlass.cute = cute
    utils.SmemAllocator = SmemAllocator
    cute.jit = _identity_decorator
    cute.kernel = _identity_decorator
    cute.arch = arch
    cute.Tensor = Tensor
    cute.Pointer = Ptr
    cute.make_layout = lambda shape, stride=None: Layout(shape, stride)
    cute.make_tensor = lambda ptr, layout: Tensor(ptr, layout)
    cute.AddressSpace = _Any()
    runtime = types.ModuleType("cutlass.cute.runtime")
    runtime.nullptr = lambda *a, **k: None
    cute.runtime = runtime
    sys.modules.update({"cutlass": cutlass, "cutlass.cute": cute, "cutlass.utils": utils,
                        "cutlass.cute.runtime": runtime})


def run_grid(kernel: Any, p: Any, grid: int, threads: int) -> None:
    """Run ``kernel(p)`` on ``grid`` CTAs of ``threads`` threads, one CTA at a time; re-raises a thread's error."""
    for bid in range(grid):
        cta = _Cta(threads)

        def body(tid: int, bid: int = bid, cta: _Cta = cta) -> None:
            _TLS.tid, _TLS.bid, _TLS.cta = tid, bid, cta
            cta.sem[tid].acquire()
            if cta.failed is not None:
                return
            try:
                kernel(p)
            except _Aborted:
                return
            except BaseException as ex:  # noqa: BLE001 - reported to the caller
                cta.exit(ex)
                return
            cta.exit(None)

        ts = [threading.Thread(target=body, args=(t,), daemon=True) for t in range(threads)]
        for t in ts:
            t.start()
        cta.ready.extend(range(1, threads))
        cta.sem[0].release()
        if not cta.main.acquire(timeout=TIMEOUT_S):
            raise Deadlock(f"CTA {bid}: no progress in {TIMEOUT_S} s")
        if cta.failed is not None:
            for t in range(threads):
                cta.sem[t].release()
            raise cta.failed
        for t in ts:
            t.join()
