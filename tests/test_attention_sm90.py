"""The Hopper forward family on the CPU: its variants and parameter list, the TMA descriptor recipes evaluated on the
launch-capture cases, the shared-memory budget, and the runtime binding (what it declines, what it binds)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from varblock import abi
from varblock.families import attention_fwd_sm90 as binding_mod
from varblock.families import family_names
from varblock.families.base import AttentionProblem
from varblock.kernels import attention_fwd_mma as portable
from varblock.kernels import attention_fwd_sm90 as fam
from varblock.kernels import registry
from varblock.runtime.params import pack_param
from varblock.runtime.tensormap import tensormap_args


def test_registered_and_built_for_sm90_only():
    assert "varblock.kernels.attention_fwd_sm90" in registry.FAMILY_MODULES
    assert fam.FAMILY_NAME in family_names("attention_fwd")
    for arch in registry.ARCHES:
        vs = fam.FAMILY.variants_for(arch)
        if arch != "sm90":
            assert vs == []
            continue
        assert sorted(v.name for v in vs) == sorted(fam.variant_name(s, d) for s, _ in fam.DTYPES
                                                    for d in fam.HEAD_DIMS)
        for v in vs:
            assert v.block == (fam.THREADS, 1, 1)
            assert v.extra["tile_m"] == fam.TILE_M and v.extra["tile_n"] == fam.TILE_N
            assert v.extra["smem_bytes"] <= portable.SMEM_LIMIT["sm90"]
            assert v.host_params == fam.HOST_PARAMS


def test_param_list_is_descriptors_then_host_params():
    params = fam.kernel_params(128, "bfloat16")
    assert [p.kind for p in params[:6]] == ["tensormap", "i32x2"] * 3
    assert [p.name for p in params[:6:2]] == ["tma_q", "tma_k", "tma_v"]
    assert params[6:] == fam.HOST_PARAMS
    assert fam.HOST_PARAMS[: len(portable.PARAMS)] == portable.PARAMS
    assert [p.name for p in fam.HOST_PARAMS[len(portable.PARAMS):]] == ["total_k", "num_heads_kv", "total_q",
                                                                        "num_heads_q"]
    # the producer / consumer register split fits the register file of a 384-thread CTA
    assert fam.PRODUCER_REGS * 128 + fam.CONSUMER_REGS * 256 <= 65536


@pytest.mark.parametrize("d", fam.HEAD_DIMS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_recipes_on_capture_cases(d, dtype):
    """The Q / K / V descriptors: TMA dims (D, tokens, heads), byte strides of the token and head modes, a box of
    one swizzle span (128 bytes, 64 for d96) by TILE_M (Q) or TILE_N rows; the coordinate extents as two int32."""
    v = next(x for x in fam.variants("sm90") if x.key == {"dtype": dtype, "head_dim": d})
    for case in fam.capture_cases(v):
        for p in v.params:
            if p.kind == "tensormap":
                a = tensormap_args(p.name, p.recipe, case)
                x = p.recipe["pointer"]
                tok, heads = ("total_q", "num_heads_q") if x == "q" else ("total_k", "num_heads_kv")
                assert a.address == case[x]
                assert a.dims == (d, case[tok], case[heads])
                assert a.strides == (2 * case[f"{x}_stride_tok"], 2 * case[f"{x}_stride_head"])
                assert a.box == (fam.swizzle_span(d), fam.TILE_M if x == "q" else fam.TILE_N, 1)
                assert a.swizzle == (3 if d % 64 == 0 else 2)  # 128B, or 64B for d96
            elif p.kind == "i32x2":
                raw = pack_param({"name": p.name, "kind": p.kind, "recipe": p.recipe}, case)
                tok, heads = ("total_q", "num_heads_q") if p.name == "q_coords" else ("total_k", "num_heads_kv")
                assert raw == int(case[tok]).to_bytes(4, "little") + int(case[heads]).to_bytes(4, "little")


def test_recipe_rejects_unaligned_strides():
    v = fam.variants("sm90")[0]
    case = dict(fam.capture_cases(v)[1], k_stride_tok=v.key["head_dim"] * 2 + 4)  # 8 bytes off a 16-byte multiple
    p = next(x for x in v.params if x.name == "tma_k")
    with pytest.raises(ValueError, match="multiple of 16"):
        tensormap_args(p.name, p.recipe, case)


def test_smem_budget_counts_every_buffer():
    for d in fam.HEAD_DIMS:
        st = fam.STAGES[d]
        tiles = (2 * fam.TILE_M + 2 * st * fam.TILE_N) * d * 2  # Q, O, K and V stages
        assert tiles < fam.smem_bytes(d) <= tiles + 16 * 1024


def _problem(**kw) -> AttentionProblem:
    base = dict(arch="sm90", head_dim=128, num_heads_q=8, num_heads_kv=2)
    base.update(kw)
    return AttentionProblem(**base)


def test_binding_declines_with_reasons(monkeypatch):
    b = binding_mod.BINDING
    assert "arch" in b.supports(_problem(arch="sm80"))
    assert "head_dim" in b.supports(_problem(head_dim=192))
    monkeypatch.setattr(type(b), "variant", lambda self, arch, key: None)
    monkeypatch.setattr(type(b), "built_keys", lambda self, arch: [])
    assert "no kernel is built" in b.supports(_problem())


def test_binding_adds_the_descriptor_extents():
    def arr(shape, strides, ptr):
        return SimpleNamespace(shape=shape, strides=strides, ptr=ptr)

    plan = SimpleNamespace(
        tok_strides=(0, 0, 0), num_tiles=3, window_left=-1, window_right=0, num_sink_tokens=0, num_heads_q=8,
        num_heads_kv=2, pack_gqa=1, tok_block_k=64, tok_head_div=1, mask_flags=0, on_device=False,
        scheduler="single", num_ctas=3, debug_counts=None, ptr=lambda name: 0x1000)
    arrays = {"q": arr((300, 8, 128), (1024, 128, 1), 0x10000), "k": arr((500, 2, 128), (256, 128, 1), 0x20000),
              "v": arr((500, 2, 128), (256, 128, 1), 0x30000), "o": arr((300, 8, 128), (1024, 128, 1), 0x40000),
              "lse": arr((8, 300), (300, 1), 0x50000)}
    values = binding_mod.BINDING.bind(plan, arrays, {"softmax_scale": 0.125})
    assert values["total_k"] == 500 and values["num_heads_kv"] == 2
    assert values["total_q"] == 300 and values["num_heads_q"] == 8
    assert values["softmax_scale_log2"] == pytest.approx(0.125 * abi.LOG2E)
    assert set(fam.HOST_PARAM_NAMES) <= set(values)
    arrays["k"] = arr((0, 2, 128), (256, 128, 1), 0)
    assert binding_mod.BINDING.bind(plan, arrays, {"softmax_scale": 0.125})["total_k"] == 1


def _cuobjdump() -> str | None:
    return os.environ.get("VARBLOCK_CUOBJDUMP") or shutil.which("cuobjdump")


def test_sass_has_no_predicated_r2ur():
    """ptxas can sink the uniform-register moves of a TMA issue into the elected-thread block (``@P R2UR``), which
    sm_90a rejects at run time (illegal instruction; cutlass examples/.../grouped_gemm.py). Checks the built cubins
    (``$VARBLOCK_CUBIN_DIR`` or ./cubins) when cuobjdump is available (``$VARBLOCK_CUOBJDUMP`` or PATH)."""
    tool = _cuobjdump()
    d = Path(os.environ.get("VARBLOCK_CUBIN_DIR", Path(__file__).resolve().parent.parent / "cubins")) / "sm90"
    cubins = sorted(d.glob(f"{fam.FAMILY_NAME}_*.cubin"))
    if tool is None or not cubins:
        pytest.skip("needs cuobjdump and built attention_fwd_sm90 cubins")
    for c in cubins:
        sass = subprocess.run([tool, "-sass", str(c)], capture_output=True, text=True, check=True).stdout
        bad = re.findall(r"@!?U?P[0-9T] R2UR[^;]*", sass)
        assert not bad, f"{c.name}: predicated R2UR in the SASS: {bad[:4]}"
        assert "HGMMA" in sass and "UTMALDG" in sass and "USETMAXREG" in sass, f"{c.name}: not a wgmma/TMA kernel"
