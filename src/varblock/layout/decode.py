"""Decode sparsity: which KV blocks each (sequence, head) reads in one decode step (NumPy only).

A :class:`DecodeLayout` lists, per sequence ``b`` and layout head ``h``, the kept KV blocks (block ``i`` covers keys
``[i * block_size, (i + 1) * block_size)`` of the sequence, clipped to its KV length) in CSR form. ``head_mode``
``"per_kv_head"``: one list per KV head, shared by the query heads of its GQA group; ``"per_q_head"``: one list per
query head (the decode plan reads the union of a group's lists once and masks per head).

Importers (all accept NumPy arrays, Python sequences or GPU tensors of any framework; device arrays are copied to
the host once): :func:`from_seer_decode_mask` (the ``[B, H, num_blocks]`` block mask SeerAttention's decode gate
emits), :func:`from_topk_indices` (Quest-style top-k block indices, ``-1`` padded, optional per-row counts),
:func:`window_sinks` (the last ``window`` keys plus the first ``sinks`` keys), :func:`dense_decode` (every block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from varblock.runtime.frameworks import to_host

DECODE_HEAD_MODES = ("per_kv_head", "per_q_head")


@dataclass(frozen=True)
class DecodeLayout:
    """Kept KV blocks per (sequence, head): row ``b * num_heads + h`` is ``blocks[indptr[r]:indptr[r + 1]]``
    (int32, strictly increasing, each ``< ceil(kv_lens[b] / block_size)``)."""

    block_size: int
    num_heads: int
    head_mode: str
    kv_lens: np.ndarray  # int64 [B]
    indptr: np.ndarray  # int64 [B * num_heads + 1]
    blocks: np.ndarray  # int32 [nnz]

    @property
    def batch_size(self) -> int:
        return int(self.kv_lens.shape[0])

    def row(self, b: int, h: int) -> np.ndarray:
        r = b * self.num_heads + h
        return self.blocks[self.indptr[r]:self.indptr[r + 1]]

    def kept_keys(self) -> np.ndarray:
        """Keys each (sequence, head) reads, int64 ``[B, num_heads]`` (the last block of a sequence may be short)."""
        nb = self.num_heads
        rows = np.repeat(np.arange(self.batch_size * nb), np.diff(self.indptr))
        b = rows // nb
        start = self.blocks.astype(np.int64) * self.block_size
        keys = np.minimum(start + self.block_size, self.kv_lens[b]) - start
        out = np.zeros(self.batch_size * nb, dtype=np.int64)
        np.add.at(out, rows, keys)
        return out.reshape(self.batch_size, nb)

    def density(self) -> float:
        """Kept keys over all keys (1.0 for an empty cache)."""
        total = int(self.kv_lens.sum()) * self.num_heads
        return 1.0 if total == 0 else float(self.kept_keys().sum()) / total


def _kv_lens(kv_lens: Any) -> np.ndarray:
    a = np.asarray(to_host(kv_lens, "kv_lens"))
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"kv_lens: expected a 1-d integer array [B], got {a.dtype} of shape {a.shape}")
    if (a < 0).any() or (a > 2**31 - 1).any():
        raise ValueError("kv_lens: lengths must lie in [0, 2**31 - 1]")
    return a.astype(np.int64)


def _check_block_size(block_size: Any) -> int:
    if not isinstance(block_size, (int, np.integer)) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size: expected a positive integer, got {block_size!r}")
    return int(block_size)


def _check_head_mode(head_mode: str) -> str:
    if head_mode not in DECODE_HEAD_MODES:
        raise ValueError(f"head_mode: expected one of {DECODE_HEAD_MODES}, got {head_mode!r}")
    return head_mode


def num_blocks(kv_lens: np.ndarray, block_size: int) -> np.ndarray:
    """Blocks of each sequence, ``ceil(kv_len / block_size)``."""
    return (kv_lens + block_size - 1) // block_size


def from_block_lists(rows: np.ndarray, blocks: np.ndarray, *, kv_lens: Any, block_size: int, num_heads: int,
                     head_mode: str = "per_kv_head") -> DecodeLayout:
    """A layout from (row, block) pairs in any order, duplicates allowed; row = ``b * num_heads + h``."""
    kv = _kv_lens(kv_lens)
    bs = _check_block_size(block_size)
    _check_head_mode(head_mode)
    if not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"num_heads: expected a positive integer, got {num_heads!r}")
    rows = np.asarray(rows, dtype=np.int64).ravel()
    blocks = np.asarray(blocks, dtype=np.int64).ravel()
    n_rows = kv.shape[0] * int(num_heads)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"rows: indices must lie in [0, {n_rows})")
    nb = num_blocks(kv, bs)
    if blocks.size:
        limit = nb[rows // num_heads]
        bad = (blocks < 0) | (blocks >= limit)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            b, h = divmod(int(rows[i]), int(num_heads))
            raise ValueError(f"block index {int(blocks[i])} out of range for sequence {b} head {h}: the sequence has "
                             f"{int(limit[i])} blocks of {bs} keys (kv_len {int(kv[b])})")
    stride = int(nb.max(initial=0)) + 1
    r, blk = np.divmod(np.unique(rows * stride + blocks), stride)  # sorted by (row, block), duplicates dropped
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.add.at(indptr, r + 1, 1)
    return DecodeLayout(bs, int(num_heads), head_mode, kv, np.cumsum(indptr), blk.astype(np.int32))


def from_seer_decode_mask(block_mask: Any, *, kv_lens: Any, block_size: int,
                          head_mode: str = "per_kv_head") -> DecodeLayout:
    """SeerAttention's decode block mask: bool ``[B, H, num_blocks]`` (or ``[B, H, 1, num_blocks]``), ``True`` =
    read the block. ``H`` is the number of KV heads (``per_kv_head``, SeerAttention's GQA-shared gate) or of query
    heads (``per_q_head``). Blocks past a sequence's length must be ``False``."""
    m = np.asarray(to_host(block_mask, "block_mask"))
    if m.ndim == 4 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.ndim != 3:
        raise ValueError(f"block_mask: expected [B, H, num_blocks] (or [B, H, 1, num_blocks]), got shape {m.shape}")
    if m.dtype != np.bool_:
        if not np.isin(m, (0, 1)).all():
            raise ValueError(f"block_mask: expected booleans (or 0/1), got {m.dtype} with other values")
        m = m.astype(bool)
    kv = _kv_lens(kv_lens)
    if m.shape[0] != kv.shape[0]:
        raise ValueError(f"block_mask: batch {m.shape[0]} differs from kv_lens ({kv.shape[0]} sequences)")
    b, h, blk = np.nonzero(m)
    return from_block_lists(b * m.shape[1] + h, blk, kv_lens=kv, block_size=block_size, num_heads=m.shape[1],
                            head_mode=head_mode)


def from_topk_indices(indices: Any, *, kv_lens: Any, block_size: int, counts: Any = None,
                      head_mode: str = "per_kv_head") -> DecodeLayout:
    """Quest-style top-k block indices ``[B, H, k]`` (any order, ``-1`` = padding, duplicates allowed); with
    ``counts`` ``[B, H]`` only the first ``counts[b, h]`` entries of a row are used."""
    idx = np.asarray(to_host(indices, "indices"))
    if idx.ndim != 3 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices: expected an integer array [B, H, k], got {idx.dtype} of shape {idx.shape}")
    kv = _kv_lens(kv_lens)
    if idx.shape[0] != kv.shape[0]:
        raise ValueError(f"indices: batch {idx.shape[0]} differs from kv_lens ({kv.shape[0]} sequences)")
    keep = idx >= 0
    if (idx < -1).any():
        raise ValueError("indices: negative entries other than -1 (padding)")
    if counts is not None:
        c = np.asarray(to_host(counts, "counts"))
        if c.shape != idx.shape[:2] or not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"counts: expected an integer array {idx.shape[:2]}, got {c.dtype} {c.shape}")
        if (c < 0).any() or (c > idx.shape[2]).any():
            raise ValueError(f"counts: entries must lie in [0, {idx.shape[2]}]")
        keep &= np.arange(idx.shape[2])[None, None, :] < c[:, :, None]
    b, h, j = np.nonzero(keep)
    return from_block_lists(b * idx.shape[1] + h, idx[b, h, j], kv_lens=kv, block_size=block_size,
                            num_heads=idx.shape[1], head_mode=head_mode)


