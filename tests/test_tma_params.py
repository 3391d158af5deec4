"""The ``tensormap`` / ``i32xN`` parameter kinds on the CPU: recipes, packing, the descriptor decoder used by launch
capture (on descriptors the DSL's host code really wrote), and the launch configuration of the byte launcher."""

from __future__ import annotations

import struct

import pytest

from tools.capture.tma_decode import decode, expected_fields, param_mismatches
from varblock.kernels import registry, tma_copy
from varblock.runtime import tensormap
from varblock.runtime.params import is_struct, launch_args, pack_bytes, pack_param
from varblock.runtime.struct_launch import _launch_config, has_struct_params

# Captured from the DSL host code of tma_copy_bf16 / tma_copy_f32 (build_kernels.py launch capture, sm_90a):
# descriptor words 0-7 (bytes 64-127 are left uninitialised by the DSL) and the coordinate struct.
CAPTURED = {
    "bfloat16": ({"src": 0x7F0000100000, "dst": 0x7F1000000040, "rows": 113, "cols": 24, "ld_src": 32, "ld_dst": 24},
                 ["00001000007f000012650400040000000000000000000000000000000000000017000000700000000000000000000000"
                  "000000000000003f3f00000000000000", "7100000018000000",
                  "40000000107f000012650400030000000000000000000000000000000000000017000000700000000000000000000000"
                  "000000000000003f3f00000000000000", "7100000018000000"]),
    "float32": ({"src": 0x7F0000100000, "dst": 0x7F1000000040, "rows": 113, "cols": 12, "ld_src": 16, "ld_dst": 12},
                ["00001000007f00009263040004000000000000000000000000000000000000000b000000700000000000000000000000"
                 "000000000000001f3f00000000000000", "710000000c000000",
                 "40000000107f00009263040003000000000000000000000000000000000000000b000000700000000000000000000000"
                 "000000000000001f3f00000000000000", "710000000c000000"]),
}


def _entry(dtype: str) -> dict:
    (v,) = [v for v in tma_copy.variants("sm90") if v.key["dtype"] == dtype]
    return v.manifest_entry()


def _values(rows=100, cols=200, ld_src=200, ld_dst=208, dtype="bfloat16") -> dict:
    return {"src": 0x7F0000000000, "dst": 0x7F0000100000, "rows": rows, "cols": cols, "ld_src": ld_src,
            "ld_dst": ld_dst, "dtype": dtype}


@pytest.mark.parametrize("dtype", sorted(CAPTURED))
def test_captured_dsl_descriptors_match_the_recipe(dtype):
    values, captured = CAPTURED[dtype]
    params = _entry(dtype)["params"]
    assert param_mismatches(params, values, [h + "00" * 64 if len(h) == 128 else h for h in captured]) == []
    d = decode(bytes.fromhex(captured[0]))
    assert d["dims"] == [values["cols"], values["rows"]] and d["box"] == [tma_copy.tile_cols(dtype), 64]
    assert d["strides"] == [values["ld_src"] * tensormap.DTYPES[dtype][1]] and d["swizzle"] == 3


def test_param_mismatches_catches_wrong_recipes():
    values, captured = CAPTURED["bfloat16"]
    captured = [h + "00" * 64 if len(h) == 128 else h for h in captured]
    params = _entry("bfloat16")["params"]
    bad_box = [dict(p, recipe=dict(p["recipe"], box=[32, 64])) if p["kind"] == "tensormap" else p for p in params]
    assert any("tma_src" in m for m in param_mismatches(bad_box, values, captured))
    swapped = [dict(p, recipe={"fields": ["cols", "rows"]}) if p["kind"] == "i32x2" else p for p in params]
    assert any("src_coords" in m for m in param_mismatches(swapped, values, captured))
    wrong_ptr = dict(values, src=values["src"] + 16)
    assert any("tma_src" in m for m in param_mismatches(params, wrong_ptr, captured))
    as_f16 = [dict(p, recipe=dict(p["recipe"], dtype="float16")) if p["kind"] == "tensormap" else p for p in params]
    assert any("dtype_code" in m for m in param_mismatches(as_f16, values, captured))


