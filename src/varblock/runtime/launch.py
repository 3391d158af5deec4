"""Launching a manifest variant through cuda.core."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from varblock.runtime import device as _device
from varblock.runtime.manifest import load_manifest
from varblock.runtime.params import grid_of, launch_args


def launch_variant(entry: Mapping[str, Any], ordinal: int, stream: Any, values: Mapping[str, Any]) -> None:
    """Launch ``entry`` (a manifest variant) on ``stream`` with the named parameter ``values``.

    An empty grid (nothing to compute) launches nothing."""
    from cuda.core import LaunchConfig, launch

    grid = grid_of(entry["grid"], values)
    if 0 in grid:
        return
    k, _ = _device.kernel(ordinal, entry, load_manifest()["_dir"])
    kw = {}
    if entry.get("cluster_dims"):
        kw["cluster"] = tuple(entry["cluster_dims"])
    cfg = LaunchConfig(grid=grid, block=tuple(entry["block"]), shmem_size=int(entry.get("dynamic_smem_bytes") or 0),
                       **kw)
    launch(stream, cfg, k, *launch_args(entry["params"], values))
