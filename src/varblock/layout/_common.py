"""Small argument helpers shared by the importers (block sizes, padding, fields, positions, per-sequence
blocks, every cell of a fixed grid)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._host import cdiv, check_block_size, check_int32, exclusive_cumsum, ragged_arange


def block_pair(block_size: Any, name: str) -> tuple[int, int]:
    """(block_q, block_k) from an int or a pair, each a supported block size."""
    if isinstance(block_size, (tuple, list)):
        if len(block_size) != 2:
            raise ValueError(f"{name}: expected an int or a (block_q, block_k) pair, got {block_size!r}")
        return check_block_size(block_size[0], f"{name}[0]"), check_block_size(block_size[1], f"{name}[1]")
    v = check_block_size(block_size, name)
    return v, v


def padding_arg(padding: str) -> bool:
    """True for padding='ignore', False for 'error'."""
    if padding not in ("error", "ignore"):
        raise ValueError(f"padding: expected 'error' or 'ignore', got {padding!r}")
    return padding == "ignore"


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` of a dict, ``obj.name`` of an object, None when absent."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def pos_str(flat: int, shape: tuple) -> str:
    """The N-D position of a flat index, for error messages."""
    return str(tuple(int(i) for i in np.unravel_index(int(flat), shape))) if len(shape) else "()"


def nonzero_nd(a: np.ndarray) -> tuple[np.ndarray, ...]:
    """``np.nonzero`` for N-D arrays via one flat scan (an order of magnitude faster than N-D nonzero)."""
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    flat = np.flatnonzero(a)
    return np.unravel_index(flat, a.shape)


def seq_blocks(cu: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks per sequence and their exclusive cumulative sum."""
    n = cdiv(np.diff(cu.astype(np.int64)), block)
    return n, exclusive_cumsum(n)


def uniform_cu(batch: int, seqlen: int, name: str) -> np.ndarray:
    """cu_seqlens of ``batch`` sequences of ``seqlen`` tokens each."""
    if isinstance(seqlen, (bool, np.bool_)) or not isinstance(seqlen, (int, np.integer)) or seqlen < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {seqlen!r}")
    total = batch * int(seqlen)
    check_int32(total, name, "total tokens (batch * seqlen)")
    return (np.arange(batch + 1, dtype=np.int64) * int(seqlen)).astype(np.int32)


def all_cells(cu_q: np.ndarray, cu_k: np.ndarray, bq: int, bk: int, num_heads: int) -> tuple[np.ndarray, ...]:
    """Every (row, key block) cell of fixed-block partitions, for ``num_heads`` heads: (row, kb, b, m) int64."""
    B = cu_q.shape[0] - 1
    M, cu_m = seq_blocks(cu_q, bq)
    N, _ = seq_blocks(cu_k, bk)
    per_seq = M * N
    total = int(per_seq.sum()) * num_heads
    check_int32(total, "cu_seqlens_k", "number of (query block, key block) cells over all heads")
    seg, pos = ragged_arange(np.tile(per_seq, num_heads))
    h = seg // max(B, 1)
    b = seg % max(B, 1)
    Nb = N[b]
    m = pos // np.maximum(Nb, 1)
    kb = pos % np.maximum(Nb, 1)
    row = h * int(cu_m[-1]) + cu_m[b] + m
    return row, kb, b, m
