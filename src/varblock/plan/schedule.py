"""Schedule choice: one CTA per tile, or a persistent grid of about one wave that pulls tiles from a counter."""

from __future__ import annotations

from varblock.families.base import AttentionFamily
from varblock.plan.core import Plan
from varblock.runtime.device import device, kernel
from varblock.runtime.manifest import load_manifest

SCHEDULERS = ("auto", "persistent", "single")


def choose_schedule(p: Plan, binding: AttentionFamily, scheduler: str) -> None:
    """Set ``p.scheduler`` and ``p.num_ctas``. Persistent grid = resident CTAs per SM (the variant's occupancy)
    x SMs; ``auto`` = single-tile for host plans (persistent when the binding's ``auto_scheduler`` says so),
    persistent for device plans."""
    e = binding.entry(p.arch, p.head_dim)
    supports = e is not None and any(q["name"] == "persistent" for q in e["params"])
    if not supports or scheduler == "single" or p.num_tiles == 0:
        if scheduler == "persistent" and not supports:
            raise ValueError("scheduler: the built attention kernels have no persistent schedule; rebuild them")
        p.scheduler, p.num_ctas = "single", p.num_tiles
        return
    if scheduler == "auto" and not p.on_device and getattr(binding, "auto_scheduler", "single") == "single":
        # Measured on an H200 (benchmarks/bench_scheduler.py, W1 and W3, d128): with host-sorted longest-first tiles
        # the hardware's own block dispatch already balances the portable kernel, and the persistent loop was 0-5%
        # slower (it does not overlap one tile's epilogue with the next tile's loads yet). Device plans, whose tile
        # count only the GPU knows, are always persistent.
        p.scheduler, p.num_ctas = "single", p.num_tiles
        return
    k, _ = kernel(p.device_id, e, load_manifest()["_dir"])
    per_sm = k.occupancy.max_active_blocks_per_multiprocessor(int(e["block"][0]), int(e["dynamic_smem_bytes"]))
    wave = max(1, int(per_sm)) * int(device(p.device_id).properties.multiprocessor_count)
    p.scheduler, p.num_ctas = "persistent", min(p.num_tiles, wave)
