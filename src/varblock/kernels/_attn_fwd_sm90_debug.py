"""Debug builds of ``attention_fwd_sm90`` (build time only; off unless ``VARBLOCK_SM90_DEBUG_HANGS=1`` or
``VARBLOCK_SM90_PLAIN=1``, the latter selecting the plain consumer loop, see ``_attn_fwd_sm90_impl``).

With the variable set while building, every mbarrier wait of the kernel (the DSL pipelines call
``cute.arch.mbarrier_wait``) becomes a bounded loop of ``mbarrier.try_wait``: after ``HANG_LIMIT`` failed tries the
thread prints the barrier's shared-memory address, the phase it waits for, its thread and block, and traps, so a
protocol bug shows up as a launch error plus a line naming the barrier instead of a hung process. Map the address to
a pipeline with the struct order of ``_attn_fwd_sm90_impl.Sm90Config.shared_storage`` (Q full/empty at +0/+8, then
K full/empty per stage, V, the tile ring). Named-barrier waits (``bar.sync``: ping-pong turns, warpgroup syncs)
cannot be bounded this way. The variable does not enter the build stamp: build into a separate folder with
``--force``::

    VARBLOCK_SM90_DEBUG_HANGS=1 python build_kernels.py --out build/sm90-debug --arch sm90 --force \\
        --only 'attention_fwd_sm90*'
"""

# (no `from __future__ import annotations`: the DSL reads annotations as objects)
import contextlib
import os

import cutlass
import cutlass.cute as cute
from cutlass import Int32
from cutlass._mlir.dialects import llvm

ENV = "VARBLOCK_SM90_DEBUG_HANGS"
#: build-time switch: the plain consumer loop (S, softmax, P V one after the other; no intra-warpgroup overlap, no
#: ping-pong), to tell a bug of the overlap / turn logic from one elsewhere
ENV_PLAIN = "VARBLOCK_SM90_PLAIN"
#: failed try_wait rounds before a thread reports and traps (each round may suspend for a while: seconds in all)
HANG_LIMIT = 1 << 20


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def plain() -> bool:
    """Whether this build uses the plain consumer loop (``VARBLOCK_SM90_PLAIN=1``)."""
    return os.environ.get(ENV_PLAIN, "") not in ("", "0")


@cutlass.dsl_user_op
def _trap(*, loc=None, ip=None):
    llvm.inline_asm(None, [], "trap;", "", has_side_effects=True, loc=loc, ip=ip)


def _make_bounded_wait(try_wait):
    @cute.jit
    def bounded(mbar_ptr: cute.Pointer, phase: Int32):
        done = try_wait(mbar_ptr, phase)
        n = Int32(0)
        while not done:
            n = n + 1
            if n >= HANG_LIMIT:
                tidx, _, _ = cute.arch.thread_idx()
                bidx, _, _ = cute.arch.block_idx()
                cute.printf("vb attention_fwd_sm90 hang: mbarrier smem 0x%x phase %d thread %d block %d",
                            mbar_ptr.toint(), phase, tidx, bidx)
                _trap()
            done = try_wait(mbar_ptr, phase)

    def wait(mbar_ptr, phase, *, loc=None, ip=None):
        bounded(mbar_ptr, Int32(phase))

    return wait


@contextlib.contextmanager
def bounded_mbarrier_waits():
    """While tracing: ``cute.arch.mbarrier_wait`` -> the bounded, reporting wait (a no-op unless :func:`enabled`)."""
    if not enabled():
        yield
        return
    arch = cute.arch
    original = arch.mbarrier_wait
    arch.mbarrier_wait = _make_bounded_wait(arch.mbarrier_try_wait)
    try:
        yield
    finally:
        arch.mbarrier_wait = original
