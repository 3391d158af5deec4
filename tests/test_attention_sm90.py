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


def _built_sass() -> list[tuple[str, str]]:
    """``(cubin name, SASS)`` of every built variant (``$VARBLOCK_CUBIN_DIR`` or ./cubins), or skip when cuobjdump
    (``$VARBLOCK_CUOBJDUMP`` or PATH) or the cubins are missing."""
    tool = _cuobjdump()
    d = Path(os.environ.get("VARBLOCK_CUBIN_DIR", Path(__file__).resolve().parent.parent / "cubins")) / "sm90"
    cubins = sorted(d.glob(f"{fam.FAMILY_NAME}_*.cubin"))
    if tool is None or not cubins:
        pytest.skip("needs cuobjdump and built attention_fwd_sm90 cubins")
    return [(c.name, subprocess.run([tool, "-sass", str(c)], capture_output=True, text=True, check=True).stdout)
            for c in cubins]


def test_sass_has_no_predicated_r2ur():
    """ptxas can sink the uniform-register moves of a TMA issue into the elected-thread block (``@P R2UR``), which
    sm_90a rejects at run time (illegal instruction; cutlass examples/.../grouped_gemm.py)."""
    for name, sass in _built_sass():
        bad = re.findall(r"@!?U?P[0-9T] R2UR[^;]*", sass)
        assert not bad, f"{name}: predicated R2UR in the SASS: {bad[:4]}"
        assert "HGMMA" in sass and "UTMALDG" in sass and "USETMAXREG" in sass, f"{name}: not a wgmma/TMA kernel"


def test_sass_softmax_overlaps_the_pv_wgmma():
    """Intra-warpgroup overlap in the chunk loop: after the wait for S(n) (``WARPGROUP.DEPBAR.LE gsb0, 0x1``, the
    loop's only one) come the softmax's exponentials (at least one chunk's: TILE_M * TILE_N / 256 per thread) before
    the wait for P(n-1) V(n-1) (``... 0x0``), and P's conversion (F2FP) after it. ptxas once scheduled that wait at
    the top of the softmax's block, which serialized the softmax behind P V."""
    per_thread = fam.TILE_M * fam.TILE_N // 256
    for name, sass in _built_sass():
        ins = re.findall(r"/\*[0-9a-f]{4,}\*/\s+([^;]*);", sass)
        wait1 = [i for i, t in enumerate(ins) if re.search(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x1\b", t)]
        assert len(wait1) == 1, f"{name}: expected one wait_group(1), found {len(wait1)}"
        wait0 = next(i for i in range(wait1[0], len(ins)) if re.search(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x0\b", ins[i]))
        n_exp = sum("MUFU.EX2" in t for t in ins[wait1[0]:wait0])
        assert n_exp >= per_thread, f"{name}: {n_exp} exponentials between the S and the P V waits"
        after = ins[wait0:wait0 + 4 * per_thread]
        assert any("F2FP" in t for t in after), f"{name}: no P conversion right after the P V wait"
