"""A float64 model of the decode kernel that follows the work list exactly as the kernel does (items, chunks,
head masks, causal rule, split partials and their merge), so that the plan can be checked on the CPU against the
independent reference (``varblock.reference_decode``)."""

from __future__ import annotations

import math

import numpy as np

from varblock.decode_plan import abi
from varblock.decode_plan.worklist import WorkList


def run_model(wl: WorkList, q, k_rows, v_rows, cu_q, *, num_heads_kv: int, causal: bool
              ) -> tuple[np.ndarray, np.ndarray]:
    """``k_rows(b, j)`` -> ``[Hkv, D]`` keys of sequence b at positions j (array); same for values.

    Returns ``(out, lse)``; also asserts that every (token, query head) row is written exactly once."""
    total_q, hq, d = q.shape
    g = hq // num_heads_kv
    scale = 1.0 / math.sqrt(d)
    out = np.full((total_q, hq, d), np.nan)
    lse = np.full((hq, total_q), np.nan)
    written = np.zeros((total_q, hq), dtype=np.int64)
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    pending: dict[int, list[int]] = {}
    grid = wl.grid
    for it in wl.items[[i for c in range(grid) for i in range(c, wl.num_items, grid)]]:  # CTA c: c, c + grid, ..
        b, h, r0 = int(it[abi.ITEM_BATCH]), int(it[abi.ITEM_KV_HEAD]), int(it[abi.ITEM_ROW_START])
        c0, nc = int(it[abi.ITEM_CHUNK_BEGIN]), int(it[abi.ITEM_N_CHUNKS])
        n = int(cu_q[b + 1] - cu_q[b])
        rows = np.arange(r0, min(r0 + wl.tile_m, n * g))
        t, gi = rows // g, rows % g
        qr = q[cu_q[b] + t, h * g + gi]  # [R, D]
        s_all, v_all = [], []
        for c in wl.chunks[c0:c0 + nc]:
            ks, kl, hm = int(c[0]), int(c[1]), int(c[2])
            assert 0 <= kl <= wl.tile_n  # fixed-capacity lists have empty slots
            j = np.arange(ks, ks + kl)
            kk, vv = k_rows(b, j)[:, h], v_rows(b, j)[:, h]
            s = qr @ kk.T * scale
            ok = np.ones_like(s, dtype=bool)
            if causal:
                ok &= j[None, :] <= (int(it[abi.ITEM_KV_LEN]) - n + t)[:, None]
            if hm != -1:
                ok &= ((hm >> gi) & 1)[:, None] == 1
            s_all.append(np.where(ok, s, -np.inf))
            v_all.append(vv)
        if s_all:
            s = np.concatenate(s_all, axis=1)
            vv = np.concatenate(v_all, axis=0)
            m = s.max(axis=1, initial=-np.inf)
            has = np.isfinite(m)
            p = np.where(np.isfinite(s), np.exp(s - np.where(has, m, 0)[:, None]), 0.0)
            tot = p.sum(axis=1)
            o = np.where(has[:, None], p @ vv / np.where(has, tot, 1)[:, None], 0.0)
            with np.errstate(divide="ignore"):
                ls = np.where(has, m + np.log(np.where(has, tot, 1)), -np.inf)
        else:
            o, ls = np.zeros((rows.size, d)), np.full(rows.size, -np.inf)
        ns = int(it[abi.ITEM_NUM_SPLITS])
        if ns == 1:
            out[cu_q[b] + t, h * g + gi] = o
            lse[h * g + gi, cu_q[b] + t] = ls
            written[cu_q[b] + t, h * g + gi] += 1
            continue
        slot, base = int(it[abi.ITEM_SLOT]), int(it[abi.ITEM_SLOT_BASE])
        assert base <= slot < base + ns and slot < wl.num_slots and slot not in parts
        parts[slot] = (o, ls)
        pending.setdefault(base, []).append(slot)
        if len(pending[base]) == ns:  # the last split merges
            ls_all = np.stack([parts[sl][1] for sl in range(base, base + ns)])  # [S, R]
            o_all = np.stack([parts[sl][0] for sl in range(base, base + ns)])
            m = ls_all.max(axis=0)
            has = np.isfinite(m)
            w = np.where(np.isfinite(ls_all), np.exp(ls_all - np.where(has, m, 0)), 0.0)
            tot = w.sum(axis=0)
            out[cu_q[b] + t, h * g + gi] = np.where(has[:, None], (w[..., None] * o_all).sum(0)
                                                    / np.where(has, tot, 1)[:, None], 0.0)
            with np.errstate(divide="ignore"):
                lse[h * g + gi, cu_q[b] + t] = np.where(has, m + np.log(np.where(has, tot, 1)), -np.inf)
            written[cu_q[b] + t, h * g + gi] += 1
    assert (written == 1).all(), "every (token, query head) row must be written exactly once"
    return out, lse