def test_decode_reads_every_field_of_a_synthetic_rank3_descriptor():
    args = tensormap.TensorMapArgs(9, 0x7F0000001230, (96, 1000, 7), (256, 256000), (64, 32, 1), (1, 1, 1), 0, 3,
                                   2, 0)
    w = [0] * 8
    w[0] = args.address
    w[1] = (2 << 4) | (10 << 7) | (3 << 13) | ((256 >> 4) << 32)
    w[2] = (256000 >> 4)
    w[4] = 95 | (999 << 32)
    w[5] = 6
    w[6] = 63 << 56
    w[7] = 31 | (0 << 8)
    assert decode(struct.pack("<8Q", *w)) == expected_fields(args, "bfloat16")


def test_tensormap_args_of_the_tma_copy_recipe():
    p = _entry("float32")["params"][0]
    a = tensormap.tensormap_args(p["name"], p["recipe"], _values(ld_src=204))
    assert a.dtype == 7 and a.rank == 2 and a.address == 0x7F0000000000
    assert a.dims == (200, 100) and a.strides == (204 * 4,) and a.box == (32, 64)
    assert (a.swizzle, a.l2_promotion, a.interleave, a.oob_fill) == (3, 2, 0, 0)
    assert hash(a) == hash(tensormap.tensormap_args(p["name"], p["recipe"], _values(ld_src=204)))


@pytest.mark.parametrize("change,message", [
    ({"src": 0x7F0000000008}, "multiple of 16 bytes"),
    ({"ld_src": 201}, "byte stride of dim 1"),
    ({"rows": 0}, "extent 1"),
])
def test_tensormap_args_rejects_what_tma_cannot_do(change, message):
    p = _entry("bfloat16")["params"][0]
    with pytest.raises(ValueError, match=message) as ei:
        tensormap.tensormap_args(p["name"], p["recipe"], dict(_values(), **change))
    assert "tma_src" in str(ei.value) and "'src'" in str(ei.value)


def test_recipe_checks():
    recipe = tma_copy.tensormap_recipe("src", "ld_src", "bfloat16")
    tensormap.check_recipe("x", recipe)
    for bad, message in ((dict(recipe, swizzle="256B"), "swizzle"), (dict(recipe, dtype="int4"), "dtype"),
                         (dict(recipe, box=[64]), "box needs 2"), ({"pointer": "src"}, "exactly the keys"),
                         (dict(recipe, box=[128, 64]), "swizzle span")):
        with pytest.raises(ValueError, match=message):
            tensormap.tensormap_args("x", bad, _values())


