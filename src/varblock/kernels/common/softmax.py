"""Online softmax in base 2 over the rows of an accumulator tile (fp32).

``scale_log2 = softmax_scale * log2(e)`` is folded into the exponent. Rows whose running max is still ``-inf``
(everything masked so far) use 0 as max, so fully masked chunks contribute exactly 0; rows with no allowed key at
the end give O = 0 and LSE = -inf.
"""

import math
from dataclasses import dataclass
from typing import Any

import cutlass
import cutlass.cute as cute
from cutlass import Float32

from .warp_mma import quad_max, quad_sum

LN2 = math.log(2.0)


@dataclass(frozen=True)
class OnlineSoftmax:
    """Running row max / row sum of this thread's ``n_rows`` accumulator rows (registers), and the LSE values of the
    epilogue."""

    n_rows: int
    scale_log2: Any
    row_max: Any
    row_sum: Any
    lse: Any

    @staticmethod
    def create(n_rows: int, scale_log2) -> "OnlineSoftmax":
        """Register tensors for ``n_rows`` rows."""
        return OnlineSoftmax(n_rows, scale_log2, cute.make_rmem_tensor(n_rows, Float32),
                             cute.make_rmem_tensor(n_rows, Float32), cute.make_rmem_tensor(n_rows, Float32))

    def reset(self):
        """Start of a tile: max -inf, sum 0."""
        self.row_max.fill(-Float32.inf)
        self.row_sum.fill(0.0)

    @cute.jit
    def fold_row(self, acc_s_mn, rr: cutlass.Constexpr):
        """Fold row ``rr`` of a chunk of scores (``(rows, cols)`` view) in: new max, ``P = exp2(S * scale - max *
        scale)`` written over S, the row sum; returns the O correction ``exp2((old max - new max) * scale)``."""
        scale, row_max, row_sum = self.scale_log2, self.row_max, self.row_sum
        srow = acc_s_mn[rr, None].load()
        m_cur = quad_max(srow.reduce(cute.ReductionOp.MAX, -Float32.inf, 0))
        m_prev = row_max[rr]
        m_new = cute.arch.fmax(m_prev, m_cur)
        row_max[rr] = m_new
        m_safe = 0.0 if m_new == -Float32.inf else m_new  # whole row masked so far
        m_scaled = m_safe * scale
        p = cute.math.exp2(srow * scale - m_scaled, fastmath=True)
        corr = cute.math.exp2(m_prev * scale - m_scaled, fastmath=True)
        row_sum[rr] = row_sum[rr] * corr + p.reduce(cute.ReductionOp.ADD, Float32.zero, 0)
        acc_s_mn[rr, None] = p
        return corr

    @cute.jit
    def update(self, acc_s_mn, acc_o_mn):
        """Fold a chunk of scores in (:meth:`fold_row`, every row) and rescale O's rows by their corrections."""
        for rr in cutlass.range_constexpr(self.n_rows):
            corr = self.fold_row(acc_s_mn, rr)
            acc_o_mn[rr, None] = acc_o_mn[rr, None].load() * corr

    @cute.jit
    def finalize(self, acc_o_mn):
        """End of a tile: O /= row sum (0 for empty rows), LSE = ln(sum) + max * scale (natural log; -inf for empty
        rows) into ``self.lse``."""
        row_max, row_sum, lse = self.row_max, self.row_sum, self.lse
        for rr in cutlass.range_constexpr(self.n_rows):
            ssum = quad_sum(row_sum[rr])
            empty = ssum == 0.0  # no allowed key in the row: O = 0, LSE = -inf
            inv = cute.arch.rcp_approx(1.0 if empty else ssum)
            lse[rr] = (
                -Float32.inf
                if empty
                else (row_max[rr] * self.scale_log2 + cute.math.log2(ssum, fastmath=True)) * LN2
            )
            acc_o_mn[rr, None] = acc_o_mn[rr, None].load() * inv
