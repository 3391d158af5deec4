"""Estimated run time of a decode work list, used to choose the split-KV count (NumPy only, CPU-tested).

Time is counted in **chunk units**: the time one CTA slot takes to stream one ``tile_n``-key K/V chunk while every
slot of the GPU streams (about 2 us for 64 keys x d128 bf16 on an H200 with 264 slots; the constants below are
estimates fitted to the H200 measurements in ``docs/decode.md``, not measured one by one). An item costs its
chunks plus a fixed ramp (the dependent metadata loads before its first K/V bytes arrive, and its epilogue); the
last split of a row tile also pays the merge of the row tile's partials. CTAs are handed to free slots in index
order, longest first, so the estimate of a list is the sum over waves of the longest item of the wave.

Every tuning constant of the decode plan is in the block below (one place); ``benchmarks/decode_sweep.py`` measures
the choices they drive (see docs/decode.md, "Tuning"):

* ``RAMP_CHUNKS``, ``MERGE_BASE_CHUNKS``, ``MERGE_CHUNKS_PER_SPLIT``, ``MIN_CHUNKS_PER_SPLIT``, ``MAX_WAVES``,
  ``MIN_WAVES``: the split count (sweep rows ``s=N auto``; 1 x 128k is the shape they decide). More ramp or merge
  per split -> fewer splits; a lower ``MAX_WAVES`` or a higher ``MIN_CHUNKS_PER_SPLIT`` caps the splits;
  ``MIN_WAVES = 1.9`` asks for about two waves of items (64 splits for 1 x 128k on 264 slots).
* ``STEP_CHUNKS``: persistent grid or one CTA per item (sweep rows ``pers`` vs ``1/item``; 256 x 2k decides).
  A persistent grid is chosen only when ``STEP_CHUNKS`` (its per-item cost after the first) is below
  ``RAMP_CHUNKS`` by enough to beat the dynamic grid's waves; ``STEP_CHUNKS >= RAMP_CHUNKS`` turns it off.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------------- tuning constants
#: per item: items -> chunks -> page table -> K/V dependent loads, plus the epilogue (~4.4 us on the H200)
RAMP_CHUNKS = 2.0
#: per split row tile: partial write, fence + atomic, the LSE pass of the merge
MERGE_BASE_CHUNKS = 1.0
#: per split read by the merge (L2-latency bound: ~64 loads in flight per lane)
MERGE_CHUNKS_PER_SPLIT = 0.05
#: per item of a persistent CTA after its first: the Q load and the epilogue (the loader already streams the
#: item's first chunks during the previous item). Set from the H200 (2026-11-29): 256 x 2k at density 0.25 ran
#: 176 us on a persistent grid (8 items on the busiest CTA: 22 us each) and 164 us with one CTA per item (7.76
#: waves: 21.1 us each), so the cross-item prefetch hid no measurable ramp: the step costs a full ramp.
STEP_CHUNKS = 2.0
#: fewest chunks a split reads (bounds the partial workspace and the merge)
MIN_CHUNKS_PER_SPLIT = 4
#: most waves of CTAs a split choice may create (splits past it only add ramps and merge work)
MAX_WAVES = 4
#: fewest waves of items a split choice should create when some candidate can (0: the estimate alone decides). The
#: estimate never prefers two waves of half items to one wave (it assumes equal slot speeds); 1.9 gives the old
#: plan's 64 splits for 1 x 128k (both densities) and changes no other benchmark shape: set it if the sweep shows
#: ``s=64`` beating ``s=33`` there (H200, old plan 64 splits 3.43 TB/s vs 33 splits 3.27, paged; 3.58 contiguous)
MIN_WAVES = 0.0
# ------------------------------------------------------------------------------------------------------------------


def item_costs(n_chunks: np.ndarray, num_splits: np.ndarray) -> np.ndarray:
    """Estimated cost (chunk units) of items with ``n_chunks`` chunks whose row tiles have ``num_splits`` splits:
    the chunks, the ramp, and for split row tiles the merge (charged to every split: any of them may be last)."""
    n = np.asarray(n_chunks, dtype=np.float64)
    s = np.asarray(num_splits, dtype=np.float64)
    merge = np.where(s > 1, MERGE_BASE_CHUNKS + MERGE_CHUNKS_PER_SPLIT * s, 0.0)
    return n + RAMP_CHUNKS + merge


def makespan(costs: np.ndarray, slots: int) -> float:
    """Estimated time of items with ``costs`` on ``slots`` CTA slots, dispatched longest first: the sum over waves
    of ``slots`` items of each wave's longest item (exact for equal items, close for sorted varied ones)."""
    if slots < 1:
        raise ValueError(f"slots: expected a positive integer, got {slots!r}")
    c = np.sort(np.asarray(costs, dtype=np.float64))[::-1]
    return float(c[::slots].sum())


def snake_order(num_items: int, grid: int) -> np.ndarray:
    """Positions of the items of a longest-first list when CTA ``c`` of a persistent grid runs items ``c, c + grid,
    ...``: round ``k`` (items ``k * grid ..``) is reversed when ``k`` is odd, so the CTA that got the longest item
    of a round gets the shortest of the next (returns the permutation to apply to the sorted list)."""
    idx = np.arange(num_items)
    rnd, pos = np.divmod(idx, grid)
    size = np.minimum(grid, num_items - rnd * grid)
    return np.where(rnd % 2 == 1, rnd * grid + size - 1 - pos, idx)


