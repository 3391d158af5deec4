"""CPU tests of the variant registry and the artifact readers (no compiler needed)."""

from __future__ import annotations

import importlib

import pytest

from varblock.kernels import registry
from varblock.kernels._artifacts import ptx_entries
from varblock.runtime.params import check_requires, grid_of, pack_bytes


@pytest.mark.parametrize("arch", registry.DEFAULT_ARCHES)
def test_variants_well_formed(arch):
    vs = registry.all_variants(arch)
    assert vs, "no variants registered"
    for v in vs:
        assert v.arch == arch
        assert len(v.grid) == 3 and len(v.block) == 3
        mod = importlib.import_module(registry.FAMILY_MODULES[[f.name for f in registry.families()].index(v.family)])
        for case in mod.capture_cases(v):
            assert set(case) == {p.name for p in v.params}, f"{v.name}: capture case names differ from params"
            assert all(g >= 1 for g in grid_of(v.grid, case))
            assert len(pack_bytes(v.manifest_entry()["params"], case)) == len(v.params)
            assert check_requires(v.requires, case) == []


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
