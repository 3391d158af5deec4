"""A discrete-event model of the backward main kernel's schedule, default vs deterministic dQ order (CPU only).

Tiles are dispatched in index order onto ``num_sms`` SMs (one CTA per SM, as the 8-warp kernel runs); a tile costs
``load`` (K/V and epilogue) plus one unit per step (one query chunk of one head). The deterministic mode adds the
step's dQ only when the previous contributor of its (query head, query span) semaphore has released it:

* ``protocol="blocking"`` (the kernel before this change): the contributor waits for its turn, adds, waits for the
  add to complete and releases, all inside the step (``crit`` units on the step's critical path);
* ``protocol="deferred"`` (this change): the add is issued as soon as the turn comes, and the semaphore is released
  later in the same step (after the S / dP GEMMs, when the add has completed): ``crit_deferred`` units per step on
  the critical path, the next contributor gets the turn ``handoff`` units after the grant.

Contributors of a semaphore come in tile-index order (``dq_order``), so a tile waits only for tiles with a smaller
index; processing tiles in index order therefore sees every release time it needs.
"""

from __future__ import annotations

import heapq

import numpy as np

from varblock.bwd_worklist import BwdWorkList


def simulate(wl: BwdWorkList, *, num_sms: int = 132, load: float = 1.0, deterministic: bool = False,
             protocol: str = "deferred", crit: float = 0.3, crit_deferred: float = 0.05,
             handoff: float = 0.4) -> dict[str, float]:
    """Makespan (in step units) and total stall of the work list's launch; see the module docstring."""
    if protocol not in ("blocking", "deferred"):
        raise ValueError(f"protocol: expected 'blocking' or 'deferred', got {protocol!r}")
    tiles = wl.tiles.astype(np.int64)
    sem = wl.dq_order[:, 0].astype(np.int64)
    free = [0.0] * num_sms
    heapq.heapify(free)
    released: dict[tuple[int, int], float] = {}
    hpt = wl.heads_per_tile
    last_start, stall, makespan = 0.0, 0.0, 0.0
    for t in range(tiles.shape[0]):
        start = max(last_start, heapq.heappop(free))
        last_start = start
        now = start + load
        head, c0, n_ch = int(tiles[t, 1]), int(tiles[t, 4]), int(tiles[t, 5] + tiles[t, 6])
        for ci in range(n_ch):
            s_id = int(sem[c0 + ci])
            for g in range(hpt):
                now += 1.0
                if not deterministic:
                    continue
                key = (head * hpt + g, s_id)
                grant = max(now, released.get(key, 0.0))
                stall += grant - now
                if protocol == "blocking":
                    now = grant + crit
                    released[key] = now
                else:
                    now = grant + crit_deferred
                    released[key] = grant + handoff
        heapq.heappush(free, now)
        makespan = max(makespan, now)
    return {"makespan": makespan, "stall": stall}


def slowdown(wl: BwdWorkList, **kw) -> float:
    """Modelled deterministic time / default time of one work list."""
    base = simulate(wl, deterministic=False, **kw)["makespan"]
    return simulate(wl, deterministic=True, **kw)["makespan"] / max(base, 1e-9)
