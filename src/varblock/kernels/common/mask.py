"""The element mask of partial chunks, applied to an S accumulator tile (``docs/contracts.md``, element mask).

Query ``i`` and key ``j`` are relative to their sequences; ``a = i + diag`` is the key on the query's diagonal.
A partial chunk keeps ``S[i, j]`` iff ``(window_left < 0 or j < num_sink_tokens or j >= a - window_left) and
(window_right < 0 or j <= a + window_right) and j < k_len`` (attention sinks: keys ``j < num_sink_tokens`` are
exempt from the left bound only), and with ``MASK_DOC`` ``doc_q[i] == doc_k[j]``, and with ``MASK_TOKEN`` the
token-mask bit of ``(i, j // tok_block_k)``; everything else becomes ``-inf``. A full chunk only masks its
``k_len`` tail.

Per-row inputs (diagonal position, document id, token-mask row offset) go to shared memory once per tile
(:meth:`ElementMask.load_rows`), per-column inputs (key document ids, token-mask bits of each row) once per partial
chunk (:meth:`ElementMask.load_chunk`), so no per-row value stays in registers across the chunk loop.
"""

from dataclasses import dataclass
from typing import Any

import cutlass
import cutlass.cute as cute
from cutlass import Boolean, Float32, Int32, Int64, Uint8, Uint32, Uint64
from cutlass._mlir.dialects import arith

from varblock.abi import CHUNK_DROP_KEY_HALF, CHUNK_DROP_LO, MASK_DOC, MASK_TOKEN

#: "unbounded" left edge (below any column index)
NEG_BIG = -(1 << 30)


@cutlass.dsl_user_op
def lt_u32(a, b, *, loc=None, ip=None) -> Boolean:
    """``a < b`` as unsigned 32-bit integers, emitted as such (``Uint32(x) < Uint32(y)`` on values derived from
    CuTe integer tuples, such as accumulator coordinates, was lowered to a signed compare)."""
    return Boolean(arith.cmpi(arith.CmpIPredicate.ult, Int32(a).ir_value(loc=loc, ip=ip),
                              Int32(b).ir_value(loc=loc, ip=ip), loc=loc, ip=ip))


@dataclass(frozen=True)
class MaskSmem:
    """Shared-memory views of the mask inputs: ``row_pos``/``row_doc``/``row_tm`` ``[tile_m]``, ``doc_k``
    ``[tile_n]``, ``tok`` ``[tile_m, tile_n // 32]`` keep bits. ``storage``: a struct with fields ``sRowPos``
    (int32), ``sRowDoc`` (int32), ``sRowTm`` (int64), ``sDocK`` (int32), ``sTok`` (uint32) of those sizes."""

    row_pos: Any
    row_doc: Any
    row_tm: Any
    doc_k: Any
    tok: Any
    n_words: int

    @staticmethod
    def of(storage, tile_m: int, tile_n: int) -> "MaskSmem":
        """Views of the struct's mask fields."""
        n_words = tile_n // 32
        return MaskSmem(
            row_pos=storage.sRowPos.get_tensor(cute.make_layout(tile_m)),
            row_doc=storage.sRowDoc.get_tensor(cute.make_layout(tile_m)),
            row_tm=storage.sRowTm.get_tensor(cute.make_layout(tile_m)),
            doc_k=storage.sDocK.get_tensor(cute.make_layout(tile_n)),
            tok=storage.sTok.get_tensor(cute.make_layout((tile_m, n_words), stride=(n_words, 1))),
            n_words=n_words,
        )


