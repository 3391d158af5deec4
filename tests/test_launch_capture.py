"""Launch capture: the runtime's packer, grid formula and launch config equal what the DSL's own host code
launched (recorded by build_kernels.py for every variant and several shapes, byte for byte).

These run wherever cubins/ was built (CI builds every variant for every default arch before the tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from varblock.runtime.manifest import read_arch_variants, read_manifest
from varblock.runtime.params import grid_of

ROOT = Path(__file__).resolve().parent.parent
CUBINS = ROOT / "cubins"
sys.path.insert(0, str(ROOT))

from tools.capture.tma_decode import param_mismatches  # noqa: E402

if not (CUBINS / "manifest.json").exists():
    pytest.skip("cubins/ not built (python build_kernels.py)", allow_module_level=True)

MANIFEST = read_manifest(CUBINS)
VARIANTS = {arch: read_arch_variants(MANIFEST, arch) for arch in MANIFEST["arches"]}
ENTRIES = [(arch, e) for arch, es in VARIANTS.items() for e in es]


def _captures(arch: str) -> dict:
    p = CUBINS / arch / "capture.json"
    return json.loads(p.read_text()) if p.exists() else {}


@pytest.mark.parametrize("arch,entry", ENTRIES, ids=[f"{a}/{e['name']}" for a, e in ENTRIES])
def test_packer_matches_dsl_host_code(arch, entry):
    caps = _captures(arch).get(entry["name"])
    assert caps, f"no launch capture recorded for {arch}/{entry['name']}"
    assert len(caps) >= 3, "capture several shapes"
    for c in caps:
        values = c["values"]
        assert param_mismatches(entry["params"], values, c["params_hex"], c.get("tensormaps", ())) == []
        assert list(grid_of(entry["grid"], values)) == c["grid"]
        assert c["block"] == entry["block"]
        assert c["smem"] == entry["dynamic_smem_bytes"]


@pytest.mark.parametrize("arch,entry", ENTRIES, ids=[f"{a}/{e['name']}" for a, e in ENTRIES])
def test_cubin_signature_matches_manifest(arch, entry):
    from varblock.kernels._artifacts import cubin_kernels

    k = cubin_kernels((CUBINS / arch / entry["cubin"]).read_bytes())[entry["entry"]]
    assert [s for _, s in k["params"]] == [p["size"] for p in entry["params"]]
    assert k.get("reqntid", entry["block"]) == entry["block"]
    assert 0 < k["regs"] <= 255 and k["regs"] * entry["block"][0] <= 65536, "register count read from the cubin"


def test_every_registered_variant_is_built():
    """Compares against the registry: a variant that failed to compile shows up here."""
    from varblock.kernels import registry

    for arch, entries in VARIANTS.items():
        built = {e["name"] for e in entries}
        missing = [v.name for v in registry.all_variants(arch) if v.name not in built]
        assert not missing, f"{arch}: registered but not built: {missing}"


def test_build_check_reports_up_to_date():
    import build_kernels

    assert build_kernels.main(["--check", "--arch", ",".join(MANIFEST["arches"])]) == 0
