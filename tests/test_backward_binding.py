"""The backward family's runtime binding on the CPU: every kernel parameter of every built variant gets a value,
the values pack and meet the variant's requirements, and ``supports`` declines what the family cannot run."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from varblock import families
from varblock.families.attention_bwd_mma import BINDING
from varblock.families.base import AttentionProblem
from varblock.kernels import attention_bwd_mma as K
from varblock.runtime.params import check_requires, grid_of, pack_bytes


def _arr(name, ptr, shape, dtype="bfloat16"):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return NS(name=name, ptr=ptr, shape=tuple(shape), strides=tuple(reversed(strides)), dtype=dtype)


def _case(tq=1000, tk=1300, hq=8, hkv=2, d=128):
    arrays = {"q": _arr("q", 1 << 20, (tq, hq, d)), "k": _arr("k", 2 << 20, (tk, hkv, d)),
              "v": _arr("v", 3 << 20, (tk, hkv, d)), "dout": _arr("dout", 4 << 20, (tq, hq, d)),
              "out": _arr("out", 5 << 20, (tq, hq, d)), "lse": _arr("lse", 6 << 20, (hq, tq), "float32"),
              "dq": _arr("dq", 7 << 20, (tq, hq, d)), "dk": _arr("dk", 8 << 20, (tk, hkv, d)),
              "dv": _arr("dv", 9 << 20, (tk, hkv, d))}
    for i, n in enumerate(("lse_log2", "dpsum", "dq_accum", "dk_accum", "dv_accum", "tiles", "chunks", "dq_order")):
        arrays[n] = NS(ptr=(16 + i) << 20)
    plan = NS(tok_strides=(0, 0, 0), window_left=200, window_right=0, num_sink_tokens=4, tok_block_k=1,
              tok_head_div=1, mask_flags=0, ptr=lambda n: 0 if n in ("doc_q", "doc_k", "tok_mask") else 32 << 20)
    scalars = {"softmax_scale": d**-0.5, "num_tiles": 777, "num_tile_heads": hq // 4, "heads_per_tile": 4,
               "num_sems": 120}
    return plan, arrays, scalars


@pytest.mark.parametrize("arch", ["sm80", "sm90", "sm100", "sm120"])
def test_every_parameter_bound_packed_and_valid(arch):
    plan, arrays, scalars = _case()
    values = {"main": BINDING.bind(plan, arrays, scalars), "preprocess": BINDING.bind_preprocess(arrays),
              "postprocess": BINDING.bind_postprocess(arrays, scalars)}
    for v in K.variants(arch):
        vals = values[v.key["kind"]]
        e = v.manifest_entry()
        names = [p["name"] for p in e["params"]]
        assert set(vals) == set(names), (v.name, set(vals) ^ set(names))
        assert [len(b) for b in pack_bytes(e["params"], vals)] == [p["size"] for p in e["params"]]
        assert not check_requires(e["requires"], vals), (v.name, check_requires(e["requires"], vals))
        rows = {"main": None, "preprocess": 1000 * 8, "postprocess": 1000 * 8 + 1300 * 2}[v.key["kind"]]
        expected = 777 if rows is None else -(-rows // K.AUX_WARPS)  # one CTA per tile / AUX_WARPS rows per CTA
        assert grid_of(e["grid"], vals) == (expected, 1, 1)


def test_main_values():
    plan, arrays, scalars = _case()
    v = BINDING.bind(plan, arrays, scalars)
    assert v["q_stride_tok"] == 8 * 128 and v["k_stride_tok"] == 2 * 128 and v["qhead_per_kvhead"] == 4
    assert v["stat_stride_head"] == 1000 and v["total_q"] == 1000 and v["dq_sem"] == 0
    assert v["window_left"] == 200 and v["num_sink_tokens"] == 4 and v["heads_per_tile"] == 4
    assert abs(v["softmax_scale_log2"] - 128**-0.5 * 1.4426950408889634) < 1e-12
    p = BINDING.bind_postprocess(arrays, scalars)
    assert (p["total_k"], p["num_heads_kv"], p["num_tile_heads"]) == (1300, 2, 2)


def test_extent_one_strides_are_compact():
    plan, arrays, scalars = _case(tq=1, hq=1)
    arrays["q"] = NS(name="q", ptr=1 << 20, shape=(1, 1, 128), strides=(7, 3, 1), dtype="bfloat16")
    v = BINDING.bind(plan, arrays, scalars)
    assert (v["q_stride_tok"], v["q_stride_head"]) == (128, 128)


def test_supports(monkeypatch):
    built = {("sm90", 128)}
    monkeypatch.setattr(type(BINDING), "variant", lambda self, arch, key: {"extra": {"tile_n": 128}} if (
        arch, key.get("head_dim")) in built else None)
    monkeypatch.setattr(type(BINDING), "built_keys", lambda self, arch: [
        {"kind": "main", "dtype": dt, "head_dim": 128} for dt in ("bfloat16", "float16")])
    ok = AttentionProblem("sm90", 128, 8, 2, "bfloat16", frozenset({"causal", "sinks", "doc", "token"}),
                          frozenset({"block_sparse", "variable_spans"}))
    assert BINDING.supports(ok) is None
    assert families.choose("attention_bwd", ok)[0] is BINDING
    assert "head_dim" in BINDING.supports(AttentionProblem("sm90", 192, 8, 2, "bfloat16"))
    assert "dtype" in BINDING.supports(AttentionProblem("sm90", 128, 8, 2, "float32"))
    dev = AttentionProblem("sm90", 128, 8, 2, "bfloat16", features=frozenset({"device_plan"}))
    assert "device plan" in BINDING.supports(dev)
    with pytest.raises(ValueError, match="attention_bwd_mma"):
        families.choose("attention_bwd", dev)


def test_main_entries_by_tile_width(monkeypatch):
    """The default main variant is the widest built one; the narrow 64-key variant is found by its ``tile_n``
    (manifests built before the ``tile_n`` key existed still give their one variant)."""
    sm90 = [v.manifest_entry() for v in K.variants("sm90")]
    monkeypatch.setattr(type(BINDING), "built_keys", lambda self, arch: [e["key"] for e in sm90])
    monkeypatch.setattr(type(BINDING), "variant", lambda self, arch, key: next(
        (e for e in sm90 if all(e["key"].get(k) == x for k, x in key.items())), None))
    got = BINDING.main_entries("sm90", 128, "float16")
    assert sorted(got) == [64, 128] and got[64]["name"] == "attention_bwd_mma_main_fp16_d128_n64"
    assert BINDING.main_entry("sm90", 128)["extra"]["tile_n"] == 128
    assert sorted(BINDING.main_entries("sm90", 192)) == [64] and BINDING.main_entries("sm90", 80) == {}
    old = [dict(e, key={k: x for k, x in e["key"].items() if k != "tile_n"}) for e in sm90 if "_n64" not in e["name"]]
    monkeypatch.setattr(type(BINDING), "built_keys", lambda self, arch: [e["key"] for e in old])
    monkeypatch.setattr(type(BINDING), "variant", lambda self, arch, key: next(
        (e for e in old if all(e["key"].get(k) == x for k, x in key.items())), None))
    assert sorted(BINDING.main_entries("sm90", 128)) == [128]
