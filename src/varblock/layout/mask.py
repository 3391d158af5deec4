"""The element mask that applies inside *partial* (query block, key block) entries of a layout.

See docs/contracts.md section 1 and docs/layout.md. Coordinates are relative to the sequence start: query ``i`` in
``[0, len_q)``, key ``j`` in ``[0, len_k)``, ``off = len_k - len_q`` (bottom-right alignment, as FlashAttention).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ._host import INT32_MAX, as_bool, as_int, cdiv, check_block_size


@dataclass(frozen=True, eq=False)
class ElementMask:
    """Conditions on a (query, key) token pair inside a partial entry. All conditions present must hold.

    * ``causal``: ``j <= i + off``.
    * ``window_left`` / ``window_right`` (``-1`` = unbounded): ``i + off - window_left <= j <= i + off + window_right``.
    * ``num_sink_tokens`` (attention sinks, StreamingLLM / FlexAttention rule): keys ``j < num_sink_tokens`` are
      exempt from the LEFT window bound; the right bound and causal still apply. So with a left window the band
      condition is ``(j < num_sink_tokens or j >= i + off - window_left) and j <= i + off + window_right``, at token
      level whatever the block size. Without a left window it changes nothing.
    * ``doc_ids_q`` / ``doc_ids_k``: int32 ``[total_q]`` / ``[total_k]``; the pair is allowed iff the ids are equal.
    * ``token_mask``: bool ``[Hm, total_q, max_nb]`` with ``token_block_k``: allowed iff
      ``token_mask[hm, cu_seqlens_q[b] + i, j // token_block_k]``; ``Hm`` is 1 (shared by all layout heads) or the
      number of layout heads.
    """

    causal: bool = False
    window_left: int = -1
    window_right: int = -1
    doc_ids_q: np.ndarray | None = field(default=None, repr=False)
    doc_ids_k: np.ndarray | None = field(default=None, repr=False)
    token_mask: np.ndarray | None = field(default=None, repr=False)
    token_block_k: int = 0
    num_sink_tokens: int = 0

    # ------------------------------------------------------------------ properties
    @property
    def is_empty(self) -> bool:
        """True when no condition is present (a partial entry then computes every pair)."""
        return (not self.causal and self.window_left < 0 and self.window_right < 0 and self.doc_ids_q is None
                and self.token_mask is None)

    @property
    def band(self) -> tuple[int | None, int | None]:
        """``(lo, hi)`` bounds on ``j - i - off`` from causal/window (None = unbounded)."""
        hi = None
        if self.causal:
            hi = 0
        if self.window_right >= 0:
            hi = self.window_right if hi is None else min(hi, self.window_right)
        lo = -self.window_left if self.window_left >= 0 else None
        return lo, hi

    def __repr__(self) -> str:
        parts = []
        if self.causal:
            parts.append("causal=True")
        if self.window_left >= 0 or self.window_right >= 0:
            parts.append(f"window=({self.window_left}, {self.window_right})")
        if self.num_sink_tokens:
            parts.append(f"num_sink_tokens={self.num_sink_tokens}")
        if self.doc_ids_q is not None:
            parts.append("doc_ids")
        if self.token_mask is not None:
            parts.append(f"token_mask{tuple(self.token_mask.shape)}/{self.token_block_k}")
        return f"ElementMask({', '.join(parts)})"

    # ------------------------------------------------------------------ validation
    def validated(self, cu_q: np.ndarray, cu_k: np.ndarray, num_heads: int) -> ElementMask:
        """Check against a batch; return a copy with host, int32/bool, read-only arrays."""
        if not isinstance(self.causal, (bool, np.bool_)):
            raise TypeError(f"mask.causal: expected a bool, got {self.causal!r}")
        for nm in ("window_left", "window_right"):
            v = getattr(self, nm)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < -1:
                raise ValueError(f"mask.{nm}: expected an int >= -1 (-1 = unbounded), got {v!r}")
        sinks = self.num_sink_tokens
        if (isinstance(sinks, (bool, np.bool_)) or not isinstance(sinks, (int, np.integer))
                or not 0 <= sinks <= INT32_MAX):
            raise ValueError(f"mask.num_sink_tokens: expected an int in [0, 2**31 - 1], got {sinks!r}")
        total_q, total_k = int(cu_q[-1]), int(cu_k[-1])
        dq = dk = tm = None
        if (self.doc_ids_q is None) != (self.doc_ids_k is None):
            raise ValueError("mask.doc_ids_q / mask.doc_ids_k: give both or neither")
        if self.doc_ids_q is not None:
            dq = as_int(self.doc_ids_q, "mask.doc_ids_q", shape=(total_q,))
            dk = as_int(self.doc_ids_k, "mask.doc_ids_k", shape=(total_k,))
            for nm, a in (("mask.doc_ids_q", dq), ("mask.doc_ids_k", dk)):
                if a.size and (a.min() < -(2**31) or a.max() > INT32_MAX):
                    raise ValueError(f"{nm}: document ids must fit in int32")
            dq, dk = _ro(dq.astype(np.int32)), _ro(dk.astype(np.int32))
        tbk = int(self.token_block_k) if self.token_mask is not None else 0
        if self.token_mask is not None:
            tbk = check_block_size(self.token_block_k, "mask.token_block_k")
            tm = as_bool(self.token_mask, "mask.token_mask", ndim=3)
            lk = np.diff(cu_k.astype(np.int64))
            max_nb = int(cdiv(lk, tbk).max()) if lk.size else 0
            if tm.shape[0] not in (1, num_heads):
                raise ValueError(f"mask.token_mask: expected shape [Hm, total_q, max_nb] with Hm = 1 or the "
                                 f"{num_heads} layout heads, got {tuple(tm.shape)}")
            if tm.shape[1] != total_q or tm.shape[2] < max_nb:
                raise ValueError(f"mask.token_mask: expected shape [{tm.shape[0]}, {total_q}, >= {max_nb}] "
                                 f"(total_q, ceil(len_k / token_block_k)), got {tuple(tm.shape)}")
            if tm.size > INT32_MAX:
                raise ValueError(f"mask.token_mask: {tm.size} elements exceed the int32 range the kernels index with")
            tm = _ro(np.array(tm, dtype=np.bool_, copy=True))
        return replace(self, causal=bool(self.causal), window_left=int(self.window_left),
                       window_right=int(self.window_right), doc_ids_q=dq, doc_ids_k=dk, token_mask=tm,
                       token_block_k=tbk, num_sink_tokens=int(sinks))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, qi: np.ndarray, kj: np.ndarray, *, head: int, len_q: int, len_k: int, q0: int,
                 k0: int) -> np.ndarray:
        """Allowed-ness of pairs (broadcast of ``qi`` and ``kj``, sequence-relative) for layout head ``head``
        of the sequence starting at ``q0``/``k0`` in the packed token axes."""
        qi = np.asarray(qi, dtype=np.int64)
        kj = np.asarray(kj, dtype=np.int64)
        out = np.ones(np.broadcast_shapes(qi.shape, kj.shape), dtype=np.bool_)
        lo, hi = self.band
        if lo is not None or hi is not None:
            d = kj - qi - (len_k - len_q)
            if hi is not None:
                out &= d <= hi
            if lo is not None:
                out &= (d >= lo) | (kj < self.num_sink_tokens)
        if self.doc_ids_q is not None:
            out &= self.doc_ids_q[q0 + qi] == self.doc_ids_k[k0 + kj]
        if self.token_mask is not None:
            hm = head if self.token_mask.shape[0] > 1 else 0
            out &= self.token_mask[hm, q0 + qi, kj // self.token_block_k]
        return out


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def resolve_mask(mask: ElementMask | None, causal: bool | None, window: tuple[int, int] | None) -> ElementMask:
    """Merge the ``mask=`` argument with the ``causal=`` / ``window=`` conveniences of the importers."""
    if mask is None:
        mask = ElementMask()
    elif not isinstance(mask, ElementMask):
        raise TypeError(f"mask: expected an ElementMask or None, got {type(mask).__name__}")
    if causal is not None:
        if not isinstance(causal, (bool, np.bool_)):
            raise TypeError(f"causal: expected a bool, got {causal!r}")
        mask = replace(mask, causal=bool(causal) or mask.causal)
    if window is not None:
        try:
            wl, wr = window
        except (TypeError, ValueError):
            raise TypeError(f"window: expected a (left, right) pair, got {window!r}") from None
        mask = replace(mask, window_left=wl, window_right=wr)
    return mask


def _sink_split(ks, kl, sinks):
    """Split key ranges [ks, ks+kl) at the sink boundary: (sink part length, rest start, rest length)."""
    ks = np.asarray(ks, dtype=np.int64)
    kl = np.asarray(kl, dtype=np.int64)
    s_len = np.clip(sinks - ks, 0, kl)
    return s_len, ks + s_len, kl - s_len


def band_classify(qs, ql, ks, kl, off, lo, hi, sinks: int = 0):
    """For rectangles [qs, qs+ql) x [ks, ks+kl) and the constraint lo <= j - i - off <= hi (None = unbounded),
    where keys j < ``sinks`` are exempt from ``lo``: (all pairs allowed, no pair allowed). Exact: j - i takes every
    integer value of its range on a rectangle (and on each side of the sink boundary)."""
    if sinks > 0 and lo is not None:
        s_len, rs, rl = _sink_split(ks, kl, sinks)
        a1, n1 = _band_classify(qs, ql, ks, s_len, off, None, hi)
        a2, n2 = _band_classify(qs, ql, rs, rl, off, lo, hi)
        e1, e2 = s_len == 0, rl == 0  # an empty part constrains nothing
        return (a1 | e1) & (a2 | e2), (n1 | e1) & (n2 | e2)
    return _band_classify(qs, ql, ks, kl, off, lo, hi)


def _band_classify(qs, ql, ks, kl, off, lo, hi):
    dmin = ks - (qs + ql - 1) - off
    dmax = (ks + kl - 1) - qs - off
    all_ = np.ones(np.shape(dmin), dtype=np.bool_)
    none = np.zeros(np.shape(dmin), dtype=np.bool_)
    if hi is not None:
        all_ &= dmax <= hi
        none |= dmin > hi
    if lo is not None:
        all_ &= dmin >= lo
        none |= dmax < lo
    return all_, none


def band_count(qs, ql, ks, kl, off, lo, hi, sinks: int = 0):
    """Number of pairs in each rectangle with lo <= j - i - off <= hi (None = unbounded; keys j < ``sinks`` exempt
    from ``lo``); int64, vectorised."""
    if sinks > 0 and lo is not None:
        s_len, rs, rl = _sink_split(ks, kl, sinks)
        return _band_count(qs, ql, ks, s_len, off, None, hi) + _band_count(qs, ql, rs, rl, off, lo, hi)
    return _band_count(qs, ql, ks, kl, off, lo, hi)


def _band_count(qs, ql, ks, kl, off, lo, hi):
    qs, ql, ks, kl, off = (np.asarray(a, dtype=np.int64) for a in (qs, ql, ks, kl, off))

    def s_cum(x, n):
        # sum_{t <= x} clamp(t, 0, n)
        x = np.asarray(x, dtype=np.int64)
        xc = np.clip(x, 0, n)
        return np.where(x <= 0, 0, xc * (xc + 1) // 2 + np.maximum(x - n, 0) * n)

    def f(c):
        # pairs with (j - ks) <= (i - qs) + a, a = c + off + qs - ks, over i in [qs, qs+ql): sum clamp(t + a + 1, 0, kl)
        a = c + off + qs - ks
        return s_cum(ql - 1 + a + 1, kl) - s_cum(a, kl)

    total = ql * kl
    upper = total if hi is None else f(hi)
    lower = 0 if lo is None else f(lo - 1)
    return np.maximum(upper - lower, 0)