def window_sinks(kv_lens: Any, *, block_size: int, window: int, sinks: int = 0, num_heads: int = 1,
                 head_mode: str = "per_kv_head") -> DecodeLayout:
    """Every block touching the last ``window`` keys or the first ``sinks`` keys of each sequence (StreamingLLM
    style at block granularity; ``window = 0`` with ``sinks = 0`` keeps nothing)."""
    kv = _kv_lens(kv_lens)
    bs = _check_block_size(block_size)
    for name, val in (("window", window), ("sinks", sinks)):
        if not isinstance(val, (int, np.integer)) or val < 0:
            raise ValueError(f"{name}: expected a non-negative integer, got {val!r}")
    nb = num_blocks(kv, bs)
    first_win = np.where(window > 0, np.maximum(kv - window, 0) // bs, nb)
    n_sink = np.minimum((int(sinks) + bs - 1) // bs, nb)
    per_seq = [np.union1d(np.arange(n_sink[b]), np.arange(first_win[b], nb[b])) for b in range(kv.shape[0])]
    return _broadcast_heads(per_seq, kv, bs, num_heads, head_mode)


def dense_decode(kv_lens: Any, *, block_size: int, num_heads: int = 1, head_mode: str = "per_kv_head"
                 ) -> DecodeLayout:
    """Every block of every sequence (dense decode)."""
    kv = _kv_lens(kv_lens)
    bs = _check_block_size(block_size)
    nb = num_blocks(kv, bs)
    return _broadcast_heads([np.arange(n) for n in nb], kv, bs, num_heads, head_mode)


def _broadcast_heads(per_seq: list[np.ndarray], kv: np.ndarray, bs: int, num_heads: int, head_mode: str
                     ) -> DecodeLayout:
    _check_head_mode(head_mode)
    if not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"num_heads: expected a positive integer, got {num_heads!r}")
    lens = np.repeat(np.array([len(p) for p in per_seq], dtype=np.int64), num_heads)
    indptr = np.concatenate([[0], np.cumsum(lens)])
    blocks = np.concatenate([np.tile(p, num_heads) for p in per_seq] + [np.zeros(0)]).astype(np.int32)
    return DecodeLayout(bs, int(num_heads), head_mode, kv, indptr, blocks)