class _CtaPipeline:
    """One CTA's loader and consumer counters, as the kernel keeps them (see :func:`simulate_pipeline`)."""

    def __init__(self, cta: int, grid: int, stages: int, n_chunks: list[int]):
        self.grid, self.stages, self.n_chunks = grid, stages, n_chunks
        self.item, self.c, self.nc, self.f_ld, self.f_cons = cta - grid, 0, 0, 0, 0
        self.stage_of: dict[int, tuple[int, int]] = {}  # flat index in flight or landed -> (item, chunk)
        self.busy_epilogue: int | None = None  # stage the previous epilogue may still read (until a barrier)

    def issue(self, lim: int, max_ahead: int) -> None:
        """``loader_issue``: advance to the CTA's next item if allowed, then issue one chunk if there is room."""
        nx = self.item + self.grid
        if self.c >= self.nc and nx <= lim and nx < len(self.n_chunks):
            self.item, self.c, self.nc = nx, 0, self.n_chunks[nx]
        if self.c < self.nc and self.f_ld - self.f_cons <= max_ahead:
            s = self.f_ld % self.stages
            assert all(f % self.stages != s for f in self.stage_of), "stage still holds a chunk"
            assert s != self.busy_epilogue, "stage still holds the previous epilogue's buffer"
            self.stage_of[self.f_ld] = (self.item, self.c)
            self.c += 1
            self.f_ld += 1


def simulate_pipeline(n_chunks, grid: int, stages: int, cross: bool) -> list[list[tuple[int, int]]]:
    """Replay the kernel's per-CTA K/V pipeline (``loader_issue`` / ``wait_chunk`` / epilogue stage of
    ``kernels/_decode_fwd_impl.py``) for items with ``n_chunks`` chunks on a persistent grid, asserting its
    invariants: every chunk is issued once, in order, before it is consumed, into a stage that holds no other
    chunk in flight and is not the epilogue buffer still being read; the cp.async wait count stays in
    ``[0, stages - 2]``; the epilogue's stage holds no chunk in flight. Returns each CTA's consumed
    ``(item, chunk)`` sequence."""
    n_chunks = [int(x) for x in n_chunks]
    ahead = grid if cross else 0
    out = []
    for cta in range(grid):
        p = _CtaPipeline(cta, grid, stages, n_chunks)
        seq = []
        for item in range(cta, len(n_chunks), grid):
            if not cross:
                p.busy_epilogue = None  # the item's first barrier
            for _ in range(stages - 1):
                p.issue(item + ahead, stages - 2)
            for ci in range(n_chunks[item]):
                pending = p.f_ld - p.f_cons - 1
                assert 0 <= pending <= stages - 2, pending
                p.busy_epilogue = None  # barrier
                p.issue(item + ahead, stages - 1)
                assert p.stage_of.pop(p.f_cons) == (item, ci), "chunks consumed out of order"
                seq.append((item, ci))
                p.f_cons += 1
            if cross:
                p.busy_epilogue = (p.f_cons + stages - 1) % stages
                assert all(f % stages != p.busy_epilogue for f in p.stage_of), "epilogue buffer holds a chunk"
            else:
                assert not p.stage_of, "the whole-ring epilogue needs an empty ring"
        assert not p.stage_of and p.f_ld == p.f_cons
        out.append(seq)
    return out
