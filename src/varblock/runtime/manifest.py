"""Finding the built cubins and choosing a variant from the manifest.

Search order for the cubin folder: ``$VARBLOCK_CUBIN_DIR``, the copy packaged inside the wheel
(``varblock/cubins``), then ``cubins/`` at the root of a source checkout. In a source checkout the manifest's
family hashes are compared with the kernel sources, so a developer hears at once that ``cubins/`` is stale.
"""

from __future__ import annotations

import json
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from varblock.runtime.hashing import files_hash

_PKG = Path(__file__).resolve().parent.parent


class StaleCubinsWarning(UserWarning):
    """The kernel sources changed after cubins/ was built (source checkout only)."""


def cubin_dir() -> Path:
    """The folder holding manifest.json and <arch>/*.cubin."""
    env = os.environ.get("VARBLOCK_CUBIN_DIR")
    candidates = [Path(env)] if env else []
    candidates += [_PKG / "cubins", _PKG.parent.parent / "cubins"]
    for c in candidates:
        if (c / "manifest.json").is_file():
            return c
    raise FileNotFoundError(
        "varblock found no built kernels (manifest.json) in " + ", ".join(str(c) for c in candidates)
        + ". In a source checkout run `python build_kernels.py` (needs `pip install -e .[build]`); "
        "installed wheels carry their cubins.")


@lru_cache(maxsize=1)
def load_manifest() -> dict[str, Any]:
    d = cubin_dir()
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["_dir"] = str(d)
    _warn_if_stale(manifest)
    return manifest


def _warn_if_stale(manifest: dict[str, Any]) -> None:
    """In a source checkout, compare each family's recorded source hash with the sources on disk."""
    src = _PKG.parent
    if not (src.parent / "build_kernels.py").is_file():
        return
    stale = []
    for fam, recorded in manifest.get("family_hashes", {}).items():
        files = [src / f for f in manifest.get("family_sources", {}).get(fam, [])]
        if files and all(f.is_file() for f in files) and files_hash(files) != recorded:
            stale.append(fam)
    if stale:
        warnings.warn(f"cubins/ is stale for kernel families {stale}: the sources changed after the build; run "
                      "`python build_kernels.py`", StaleCubinsWarning, stacklevel=3)


def build_arch_for(cc: tuple[int, int], manifest: dict[str, Any] | None = None) -> str | None:
    """The build arch whose cubins run on compute capability ``cc`` (None if none was built)."""
    manifest = manifest or load_manifest()
    for arch, info in manifest.get("arches", {}).items():
        if list(cc) in [list(x) for x in info["runs_on"]] and arch in manifest["variants"]:
            return arch
    return None


def find_variant(family: str, arch: str, key: dict[str, Any], manifest: dict[str, Any] | None = None
                 ) -> dict[str, Any] | None:
    """The manifest entry of ``family`` for ``arch`` whose key matches every item of ``key``."""
    manifest = manifest or load_manifest()
    for e in manifest["variants"].get(arch, []):
        if e["family"] == family and all(e["key"].get(k) == v for k, v in key.items()):
            return e
    return None


def available_keys(family: str, arch: str, manifest: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    manifest = manifest or load_manifest()
    return [e["key"] for e in manifest["variants"].get(arch, []) if e["family"] == family]