def persistent_makespan(costs: np.ndarray, grid: int) -> float:
    """Estimated time of a persistent grid: CTA ``c`` runs items ``c, c + grid, ...`` of ``costs`` (already in
    launch order), each costing its chunks plus ``STEP_CHUNKS``; one ramp per CTA."""
    c = np.asarray(costs, dtype=np.float64)
    per_cta = np.bincount(np.arange(c.shape[0]) % grid, weights=c + STEP_CHUNKS, minlength=grid)
    return float(per_cta.max(initial=0.0)) + RAMP_CHUNKS


def choose_grid(n_chunks: np.ndarray, num_splits: np.ndarray, slots: int,
                persistent: bool | None = None) -> tuple[int, np.ndarray]:
    """``(grid, order)`` for items given longest first: one CTA per item (``grid = len``, order unchanged) or a
    persistent grid of ``slots`` CTAs, each running every ``grid``-th item of the snake order (the kernel's loader
    streams an item's first chunks while the previous item finishes). ``persistent``: None = whichever the model
    estimates faster, True / False = forced (True changes nothing when there are at most ``slots`` items)."""
    if persistent is not None and not isinstance(persistent, (bool, np.bool_)):
        raise TypeError(f"persistent: expected None, True or False, got {persistent!r}")
    w = int(np.asarray(n_chunks).shape[0])
    keep = np.arange(w)
    if w <= slots or persistent is False:
        return max(w, 1), keep
    order = snake_order(w, slots)
    if persistent:
        return slots, order
    merge = item_costs(np.zeros(w), num_splits) - RAMP_CHUNKS
    dyn = makespan(item_costs(n_chunks, num_splits), slots)
    pers = persistent_makespan((np.asarray(n_chunks, np.float64) + merge)[order], slots)
    return (slots, order) if pers < dyn else (w, keep)


def split_items(g_chunks: np.ndarray, g_tiles: np.ndarray, g_splits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n_chunks, num_splits)`` of every item when group ``g`` (``g_chunks[g]`` chunks, ``g_tiles[g]`` row tiles)
    is cut into ``g_splits[g]`` balanced splits (split ``s`` of ``S`` reads ``[s*n//S, (s+1)*n//S)``)."""
    per_tile = np.repeat(np.arange(g_chunks.shape[0]), g_tiles)
    ns = g_splits[per_tile]
    tile = np.repeat(np.arange(per_tile.shape[0]), ns)
    s = np.arange(tile.shape[0]) - np.repeat(np.cumsum(ns) - ns, ns)
    n, S = g_chunks[per_tile][tile], ns[tile]
    return (s + 1) * n // S - s * n // S, S


def estimate(g_chunks: np.ndarray, g_tiles: np.ndarray, g_splits: np.ndarray, slots: int) -> float:
    """Estimated time (chunk units) of the work list of these groups and split counts."""
    n, s = split_items(g_chunks, g_tiles, g_splits)
    return makespan(item_costs(n, s), slots)


def splits_for(g_chunks: np.ndarray, cps: int) -> np.ndarray:
    """Splits per group for ``cps`` chunks per split (at least 1)."""
    return np.maximum(1, -(-g_chunks // cps))


def choose_chunks_per_split(g_chunks: np.ndarray, g_tiles: np.ndarray, slots: int,
                            max_splits: int | None = None) -> int:
    """Chunks per split with the least estimated time. Candidates: the chunk counts that cut the longest group
    into ``k = 1, 2, ...`` splits, at least ``MIN_CHUNKS_PER_SPLIT`` chunks each, at most ``max_splits`` splits,
    while the list stays within ``MAX_WAVES`` waves (or one item per row tile); ties go to fewer splits. Candidates
    with fewer than ``MIN_WAVES x slots`` items are taken only when no candidate reaches that many."""
    g_chunks = np.asarray(g_chunks, dtype=np.int64)
    g_tiles = np.asarray(g_tiles, dtype=np.int64)
    longest = int(g_chunks.max(initial=0))
    if longest == 0:
        return MIN_CHUNKS_PER_SPLIT
    cap = max(MAX_WAVES * slots, int(g_tiles.sum()))
    best_cps, best_t, prev = longest, np.inf, 0
    full_cps, full_t = 0, np.inf  # the best candidate with at least MIN_WAVES waves of items
    for k in range(1, longest + 1):
        cps = max(MIN_CHUNKS_PER_SPLIT, -(-longest // k))
        if cps == prev:
            continue
        prev = cps
        g_splits = splits_for(g_chunks, cps)
        if k > 1 and ((max_splits is not None and int(g_splits.max()) > max_splits)
                      or int((g_splits * g_tiles).sum()) > cap):
            break
        t = estimate(g_chunks, g_tiles, g_splits, slots)
        if t < best_t - 1e-9:
            best_cps, best_t = cps, t
        if int((g_splits * g_tiles).sum()) >= MIN_WAVES * slots and t < full_t - 1e-9:
            full_cps, full_t = cps, t
        if cps == MIN_CHUNKS_PER_SPLIT:
            break
    return full_cps if full_cps else best_cps
