"""Global-memory I/O of an attention tile, predicated for varlen tails.

Q and O rows are addressed one by one (with pack-GQA, tile row -> (token, query head) is not affine); K / V chunks
are affine ``(k_start + j) * stride_tok`` and their rows ``>= k_len`` are zero-filled in shared memory (P = 0 there,
and 0 * garbage could be NaN). Copies are 16-byte vectors (8 fp16 / bf16 elements).
"""

import cutlass
import cutlass.cute as cute
from cutlass import Int64

#: elements per 16-byte vector
VEC = 8


def _row_vectors(ptr, off, head_dim: int):
    """One ``head_dim`` row at ``ptr + off`` as 16-byte vectors."""
    return cute.tiled_divide(cute.make_tensor(ptr + off, cute.make_layout(head_dim)), (VEC,))


@cute.jit
def load_q_rows(g2s, t_s, t_c, q, rows, stride_tok, stride_head, head_dim: int):
    """Tile rows of Q -> shared memory (cp.async); rows ``>= rows_valid`` are zero-filled. ``t_s`` / ``t_c``: this
    thread's shared-memory partition and its (row, col) coordinates."""
    for m in cutlass.range_constexpr(cute.size(t_s, mode=[1])):
        r = t_c[0, m, 0][0]
        if r < rows.rows_valid:
            tq, hq = rows.token_and_head(r)
            g = _row_vectors(q, Int64(rows.tok0 + tq) * stride_tok + Int64(hq) * stride_head, head_dim)
            for kk in cutlass.range_constexpr(cute.size(t_s, mode=[2])):
                cute.copy(g2s, g[None, t_c[0, m, kk][1] // VEC], t_s[None, m, kk])
        else:
            t_s[None, m, None].fill(0)


@cute.jit
def load_kv_chunk(g2s, g2s_thr, t_s, t_c, t0_c, base, row0, stride_tok, stride_head, head, k_len,
                  tile_n: int, head_dim: int):
    """Keys (or values) ``row0 .. row0 + k_len - 1`` of KV head ``head`` -> shared memory (cp.async); rows
    ``>= k_len`` are zero-filled. ``t_c`` / ``t0_c``: coordinates of this thread's / thread 0's partition (the row
    test compares a static coordinate with ``k_len - this thread's first row``)."""
    g = cute.make_tensor(base + (row0 * stride_tok + Int64(head) * stride_head),
                         cute.make_layout((tile_n, head_dim), stride=(stride_tok, 1)))
    t_g = g2s_thr.partition_S(g)
    lim = k_len - t_c[0][0]
    for n in cutlass.range_constexpr(cute.size(t_s, mode=[1])):
        if t0_c[0, n, 0][0] < lim:
            cute.copy(g2s, t_g[None, n, None], t_s[None, n, None])
        else:
            t_s[None, n, None].fill(0)


@cute.jit
def store_lse(lse, t_c, values, rows, stride_head):
    """LSE of this thread's rows (the thread holding column 0 of a row writes it); rows ``>= rows_valid`` are not
    written. ``lse`` is ``[Hq, total_q]`` with token stride 1."""
    if t_c[0, 0][1] == 0:
        for rr in cutlass.range_constexpr(cute.size(t_c, mode=[0])):
            r = t_c[rr, 0][0]
            if r < rows.rows_valid:
                tq, hq = rows.token_and_head(r)
                lse[Int64(hq) * stride_head + Int64(rows.tok0 + tq)] = values[rr]


@cute.jit
def store_rows(s2g, t_r, t_c, out, rows, stride_tok, stride_head, head_dim: int):
    """Tile rows held in registers (``t_r``, coordinates ``t_c``) -> global, 16-byte vectors; rows ``>=
    rows_valid`` are not written."""
    for m in cutlass.range_constexpr(cute.size(t_r, mode=[1])):
        r = t_c[0, m, 0][0]
        if r < rows.rows_valid:
            tq, hq = rows.token_and_head(r)
            g = _row_vectors(out, Int64(rows.tok0 + tq) * stride_tok + Int64(hq) * stride_head, head_dim)
            for kk in cutlass.range_constexpr(cute.size(t_r, mode=[2])):
                cute.copy(s2g, t_r[None, m, kk], g[None, t_c[0, m, kk][1] // VEC])
