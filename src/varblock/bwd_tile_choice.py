"""Key tile width of the backward's main kernel: the default (128 keys on sm90 / sm100 for d64 / d128) or the narrow
64-key variant, chosen per plan from the two work lists' step counts.

A layout of 64-key blocks gives one 64-key column per K/V tile. Where adjacent columns pair exactly
(``bwd_key_groups``: dense, causal, windows) a 128-key tile walks the union of their query chunks, and each of its
steps is fully used; where they do not (random 64 x 64 blocks) a 128-key tile computes half of every S / dP / dK /
dV / dQ tile for nothing, and a 64-key tile does the same useful work in cheaper steps. The choice compares
``steps(default) * 1`` with ``steps(64) * NARROW_STEP_COST``; columns wider than 64 keys always keep the default.
Pure Python; the work lists are built by the caller (``build(tile_n)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from varblock.bwd_worklist import BwdWorkList

#: time of a 64 x 64 step relative to a 64 x 128 step (d128, sm90), an estimate from the kernel's per-step work:
#: half the MMAs, ~2/3 of the ldmatrix traffic (384 vs 576 KB), the same Q / dO loads, dQ reduce and barriers
NARROW_STEP_COST = 0.7


@dataclass(frozen=True)
class KeyTileChoice:
    """The chosen ``tile_n``, why, and the layout-level (tile, chunk) steps of each work list that was built."""

    tile_n: int
    reason: str
    steps: dict[int, int] = field(default_factory=dict)


def layout_steps(wl: BwdWorkList) -> int:
    """(tile, query chunk) steps of a work list per tile head (the chunk rows; tiles of one sub-tile share them)."""
    return int(wl.chunks.shape[0])


def choose_key_tile(col_widths: np.ndarray, default_tile_n: int, narrow_tile_n: int | None,
                    build: Callable[[int], BwdWorkList], *, step_cost: float = NARROW_STEP_COST) -> KeyTileChoice:
    """Choose the key tile width for a layout whose key columns are ``col_widths`` keys wide.

    ``narrow_tile_n`` is None when no narrow variant is built (or it is switched off): the default is kept.
    Otherwise, if every column fits the narrow tile, both work lists are built with ``build(tile_n)`` (which the
    caller may cache) and the cheaper one by ``steps * cost`` wins; ties keep the default.
    """
    if not 0 < step_cost <= 1:
        raise ValueError(f"step_cost: expected a value in (0, 1], got {step_cost}")
    widths = np.asarray(col_widths)
    if narrow_tile_n is None or narrow_tile_n >= default_tile_n:
        return KeyTileChoice(default_tile_n, f"{default_tile_n}-key tiles: no narrower main variant is built")
    widest = int(widths.max()) if widths.size else 0
    if widest > narrow_tile_n or widest == 0:
        why = "the layout has no key columns" if widest == 0 else \
            f"key columns up to {widest} keys wide (the {narrow_tile_n}-key tile is for columns <= {narrow_tile_n})"
        return KeyTileChoice(default_tile_n, f"{default_tile_n}-key tiles: {why}")
    wide, narrow = layout_steps(build(default_tile_n)), layout_steps(build(narrow_tile_n))
    steps = {default_tile_n: wide, narrow_tile_n: narrow}
    counts = (f"{wide:,} steps of {default_tile_n} keys vs {narrow:,} of {narrow_tile_n} keys at {step_cost:g} of "
              f"the cost each")
    if narrow * step_cost < wide:
        return KeyTileChoice(narrow_tile_n, f"{narrow_tile_n}-key tiles: the {narrow_tile_n}-key columns do not "
                             f"pair exactly into {default_tile_n}-key tiles ({counts})", steps)
    return KeyTileChoice(default_tile_n, f"{default_tile_n}-key tiles: the {narrow_tile_n}-key columns pair into "
                         f"{default_tile_n}-key tiles ({counts})", steps)
