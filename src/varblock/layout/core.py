"""`BlockSparseLayout`: the canonical varlen block-sparse description (host side, NumPy only).

Storage (see docs/layout.md):

* a *query partition* and a *key partition* per (layout head, sequence): consecutive token spans that tile the
  sequence (fixed blocks: ``block_q``/``block_k`` with a shorter last block; FlashInfer / packed imports: any
  positive sizes). Partition segments are ordered by (head, batch), spans by start.
* one *row* per query span (all of them, empty rows included), ordered (head, batch, q_start); CSR ``ent_ptr``
  over the rows; ``n_full[r]`` full entries first, then the partial ones, each group sorted by key block;
  ``ent_kb`` = index of the key span inside the row's (head, batch) key partition.

``rows()`` expands this into the contract's ``RowSpans`` (cached); ``transposed()`` gives the key-block-major index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..abi import HEAD_MODES
from ._host import check_int32, exclusive_cumsum, frozen, ragged_arange
from .mask import ElementMask, band_count
from .partition import Partition

# ---------------------------------------------------------------------------------------------------------------
# plain containers


@dataclass(frozen=True, eq=False)
class RowSpans:
    """The flat, vectorised expansion the kernels are fed from (docs/contracts.md section 1)."""

    head: np.ndarray  #: int32 [R] layout head
    batch: np.ndarray  #: int32 [R] sequence index
    q_start: np.ndarray  #: int32 [R] query span start, relative to the sequence start
    q_len: np.ndarray  #: int32 [R] query span length (>= 1)
    ent_ptr: np.ndarray  #: int64 [R+1] CSR offsets into the entry arrays
    n_full: np.ndarray  #: int32 [R] the first n_full[r] entries of row r are full, the rest partial
    k_start: np.ndarray  #: int32 [E] key span start of each entry, relative to the sequence start
    k_len: np.ndarray  #: int32 [E] key span length (>= 1)

    @property
    def num_rows(self) -> int:
        return int(self.head.shape[0])

    @property
    def num_entries(self) -> int:
        return int(self.k_start.shape[0])

    @property
    def n_partial(self) -> np.ndarray:
        return (np.diff(self.ent_ptr) - self.n_full).astype(np.int32)


@dataclass(frozen=True, eq=False)
class ColSpans:
    """Key-block-major (transposed) index for the backward pass: one column per key span of every
    (layout head, sequence), empty columns included, ordered (head, batch, k_start). Within a column the full
    entries come first, then the partial ones, each sorted by q_start."""

    head: np.ndarray  #: int32 [C]
    batch: np.ndarray  #: int32 [C]
    k_start: np.ndarray  #: int32 [C]
    k_len: np.ndarray  #: int32 [C]
    ent_ptr: np.ndarray  #: int64 [C+1]
    n_full: np.ndarray  #: int32 [C]
    q_start: np.ndarray  #: int32 [E] query span of each entry (relative to the sequence start)
    q_len: np.ndarray  #: int32 [E]
    row: np.ndarray  #: int32 [E] the forward row (index into RowSpans) of each entry
    entry: np.ndarray  #: int64 [E] the forward entry (index into RowSpans.k_start) of each entry

    @property
    def num_cols(self) -> int:
        return int(self.head.shape[0])

    @property
    def num_entries(self) -> int:
        return int(self.q_start.shape[0])


# ---------------------------------------------------------------------------------------------------------------
# the layout


class BlockSparseLayout:
    """Which (query span, key span) pairs to compute, per layout head and sequence of a varlen batch.

    Build one with an importer or generator (``from_block_mask``, ``from_fa4``, ``from_flex``, ``from_seer_2d``,
    ``from_seer_1d``, ``from_flashinfer``, ``from_row_spans``, :mod:`varblock.layout.generators`); the plan
    consumes it through ``cu_seqlens_q``, ``cu_seqlens_k``, ``num_heads``, ``head_mode``, ``rows()`` and ``mask``.
    Instances are immutable (all arrays read-only).
    """

    __slots__ = ("cu_seqlens_q", "cu_seqlens_k", "num_heads", "head_mode", "mask", "block_q", "block_k",
                 "source", "_qpart", "_kpart", "_ent_ptr", "_n_full", "_ent_kb", "_rows", "_cols")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("BlockSparseLayout is built with an importer or a generator, e.g. "
                        "BlockSparseLayout.from_block_mask(mask, cu_seqlens_q, cu_seqlens_k)")

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def _build(cls, cu_q: np.ndarray, cu_k: np.ndarray, num_heads: int, head_mode: str, qpart: Partition,
               kpart: Partition, e_row: np.ndarray, e_kb: np.ndarray, e_full: np.ndarray,
               mask: ElementMask | None, block_q: int | None, block_k: int | None,
               source: dict | None = None, mask_validated: bool = False) -> BlockSparseLayout:
        self = object.__new__(cls)
        B = cu_q.shape[0] - 1
        if mask is None:
            mask = ElementMask()
        if not mask_validated:
            mask = mask.validated(cu_q, cu_k, num_heads)
        R = qpart.size
        e_row = np.asarray(e_row, dtype=np.int64)
        e_kb = np.asarray(e_kb, dtype=np.int64)
        e_full = np.asarray(e_full, dtype=np.bool_)
        E = int(e_row.shape[0])
        check_int32(E, "layout", "number of kept blocks")
        row_seg = qpart.seg()
        nk_row = np.diff(kpart.ptr)[row_seg] if R else np.zeros(0, dtype=np.int64)
        if E:
            assert 0 <= e_row.min() and e_row.max() < R, "internal: entry row index out of range"
            bad = (e_kb < 0) | (e_kb >= nk_row[e_row])
            if bad.any():
                i = int(np.argmax(bad))
                r = int(e_row[i])
                s = int(row_seg[r])
                raise ValueError(f"key block index {int(e_kb[i])} out of range for head {s // B}, sequence "
                                 f"{s % B}, which has {int(nk_row[r])} key blocks")
        KB = int(nk_row.max()) + 1 if R else 1
        key = (e_row * 2 + (~e_full)) * KB + e_kb
        if E > 1 and not (np.diff(key) > 0).all():
            order = np.argsort(key, kind="stable")
            e_row, e_kb, e_full, key = e_row[order], e_kb[order], e_full[order], key[order]
        if E > 1:
            if (np.diff(key) == 0).any():
                i = int(np.argmax(np.diff(key) == 0))
                _raise_dup(e_row[i], e_kb[i], row_seg, qpart, B)
            if e_full.any() and not e_full.all():
                key2 = np.sort(e_row * KB + e_kb)
                if (np.diff(key2) == 0).any():
                    i = int(np.argmax(np.diff(key2) == 0))
                    _raise_dup(key2[i] // KB, key2[i] % KB, row_seg, qpart, B, both=True)
        counts = np.bincount(e_row, minlength=R) if E else np.zeros(R, dtype=np.int64)
        n_full = np.bincount(e_row[e_full], minlength=R) if E else np.zeros(R, dtype=np.int64)
        self.cu_seqlens_q = cu_q
        self.cu_seqlens_k = cu_k
        self.num_heads = int(num_heads)
        self.head_mode = head_mode
        self.mask = mask
        self.block_q = block_q
        self.block_k = block_k
        self.source = dict(source or {})
        self._qpart = qpart
        self._kpart = kpart
        self._ent_ptr = frozen(exclusive_cumsum(counts))
        self._n_full = frozen(n_full.astype(np.int32))
        self._ent_kb = frozen(e_kb.astype(np.int32))
        self._rows = None
        self._cols = None
        return self

    def _with_mask(self, mask: ElementMask) -> BlockSparseLayout:
        new = object.__new__(type(self))
        for s in self.__slots__:
            setattr(new, s, getattr(self, s))
        new.mask = mask.validated(self.cu_seqlens_q, self.cu_seqlens_k, self.num_heads)
        new._rows = self._rows
        new._cols = self._cols
        return new

    # ----------------------------------------------------------------------------------------------- basic facts
    @property
    def batch_size(self) -> int:
        return int(self.cu_seqlens_q.shape[0] - 1)

    @property
    def total_q(self) -> int:
        return int(self.cu_seqlens_q[-1])

    @property
    def total_k(self) -> int:
        return int(self.cu_seqlens_k[-1])

    @property
    def seqlens_q(self) -> np.ndarray:
        return np.diff(self.cu_seqlens_q.astype(np.int64))

    @property
    def seqlens_k(self) -> np.ndarray:
        return np.diff(self.cu_seqlens_k.astype(np.int64))

    @property
    def num_rows(self) -> int:
        return self._qpart.size

    @property
    def num_entries(self) -> int:
        return int(self._ent_kb.shape[0])

    @property
    def num_full(self) -> int:
        return int(self._n_full.sum())

    @property
    def is_fixed(self) -> bool:
        """True for fixed block sizes (``block_q``/``block_k`` set), False for variable spans."""
        return self.block_q is not None and self.block_k is not None

    @property
    def query_partition(self) -> Partition:
        return self._qpart

    @property
    def key_partition(self) -> Partition:
        return self._kpart

    @property
    def entry_key_block(self) -> np.ndarray:
        """int32 [E]: key block index (inside the row's key partition) of each entry, in ``rows()`` order."""
        return self._ent_kb

    def __repr__(self) -> str:
        bs = f"block=({self.block_q}, {self.block_k})" if self.is_fixed else "variable blocks"
        return (f"BlockSparseLayout(B={self.batch_size}, heads={self.num_heads} {self.head_mode}, {bs}, "
                f"rows={self.num_rows}, entries={self.num_entries} ({self.num_full} full), {self.mask!r})")

    # ----------------------------------------------------------------------------------------------- contract
    def rows(self) -> RowSpans:
        """The flat expansion the plan consumes (cached)."""
        if self._rows is None:
            B = self.batch_size
            seg = self._qpart.seg()
            counts = np.diff(self._ent_ptr)
            kg = np.repeat(self._kpart.ptr[:-1][seg], counts) + self._ent_kb
            self._rows = RowSpans(
                head=frozen((seg // max(B, 1)).astype(np.int32)),
                batch=frozen((seg % max(B, 1)).astype(np.int32)),
                q_start=self._qpart.start,
                q_len=self._qpart.length,
                ent_ptr=self._ent_ptr,
                n_full=self._n_full,
                k_start=frozen(self._kpart.start[kg]),
                k_len=frozen(self._kpart.length[kg]),
            )
        return self._rows

    def entry_global_key_index(self) -> np.ndarray:
        """int64 [E]: index of each entry's key span in ``key_partition`` (ordered by (head, batch, k_start))."""
        seg = self._qpart.seg()
        return np.repeat(self._kpart.ptr[:-1][seg], np.diff(self._ent_ptr)) + self._ent_kb

    def entry_is_full(self) -> np.ndarray:
        """bool [E]."""
        counts = np.diff(self._ent_ptr)
        _, pos = ragged_arange(counts)
        return pos < np.repeat(self._n_full, counts)

    def transposed(self) -> ColSpans:
        """The key-block-major index a backward pass needs (cached)."""
        if self._cols is None:
            B = max(self.batch_size, 1)
            R = self.num_rows
            C = self._kpart.size
            counts = np.diff(self._ent_ptr)
            e_row = np.repeat(np.arange(R, dtype=np.int64), counts)
            kg = self.entry_global_key_index()
            full = self.entry_is_full()
            order = np.lexsort((e_row, ~full, kg)) if kg.size else np.zeros(0, dtype=np.int64)
            kg_s = kg[order]
            full_s = full[order]
            ccount = np.bincount(kg_s, minlength=C) if kg.size else np.zeros(C, dtype=np.int64)
            cfull = np.bincount(kg_s[full_s], minlength=C) if kg.size else np.zeros(C, dtype=np.int64)
            kseg = self._kpart.seg()
            rows_s = e_row[order]
            self._cols = ColSpans(
                head=frozen((kseg // B).astype(np.int32)),
                batch=frozen((kseg % B).astype(np.int32)),
                k_start=self._kpart.start,
                k_len=self._kpart.length,
                ent_ptr=frozen(exclusive_cumsum(ccount)),
                n_full=frozen(cfull.astype(np.int32)),
                q_start=frozen(self._qpart.start[rows_s]),
                q_len=frozen(self._qpart.length[rows_s]),
                row=frozen(rows_s.astype(np.int32)),
                entry=frozen(order.astype(np.int64)),
            )
        return self._cols

    # ----------------------------------------------------------------------------------------------- heads
    def _check_head(self, hl: int) -> int:
        if not isinstance(hl, (int, np.integer)) or not 0 <= int(hl) < self.num_heads:
            raise ValueError(f"hl: expected a layout head in [0, {self.num_heads}), got {hl!r}")
        return int(hl)

    def _check_batch(self, b: int) -> int:
        if not isinstance(b, (int, np.integer)) or not 0 <= int(b) < self.batch_size:
            raise ValueError(f"b: expected a sequence index in [0, {self.batch_size}), got {b!r}")
        return int(b)

    def head_map(self, num_heads_q: int, num_heads_kv: int) -> np.ndarray:
        """int32 [Hq]: layout head of each query head (docs/contracts.md section 1)."""
        for nm, v in (("num_heads_q", num_heads_q), ("num_heads_kv", num_heads_kv)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{nm}: expected a positive int, got {v!r}")
        if num_heads_q % num_heads_kv:
            raise ValueError(f"num_heads_q: {num_heads_q} query heads is not a multiple of num_heads_kv = "
                             f"{num_heads_kv}")
        hq = np.arange(num_heads_q, dtype=np.int64)
        if self.head_mode == "per_q_head":
            if self.num_heads != num_heads_q:
                raise ValueError(f"num_heads_q: the layout has {self.num_heads} per-query-head patterns but "
                                 f"num_heads_q = {num_heads_q}")
            m = hq
        elif self.head_mode == "per_kv_head":
            if self.num_heads != num_heads_kv:
                raise ValueError(f"num_heads_kv: the layout has {self.num_heads} per-KV-head patterns but "
                                 f"num_heads_kv = {num_heads_kv}")
            m = hq // (num_heads_q // num_heads_kv)
        else:
            m = np.zeros_like(hq)
        return m.astype(np.int32)

    def check_compatible(self, num_heads_q: int, num_heads_kv: int, head_dim: int | None = None,
                         head_dim_v: int | None = None) -> np.ndarray:
        """Check the layout against a problem (head counts, int32 extents of q/k/v/out/lse); return ``head_map``."""
        m = self.head_map(num_heads_q, num_heads_kv)
        check_int32(self.total_q * num_heads_q, "lse", "total_q * num_heads_q")
        for nm, v in (("head_dim", head_dim), ("head_dim_v", head_dim_v)):
            if v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
                                  or v < 1):
                raise ValueError(f"{nm}: expected a positive int, got {v!r}")
        if head_dim is not None:
            check_int32(self.total_q * num_heads_q * head_dim, "q", "total_q * num_heads_q * head_dim elements")
            check_int32(self.total_k * num_heads_kv * head_dim, "k", "total_k * num_heads_kv * head_dim elements")
        dv = head_dim_v if head_dim_v is not None else head_dim
        if dv is not None:
            check_int32(self.total_k * num_heads_kv * dv, "v", "total_k * num_heads_kv * head_dim_v elements")
            check_int32(self.total_q * num_heads_q * dv, "out", "total_q * num_heads_q * head_dim_v elements")
        return m

    # ----------------------------------------------------------------------------------------------- expansion
    def block_codes(self, b: int, hl: int) -> np.ndarray:
        """int8 [nq, nk] over the (head, sequence) partitions: 0 = skipped, 1 = partial, 2 = full."""
        b, hl = self._check_batch(b), self._check_head(hl)
        s = hl * self.batch_size + b
        r0, r1 = int(self._qpart.ptr[s]), int(self._qpart.ptr[s + 1])
        nk = int(self._kpart.ptr[s + 1] - self._kpart.ptr[s])
        codes = np.zeros((r1 - r0, nk), dtype=np.int8)
        e0, e1 = int(self._ent_ptr[r0]), int(self._ent_ptr[r1])
        counts = np.diff(self._ent_ptr[r0:r1 + 1])
        rr, pos = ragged_arange(counts)
        full = pos < np.repeat(self._n_full[r0:r1], counts)
        codes[rr, self._ent_kb[e0:e1]] = np.where(full, 2, 1)
        return codes

    def _expanded_codes(self, b: int, hl: int) -> np.ndarray:
        """int8 [len_q, len_k]: block code of every token pair of sequence ``b`` for layout head ``hl``."""
        codes = self.block_codes(b, hl)
        s = int(hl) * self.batch_size + int(b)
        qlen = self._qpart.length[self._qpart.ptr[s]:self._qpart.ptr[s + 1]]
        klen = self._kpart.length[self._kpart.ptr[s]:self._kpart.ptr[s + 1]]
        qb = np.repeat(np.arange(qlen.size), qlen)
        kb = np.repeat(np.arange(klen.size), klen)
        return codes[qb[:, None], kb[None, :]]

    def _evaluate_all(self, b: int, hl: int) -> np.ndarray:
        lq, lk = int(self.seqlens_q[b]), int(self.seqlens_k[b])
        return self.mask.evaluate(np.arange(lq)[:, None], np.arange(lk)[None, :], head=int(hl), len_q=lq,
                                  len_k=lk, q0=int(self.cu_seqlens_q[b]), k0=int(self.cu_seqlens_k[b]))

    def token_mask(self, b: int, hl: int) -> np.ndarray:
        """Dense bool [len_q, len_k]: the token pairs of sequence ``b`` that layout head ``hl`` attends."""
        c = self._expanded_codes(b, hl)
        out = c == 2
        part = c == 1
        if part.any():
            out |= part & self._evaluate_all(b, hl)
        return out

    def num_pairs(self, num_heads_q: int | None = None, num_heads_kv: int | None = None,
                  per_head: bool = False) -> int | np.ndarray:
        """Kept (query, key) token pairs (exact; partial entries counted after the element mask).

        Without head counts: summed over layout heads (``per_head=True``: int64 [Hl]). With ``num_heads_q`` and
        ``num_heads_kv``: summed over query heads, the count to use for TFLOP/s."""
        rs = self.rows()
        counts = np.diff(rs.ent_ptr)
        e_row = np.repeat(np.arange(rs.num_rows, dtype=np.int64), counts)
        e_head = rs.head[e_row].astype(np.int64)
        full = self.entry_is_full()
        ql = rs.q_len.astype(np.int64)[e_row]
        kl = rs.k_len.astype(np.int64)
        per_head_arr = np.zeros(self.num_heads, dtype=np.int64)
        np.add.at(per_head_arr, e_head[full], ql[full] * kl[full])
        part = ~full
        if part.any():
            m = self.mask
            if m.doc_ids_q is None and m.token_mask is None:
                lo, hi = m.band
                b = rs.batch[e_row[part]]
                off = (self.seqlens_k - self.seqlens_q)[b]
                cnt = band_count(rs.q_start[e_row[part]], ql[part], rs.k_start[part], kl[part], off, lo, hi,
                                 sinks=m.num_sink_tokens)
                np.add.at(per_head_arr, e_head[part], cnt)
            else:
                B = self.batch_size
                hb = np.unique(e_head[part] * B + rs.batch[e_row[part]])
                for s in hb:  # per (head, sequence) holding partial entries; vectorised inside
                    h, b = int(s) // B, int(s) % B
                    per_head_arr[h] += int(((self._expanded_codes(b, h) == 1) & self._evaluate_all(b, h)).sum())
        if num_heads_q is not None or num_heads_kv is not None:
            if num_heads_q is None or num_heads_kv is None:
                raise ValueError("num_heads_q / num_heads_kv: give both or neither")
            return int(per_head_arr[self.head_map(num_heads_q, num_heads_kv)].sum())
        if per_head:
            return per_head_arr
        return int(per_head_arr.sum())

    def density(self) -> float:
        """Kept pairs / all (query, key) pairs of the batch, over layout heads."""
        total = int((self.seqlens_q * self.seqlens_k).sum()) * self.num_heads
        return self.num_pairs() / total if total else 0.0

    # ----------------------------------------------------------------------------------------------- comparison
    def equals(self, other: BlockSparseLayout, *, check_mask: bool = True) -> bool:
        """Structural equality: same batch, heads, partitions, entries (and element mask)."""
        if not isinstance(other, BlockSparseLayout):
            return False
        a, b = self.rows(), other.rows()
        same = (np.array_equal(self.cu_seqlens_q, other.cu_seqlens_q)
                and np.array_equal(self.cu_seqlens_k, other.cu_seqlens_k)
                and self.num_heads == other.num_heads and self.head_mode == other.head_mode
                and np.array_equal(self._kpart.ptr, other._kpart.ptr)
                and np.array_equal(self._kpart.start, other._kpart.start)
                and np.array_equal(self._kpart.length, other._kpart.length)
                and all(np.array_equal(getattr(a, f), getattr(b, f)) for f in
                        ("head", "batch", "q_start", "q_len", "ent_ptr", "n_full", "k_start", "k_len")))
        if same and check_mask:
            same = _mask_equal(self.mask, other.mask)
        return bool(same)

    def with_mask(self, mask: ElementMask) -> BlockSparseLayout:
        """Same entries, another element mask (no reclassification)."""
        if not isinstance(mask, ElementMask):
            raise TypeError(f"mask: expected an ElementMask, got {type(mask).__name__}")
        return self._with_mask(mask)

    # ----------------------------------------------------------------------------------------------- formats
    # Importers and exporters live in one module per format (block_mask, fa4, flex, seer, flashinfer, spans);
    # varblock/layout/__init__.py binds them here, so that core.py imports none of them.
    from_block_mask: ClassVar[Callable[..., BlockSparseLayout]]
    from_fa4: ClassVar[Callable[..., BlockSparseLayout]]
    from_flex: ClassVar[Callable[..., BlockSparseLayout]]
    from_seer_2d: ClassVar[Callable[..., BlockSparseLayout]]
    from_seer_1d: ClassVar[Callable[..., BlockSparseLayout]]
    from_flashinfer: ClassVar[Callable[..., BlockSparseLayout]]
    from_row_spans: ClassVar[Callable[..., BlockSparseLayout]]
    to_fa4: Callable[..., Any]
    to_flex: Callable[..., dict[str, Any]]
    to_flashinfer: Callable[..., dict[str, np.ndarray]]


def _raise_dup(row, kb, row_seg, qpart, B, both=False):
    """ValueError for an entry listed twice (or both full and partial)."""
    s = int(row_seg[int(row)])
    what = "is listed both as full and as partial" if both else "is listed twice"
    raise ValueError(f"key block {int(kb)} {what} for head {s // max(B, 1)}, sequence {s % max(B, 1)}, query block "
                     f"{int(row) - int(qpart.ptr[s])}")


def _mask_equal(a: ElementMask, b: ElementMask) -> bool:
    """Element masks describing the same rule."""
    if (a.causal, a.window_left, a.window_right, a.token_block_k, a.num_sink_tokens) != (
            b.causal, b.window_left, b.window_right, b.token_block_k, b.num_sink_tokens):
        return False
    for f in ("doc_ids_q", "doc_ids_k", "token_mask"):
        x, y = getattr(a, f), getattr(b, f)
        if (x is None) != (y is None) or (x is not None and not np.array_equal(x, y)):
            return False
    return True


__all__ = ["BlockSparseLayout", "RowSpans", "ColSpans", "Partition", "HEAD_MODES"]