@dataclass(frozen=True)
class ElementMask:
    """The mask inputs of one kernel launch (``p``: the kernel's parameter namespace, fields ``window_left``,
    ``window_right``, ``num_sink_tokens``, ``mask_flags``, ``doc_q``, ``doc_k``, ``tok_mask``, ``tok_block_k``,
    ``tok_head_div``, ``tm_stride_*``) and the tile geometry. (Frozen: read-only to the DSL, see scheduler.py.)"""

    p: Any
    s: MaskSmem
    tile_m: int
    tile_n: int
    nthr: int
    sink_compare: str = "unsigned"  #: "unsigned" or "pair": how the two-sided left bound is evaluated (_band)
    #: how a chunk's drop bits are applied: folded into the right bound of ``_band`` (no extra pass, one more
    #: value per row) or in a pass of its own behind a branch on ``drop != 0`` (fewer live registers)
    drop_fold: bool = False

    def __post_init__(self) -> None:
        # the drop bits' key halves are found per accumulator column at trace time: a thread's columns are
        # col0 + c (col0 < 8, c = 8n or 8n + 1), in key half 1 iff c >= tile_n / 2 when tile_n / 2 is a multiple of 8
        if self.tile_n % 16:
            raise ValueError(f"ElementMask: tile_n={self.tile_n} must be a multiple of 16")

    @cute.jit
    def load_rows(self, tidx, tile, seq, rows):
        """Per tile row: diagonal position, document id, token-mask row offset -> shared memory (rows past
        ``q_len * G`` repeat the last token)."""
        p, G = self.p, rows.G
        row_pos, row_doc, row_tm = self.s.row_pos, self.s.row_doc, self.s.row_tm  # (locals: see scheduler.py)
        for it in cutlass.range_constexpr((self.tile_m + self.nthr - 1) // self.nthr):
            r = tidx + it * self.nthr
            if r < self.tile_m:
                tq = cutlass.max(cutlass.min(r // G, tile.q_len - 1), 0)
                row_pos[r] = tile.q_start + tq + seq.diag
                if (p.mask_flags & MASK_DOC) != 0:
                    row_doc[r] = p.doc_q[rows.tok0 + tq]
                if (p.mask_flags & MASK_TOKEN) != 0:
                    hm = (rows.hq0 + (r - (r // G) * G)) // p.tok_head_div
                    row_tm[r] = Int64(hm) * p.tm_stride_head + Int64(rows.tok0 + tq) * p.tm_stride_tok

    @cute.jit
    def load_chunk(self, tidx, seq, k_start, k_len):
        """Per partial chunk: key document ids and the token-mask keep bits of every row -> shared memory. The
        caller orders this between barriers (readers of the previous chunk are done, readers of this one wait)."""
        p, nthr, tile_n, n_words = self.p, self.nthr, self.tile_n, self.s.n_words
        doc_k, row_tm, tok = self.s.doc_k, self.s.row_tm, self.s.tok
        if (p.mask_flags & MASK_DOC) != 0:
            for it in cutlass.range_constexpr((tile_n + nthr - 1) // nthr):
                j = tidx + it * nthr
                if j < tile_n:
                    doc_k[j] = p.doc_k[seq.seq_k + k_start + cutlass.min(j, k_len - 1)]
        if (p.mask_flags & MASK_TOKEN) != 0:
            tbk = p.tok_block_k
            blk_first = k_start // tbk
            blk_last = (k_start + k_len - 1) // tbk
            for it in cutlass.range_constexpr((self.tile_m + nthr - 1) // nthr):
                r = tidx + it * nthr
                if r < self.tile_m:
                    row_off = row_tm[r]
                    words = cute.make_rmem_tensor(n_words, Uint32)
                    words.fill(0)
                    for blk in cutlass.range(blk_first, blk_last + 1, unroll=1):
                        if p.tok_mask[row_off + Int64(blk) * p.tm_stride_blk] != Uint8(0):
                            c_lo = cutlass.max(blk * tbk - k_start, 0)
                            c_hi = cutlass.min(blk * tbk + tbk - k_start, k_len)
                            for w in cutlass.range_constexpr(n_words):
                                b_lo = cutlass.min(cutlass.max(c_lo - 32 * w, 0), 32)
                                b_hi = cutlass.min(cutlass.max(c_hi - 32 * w, 0), 32)
                                m_hi = (Uint64(1) << Uint64(b_hi)) - Uint64(1)
                                m_lo = (Uint64(1) << Uint64(b_lo)) - Uint64(1)
                                words[w] = words[w] | Uint32(m_hi ^ m_lo)
                    for w in cutlass.range_constexpr(n_words):
                        tok[r, w] = words[w]

    @cute.jit
    def apply_partial(self, acc_s_mn, t_scs, t0_scs, col0, k_start, k_len, drop=None):
        """Mask a partial chunk: window / causal / sinks (and the ``k_len`` tail), then documents, then the token mask.
        ``t_scs`` / ``t0_scs``: (row, col) coordinates of this thread's / thread 0's accumulator elements; this
        thread's columns are ``col0 + t0_scs[0, cc][1]``. ``drop``: the chunk's row-half drop bits
        (``read_chunk_rows``; a dropped quarter of the chunk is masked whole), or None (kernels of unpaired plans)."""
        p = self.p
        row_doc, doc_k, tok = self.s.row_doc, self.s.doc_k, self.s.tok
        n_rows = cute.size(t_scs, mode=[0])
        n_cols = cute.size(t_scs, mode=[1])
        self._band(acc_s_mn, t_scs, t0_scs, col0, k_start, k_len, drop)
        if cutlass.const_expr(drop is not None and not self.drop_fold):
            if drop != 0:
                self._drop_quarters(acc_s_mn, t_scs, t0_scs, drop)
        if (p.mask_flags & MASK_DOC) != 0:
            for cc in cutlass.range_constexpr(n_cols):
                dk = doc_k[col0 + t0_scs[0, cc][1]]
                for rr in cutlass.range_constexpr(n_rows):
                    v = acc_s_mn[rr, cc]
                    acc_s_mn[rr, cc] = -Float32.inf if row_doc[t_scs[rr, 0][0]] != dk else v
        if (p.mask_flags & MASK_TOKEN) != 0:
            # this thread's columns are col0 + c with col0 in {0, 2, 4, 6} and thread 0's columns c in {8n, 8n + 1}:
            # col0 + c never crosses a 64-column boundary, so shifting a 64-bit word right by col0 puts column
            # col0 + c at the static bit c % 64
            for rr in cutlass.range_constexpr(n_rows):
                r = t_scs[rr, 0][0]
                for h in cutlass.range_constexpr(self.tile_n // 64):
                    word = (Uint64(tok[r, 2 * h + 1]) << Uint64(32)) | Uint64(tok[r, 2 * h])
                    bits = word >> Uint64(col0)
                    for cc in cutlass.range_constexpr(n_cols):
                        cl = t0_scs[0, cc][1]
                        if cutlass.const_expr(cl // 64 == h):
                            keep = (bits >> Uint64(cl % 64)) & Uint64(1)
                            v = acc_s_mn[rr, cc]
                            acc_s_mn[rr, cc] = -Float32.inf if keep == Uint64(0) else v

    @cute.jit
    def _band(self, acc_s_mn, t_scs, t0_scs, col0, k_start, k_len, drop):
        """Window / causal / sinks and the ``k_len`` tail: keys j in [num_sink_tokens, a - window_left) and j > a +
        window_right are masked. Column cl of this thread is key j = k_start + col0 + cl, so the left test is
        ``sink_end <= cl < lo``, evaluated as two compares or, with ``sink_compare == "unsigned"``, as one unsigned
        compare ``cl - sink_end < width`` (j < num_sink_tokens wraps to >= 2**31 > width). Both are exact; which
        one ptxas allocates with fewer spills depends on the variant (``attention_fwd_mma._SINK_COMPARE``).
        ``drop``: the chunk's drop bits (``varblock.abi.CHUNK_DROP_SHIFT``); a dropped (row half, key half) quarter
        gets the right bound ``-tile_n``, so each column's one ``>= hi`` test masks it."""
        p, row_pos = self.p, self.s.row_pos
        sink_end = p.num_sink_tokens - k_start - col0
        for rr in cutlass.range_constexpr(cute.size(t_scs, mode=[0])):
            r = t_scs[rr, 0][0]
            a = row_pos[r]  # i + diag: key j is on the diagonal of query i at j = a
            if cutlass.const_expr(self.sink_compare == "unsigned"):
                width = cutlass.max(a - p.window_left - p.num_sink_tokens, 0)  # = lo - sink_end, clamped
                width = width if p.window_left >= 0 else Int32(0)
            else:
                lo = a - p.window_left - k_start - col0
                lo = lo if p.window_left >= 0 else Int32(NEG_BIG)
            hi = cutlass.min(a + p.window_right + 1 - k_start, k_len)
            hi = hi if p.window_right >= 0 else k_len
            hi = hi - col0
            hi_k1 = hi  # the bound of the columns in key half 1
            if cutlass.const_expr(drop is not None and self.drop_fold):
                d_k0, d_k1 = self._row_drops(drop, r)
                hi_k1 = Int32(-self.tile_n) if d_k1 else hi
                hi = Int32(-self.tile_n) if d_k0 else hi
            for cc in cutlass.range_constexpr(cute.size(t_scs, mode=[1])):
                cl = t0_scs[0, cc][1]
                # col0 + cl is in key half 1 iff cl is (see __post_init__)
                hi_c = hi_k1 if cutlass.const_expr(cl >= self.tile_n // 2) else hi
                v = acc_s_mn[rr, cc]
                if cutlass.const_expr(self.sink_compare == "unsigned"):
                    v = -Float32.inf if lt_u32(cl - sink_end, width) else v
                else:
                    v = -Float32.inf if (cl < lo) & (cl >= sink_end) else v
                v = -Float32.inf if cl >= hi_c else v
                acc_s_mn[rr, cc] = v

    @cute.jit
    def _row_drops(self, drop, row):
        """(key half 0 dropped, key half 1 dropped) for tile row ``row`` of a chunk with drop bits ``drop``."""
        row_bits = drop >> (Int32(1) if row >= self.tile_m // 2 else Int32(0))
        return (row_bits & CHUNK_DROP_LO) != 0, (row_bits & (CHUNK_DROP_LO << CHUNK_DROP_KEY_HALF)) != 0

    @cute.jit
    def _drop_quarters(self, acc_s_mn, t_scs, t0_scs, drop):
        """Mask the (row half, key half) quarters of the chunk that ``drop`` names (a pass of its own: see
        ``drop_fold``)."""
        for rr in cutlass.range_constexpr(cute.size(t_scs, mode=[0])):
            d_k0, d_k1 = self._row_drops(drop, t_scs[rr, 0][0])
            for cc in cutlass.range_constexpr(cute.size(t_scs, mode=[1])):
                d = d_k1 if cutlass.const_expr(t0_scs[0, cc][1] >= self.tile_n // 2) else d_k0
                v = acc_s_mn[rr, cc]
                acc_s_mn[rr, cc] = -Float32.inf if d else v

    @cute.jit
    def apply_tail(self, acc_s_mn, t0_scs, col0, k_len):
        """Mask the columns ``>= k_len`` of a full chunk shorter than the tile."""
        if k_len < self.tile_n:
            hi = k_len - col0
            n_rows = cute.size(acc_s_mn, mode=[0])
            for cc in cutlass.range_constexpr(cute.size(acc_s_mn, mode=[1])):
                if t0_scs[0, cc][1] >= hi:
                    for rr in cutlass.range_constexpr(n_rows):
                        acc_s_mn[rr, cc] = -Float32.inf
