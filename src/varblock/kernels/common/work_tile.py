"""A work-list tile on the device: one row of the ``tiles`` table, its run of ``chunks``, and the sequence it
belongs to (``docs/contracts.md`` section 2; column numbers from ``varblock.abi``)."""

from dataclasses import dataclass
from typing import Any

from cutlass import Int64, Uint32

from varblock.abi import (
    CHUNK_DROP_SHIFT,
    CHUNK_K_LEN,
    CHUNK_K_LEN_MASK,
    CHUNK_K_START,
    CHUNK_WIDTH,
    TILE_BATCH,
    TILE_CHUNK_BEGIN,
    TILE_HEAD,
    TILE_N_FULL,
    TILE_N_LEFT,
    TILE_N_PARTIAL,
    TILE_Q_LEN,
    TILE_Q_START,
    TILE_WIDTH,
)


def _at(base, offset: int):
    """``base + offset`` for a static offset (no add for 0)."""
    return base if offset == 0 else base + offset


@dataclass(frozen=True)
class WorkTile:
    """``tiles[index]``: query tokens ``q_start .. q_start + q_len - 1`` of sequence ``batch``, tile head ``head``,
    chunks ``chunk_begin .. chunk_begin + n_chunks - 1``; chunk ``ci`` is partial iff ``ci < n_left`` or
    ``ci >= n_left + n_full``. (Frozen: read-only to the DSL, see scheduler.py.)"""

    batch: Any
    head: Any
    q_start: Any
    q_len: Any
    chunk_begin: Any
    n_full: Any
    n_left: Any
    n_chunks: Any

    @staticmethod
    def load(tiles, index) -> "WorkTile":
        """Read row ``index`` of the ``tiles`` table."""
        row = index * TILE_WIDTH
        batch = tiles[_at(row, TILE_BATCH)]
        head = tiles[_at(row, TILE_HEAD)]
        q_start = tiles[_at(row, TILE_Q_START)]
        q_len = tiles[_at(row, TILE_Q_LEN)]
        chunk_begin = tiles[_at(row, TILE_CHUNK_BEGIN)]
        n_full = tiles[_at(row, TILE_N_FULL)]
        n_left = tiles[_at(row, TILE_N_LEFT)]
        n_chunks = n_full + tiles[_at(row, TILE_N_PARTIAL)]
        return WorkTile(batch, head, q_start, q_len, chunk_begin, n_full, n_left, n_chunks)

    def is_partial(self, ci):
        """Chunk ``ci`` of the tile needs the element mask: ``ci < n_left`` (wraps to a large unsigned value) or
        ``ci >= n_left + n_full``."""
        return Uint32(ci - self.n_left) >= Uint32(self.n_full)


def read_chunk(chunks, c, ahead: int = 0):
    """``(k_start, k_len)`` of chunk ``c + ahead`` (global chunk index ``c``, static ``ahead``); the row-half drop
    bits of the ``k_len`` word are stripped (see :func:`read_chunk_rows`)."""
    k_start, k_len, _ = read_chunk_rows(chunks, c, ahead)
    return k_start, k_len


def read_chunk_rows(chunks, c, ahead: int = 0):
    """``(k_start, k_len, drop)`` of chunk ``c + ahead``: ``drop`` holds the ``CHUNK_DROP_LO`` / ``CHUNK_DROP_HI``
    bits (``varblock.abi``) of the row halves that do not keep the chunk (0: every row keeps it)."""
    base = c * CHUNK_WIDTH
    word = chunks[_at(base, ahead * CHUNK_WIDTH + CHUNK_K_LEN)]
    return (chunks[_at(base, ahead * CHUNK_WIDTH + CHUNK_K_START)], word & CHUNK_K_LEN_MASK,
            word >> CHUNK_DROP_SHIFT)


def chunk_drop(chunks, c):
    """The drop bits of chunk ``c`` alone (see :func:`read_chunk_rows`)."""
    return chunks[_at(c * CHUNK_WIDTH, CHUNK_K_LEN)] >> CHUNK_DROP_SHIFT


@dataclass(frozen=True)
class Sequence:
    """Where sequence ``batch`` lives in the packed token axes: ``seq_q`` / ``seq_k`` (first token), ``len_q`` /
    ``len_k``, and ``diag = len_k - len_q`` (bottom-right alignment: key ``j`` is on the diagonal of query ``i`` at
    ``j = i + diag``)."""

    seq_q: Any
    len_q: Any
    seq_k: Any
    len_k: Any
    diag: Any

    @staticmethod
    def load(cu_seqlens_q, cu_seqlens_k, batch) -> "Sequence":
        """Read sequence ``batch`` from the cumulative lengths."""
        seq_q = cu_seqlens_q[batch]
        len_q = cu_seqlens_q[batch + 1] - seq_q
        seq_k = cu_seqlens_k[batch]
        len_k = cu_seqlens_k[batch + 1] - seq_k
        return Sequence(seq_q, len_q, seq_k, len_k, len_k - len_q)


@dataclass(frozen=True)
class TileRows:
    """Row mapping of a tile with pack-GQA factor ``G``: tile row ``r`` is token ``q_start + r // G`` of query head
    ``hq0 + r % G``; ``rows_valid = q_len * G`` rows hold tokens; ``tok0`` is the packed index of the first token;
    ``hkv`` the KV head."""

    G: Any
    rows_valid: Any
    hq0: Any
    hkv: Any
    tok0: Any

    @staticmethod
    def of(tile: WorkTile, seq: Sequence, pack_gqa, qhead_per_kvhead) -> "TileRows":
        """The row mapping of ``tile``."""
        rows_valid = tile.q_len * pack_gqa
        hq0 = tile.head * pack_gqa
        hkv = hq0 // qhead_per_kvhead
        return TileRows(pack_gqa, rows_valid, hq0, hkv, seq.seq_q + tile.q_start)

    def token_and_head(self, r):
        """(token offset in the tile, query head) of tile row ``r``."""
        tq = r // self.G
        return tq, self.hq0 + (r - tq * self.G)

    def kv_row(self, seq: Sequence, k_start):
        """Packed int64 index of key ``k_start`` of the sequence."""
        return Int64(seq.seq_k + k_start)
