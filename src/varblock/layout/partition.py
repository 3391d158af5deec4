"""Token partitions: the consecutive spans that tile each (layout head, sequence) of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._host import cdiv, check_int32, exclusive_cumsum, frozen, ragged_arange


@dataclass(frozen=True, eq=False)
class Partition:
    """Token spans tiling each (layout head, sequence): segment ``s = h * B + b`` owns spans ``ptr[s]:ptr[s+1]``."""

    ptr: np.ndarray  #: int64 [Hl*B+1]
    start: np.ndarray  #: int32 [N]
    length: np.ndarray  #: int32 [N]

    @property
    def size(self) -> int:
        return int(self.start.shape[0])

    def counts(self) -> np.ndarray:
        return np.diff(self.ptr)

    def seg(self) -> np.ndarray:
        return np.repeat(np.arange(self.ptr.shape[0] - 1, dtype=np.int64), self.counts())


def fixed_partition(cu: np.ndarray, block: int, num_heads: int, name: str) -> Partition:
    """Fixed blocks of ``block`` tokens (a shorter last one) for every (head, sequence)."""
    lens = np.diff(cu.astype(np.int64))
    nb = cdiv(lens, block)
    total = int(nb.sum()) * num_heads
    check_int32(total, name, "number of blocks (all heads)")
    counts = np.tile(nb, num_heads)
    _, pos = ragged_arange(counts)
    seg_len = np.repeat(np.tile(lens, num_heads), counts)
    start = pos * block
    length = np.minimum(block, seg_len - start)
    return Partition(frozen(exclusive_cumsum(counts)), frozen(start.astype(np.int32)),
                     frozen(length.astype(np.int32)))


def spans_partition(cu: np.ndarray, num_heads: int, seg: np.ndarray, start: np.ndarray, length: np.ndarray,
                    name: str) -> Partition:
    """Partition from spans already sorted by (segment, start); validated to tile every sequence exactly."""
    B = cu.shape[0] - 1
    nseg = num_heads * B
    seg = np.asarray(seg, dtype=np.int64)
    start = np.asarray(start, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    check_int32(int(start.shape[0]), name, "number of spans")
    if (length < 1).any():
        i = int(np.argmax(length < 1))
        raise ValueError(f"{name}: span {i} has length {int(length[i])}; spans must be at least 1 token long")
    counts = np.bincount(seg, minlength=nseg) if seg.size else np.zeros(nseg, dtype=np.int64)
    ptr = exclusive_cumsum(counts)
    if seg.size and (np.diff(seg) < 0).any():
        raise ValueError(f"{name}: rows / spans must be ordered by (head, sequence, start)")
    # tiling: first start 0, contiguous, last end == len
    lens = np.tile(np.diff(cu.astype(np.int64)), num_heads)
    expected_start = np.zeros_like(start)
    if start.size:
        end = start + length
        expected_start[1:] = end[:-1]
        first = ptr[:-1][counts > 0]
        expected_start[first] = 0
        bad = start != expected_start
        if bad.any():
            i = int(np.argmax(bad))
            s = int(seg[i])
            raise ValueError(f"{name}: spans of head {s // max(B, 1)}, sequence {s % max(B, 1)} do not tile the "
                             f"sequence: span starting at {int(start[i])} should start at {int(expected_start[i])}")
        last = ptr[1:][counts > 0] - 1
        ends = end[last]
        want = lens[counts > 0]
        if (ends != want).any():
            j = int(np.argmax(ends != want))
            s = int(np.flatnonzero(counts > 0)[j])
            raise ValueError(f"{name}: spans of head {s // B}, sequence {s % B} end at {int(ends[j])}, "
                             f"but the sequence has {int(want[j])} tokens")
    missing = (counts == 0) & (lens > 0)
    if missing.any():
        s = int(np.argmax(missing))
        raise ValueError(f"{name}: no span covers head {s // B}, sequence {s % B} ({int(lens[s])} tokens)")
    return Partition(frozen(ptr), frozen(start.astype(np.int32)), frozen(length.astype(np.int32)))
