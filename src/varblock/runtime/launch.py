"""Launching a manifest variant through cuda.core.

``PreparedLaunch`` holds everything about a launch that does not change from call to call (the loaded kernel, the
launch configuration, the typed arguments); a call only substitutes the data pointers, so a cached-plan call costs a
few microseconds of Python on top of ``cuda.core.launch``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from varblock.runtime import device as _device
from varblock.runtime.manifest import load_manifest
from varblock.runtime.params import check_requires, grid_of, launch_args, pointer_alignments
from varblock.runtime.struct_launch import StructLaunch, has_struct_params


class PreparedLaunch:
    """A variant ready to launch: static arguments packed once; ``pointers`` name the per-call slots."""

    def __init__(self, entry: Mapping[str, Any], ordinal: int, values: Mapping[str, Any],
                 pointers: Sequence[str] = (), what: str = ""):
        from cuda.core import LaunchConfig

        self.struct = StructLaunch(entry, ordinal, values, pointers, what) if has_struct_params(entry) else None
        if self.struct is not None:  # by-value struct params (TMA descriptors): launched from bytes
            self.grid = self.struct.grid
            return
        bad = check_requires(entry["requires"], values)
        if bad:
            raise ValueError(f"{what or entry['family']}: " + "; ".join(bad))
        self.grid = grid_of(entry["grid"], values)
        self.kernel, _ = _device.kernel(ordinal, entry, load_manifest()["_dir"])
        kw: dict[str, Any] = {"cluster": tuple(entry["cluster_dims"])} if entry.get("cluster_dims") else {}
        if entry.get("pdl"):  # launch attributes the DSL host code set (recorded by launch capture)
            kw["programmatic_stream_serialization"] = True
        if entry.get("cooperative"):
            kw["is_cooperative"] = True
        self.config = LaunchConfig(grid=self.grid, block=tuple(entry["block"]),
                                   shmem_size=int(entry.get("dynamic_smem_bytes") or 0), **kw)
        self.args = launch_args(entry["params"], values)
        names = [p["name"] for p in entry["params"]]
        # positions (in the per-call tuple) of the pointers this variant takes; older builds may lack one
        self.keep = [i for i, n in enumerate(pointers) if n in names]
        pointers = [pointers[i] for i in self.keep]
        self.slots = [names.index(n) for n in pointers]
        self.align = pointer_alignments(entry["requires"], pointers)
        self.pointer_names = list(pointers)
        self.what = what or entry["family"]

    def __call__(self, stream: Any, pointers: Sequence[int]) -> None:
        from cuda.core import launch

        if self.struct is not None:
            self.struct(stream, pointers)
            return
        args = list(self.args)
        for i, slot, al, name in zip(self.keep, self.slots, self.align, self.pointer_names):
            ptr = pointers[i]
            if ptr % al:
                raise ValueError(f"{self.what}: {name} address must be a multiple of {al} (got 0x{ptr:x})")
            args[slot] = ptr
        if 0 not in self.grid:
            launch(stream, self.config, self.kernel, *args)


def launch_variant(entry: Mapping[str, Any], ordinal: int, stream: Any, values: Mapping[str, Any]) -> None:
    """Launch ``entry`` once with the named parameter ``values`` (an empty grid launches nothing)."""
    PreparedLaunch(entry, ordinal, values)(stream, ())
