"""Choosing the built variant for a device and a static configuration (cached)."""

from __future__ import annotations

from typing import Any

from varblock.runtime import device as _device
from varblock.runtime.manifest import available_keys, build_arch_for, find_variant, load_manifest

_arch_of_device: dict[int, str] = {}
_variants: dict[tuple[str, str, tuple], dict[str, Any]] = {}


def arch_for_device(ordinal: int) -> str:
    arch = _arch_of_device.get(ordinal)
    if arch is None:
        cc = _device.compute_capability(ordinal)
        manifest = load_manifest()
        arch = build_arch_for(cc, manifest)
        if arch is None:
            built = {a: i["runs_on"] for a, i in manifest.get("arches", {}).items()}
            raise RuntimeError(f"no varblock kernels are built for compute capability {cc[0]}.{cc[1]} "
                               f"(cuda:{ordinal}); built arches and the GPUs they run on: {built}")
        _arch_of_device[ordinal] = arch
    return arch


def variant_for(family: str, ordinal: int, key: dict[str, Any]) -> dict[str, Any]:
    """The manifest entry of ``family`` matching ``key`` for the arch of device ``ordinal``; a clear
    ``ValueError`` listing what was built when there is none."""
    arch = arch_for_device(ordinal)
    ck = (family, arch, tuple(sorted(key.items())))
    e = _variants.get(ck)
    if e is None:
        e = find_variant(family, arch, key)
        if e is None:
            raise ValueError(f"{family}: no kernel is built for {key} on {arch}; built: "
                             f"{available_keys(family, arch)}")
        _variants[ck] = e
    return e
