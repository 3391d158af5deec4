"""mma.sync (m16n8k16) helpers: the swizzled shared-memory atom of its operands, accumulator views, quad
reductions, and the two GEMMs of an attention tile (S = Q K^T and O += P V, operands read from shared memory with
ldmatrix one k-block ahead)."""

import cutlass
import cutlass.cute as cute
from cutlass import Int32
from cutlass._mlir.dialects import llvm


def swizzled_rows_atom(width: int):
    """Shared-memory layout atom of 8 rows x ``width`` (64 or 32) 16-bit elements, XOR-swizzled so that 16-byte
    cp.async writes and ldmatrix reads of its rows are bank-conflict free; ``cute.tile_to_shape`` it to a tile."""
    return cute.make_composed_layout(cute.make_swizzle(3 if width == 64 else 2, 3, 3), 0,
                                     cute.make_layout((8, width), stride=(width, 1)))


def mn_view(t):
    """View an mma C-fragment ``((2, 2), MMA_M, MMA_N)`` as ``(rows, cols)`` = ``((2, MMA_M), (2, MMA_N))``."""
    lay = cute.make_layout(t.layout.shape)
    mn = cute.make_layout(
        ((lay.shape[0][1], lay.shape[1]), (lay.shape[0][0], lay.shape[2])),
        stride=((lay.stride[0][1], lay.stride[1]), (lay.stride[0][0], lay.stride[2])),
    )
    return cute.make_tensor(t.iterator, cute.composition(t.layout, mn))


def acc_to_frag_a(t):
    """Reinterpret an accumulator ``((2, 2), MMA_M, MMA_N)`` as the A operand of the next mma:
    ``((2, 2, 2), MMA_M, MMA_N / 2)`` (two n8 accumulator tiles make one k16 A tile)."""
    div = cute.logical_divide(t.layout, (None, None, 2))
    lay = cute.make_layout(
        ((div.shape[0], div.shape[2][0]), div.shape[1], div.shape[2][1]),
        stride=((div.stride[0], div.stride[2][0]), div.stride[1], div.stride[2][1]),
    )
    return cute.make_tensor(t.iterator, lay)


def quad_max(x):
    """Max over the 4 threads of a quad (the threads sharing an accumulator row)."""
    x = cute.arch.fmax(x, cute.arch.shuffle_sync_bfly(x, offset=2, mask=-1, mask_and_clamp=31))
    return cute.arch.fmax(x, cute.arch.shuffle_sync_bfly(x, offset=1, mask=-1, mask_and_clamp=31))


def quad_sum(x):
    """Sum over the 4 threads of a quad."""
    x = x + cute.arch.shuffle_sync_bfly(x, offset=2, mask=-1, mask_and_clamp=31)
    return x + cute.arch.shuffle_sync_bfly(x, offset=1, mask=-1, mask_and_clamp=31)


@cutlass.dsl_user_op
def thread_idx_opaque(*, loc=None, ip=None):
    """``threadIdx.x`` read by a volatile ``mov``, which LLVM cannot hoist out of a loop (nor merge with another
    read): values derived from it are recomputed in the loop body."""
    return Int32(llvm.inline_asm(Int32.mlir_type, [], "mov.u32 $0, %tid.x;", "=r", has_side_effects=True,
                                 loc=loc, ip=ip))


@cute.jit
def gemm_smem_smem(tiled_mma, acc, s2r_a, ts_a, tr_a_view, tr_a, s2r_b, ts_b, tr_b_view, tr_b):
    """``acc += A B`` with both operands in shared memory: ldmatrix of k-block ``kk + 1`` overlaps the mma of
    ``kk``."""
    nk = cute.size(ts_a, mode=[2])
    cute.copy(s2r_a, ts_a[None, None, 0], tr_a_view[None, None, 0])
    cute.copy(s2r_b, ts_b[None, None, 0], tr_b_view[None, None, 0])
    for kk in cutlass.range_constexpr(nk):
        if kk + 1 < nk:
            cute.copy(s2r_a, ts_a[None, None, kk + 1], tr_a_view[None, None, kk + 1])
            cute.copy(s2r_b, ts_b[None, None, kk + 1], tr_b_view[None, None, kk + 1])
        cute.gemm(tiled_mma, acc, tr_a[None, None, kk], tr_b[None, None, kk], acc)


@cute.jit
def gemm_reg_smem(tiled_mma, acc, tr_a, s2r_b, ts_b, tr_b_view, tr_b):
    """``acc += A B`` with A in registers (e.g. P) and B in shared memory, ldmatrix one k-block ahead."""
    nk = cute.size(tr_a, mode=[2])
    cute.copy(s2r_b, ts_b[None, None, 0], tr_b_view[None, None, 0])
    for kk in cutlass.range_constexpr(nk):
        if kk + 1 < nk:
            cute.copy(s2r_b, ts_b[None, None, kk + 1], tr_b_view[None, None, kk + 1])
        cute.gemm(tiled_mma, acc, tr_a[None, None, kk], tr_b[None, None, kk], acc)
