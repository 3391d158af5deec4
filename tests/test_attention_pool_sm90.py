"""The Hopper pooling family (``kernels/attention_pool_sm90.py``) on the CPU: variants, parameter list and TMA recipes,
shared-memory budget, the runtime bindings (what they decline and why, what they bind), the op's family choice and
re-plan, a NumPy model of the kernel (per row and 64-key half of a chunk: max of S -> the pooling block of that half)
checked against the float64 reference, the op run with the device simulated through that model, and SASS checks of
built cubins when ``cuobjdump`` is available."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests._pooling_ref import group_pooling_ref
from tests.test_pooling_api import MEM, _empty, _host_plan, _view, _zero
from tests.test_pooling_model import reduce_model
from varblock import layout as L
from varblock import reference
from varblock.dense_worklist import dense_worklist
from varblock.families import family_names
from varblock.families.attention_pool import BINDING_MMA, BINDING_SM90, PoolingProblem
from varblock.kernels import attention_fwd_mma as portable
from varblock.kernels import attention_pool as pool
from varblock.kernels import attention_pool_sm90 as fam
from varblock.kernels import registry
from varblock.layout.mask import ElementMask
from varblock.ops import attention_pooling as pool_mod
from varblock.runtime.params import check_requires
from varblock.runtime.tensormap import tensormap_args
from varblock.worklist import build_worklist

HALF = fam.HALF


def _cu(lens) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


# ---------------------------------------------------------------------------------------------- registry / ABI
def test_registered_for_sm90_only_and_first_for_the_op():
    assert "varblock.kernels.attention_pool_sm90" in registry.FAMILY_MODULES
    assert family_names("attention_pool") == (fam.FAMILY_NAME, pool.FAMILY_NAME)
    for arch in registry.ARCHES:
        vs = fam.FAMILY.variants_for(arch)
        if arch != "sm90":
            assert vs == []
            continue
        assert sorted(v.name for v in vs) == sorted(fam.variant_name(s, d) for s, _ in portable.DTYPES
                                                    for d in fam.HEAD_DIMS)
        for v in vs:
            assert v.key["stage"] == "qk" and v.block == (fam.THREADS, 1, 1) and v.host_params == fam.HOST_PARAMS
            assert (v.extra["tile_m"], v.extra["tile_n"]) == (128, 128)
            assert v.extra["smem_bytes"] == fam.smem_bytes(v.key["head_dim"]) <= portable.SMEM_LIMIT["sm90"]


def test_param_list_is_descriptors_then_the_portable_pooling_params():
    params = fam.kernel_params(128, "bfloat16")
    assert [(p.name, p.kind) for p in params[:4]] == [("tma_q", "tensormap"), ("q_coords", "i32x2"),
                                                       ("tma_k", "tensormap"), ("k_coords", "i32x2")]
    assert params[4:] == fam.HOST_PARAMS
    assert fam.HOST_PARAMS[: len(pool.QK_PARAMS)] == pool.QK_PARAMS  # the reduce kernels read the same map
    names = {p.name for p in params}
    assert not names & {"v", "o", "tma_v", "v_coords"}
    assert fam.PRODUCER_REGS * 128 + fam.CONSUMER_REGS * 256 <= 65536


def test_smem_budget_matches_the_dsl_struct():
    """The sizes the DSL reported for the built variants (``build_kernels.py``: smem 207872 / 142336 B); the
    2 Q stages and the K stages dominate."""
    assert fam.smem_bytes(128) == 207872 and fam.smem_bytes(64) == 142336
    for d in fam.HEAD_DIMS:
        kq = (fam.Q_STAGES * fam.TILE_M + fam.STAGES[d] * fam.TILE_N) * d * 2
        assert kq < fam.smem_bytes(d) < kq + 16 * 1024


@pytest.mark.parametrize("d", fam.HEAD_DIMS)
def test_capture_cases_satisfy_the_requirements_and_recipes(d):
    v = next(x for x in fam.variants("sm90") if x.key == {"stage": "qk", "dtype": "bfloat16", "head_dim": d})
    cases = fam.capture_cases(v)
    assert {c["pool_block_k"] for c in cases} == {64, 128, 256}
    for case in cases:
        assert list(case) == [p.name for p in fam.HOST_PARAMS]
        assert check_requires(v.requires, case) == []
        for p in v.params:
            if p.kind == "tensormap":
                a = tensormap_args(p.name, p.recipe, case)
                x = p.recipe["pointer"]
                tok, heads = ("total_q", "num_heads_q") if x == "q" else ("total_k", "num_heads_kv")
                assert a.address == case[x] and a.dims == (d, case[tok], case[heads])
                assert a.box == (64, 128, 1)
    bad = dict(cases[0], pool_block_k=96)
    assert any("multiple of 64" in m for m in check_requires(v.requires, bad))


# ---------------------------------------------------------------------------------------------- bindings
def _entries(arch: str = "sm90") -> dict[str, dict[tuple, dict[str, Any]]]:
    out: dict[str, dict[tuple, dict[str, Any]]] = {}
    for v in pool.variants(arch) + fam.variants(arch):
        out.setdefault(v.family, {})[tuple(sorted(v.key.items()))] = v.manifest_entry()
    return out


@pytest.fixture
def built(monkeypatch):
    """Both bindings see the variants of the registry as built (sm90 and sm80), without a manifest."""
    tables = {a: _entries(a) for a in ("sm80", "sm90")}

    def lookup(b):
        def variant(arch, key):
            return next((e for k, e in tables[arch].get(b.name, {}).items()
                         if all(dict(k).get(n) == x for n, x in key.items())), None)
        return variant

    for b in (BINDING_MMA, BINDING_SM90):
        monkeypatch.setattr(b, "variant", lookup(b))
        monkeypatch.setattr(b, "built_keys", lambda arch, b=b: [dict(k) for k in tables[arch].get(b.name, {})])
    return tables


def _problem(**kw) -> PoolingProblem:
    base = dict(arch="sm90", head_dim=128, dtype="bfloat16", key_align=64, block_k=64)
    return PoolingProblem(**{**base, **kw})


def test_op_chooses_the_hopper_family_on_sm90(built):
    b, declined = pool_mod.choose_family(_problem())
    assert b is BINDING_SM90 and declined == {}
    b, _ = pool_mod.choose_family(_problem(head_dim=64, dtype="float16", key_align=128, block_k=256))
    assert b is BINDING_SM90


@pytest.mark.parametrize("kw,reason", [
    ({"arch": "sm80"}, "arch: needs sm90"),
    ({"key_align": 32, "block_k": 64}, "multiples of 64"),
    ({"key_align": 16, "block_k": 48}, "multiples of 64"),
    ({"head_dim": 64}, "head_dim: no attention_pool_sm90 kernel is built for d64 on sm90; built: [128]"),
])
def test_op_falls_back_to_the_portable_family_with_the_reason(built, kw, reason):
    table = built["sm90"][fam.FAMILY_NAME]
    for key in [k for k in table if dict(k)["head_dim"] == 64]:  # cubins with the Hopper kernel at d128 only
        del table[key]
    b, declined = pool_mod.choose_family(_problem(**kw))
    assert b is BINDING_MMA
    assert reason in declined[fam.FAMILY_NAME]


def test_pooling_at_64_over_128_key_blocks_is_the_hopper_kernels_alone(built):
    """Dense sm90 plans resolve to 128-key blocks; SeerAttention pools at 64. The sm90 kernel pools 64-key halves
    of each chunk, so it takes block_k 64 there; the portable kernel, which pools whole chunks, declines."""
    b, _ = pool_mod.choose_family(_problem(key_align=128, block_k=64))
    assert b is BINDING_SM90
    with pytest.raises(ValueError, match="attention_pool: block_k: 64 must be a multiple of the plan's key block "
                                         "/ chunk alignment 128"):
        pool_mod.choose_family(_problem(arch="sm80", key_align=128, block_k=64))
    cu = _cu([300, 65])
    p = SimpleNamespace(layout=L.causal(cu, cu, block_q=128, block_k=128), on_device=False, tile_m=128, tile_n=128)
    assert pool_mod._blocks(p, None, None, granule=64) == (128, 128)
    assert pool_mod._blocks(p, 64, 64, granule=64) == (64, 64)
    with pytest.raises(ValueError, match="block_k: 32 must be a multiple of 64 .the sm90 pooling kernel's granule"):
        pool_mod._blocks(p, None, 32, granule=64)
    with pytest.raises(ValueError, match="block_k: 64 must be a multiple of the plan's key block / chunk align"):
        pool_mod._blocks(p, None, 64)


def test_a_head_dim_neither_family_has_is_an_error_naming_both(built):
    with pytest.raises(ValueError, match="attention_pool_sm90: head_dim: no .* d96 .*; attention_pool: head_dim"):
        pool_mod.choose_family(_problem(head_dim=96))


def test_declines_flashinfer_spans_and_unknown_dtypes(built):
    for b in (BINDING_SM90, BINDING_MMA):
        assert "variable FlashInfer spans" in b.supports(_problem(variable_spans=True))
        assert "dtype: float32" in b.supports(_problem(dtype="float32"))
    assert "block_k: 96" in BINDING_SM90.supports(_problem(key_align=64, block_k=96))
    with pytest.raises(ValueError, match="no attention_pool kernel family can run"):
        pool_mod.choose_family(_problem(variable_spans=True))
    with pytest.raises(ValueError, match="attention_pool_sm90 cannot run this problem: arch"):
        pool_mod.choose_family(_problem(arch="sm80"), backend="attention_pool_sm90")


def test_bind_adds_extents_and_the_persistent_grid():
    cu = _cu([300, 0, 65])
    lay = L.causal(cu, cu, block_q=64, block_k=64)
    plan = _host_plan(lay, 4, 2, 64, 128, 128, 1)
    arr = {"q": SimpleNamespace(ptr=16, shape=(365, 4, 64), strides=(256, 64, 1)),
           "k": SimpleNamespace(ptr=32, shape=(365, 2, 64), strides=(128, 64, 1)),
           "lse": SimpleNamespace(ptr=48, shape=(4, 365), strides=(365, 1)),
           "pool": SimpleNamespace(ptr=64, shape=(4, 365, 5), strides=(1825, 5, 1)),
           "pool2d": SimpleNamespace(ptr=80, shape=(3, 2, 3, 5), strides=(30, 15, 5, 1))}
    sc = {"softmax_scale": 0.125, "block_q": 128, "group": 2}
    v = BINDING_SM90.bind(plan, arr, {**sc, "block_k": 128, "num_sms": 2})
    assert (v["total_q"], v["num_heads_q"], v["total_k"], v["num_heads_kv"]) == (365, 4, 365, 2)
    assert (v["persistent"], v["num_ctas"], v["pool_block_k"]) == (1, 2, 128)
    assert (v["pool"], v["pool_stride_head"], v["pool_stride_tok"]) == (64, 1825, 5)
    assert (v["pool2d"], v["pool2d_stride_b"], v["pool2d_stride_h"], v["pool2d_stride_m"]) == (80, 30, 15, 5)
    assert (v["pool_block_q"], v["pool_group"]) == (128, 2)
    v90 = BINDING_SM90.bind(plan, arr, {**sc, "block_k": 64, "num_sms": 10**6})
    assert v90["num_ctas"] == plan.num_tiles
    entry = fam.variants("sm90")[0].manifest_entry()
    assert not {p["name"] for p in entry["params"] if p["kind"] not in ("tensormap", "i32x2")} - set(v90)
    v = BINDING_MMA.bind(plan, arr, {**sc, "block_k": 64})
    assert (v["persistent"], v["num_ctas"], v["tile_counter"]) == (0, plan.num_tiles, 0)
    assert "pool2d" not in v and not BINDING_MMA.writes_2d and BINDING_SM90.writes_2d


# ---------------------------------------------------------------------------------------------- NumPy model
def half_blocks(k_start: int, k_len: int, block_k: int) -> list[tuple[int, int, int]]:
    """The kernel's mapping of a chunk: ``(first key, end key, pooling block)`` of each nonempty 64-key half."""
    return [(k_start + h * HALF, k_start + min(k_len, (h + 1) * HALF), (k_start + h * HALF) // block_k)
            for h in range(2) if h * HALF < k_len]


@pytest.mark.parametrize("block_k", [64, 128, 256])
def test_half_to_block_mapping_covers_each_key_once(block_k):
    """Chunks start at multiples of 64 and hold 1..128 keys: each 64-key half lies in one pooling block, and the
    halves' blocks are exactly the blocks of the chunk's keys (block 64: two per full chunk; 128: one, or two when
    the chunk starts mid-block; 256: one, shared with the neighbouring chunk)."""
    rng = np.random.default_rng(block_k)
    for _ in range(2000):
        ks, kl = HALF * int(rng.integers(0, 64)), int(rng.integers(1, 129))
        halves = half_blocks(ks, kl, block_k)
        keys = np.arange(ks, ks + kl)
        assert sorted({b for *_, b in halves}) == sorted(set((keys // block_k).tolist()))
        for k0, k1, b in halves:
            assert (k0 // block_k, (k1 - 1) // block_k) == (b, b)
        if block_k == 64 and kl == 128:
            assert [b for *_, b in halves] == [ks // 64, ks // 64 + 1]


def qk_model_sm90(q, k, lse, lay, tiles, chunks, g, block_k, max_nb, scale):
    """What the sm90 qk kernel writes into a zeroed ``pool [Hq, total_q, max_nb]``: per tile row (<= 128) and chunk
    (start a multiple of 64, <= 128 keys) the masked S's max per 64-key half, ``exp(max - lse)``, max-accumulated at
    the half's pooling block; halves whose value is 0 write nothing."""
    hq, hkv = q.shape[1], k.shape[1]
    hmap = lay.head_map(hq, hkv)
    cu_q, cu_k = lay.cu_seqlens_q.astype(np.int64), lay.cu_seqlens_k.astype(np.int64)
    out = np.zeros((hq, q.shape[0], max_nb))
    masks: dict[tuple[int, int], np.ndarray] = {}
    for b_, head, qs, ql, cb, nf, npart, _nl in tiles.astype(np.int64):
        assert ql * g <= fam.TILE_M
        for r in range(ql * g):
            tq, h = qs + r // g, head * g + r % g
            hl = int(hmap[h])
            if (b_, hl) not in masks:
                masks[b_, hl] = lay.token_mask(int(b_), hl)
            tok = cu_q[b_] + tq
            for c in range(cb, cb + nf + npart):
                ks, kl = (int(x) for x in chunks[c])
                assert ks % HALF == 0 and 1 <= kl <= fam.TILE_N
                for k0, k1, blk in half_blocks(ks, kl, block_k):
                    s = k[cu_k[b_] + k0: cu_k[b_] + k1, h // (hq // hkv)] @ q[tok, h] * scale
                    m = np.where(masks[b_, hl][tq, k0:k1], s, -np.inf).max()
                    p = 0.0 if m == -np.inf or lse[h, tok] == -np.inf else np.exp(m - lse[h, tok])
                    if p > 0:
                        out[h, tok, blk] = max(out[h, tok, blk], p)
    return out


def _coarse(p1: np.ndarray, factor: int) -> np.ndarray:
    """A 1D map at ``factor`` x its key block (max over groups of ``factor`` columns)."""
    h, t, nb = p1.shape
    pad = np.zeros((h, t, -(-nb // factor) * factor))
    pad[..., :nb] = p1
    return pad.reshape(h, t, -1, factor).max(axis=3)


@pytest.mark.parametrize("seed", range(10))
def test_model_of_the_kernel_equals_reference(seed):
    """Host work lists of 128 x 128 tiles (the sm90 forward's plans) over random layouts with 64- or 128-token
    blocks, pack-GQA, pooling blocks 1, 2 and 4 times the layout's key block."""
    rng = np.random.default_rng(100 + seed)
    lens = rng.integers(0, 400, size=int(rng.integers(1, 4)))
    cu = _cu(lens)
    bs = int(rng.choice([64, 128]))
    hkv = int(rng.choice([1, 2]))
    hq = hkv * int(rng.choice([1, 2, 4]))
    mode = str(rng.choice(["per_q_head", "per_kv_head", "broadcast"]))
    nh = {"per_q_head": hq, "per_kv_head": hkv, "broadcast": 1}[mode]
    lay = L.random_blocks(cu, cu, density=float(rng.choice([0.3, 1.0])), num_heads=nh, head_mode=mode,
                          causal=bool(seed % 2), block_q=bs, block_k=bs, seed=seed)
    d = 16
    q, k, v = (rng.standard_normal((int(cu[-1]), n, d)) for n in (hq, hkv, hkv))
    _, lse = reference.attention_forward(q, k, v, lay)
    g = hq // hkv if (mode != "per_q_head" and seed % 3 == 0) else 1
    wl = build_worklist(lay.rows(), cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_mode=mode, tile_m=128,
                        tile_n=128, pack_gqa=g, num_layout_heads=nh, longest_first=True)
    ref = reference.attention_pooling_1d(q, k, lay)
    for factor in (1, 2, 4):
        bk = bs * factor
        nb = int(np.max(-(-lens // bk), initial=0))
        got = qk_model_sm90(q, k, lse, lay, wl.tiles, wl.chunks, g, bk, nb, d ** -0.5)
        np.testing.assert_allclose(got, _coarse(ref, factor)[..., :nb], rtol=1e-10, atol=1e-15)


def test_model_on_dense_causal_work_lists():
    """Dense plans (per-sequence chunk lists of the prepare kernel, 128-key chunks), pooled at 64 and 128."""
    rng = np.random.default_rng(7)
    cu = _cu([300, 7, 128, 250])
    hq, hkv, d = 4, 2, 16
    lay = L.dense(cu, cu, block_q=64, block_k=64, num_heads=1, element_mask=ElementMask(causal=True))
    q, k, v = (rng.standard_normal((int(cu[-1]), n, d)) for n in (hq, hkv, hkv))
    _, lse = reference.attention_forward(q, k, v, lay)
    tiles, chunks = dense_worklist(cu, cu, num_tile_heads=hq, tile_m=128, tile_n=128, window_right=0)
    ref = reference.attention_pooling_1d(q, k, lay)
    for factor in (1, 2):
        got = qk_model_sm90(q, k, lse, lay, tiles, chunks, 1, 64 * factor, -(-5 // factor), d ** -0.5)
        np.testing.assert_allclose(got, _coarse(ref, factor), rtol=1e-10, atol=1e-15)


# ---------------------------------------------------------------------------------------------- the op, simulated
CTX: dict[str, Any] = {}


def _launch(entry: dict, ordinal: int, stream: Any, values: dict) -> None:
    """A launch on the simulated device: the values must name the variant's parameters (descriptor extents for the
    sm90 kernel), then the NumPy model of the kernel runs on the fake memory."""
    host = [p["name"] for p in entry["params"] if p["kind"] not in ("tensormap", "i32x2")]
    missing = [n for n in host if n not in values]
    assert not missing, f"{entry['name']}: no value for {missing}"
    CTX["launches"].append((entry["family"], {n: values[n] for n in host}))
    v, plan, lay = values, CTX["plan"], CTX["layout"]
    hq, total, nb = CTX["q"].shape[1], CTX["total_q"], CTX["nb"]
    if entry["key"]["stage"] == "qk":
        assert entry["family"] == CTX["family"]
        if entry["family"] == fam.FAMILY_NAME:
            assert (v["persistent"], v["num_ctas"]) == (1, min(plan.num_tiles, 3))
            assert v["tile_counter"] == plan.buffers["tile_counters"].ptr
            assert (v["total_q"], v["num_heads_q"], v["total_k"]) == (total, hq, CTX["k"].shape[0])
        lse = MEM.read(v["lse"], np.float32, hq * total).reshape(hq, total).astype(np.float64)
        t = MEM.read(v["tiles"], np.int32, 8 * plan.num_tiles).reshape(-1, 8)
        got = qk_model_sm90(CTX["q"], CTX["k"], lse, lay, t, plan.worklist.chunks, v["pack_gqa"], v["pool_block_k"],
                            nb, v["softmax_scale_log2"] / np.log2(np.e))
        assert not MEM.read(v["pool"], np.float32, got.size).any(), "the map was not zeroed"
        MEM.write(v["pool"], got.astype(np.float32))
        if entry["family"] == fam.FAMILY_NAME:  # the raw 2D map: per query block x key block, the max
            sb, sh, sm = v["pool2d_stride_b"], v["pool2d_stride_h"], v["pool2d_stride_m"]  # compact [B, Ho, MB, NB]
            shape = (plan.batch_size, sb // sh, sh // sm, sm)
            raw = raw_2d_model(got, lay.cu_seqlens_q, v["pool_group"], v["pool_block_q"], shape)
            assert not MEM.read(v["pool2d"], np.float32, raw.size).any(), "the 2D map was not zeroed"
            MEM.write(v["pool2d"], raw.astype(np.float32))
    elif entry["key"]["mode"] == 0:
        MEM.write(v["out"], reduce_2d_kernel_model(v).astype(np.float32))
    else:
        p1 = MEM.read(v["pool"], np.float32, hq * total * nb).reshape(hq, total, nb).astype(np.float64)
        _, one = reduce_model(p1, lay.cu_seqlens_q, lay.cu_seqlens_k, v["group"], v["block_q"], v["block_k"],
                              v["mb"])
        MEM.write(v["out"], one.astype(np.float32))


def raw_2d_model(p1: np.ndarray, cu_q: np.ndarray, group: int, block_q: int, shape: tuple[int, ...]) -> np.ndarray:
    """What the sm90 qk kernel's 2D reds leave in a zeroed ``[B, Ho, MB, NB]`` map: per sequence, output head,
    query block and key block, the max of the 1D map over the block's tokens and the group's heads."""
    out = np.zeros(shape)
    b_, ho, mb, nb = shape
    for b in range(b_):
        for m in range(mb):
            t0, t1 = cu_q[b] + m * block_q, min(cu_q[b] + (m + 1) * block_q, cu_q[b + 1])
            if t1 > t0:
                out[b, :, m] = p1[:ho * group, t0:t1, :nb].reshape(ho, group, t1 - t0, nb).max(axis=(1, 2))
    return out


def reduce_2d_kernel_model(v: dict[str, Any]) -> np.ndarray:
    """``_reduce_2d`` (``kernels/_attention_pool_impl.py``) on the fake memory, from its parameters alone: row
    ``(b, ho, m)`` = max over the group's heads and the tokens ``m * block_q ..`` of sequence ``b`` (by the
    ``cu_seqlens_q`` it is given) of ``pool[h, tok, n]`` for ``n < ceil(len_k / block_k)``, divided by its sum."""
    cq = MEM.read(v["cu_seqlens_q"], np.int32, v["batch"] + 1).astype(np.int64)
    ck = MEM.read(v["cu_seqlens_k"], np.int32, v["batch"] + 1).astype(np.int64)
    pool = MEM._at(v["pool"]).view(np.float32)
    out = np.zeros((v["num_items"], v["nbo"]))
    for w in range(v["num_items"]):
        m, ho, b = w % v["mb"], (w // v["mb"]) % v["num_heads_out"], w // (v["mb"] * v["num_heads_out"])
        n_b = min(-(-int(ck[b + 1] - ck[b]) // v["block_k"]), v["nbo"])
        t0, t1 = m * v["block_q"], min((m + 1) * v["block_q"], int(cq[b + 1] - cq[b]))
        for g in range(v["group"]):
            for t in range(t0, t1):
                at = (ho * v["group"] + g) * v["pool_stride_head"] + (cq[b] + t) * v["pool_stride_tok"]
                out[w, :n_b] = np.maximum(out[w, :n_b], pool[at:at + n_b])
        if out[w].sum() > 0:
            out[w] /= out[w].sum()
    return out


@pytest.fixture
def sim(monkeypatch, built):
    entries = _entries("sm90")
    monkeypatch.setattr(pool_mod, "as_device_array", lambda a, name: _view(np.asarray(a), name))
    monkeypatch.setattr(pool_mod, "check_aligned", lambda a, n: None)
    monkeypatch.setattr(pool_mod.arrays, "empty_array", _empty)
    monkeypatch.setattr(pool_mod, "_zero", _zero)
    monkeypatch.setattr(pool_mod, "_prepare", lambda plan, e, o, values, pointers: lambda st, ptrs: _launch(
        e, o, st, {**values, **dict(zip(pointers, ptrs))}))
    monkeypatch.setattr(pool_mod, "variant_for", lambda f, o, key: entries[f][tuple(sorted(key.items()))])
    monkeypatch.setattr(pool_mod, "stream_for", lambda s, o, like=None: SimpleNamespace(handle=0))
    monkeypatch.setattr(pool_mod, "_num_sms", lambda ordinal: 3)
    monkeypatch.setattr(pool_mod, "_row_starts", lambda plan, o, batch, rows: MEM.put(
        (np.arange(batch + 1) * rows).astype(np.int32)))
    CTX.clear()
    CTX["launches"] = []


def _sm90_plan(lay, hq, hkv, d, g):
    p = _host_plan(lay, hq, hkv, d, 128, 128, g)
    p.buffers["tile_counters"] = SimpleNamespace(ptr=MEM.alloc(p.COUNTER_BYTES * p.MAX_STREAMS))
    return p


@pytest.mark.parametrize("seed", range(4))
def test_op_runs_the_hopper_kernel_against_reference(sim, seed):
    rng = np.random.default_rng(seed)
    lens = [int(x) for x in rng.integers(0, 300, size=3)]
    cu = _cu(lens)
    hkv, group = 2, int(rng.choice([1, 2]))
    hq, d = hkv * group, 64
    lay = L.random_blocks(cu, cu, density=0.5, num_heads=hkv, head_mode="per_kv_head" if group > 1 else "per_q_head",
                          causal=bool(seed % 2), block_q=64, block_k=64, seed=seed)
    q = rng.standard_normal((int(cu[-1]), hq, d)).astype(np.float16)
    k = rng.standard_normal((int(cu[-1]), hkv, d)).astype(np.float16)
    qf, kf = q.astype(np.float64), k.astype(np.float64)
    _, lse = reference.attention_forward(qf, kf, kf, lay)
    plan = _sm90_plan(lay, hq, hkv, d, group if seed == 2 else 1)
    bk = (64, 128)[seed % 2]
    nb = int(np.max(-(-np.asarray(lens) // bk), initial=0))
    CTX.update(plan=plan, layout=lay, q=qf, k=kf, total_q=int(cu[-1]), nb=nb, family=fam.FAMILY_NAME)
    p1, p2 = pool_mod.attention_pooling(q, k, lse.astype(np.float32), plan, block_k=bk, per_sequence=False)
    assert [f for f, _ in CTX["launches"]] == [fam.FAMILY_NAME, pool.FAMILY_NAME]
    np.testing.assert_allclose(p1, reference.attention_pooling_1d(qf, kf, lay, block_k=bk), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p2, reference.attention_pooling_2d(qf, kf, lay, block_k=bk), rtol=1e-5, atol=1e-7)


def _causal_128_case(rng, lens):
    """A causal layout of 128 x 128 blocks over ``lens`` (one layout head), fp16 q / k (Hq 4, Hkv 2, d64) with
    their float64 copies and LSE, and the sm90 plan, registered with the simulated device."""
    cu = _cu(lens)
    lay = L.causal(cu, cu, block_q=128, block_k=128, num_heads=1)
    q = rng.standard_normal((int(cu[-1]), 4, 64)).astype(np.float16)
    k = rng.standard_normal((int(cu[-1]), 2, 64)).astype(np.float16)
    qf, kf = q.astype(np.float64), k.astype(np.float64)
    _, lse = reference.attention_forward(qf, kf, kf, lay)
    plan = _sm90_plan(lay, 4, 2, 64, 1)
    CTX.update(plan=plan, layout=lay, q=qf, k=kf, total_q=int(cu[-1]), nb=5, family=fam.FAMILY_NAME)
    return lay, q, k, qf, kf, lse, plan


def test_op_pools_at_64_over_a_128_block_sm90_plan(sim):
    """The dense sm90 case: a causal layout of 128 x 128 blocks (what a dense plan resolves to for the sm90
    forward), pooled at 64 x 64 by the sm90 kernel, against the reference at 64."""
    lay, q, k, qf, kf, lse, plan = _causal_128_case(np.random.default_rng(3), [300, 1, 129, 0, 77])
    p1, p2 = pool_mod.attention_pooling(q, k, lse.astype(np.float32), plan, block_q=64, block_k=64,
                                        per_sequence=False)
    np.testing.assert_allclose(p1, reference.attention_pooling_1d(qf, kf, lay, block_k=64), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p2, reference.attention_pooling_2d(qf, kf, lay, block_q=64, block_k=64), rtol=1e-5,
                               atol=1e-7)
    with pytest.raises(ValueError, match="cannot run this problem: block_k: 64"):
        pool_mod.attention_pooling(q, k, lse.astype(np.float32), plan, block_k=64, backend="attention_pool")


def test_backend_names_the_portable_family(sim):
    cu = _cu([200, 70])
    lay = L.causal(cu, cu, block_q=64, block_k=64)
    q = np.random.default_rng(0).standard_normal((270, 2, 64)).astype(np.float16)
    _, lse = reference.attention_forward(q.astype(np.float64), q.astype(np.float64), q.astype(np.float64), lay)
    plan = _sm90_plan(lay, 2, 2, 64, 1)
    CTX.update(plan=plan, layout=lay, q=q.astype(np.float64), k=q.astype(np.float64), total_q=270, nb=4,
               family=pool.FAMILY_NAME)
    p1, _ = pool_mod.attention_pooling(q, q, lse.astype(np.float32), plan, backend="attention_pool",
                                       per_sequence=False)
    assert CTX["launches"][0][0] == pool.FAMILY_NAME
    np.testing.assert_allclose(p1, reference.attention_pooling_1d(q.astype(np.float64), q.astype(np.float64), lay),
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="unknown attention_pool kernel family"):
        pool_mod.attention_pooling(q, q, lse.astype(np.float32), plan, backend="nope")


def test_portable_plan_is_replanned_once_for_the_hopper_tiles(sim, monkeypatch):
    """A host plan with 64-key chunks (the portable forward's at d128) fits the sm90 kernel but would waste half of
    every S tile: it is planned again, once, with the sm90 forward's 128 x 128 tiles from the same layout."""
    cu = _cu([100])
    lay = L.causal(cu, cu, block_q=64, block_k=64)
    small, full = _host_plan(lay, 2, 2, 64, 128, 64, 1), _sm90_plan(lay, 2, 2, 64, 1)
    calls = []

    def fake_plan(cu_q, cu_k, **kw):
        calls.append(kw)
        return full

    monkeypatch.setattr(pool_mod, "make_plan", fake_plan)
    q = np.zeros((100, 2, 64), np.float16)
    lse = np.zeros((2, 100), np.float32)
    CTX.update(plan=full, layout=lay, q=q.astype(np.float64), k=q.astype(np.float64), total_q=100, nb=2,
               family=fam.FAMILY_NAME)
    pool_mod.attention_pooling(q, q, lse, small)
    pool_mod.attention_pooling(q, q, lse, small)
    assert len(calls) == 1 and calls[0]["backend"] == "attention_fwd_sm90" and calls[0]["layout"] is lay
    assert pool_mod._pooling_plan(full, 128, 128, "attention_fwd_sm90", fill=True) is full
    small.on_device = True  # a device plan is used as it is (its chunks fit)
    assert pool_mod._pooling_plan(small, 128, 128, "attention_fwd_sm90", fill=True) is small


# ---------------------------------------------------------------------------------------------- SASS
def _cuobjdump() -> str | None:
    return os.environ.get("VARBLOCK_CUOBJDUMP") or shutil.which("cuobjdump")


def test_sass_is_wgmma_tma_and_red_without_predicated_r2ur():
    """Built cubins (``$VARBLOCK_CUBIN_DIR`` or ./cubins) when cuobjdump is available: wgmma 64x128 for S, TMA
    loads, red.max into the map, setmaxnreg, no local memory, and no predicated ``R2UR`` (illegal on sm_90a)."""
    tool = _cuobjdump()
    root = Path(os.environ.get("VARBLOCK_CUBIN_DIR", Path(__file__).resolve().parent.parent / "cubins"))
    cubins = sorted((root / "sm90").glob(f"{fam.FAMILY_NAME}_*.cubin"))
    if tool is None or not cubins:
        pytest.skip("needs cuobjdump and built attention_pool_sm90 cubins")
    for c in cubins:
        sass = subprocess.run([tool, "-sass", str(c)], capture_output=True, text=True, check=True).stdout
        assert not re.findall(r"@!?U?P[0-9T] R2UR[^;]*", sass), c.name
        assert re.search(r"HGMMA\.64x128x16\.F32\b", sass), c.name  # (fp16 operands carry no suffix)
        assert "UTMALDG" in sass and "REDG.E.MAX" in sass and "USETMAXREG" in sass, c.name
        assert not re.search(r"\b(STL|LDL)\b", sass), f"{c.name}: local memory (spills)"
        assert "HMMA" not in sass.replace("HGMMA", ""), f"{c.name}: mma.sync in the Hopper kernel"


def test_prepared_launches_are_kept_per_plan_and_values(monkeypatch):
    """``_prepare`` prepares a variant once per plan and non-pointer values (descriptors, packed parameters); the
    launch then takes the call's pointers."""
    made, calls = [], []

    class Prepared:
        def __init__(self, entry, ordinal, values, pointers, what):
            made.append((entry["name"], dict(values), pointers))

        def __call__(self, stream, ptrs):
            calls.append(ptrs)

    monkeypatch.setattr(pool_mod, "PreparedLaunch", Prepared)
    cu = _cu([100])
    plan = _sm90_plan(L.causal(cu, cu, block_q=64, block_k=64), 2, 2, 64, 1)
    entry = {"name": "x"}
    ptrs = pool_mod._QK_POINTERS
    base = {"q": 16, "k": 32, "lse": 48, "pool": 0, "tile_counter": 0, "pool_block_k": 64, "num_ctas": 3}
    first = pool_mod._prepare(plan, entry, 0, base, ptrs)
    assert pool_mod._prepare(plan, entry, 0, {**base, "q": 1600, "pool": 6400}, ptrs) is first
    first(None, (1600, 32, 48, 6400, 80))
    assert len(made) == 1 and made[0][2] == ptrs and calls == [(1600, 32, 48, 6400, 80)]
    assert pool_mod._prepare(plan, entry, 0, {**base, "pool_block_k": 128}, ptrs) is not first
    other = _sm90_plan(L.causal(cu, cu, block_q=64, block_k=64), 2, 2, 64, 1)
    assert pool_mod._prepare(other, entry, 0, base, ptrs) is not first
    assert len(made) == 3


class _Tensor:
    """The few torch-tensor members the op's fast path reads, over a NumPy array stored in the fake memory."""

    def __init__(self, a: np.ndarray):
        self.a, self.ptr = a, MEM.put(a)
        self.shape, self.dtype = a.shape, str(a.dtype)

    def stride(self) -> tuple[int, ...]:
        return tuple(s // self.a.itemsize for s in self.a.strides)

    def get_device(self) -> int:
        return 0

    def data_ptr(self) -> int:
        return self.ptr

    def __array__(self, dtype=None, copy=None):
        return self.a


def test_torch_calls_take_the_fast_path_after_the_first(sim, monkeypatch):
    """A repeated call with the same argument signature skips the checks and the family choice (the recipe is kept
    per plan) and only allocates, zeroes and launches with the new pointers."""
    rng = np.random.default_rng(8)
    cu = _cu([200, 70])
    lay = L.causal(cu, cu, block_q=64, block_k=64)
    qf = rng.standard_normal((270, 2, 64)).astype(np.float16)
    _, lse = reference.attention_forward(qf.astype(np.float64), qf.astype(np.float64), qf.astype(np.float64), lay)
    plan = _sm90_plan(lay, 2, 2, 64, 1)
    CTX.update(plan=plan, layout=lay, q=qf.astype(np.float64), k=qf.astype(np.float64), total_q=270, nb=4,
               family=fam.FAMILY_NAME)
    monkeypatch.setattr(pool_mod, "framework_of", lambda x: "torch")
    checked = []
    real_inputs = pool_mod._inputs
    monkeypatch.setattr(pool_mod, "_inputs", lambda *a: checked.append(1) or real_inputs(*a))
    q, lse32 = _Tensor(qf), _Tensor(lse.astype(np.float32))
    ref = reference.attention_pooling_1d(qf.astype(np.float64), qf.astype(np.float64), lay)
    for _ in range(3):
        p1, _ = pool_mod.attention_pooling(q, q, lse32, plan, per_sequence=False)
        np.testing.assert_allclose(p1, ref, rtol=1e-5, atol=1e-7)
    assert len(checked) == 1 and len(CTX["launches"]) == 6
    CTX["nb"] = 2
    pool_mod.attention_pooling(q, q, lse32, plan, per_sequence=False, block_k=128)  # other options: checked again
    assert len(checked) == 2


@pytest.mark.parametrize("block_q,pool_gqa", [(40, True), (64, True), (200, False)])
def test_op_normalises_the_kernels_raw_2d_map(sim, block_q, pool_gqa):
    """The sm90 kernel writes the raw 2D map itself (query blocks of any size, group pooling); the 2D reduce kernel
    then runs on it as a normaliser (its rows as one-token query blocks): the 2D result equals the reference."""
    lay, q, k, qf, kf, lse, plan = _causal_128_case(np.random.default_rng(block_q), [300, 1, 0, 129, 77])
    p1, p2 = pool_mod.attention_pooling(q, k, lse.astype(np.float32), plan, block_q=block_q, block_k=64,
                                        pool_gqa=pool_gqa, per_sequence=False)
    r1 = reference.attention_pooling_1d(qf, kf, lay, block_k=64)
    if pool_gqa:
        r1, r2 = group_pooling_ref(r1, lay, 2, block_q)
    else:
        r2 = reference.attention_pooling_2d(qf, kf, lay, block_q=block_q, block_k=64)
    assert p2.shape == r2.shape == (5, 2 if pool_gqa else 4, -(-300 // block_q), 5)
    np.testing.assert_allclose(p1, r1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p2, r2, rtol=1e-5, atol=1e-7)
    reduce_vals = CTX["launches"][1][1]
    assert (reduce_vals["block_q"], reduce_vals["group"]) == (1, 1)