def test_driver_enum_values_match():
    from cuda.bindings import driver

    for name, (code, _) in tensormap.DTYPES.items():
        assert int(getattr(driver.CUtensorMapDataType, f"CU_TENSOR_MAP_DATA_TYPE_{name.upper()}")) == code
    for name, code in tensormap.SWIZZLE.items():
        assert int(getattr(driver.CUtensorMapSwizzle, f"CU_TENSOR_MAP_SWIZZLE_{name.upper()}")) == code
    assert int(driver.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_128B) == tensormap.L2_PROMOTION["128B"]
    assert int(driver.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE) == tensormap.INTERLEAVE["none"]
    assert int(driver.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == tensormap.OOB_FILL["none"]


def test_packing_struct_kinds():
    params = _entry("bfloat16")["params"]
    desc = bytes(range(128))
    out = pack_bytes(params, dict(_values(rows=7, cols=9), tma_src=desc, tma_dst=desc[::-1]))
    assert out == [desc, struct.pack("<2i", 7, 9), desc[::-1], struct.pack("<2i", 7, 9)]
    with pytest.raises(ValueError, match="128 bytes"):
        pack_param(params[0], dict(_values(), tma_src=b"\0" * 64))
    with pytest.raises(OverflowError):
        pack_param(params[1], _values(rows=2**31))
    with pytest.raises(ValueError, match="fields"):
        pack_param({"name": "c", "kind": "i32x3", "recipe": {"fields": ["rows"]}}, _values())
    with pytest.raises(TypeError, match="cuda.core.launch"):
        launch_args(params, _values())
    assert is_struct("tensormap") and is_struct("i32x4") and not is_struct("i32") and not is_struct("ptr")
    assert has_struct_params(_entry("float16"))


def test_param_kinds_need_a_recipe_exactly_when_struct():
    assert registry.PARAM_SIZES["tensormap"] == 128 and registry.PARAM_SIZES["i32x3"] == 12
    with pytest.raises(ValueError, match="needs recipe"):
        registry.Param("t", "tensormap", 64)
    with pytest.raises(ValueError, match="takes no recipe"):
        registry.Param("n", "i32", recipe={"fields": []})


def test_tma_copy_variants():
    assert tma_copy.variants("sm80") == [] and tma_copy.variants("sm100") == []
    vs = tma_copy.variants("sm90")
    assert sorted(v.key["dtype"] for v in vs) == sorted(tma_copy.DTYPES)
    e = vs[0].manifest_entry()
    assert [p["kind"] for p in e["params"]] == ["tensormap", "i32x2", "tensormap", "i32x2"]
    assert [p["size"] for p in e["params"]] == [128, 8, 128, 8]
    assert all("recipe" in p for p in e["params"])
    for case in tma_copy.capture_cases(vs[0]):
        for p in e["params"]:
            if p["kind"] == "tensormap":
                tensormap.tensormap_args(p["name"], p["recipe"], case)  # every capture case is a valid TMA input


@pytest.mark.parametrize("flags,ids", [
    ({}, []),
    ({"pdl": True}, ["CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION"]),
    ({"cooperative": True, "cluster_dims": [2, 1, 1]},
     ["CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION", "CU_LAUNCH_ATTRIBUTE_COOPERATIVE"]),
])
def test_launch_config_attributes(flags, ids):
    from cuda.bindings import driver

    entry = dict(_entry("bfloat16"), dynamic_smem_bytes=8200, **flags)
    cfg = _launch_config(driver, entry, (3, 5, 1))
    assert (cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ) == (3, 5, 1) and cfg.blockDimX == tma_copy.THREADS
    assert cfg.sharedMemBytes == 8200 and cfg.numAttrs == len(ids)
    assert [a.id.name for a in cfg.attrs] == ids
    if "cluster_dims" in flags:
        assert cfg.attrs[0].value.clusterDim.x == 2


def _stub(tmp_path):
    """The capture stub, compiled (needs gcc, like build_kernels.py's launch capture)."""
    import ctypes
    import shutil
    import subprocess
    from pathlib import Path

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed to build the capture stub")
    so = tmp_path / "libvbcapture.so"
    src = Path(__file__).resolve().parent.parent / "tools/capture/capture_stub.c"
    subprocess.check_call([gcc, "-O2", "-shared", "-fPIC", "-o", str(so), str(src)])
    return ctypes.CDLL(str(so))


def test_stub_records_runtime_library_encodes(tmp_path):
    """Host code that encodes through _cuTensorMapEncodeTiled gets a marker descriptor; every argument of the call
    is compared with the recipe (including what the bit-packed form cannot show: L2 promotion, OOB fill)."""
    import ctypes

    from tools.capture.tma_decode import STUB_MARKER, read_stub_tensormaps

    lib = _stub(tmp_path)
    lib.vbcap_reset()
    params = _entry("float16")["params"]
    values = _values(rows=300, cols=136, ld_src=256, ld_dst=136)
    captured = []
    for p in params:
        if p["kind"] != "tensormap":
            captured.append(pack_param(p, values).hex())
            continue
        a = tensormap.tensormap_args(p["name"], p["recipe"], values)
        out = ctypes.create_string_buffer(128)
        u64, u32 = ctypes.c_uint64 * a.rank, ctypes.c_uint32 * a.rank
        rc = lib._cuTensorMapEncodeTiled(out, a.dtype, a.rank, ctypes.c_void_p(a.address), u64(*a.dims),
                                         u64(*a.strides, 0), u32(*a.box), u32(*a.element_strides), a.interleave,
                                         a.swizzle, a.l2_promotion, a.oob_fill)
        assert rc == 0 and out.raw[:8] == STUB_MARKER
        captured.append(out.raw.hex())
    encoded = read_stub_tensormaps(lib)
    assert [e["address"] for e in encoded] == [values["src"], values["dst"]]
    assert param_mismatches(params, values, captured, encoded) == []
    no_l2 = [dict(p, recipe=dict(p["recipe"], l2_promotion="none")) if p["kind"] == "tensormap" else p
             for p in params]
    assert any("l2_promotion" in m for m in param_mismatches(no_l2, values, captured, encoded))
    assert any("not recorded" in m for m in param_mismatches(params, values, captured, encoded[:1]))
