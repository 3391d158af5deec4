"""Tile schedules of a CTA, chosen at run time by the ``persistent`` kernel scalar.

* single tile (``persistent == 0``): tile ``blockIdx.x``; CTAs past the tile count do nothing; no atomics.
* dynamic persistent (``persistent == 1``): first tile ``blockIdx.x``, then ``gridDim.x + atomicAdd(&counter[NEXT],
  1)`` in table order until the tile count. Thread 0 fetches the next index early in a tile (:meth:`prefetch`),
  publishes it to shared memory once the tile's loads are issued (:meth:`publish`); every thread reads it after the
  epilogue (:meth:`next_tile`). At exit (:meth:`finish`) every CTA counts itself done and the last one resets the
  counter to zero, so the next launch (or a CUDA graph replay) needs no memset.

The tile count is ``*num_tiles_ptr`` when that pointer is nonzero (written on the device), else ``num_tiles``.
"""

from dataclasses import dataclass
from typing import Any

import cutlass.cute as cute
from cutlass import Int32, Int64

from varblock.abi import TILE_COUNTER_DONE, TILE_COUNTER_NEXT

#: words of the shared-memory slot: [0] next tile index, [1] the tile count
SCHED_SMEM_WORDS = 4
_SLOT_NEXT = 0
_SLOT_COUNT = 1


def _word(ptr: cute.Pointer, index: int) -> cute.Pointer:
    """``ptr + index`` for a static index (no pointer arithmetic for 0)."""
    return ptr if index == 0 else ptr + index


@cute.jit
def tile_count(num_tiles: Int32, num_tiles_ptr: cute.Pointer) -> Int32:
    """The number of tiles: ``*num_tiles_ptr`` if that pointer is nonzero, else ``num_tiles``."""
    nt = num_tiles
    if num_tiles_ptr.toint() != Int64(0):
        nt = num_tiles_ptr[0]
    return nt


@cute.jit
def count_tile(debug_counts: cute.Pointer, tile: Int32, tidx: Int32):
    """Test hook: ``debug_counts[tile] += 1`` (once per CTA) when the pointer is nonzero."""
    if debug_counts.toint() != Int64(0):
        if tidx == 0:
            cute.arch.atomic_add(debug_counts + tile, Int32(1))


@dataclass(frozen=True)
class TileScheduler:
    """The tile loop's index source. ``counter``: the ``tile_counter`` kernel pointer; ``s_sched``: int32 smem
    tensor of :data:`SCHED_SMEM_WORDS` words. (Frozen dataclasses are read-only to the DSL: a method call inside a
    dynamic ``if`` / loop does not make the object a carried value.)"""

    persistent: Int32
    counter: cute.Pointer
    s_sched: Any

    @cute.jit
    def first_tile(self, nt: Int32, tidx: Int32) -> Int32:
        """``blockIdx.x``, or -1 when past the tile count ``nt`` (kept in smem, not in a register, for the loop)."""
        s_sched = self.s_sched  # (a local: the DSL carries tensors, not this object, through an `if`)
        if tidx == 0:
            s_sched[_SLOT_COUNT] = nt
        bidx, _, _ = cute.arch.block_idx()
        tile = Int32(bidx)
        if tile >= nt:
            tile = Int32(-1)
        return tile

    @cute.jit
    def prefetch(self, tidx: Int32) -> Int32:
        """Thread 0 of a persistent CTA claims the next index (its latency hides behind the tile's loads)."""
        counter = self.counter
        fetched = Int32(0)
        if self.persistent != 0:
            if tidx == 0:
                fetched = cute.arch.atomic_add(_word(counter, TILE_COUNTER_NEXT), Int32(1))
        return fetched

    @cute.jit
    def publish(self, fetched: Int32, tidx: Int32):
        """Thread 0 stores the claimed index for the CTA (read after the epilogue barriers)."""
        s_sched = self.s_sched
        if self.persistent != 0:
            if tidx == 0:
                s_sched[_SLOT_NEXT] = cute.arch.grid_dim()[0] + fetched

    @cute.jit
    def next_tile(self) -> Int32:
        """The CTA's next tile, or -1. A barrier follows the read: no thread overwrites shared memory (or the slot)
        for the next tile before every thread has read it."""
        s_sched = self.s_sched
        tile_next = Int32(-1)
        if self.persistent != 0:
            tile_next = s_sched[_SLOT_NEXT]
            if tile_next >= s_sched[_SLOT_COUNT]:
                tile_next = Int32(-1)
            cute.arch.barrier()
        return tile_next

    @cute.jit
    def finish(self, tidx: Int32):
        """All of this CTA's fetches precede its 'done' increment; the last CTA resets the counter to zero."""
        counter = self.counter
        if self.persistent != 0:
            if tidx == 0:
                cute.arch.fence_acq_rel_gpu()
                done = cute.arch.atomic_add(_word(counter, TILE_COUNTER_DONE), Int32(1), sem="acq_rel", scope="gpu")
                if done == cute.arch.grid_dim()[0] - 1:
                    counter[TILE_COUNTER_NEXT] = Int32(0)
                    counter[TILE_COUNTER_DONE] = Int32(0)


__all__ = ["SCHED_SMEM_WORDS", "TileScheduler", "count_tile", "tile_count"]
