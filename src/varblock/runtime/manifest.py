"""Finding the built cubins and reading the manifest, lazily and per arch.

Layout of a cubin folder (format ``MANIFEST_FORMAT``, written by ``build_kernels.py``):

* ``manifest.json``: ``format``, ``dsl_version``, ``arches`` (per build arch: ``target``, ``runs_on``, the
  ``variants`` file and its ``count``) and ``families`` (per kernel family: source ``hash`` and ``sources``, and
  its distinct ``params`` and ``requires`` lists, each stored once under a content id);
* ``<arch>/variants.json``: that arch's variants, whose ``params`` / ``requires`` name a content id of their
  family; ``<arch>/*.cubin``.

The runtime reads ``manifest.json`` once and an arch's variants only when a device of that arch asks for them;
entries come back with ``params`` / ``requires`` resolved (lists shared by every variant that uses them).

Search order for the cubin folder: ``$VARBLOCK_CUBIN_DIR``, the copy packaged inside the wheel
(``varblock/cubins``), then ``cubins/`` at the root of a source checkout. In a source checkout the manifest's
family hashes are compared with the kernel sources, so a developer hears at once that ``cubins/`` is stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from varblock.runtime.hashing import files_hash

_PKG = Path(__file__).resolve().parent.parent
MANIFEST_FORMAT = 2


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


def content_id(value: Any) -> str:
    """A short, stable id of a JSON value (how the manifest names a family's params / requires lists)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# reading a cubin folder (no caching: the build script and tests use these on any folder)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """``manifest.json`` of ``directory`` (a ValueError telling to rebuild when its format is not this one's)."""
    d = Path(directory)
    manifest = json.loads((d / "manifest.json").read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{d / 'manifest.json'}: manifest format {manifest.get('format')}, this varblock reads "
                         f"format {MANIFEST_FORMAT}; rebuild the cubins (python build_kernels.py)")
    manifest["_dir"] = str(d)
    return manifest


def read_arch_variants(manifest: dict[str, Any], arch: str) -> list[dict[str, Any]]:
    """The variants built for ``arch`` (empty when none), with ``params`` / ``requires`` resolved."""
    info = manifest["arches"].get(arch)
    if info is None:
        return []
    doc = json.loads((Path(manifest["_dir"]) / info["variants"]).read_text())
    fams = manifest["families"]
    out = []
    for e in doc["variants"]:
        fam = fams[e["family"]]
        out.append({**e, "arch": arch, "params": fam["params"][e["params"]],
                    "requires": fam["requires"][e["requires"]]})
    return out


# ---------------------------------------------------------------------------------------------------------------
# the runtime's cached view


@lru_cache(maxsize=1)
def load_manifest() -> dict[str, Any]:
    """The manifest of :func:`cubin_dir` (read once; warns when a source checkout's cubins are stale)."""
    manifest = read_manifest(cubin_dir())
    _warn_if_stale(manifest)
    return manifest


@cache
def _arch_index(arch: str) -> dict[str, list[dict[str, Any]]]:
    """family -> variants of ``arch``, read on first use."""
    index: dict[str, list[dict[str, Any]]] = {}
    for e in read_arch_variants(load_manifest(), arch):
        index.setdefault(e["family"], []).append(e)
    return index


def arch_variants(arch: str) -> list[dict[str, Any]]:
    """Every variant built for ``arch`` (resolved entries)."""
    return [e for es in _arch_index(arch).values() for e in es]


def _warn_if_stale(manifest: dict[str, Any]) -> None:
    """In a source checkout, compare each family's recorded source hash with the sources on disk."""
    src = _PKG.parent
    if not (src.parent / "build_kernels.py").is_file():
        return
    stale = []
    for fam, info in manifest.get("families", {}).items():
        files = [src / f for f in info.get("sources", [])]
        if files and all(f.is_file() for f in files) and files_hash(files) != info.get("hash"):
            stale.append(fam)
    if stale:
        warnings.warn(f"cubins/ is stale for kernel families {stale}: the sources changed after the build; run "
                      "`python build_kernels.py`", StaleCubinsWarning, stacklevel=3)


def build_arch_for(cc: tuple[int, int], manifest: dict[str, Any] | None = None) -> str | None:
    """The build arch whose cubins run on compute capability ``cc`` (None if none was built)."""
    manifest = manifest or load_manifest()
    for arch, info in manifest.get("arches", {}).items():
        if list(cc) in [list(x) for x in info["runs_on"]] and info.get("count", 0):
            return arch
    return None


def find_variant(family: str, arch: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The entry of ``family`` for ``arch`` whose key matches every item of ``key`` (None if none was built)."""
    for e in _arch_index(arch).get(family, ()):
        if all(e["key"].get(k) == v for k, v in key.items()):
            return e
    return None


def available_keys(family: str, arch: str) -> list[dict[str, Any]]:
    """The keys of every ``family`` variant built for ``arch``."""
    return [e["key"] for e in _arch_index(arch).get(family, ())]
