"""``varblock.attention_pooling`` on the CPU with the device simulated: arrays live in a fake address space, and each
``attention_pool`` launch checks that its values name exactly the variant's parameters (registry) and then runs the
NumPy model of its kernel (tests/test_pooling_model.py) on that memory. So the op's wiring — the forward binding's
values reused for the qk kernel, pool strides and zeroing, block sizes, the reduce launches, group pooling,
per-sequence views — is checked against the float64 reference here; the kernels on the GPU
(tests/test_pooling_gpu.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests._pooling_ref import group_pooling_ref
from tests.test_device_layout_api import FakeMemory
from tests.test_pooling_model import qk_model, reduce_model
from varblock import layout as L
from varblock import reference
from varblock.families.attention_pool import BINDING_MMA
from varblock.kernels import attention_pool
from varblock.ops import attention_pooling as pool_mod
from varblock.plan.core import Plan
from varblock.runtime.tensors import DeviceArray
from varblock.worklist import build_worklist

MEM = FakeMemory()
CTX: dict[str, Any] = {}


def _view(a: np.ndarray, name: str) -> DeviceArray:
    ptr = MEM.put(a)
    return DeviceArray(name, ptr, tuple(a.shape), tuple(s // a.itemsize for s in a.strides), str(a.dtype), 0, a)


def _empty(like: Any, name: str, shape: tuple[int, ...], dtype: str, ordinal: int, st: Any):
    n = int(np.prod(shape))
    ptr = MEM.alloc(4 * n)
    arr = MEM.blocks[ptr][: 4 * n].view(np.float32).reshape(shape)  # a view: later writes show
    arr[...] = np.nan  # poison: every element must be written
    strides = tuple(s // 4 for s in arr.strides) if n else tuple(0 for _ in shape)
    return arr, DeviceArray(name, ptr, tuple(shape), strides, dtype, 0, arr)


def _zero(a: DeviceArray, st: Any) -> None:
    MEM.write(a.ptr, np.zeros(int(np.prod(a.shape)), np.float32))


def _launch(entry: dict, ordinal: int, stream: Any, values: dict) -> None:
    names = [p["name"] for p in entry["params"]]
    missing = [n for n in names if n not in values]
    assert not missing, f"{entry['name']}: no value for {missing}"
    v = {n: values[n] for n in names}
    plan, lay = CTX["plan"], CTX["layout"]
    if entry["key"]["stage"] == "qk":
        assert (v["persistent"], v["num_ctas"], v["tiles"]) == (0, plan.num_tiles, plan.ptr("tiles"))
        assert v["pool_stride_tok"] == CTX["nb"] and v["pool_stride_head"] == CTX["total_q"] * CTX["nb"]
        q, k, lse = CTX["q"], CTX["k"], MEM.read(v["lse"], np.float32, CTX["q"].shape[1] * CTX["total_q"])
        lse = lse.reshape(CTX["q"].shape[1], CTX["total_q"]).astype(np.float64)
        t = MEM.read(v["tiles"], np.int32, 8 * plan.num_tiles).reshape(-1, 8)
        c = plan.worklist.chunks
        pool = qk_model(q, k, lse, lay, t, c, v["pack_gqa"], v["pool_block_k"], CTX["nb"],
                        v["softmax_scale_log2"] / np.log2(np.e))
        old = MEM.read(v["pool"], np.float32, pool.size).reshape(pool.shape)
        assert not old.any(), "the pool map was not zeroed before the qk kernel"
        MEM.write(v["pool"], pool.astype(np.float32))
    else:
        hq, T, nb = q_shape = (CTX["q"].shape[1], CTX["total_q"], CTX["nb"])
        pool = MEM.read(v["pool"], np.float32, hq * T * nb).reshape(q_shape).astype(np.float64)
        cu = lay.cu_seqlens_q
        two_d, one_d = reduce_model(pool, cu, lay.cu_seqlens_k, v["group"], v["block_q"], v["block_k"], v["mb"])
        out = two_d if entry["key"]["mode"] == 0 else one_d
        assert out.size == v["num_items"] * v["nbo"]
        MEM.write(v["out"], out.astype(np.float32))


@pytest.fixture
def fake(monkeypatch):
    entries = {tuple(sorted(x.key.items())): x.manifest_entry() for x in attention_pool.variants("sm90")}
    monkeypatch.setattr(pool_mod, "as_device_array", lambda a, name: _view(np.asarray(a), name))
    monkeypatch.setattr(pool_mod, "check_aligned", lambda a, n: None)
    monkeypatch.setattr(pool_mod.arrays, "empty_array", _empty)
    monkeypatch.setattr(pool_mod, "_zero", _zero)
    monkeypatch.setattr(pool_mod, "_prepare", lambda plan, e, o, values, pointers: lambda st, ptrs: _launch(
        e, o, st, {**values, **dict(zip(pointers, ptrs))}))
    monkeypatch.setattr(pool_mod, "variant_for", lambda fam, o, key: entries[tuple(sorted(key.items()))])
    monkeypatch.setattr(pool_mod, "stream_for", lambda s, o, like=None: SimpleNamespace(handle=0))
    monkeypatch.setattr(pool_mod, "choose_family", lambda problem, backend: (BINDING_MMA, {}))  # the portable qk
    CTX.clear()


def _host_plan(lay, hq, hkv, d, tile_m, tile_n, g) -> Plan:
    wl = build_worklist(lay.rows(), lay.cu_seqlens_q, lay.cu_seqlens_k, num_heads_q=hq, num_heads_kv=hkv,
                        head_mode=lay.head_mode, tile_m=tile_m, tile_n=tile_n, pack_gqa=g,
                        num_layout_heads=lay.num_heads, longest_first=True)
    bufs = {n: SimpleNamespace(ptr=MEM.put(np.ascontiguousarray(a)))
            for n, a in (("cu_seqlens_q", lay.cu_seqlens_q), ("cu_seqlens_k", lay.cu_seqlens_k),
                         ("tiles", wl.tiles), ("chunks", wl.chunks))}
    lo, hi = lay.mask.band
    return Plan(cu_seqlens_q=lay.cu_seqlens_q, cu_seqlens_k=lay.cu_seqlens_k, num_heads_q=hq, num_heads_kv=hkv,
                head_dim=d, layout=lay, device_id=0, arch="sm90", family="attention_fwd_mma", tile_m=tile_m,
                tile_n=tile_n, worklist=wl, window_left=-1 if lo is None else -lo,
                window_right=-1 if hi is None else hi, mask_flags=0, tok_block_k=1, tok_head_div=1, buffers=bufs,
                scheduler="single", num_ctas=wl.num_tiles)


@pytest.mark.parametrize("seed", range(6))
def test_op_wiring_against_reference(fake, seed):
    rng = np.random.default_rng(seed)
    lens = [int(x) for x in rng.integers(0, 300, size=3)]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    hkv, group = 2, int(rng.choice([1, 2]))
    hq, d = hkv * group, 64
    mode = "per_kv_head" if group > 1 else "per_q_head"
    lay = L.random_blocks(cu, cu, density=0.5, num_heads=hkv, head_mode=mode, causal=bool(seed % 2), block_q=64,
                          block_k=64, seed=seed)
    q = rng.standard_normal((int(cu[-1]), hq, d)).astype(np.float16)
    k = rng.standard_normal((int(cu[-1]), hkv, d)).astype(np.float16)
    qf, kf = q.astype(np.float64), k.astype(np.float64)
    _, lse = reference.attention_forward(qf, kf, kf, lay)
    g = group if (group > 1 and seed % 3 == 0) else 1
    plan = _host_plan(lay, hq, hkv, d, 128, 64, g)
    nb = int(np.max(-(-np.asarray(lens) // 64), initial=0))
    CTX.update(plan=plan, layout=lay, q=qf, k=kf, total_q=int(cu[-1]), nb=nb)
    pool_gqa = group > 1 and seed % 2 == 0
    p1, p2 = pool_mod.attention_pooling(q, k, lse.astype(np.float32), plan, pool_gqa=pool_gqa)
    r1 = reference.attention_pooling_1d(qf, kf, lay)
    r2 = reference.attention_pooling_2d(qf, kf, lay)
    if pool_gqa:
        r1 = r1.reshape(hkv, group, *r1.shape[1:]).max(axis=1)
        r2 = reduce_model(reference.attention_pooling_1d(qf, kf, lay), cu, cu, group, 64, 64, p2.shape[2])[0]
    assert isinstance(p1, list) and len(p1) == 3
    for b, part in enumerate(p1):
        assert part.shape == (r1.shape[0], lens[b], -(-lens[b] // 64))
        np.testing.assert_allclose(part, r1[:, cu[b]:cu[b + 1], :part.shape[2]], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p2, r2, rtol=1e-5, atol=1e-7)
    flat, _ = pool_mod.attention_pooling(q, k, lse.astype(np.float32), plan, pool_gqa=pool_gqa,
                                         per_sequence=False)
    np.testing.assert_allclose(flat, r1, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("hq,hkv,mode", [(8, 1, "broadcast"), (8, 2, "per_kv_head")])
def test_group_pooling_gqa_layouts(fake, hq, hkv, mode):
    """The GPU test's failing shapes (Hq 8 over Hkv 1 broadcast / Hkv 2 per-KV-head, group pooling, odd and empty
    lengths) against the shared group reference (tests/_pooling_ref.py) that the GPU test uses."""
    lens = [1, 3, 113, 0, 260, 200, 64]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    lay = L.random_blocks(cu, cu, density=0.4, num_heads=1 if mode == "broadcast" else hkv, head_mode=mode,
                          causal=True, block_q=64, block_k=64, seed=hq + hkv)
    rng = np.random.default_rng(hq + hkv)
    q = rng.standard_normal((int(cu[-1]), hq, 64)).astype(np.float16)
    k = rng.standard_normal((int(cu[-1]), hkv, 64)).astype(np.float16)
    qf, kf = q.astype(np.float64), k.astype(np.float64)
    _, lse = reference.attention_forward(qf, kf, kf, lay)
    plan = _host_plan(lay, hq, hkv, 64, 128, 64, hq // hkv)
    CTX.update(plan=plan, layout=lay, q=qf, k=kf, total_q=int(cu[-1]), nb=5)
    p1, p2 = pool_mod.attention_pooling(q, k, lse.astype(np.float32), plan, pool_gqa=True, per_sequence=False)
    r1, r2 = group_pooling_ref(reference.attention_pooling_1d(qf, kf, lay), lay, hq // hkv, 64)
    assert p1.shape == r1.shape == (hkv, int(cu[-1]), 5) and p2.shape == r2.shape == (len(lens), hkv, 5, 5)
    assert r2.sum() > 0 and np.allclose(r2.sum(axis=3)[r2.sum(axis=3) > 0], 1.0)
    np.testing.assert_allclose(p1, r1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p2, r2, rtol=1e-5, atol=1e-7)


def test_op_argument_errors(fake):
    cu = np.array([0, 100], np.int32)
    lay = L.causal(cu, cu, block_q=64, block_k=64)
    plan = _host_plan(lay, 2, 2, 64, 128, 64, 1)
    q = np.zeros((100, 2, 64), np.float16)
    lse = np.zeros((2, 100), np.float32)
    CTX.update(plan=plan, layout=lay, q=q, k=q, total_q=100, nb=2)
    with pytest.raises(ValueError, match="head_dim"):
        pool_mod.attention_pooling(q[:, :, :32], q, lse, plan)
    with pytest.raises(ValueError, match="lse"):
        pool_mod.attention_pooling(q, q, lse[:1], plan)
    with pytest.raises(TypeError, match="k: dtype float32 is not supported"):
        pool_mod.attention_pooling(q, q.astype(np.float32), lse, plan)
    with pytest.raises(ValueError, match="softmax_scale"):
        pool_mod.attention_pooling(q, q, lse, plan, softmax_scale=float("inf"))
    big = _host_plan(lay, 2, 2, 64, 256, 64, 1)
    big.on_device = True  # a device plan of a larger-tile family cannot be re-planned on the host
    with pytest.raises(ValueError, match="exceed the pooling kernel's"):
        pool_mod.attention_pooling(q, q, lse, big)


def test_larger_tile_plan_is_replanned_for_the_portable_tiles(fake, monkeypatch):
    """A host plan of another forward family (e.g. the sm90 kernel's 128x128 tiles) is planned again, once, for
    the portable family's tiles from the same layout; the maps then come from that plan."""
    cu = np.array([0, 100], np.int32)
    lay = L.causal(cu, cu, block_q=64, block_k=64)
    big = _host_plan(lay, 2, 2, 64, 256, 64, 1)
    small = _host_plan(lay, 2, 2, 64, 128, 64, 1)
    calls = []

    def fake_plan(cu_q, cu_k, **kw):
        calls.append(kw)
        return small

    monkeypatch.setattr(pool_mod, "make_plan", fake_plan)
    q = np.zeros((100, 2, 64), np.float16)
    lse = np.zeros((2, 100), np.float32)
    CTX.update(plan=small, layout=lay, q=q, k=q, total_q=100, nb=2)
    pool_mod.attention_pooling(q, q, lse, big)
    pool_mod.attention_pooling(q, q, lse, big)
    assert len(calls) == 1 and calls[0]["backend"] == "attention_fwd_mma" and calls[0]["layout"] is lay
