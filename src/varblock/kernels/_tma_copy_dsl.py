"""CuTe DSL source of the TMA tile copy (see tma_copy.py). Build time only.

One CTA copies one ``TILE_M x tile_n`` tile: warp 0 issues a TMA load into 128B-swizzled shared memory (completion
tracked by an mbarrier), every thread waits on the barrier, then one elected lane issues a TMA store of the same
tile. TMA clips both at the tensor's edges, so tail tiles need no masking in the kernel.
"""

from __future__ import annotations

from types import SimpleNamespace

import cutlass.cute as cute
from cutlass import Int64
from cutlass.cute.nvgpu import cpasync
from cutlass.utils import SmemAllocator

from varblock.kernels._dsl import dsl_dtype
from varblock.kernels.common.signature import fake_args, jit_host
from varblock.kernels.registry import Variant
from varblock.kernels.tma_copy import THREADS, TILE_M, tile_cols


def make_host(variant: Variant):
    """Trace-ready host function for one tma_copy variant, and its compile arguments."""
    dtype = dsl_dtype(variant.key["dtype"])
    tile_m, tile_n = TILE_M, tile_cols(variant.key["dtype"])
    tile_bytes = tile_m * tile_n * dtype.width // 8
    elems_16b = 128 // dtype.width  # elements per 16 bytes: TMA needs 16-byte aligned row strides

    @cute.kernel
    def copy_kernel(tma_load: cute.CopyAtom, g_src: cute.Tensor, tma_store: cute.CopyAtom, g_dst: cute.Tensor,
                    s_layout: cute.ComposedLayout):
        bx, by, _ = cute.arch.block_idx()
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        smem = SmemAllocator()
        # the swizzle goes on the pointer (byte addresses: the TMA 128B pattern), not into the layout
        s_tile = smem.allocate_tensor(dtype, s_layout.outer, byte_alignment=1024, swizzle=s_layout.inner)
        mbar = smem.allocate_array(Int64, 1)
        g_src_tile = cute.local_tile(g_src, (tile_m, tile_n), (by, bx))
        g_dst_tile = cute.local_tile(g_dst, (tile_m, tile_n), (by, bx))
        s_load, g_load = cpasync.tma_partition(tma_load, 0, cute.make_layout(1), cute.group_modes(s_tile, 0, 2),
                                               cute.group_modes(g_src_tile, 0, 2))
        s_store, g_store = cpasync.tma_partition(tma_store, 0, cute.make_layout(1), cute.group_modes(s_tile, 0, 2),
                                                 cute.group_modes(g_dst_tile, 0, 2))
        if warp == 0:
            cpasync.prefetch_descriptor(tma_load)
            cpasync.prefetch_descriptor(tma_store)
            with cute.arch.elect_one():
                cute.arch.mbarrier_init(mbar, 1)
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()
        if warp == 0:
            with cute.arch.elect_one():
                cute.arch.mbarrier_arrive_and_expect_tx(mbar, tile_bytes)
            cute.copy(tma_load, g_load, s_load, tma_bar_ptr=mbar)  # the DSL elects one lane for TMA loads
        cute.arch.mbarrier_wait(mbar, 0)
        if warp == 0:
            with cute.arch.elect_one():  # TMA stores are not elected by the DSL
                cute.copy(tma_store, s_store, g_store)
                cute.arch.cp_async_bulk_commit_group()
                cute.arch.cp_async_bulk_wait_group(0, read=True)

    copy_kernel.set_name_prefix(f"vb_{variant.name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        s_layout = cute.make_composed_layout(cute.make_swizzle(3, 4, 3), 0,
                                             cute.make_layout((tile_m, tile_n), stride=(tile_n, 1)))
        m_src = cute.make_tensor(p.src, cute.make_layout(
            (p.rows, p.cols), stride=(cute.assume(p.ld_src, divby=elems_16b), 1)))
        m_dst = cute.make_tensor(p.dst, cute.make_layout(
            (p.rows, p.cols), stride=(cute.assume(p.ld_dst, divby=elems_16b), 1)))
        tma_load, g_src = cpasync.make_tiled_tma_atom(cpasync.CopyBulkTensorTileG2SOp(), m_src, s_layout,
                                                      (tile_m, tile_n))
        tma_store, g_dst = cpasync.make_tiled_tma_atom(cpasync.CopyBulkTensorTileS2GOp(), m_dst, s_layout,
                                                       (tile_m, tile_n))
        copy_kernel(tma_load, g_src, tma_store, g_dst, s_layout).launch(
            grid=[(p.cols + tile_n - 1) // tile_n, (p.rows + tile_m - 1) // tile_m, 1], block=[THREADS, 1, 1])

    host = jit_host(variant.host_params, launch)
    return host, fake_args(variant.host_params, {"src": dtype, "dst": dtype})
