"""CPU tests of the variant registry and the artifact readers (no compiler needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from varblock.kernels import registry
from varblock.kernels._artifacts import ptx_entries
from varblock.runtime.params import check_requires, grid_of, pack_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # build_kernels.py


@pytest.mark.parametrize("arch", registry.DEFAULT_ARCHES)
def test_variants_well_formed(arch):
    vs = registry.all_variants(arch)
    assert vs, "no variants registered"
    for v in vs:
        assert v.arch == arch
        assert len(v.grid) == 3 and len(v.block) == 3
        fam = next(f for f in registry.families() if f.name == v.family)
        grids = []
        for case in fam.capture_cases(v):
            host = [{"name": p.name, "kind": p.kind} for p in v.host_params] or v.manifest_entry()["params"]
            assert set(case) == {p["name"] for p in host}, f"{v.name}: capture case names differ from host args"
            grids.append(grid_of(v.grid, case))
            assert all(g >= 0 for g in grids[-1])
            assert len(pack_bytes(host, case)) == len(host)
            assert check_requires(v.requires, case) == []
        assert any(all(g >= 1 for g in grid) for grid in grids), f"{v.name}: no capture case launches a CTA"


def test_param_kinds():
    with pytest.raises(ValueError):
        registry.Param("x", "f64")
    assert registry.Param("p", "ptr", 16).size == 8


def test_ptx_entry_parser():
    ptx = """.visible .entry vb_k_0(
        .param .u64 .ptr .global .align 16 vb_k_0_param_0,
        .param .u32 vb_k_0_param_1,
        .param .align 8 .b8 vb_k_0_param_2[24],
        .param .u8 vb_k_0_param_3
    )"""
    assert ptx_entries(ptx) == {"vb_k_0": [8, 4, 24, 1]}


def _part(arch: str, variants: list[dict]) -> dict:
    return {"arch": arch, "dsl_version": "4.8.1", "family_hashes": {"fam": "h1", "other": "h2"},
            "family_sources": {"fam": ["varblock/kernels/fam.py"], "other": []}, "variants": variants}


def _entry(name: str, params: list, requires: list) -> dict:
    return {"family": "fam", "name": name, "key": {"n": name}, "params": params, "requires": requires,
            "cubin": f"{name}.cubin", "block": [128, 1, 1], "grid": ["g", 1, 1], "extra": {}, "stamp": "s"}


def test_manifest_stores_family_tables_once_and_reads_back(tmp_path, monkeypatch):
    """merge_manifest writes each family's distinct params / requires lists once; the runtime resolves them
    lazily per arch into the entries the worker recorded."""
    import json

    import build_kernels
    from varblock.runtime import manifest as M

    pa = [{"name": "x", "kind": "ptr", "size": 8, "align": 16}, {"name": "n", "kind": "i32", "size": 4, "align": 0}]
    pb = [{"name": "x", "kind": "ptr", "size": 8, "align": 4}]
    req = [{"what": "n", "value": "n", "range": [0, 9]}]
    parts = {"sm80": [_entry("a", pa, req), _entry("b", pa, []), _entry("c", pb, req)],
             "sm90": [_entry("a", pa, req)]}
    for arch, vs in parts.items():
        (tmp_path / arch).mkdir()
        (tmp_path / arch / "manifest.part.json").write_text(json.dumps(_part(arch, vs)))
    build_kernels.merge_manifest(tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["format"] == M.MANIFEST_FORMAT and m["arches"]["sm80"]["count"] == 3
    assert len(m["families"]["fam"]["params"]) == 2 and len(m["families"]["fam"]["requires"]) == 2
    assert m["families"]["fam"]["hash"] == "h1" and m["families"]["other"]["params"] == {}
    raw = json.loads((tmp_path / "sm80" / "variants.json").read_text())["variants"]
    assert all(isinstance(e["params"], str) for e in raw), "variants name their params, they do not repeat them"
    manifest = M.read_manifest(tmp_path)
    for arch, vs in parts.items():
        assert M.read_arch_variants(manifest, arch) == [{**e, "arch": arch} for e in vs]
    monkeypatch.setenv("VARBLOCK_CUBIN_DIR", str(tmp_path))
    M.load_manifest.cache_clear()
    M._arch_index.cache_clear()
    try:
        assert M.find_variant("fam", "sm80", {"n": "c"})["params"] == pb
        assert M.find_variant("fam", "sm90", {"n": "c"}) is None
        assert [k["n"] for k in M.available_keys("fam", "sm80")] == ["a", "b", "c"]
        assert M.build_arch_for((9, 0)) == "sm90" and M.build_arch_for((7, 5)) is None
    finally:
        M.load_manifest.cache_clear()
        M._arch_index.cache_clear()


def test_old_manifest_format_asks_for_a_rebuild(tmp_path):
    import json

    from varblock.runtime.manifest import read_manifest

    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "variants": {}}))
    with pytest.raises(ValueError, match="rebuild the cubins"):
        read_manifest(tmp_path)


def test_family_protocol():
    """Every registered family provides the build hooks, names its sources, and builds only for known arches."""
    names = [f.name for f in registry.families()]
    assert len(set(names)) == len(names), "family names are unique"
    for fam in registry.families():
        assert set(fam.arches) <= set(registry.ARCHES) and fam.sources, fam.name
        assert callable(fam._hook("compile_args")) and callable(fam._hook("capture_cases"))
    with pytest.raises(ValueError, match="unknown arch 'sm75'"):
        registry.families()[0].variants_for("sm75")


def test_family_hooks_and_arch_filter():
    v = registry.Variant(family="toy", name="toy_sm90", arch="sm90", key={}, params=(registry.Param("n", "i32"),),
                         block=(32, 1, 1), grid=(1, 1, 1))
    fam = registry.Family(name="toy", module="varblock.kernels.registry", variants=lambda arch: [v],
                          arches=("sm90",))
    assert fam.variants_for("sm90") == [v] and fam.variants_for("sm80") == []
    with pytest.raises(TypeError, match="kernel family toy: module varblock.kernels.registry defines no compile_args"):
        fam.compile_args(v)
    wrong = registry.Family(name="other", module="m", variants=lambda arch: [v])
    with pytest.raises(ValueError, match="name another family or arch"):
        wrong.variants_for("sm90")
