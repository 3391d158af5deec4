"""``varblock.plan`` end to end on the CPU: family choice, host work list, mask tables, cache, schedule and the
binding's kernel values, with the device (arch, buffers) and the manifest stood in for. The values the binding
gives must meet the kernel family's own declared requirements and pack into its parameters."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from varblock import families
from varblock import layout as L
from varblock.abi import MASK_DOC, MASK_TOKEN
from varblock.dense_worklist import dense_worklist
from varblock.families.attention_fwd_mma import BINDING
from varblock.kernels import attention_fwd_mma as fwd_kernel
from varblock.plan import api as plan_api
from varblock.plan import core as plan_core
from varblock.plan import host as plan_host
from varblock.runtime.params import check_requires, pack_bytes
from varblock.runtime.tensors import DeviceArray

ARCH = "sm90"


class _FakeBuffer:
    """Stands in for runtime.memory.DeviceBuffer: keeps the host bytes, hands out distinct aligned addresses."""

    _next = 0x7F0000000000

    def __init__(self, ordinal: int, nbytes: int, stream=None, data=None):
        self.ordinal, self.nbytes, self.data = ordinal, int(nbytes), data
        self.ptr = _FakeBuffer._next
        _FakeBuffer._next += (max(self.nbytes, 16) + 255) // 256 * 256

    @classmethod
    def from_host(cls, ordinal, array):
        a = np.ascontiguousarray(array)
        return cls(ordinal, a.nbytes, data=a.copy())

    @classmethod
    def zeros(cls, ordinal, nbytes, stream=None):
        return cls(ordinal, nbytes, data=np.zeros(int(nbytes), np.uint8))


@pytest.fixture
def cpu_device(monkeypatch):
    """arch_for_device -> sm90, DeviceBuffer -> host stand-in, the attention_fwd families -> the portable one
    alone, whose manifest is the registry's own sm90 variants (as build_kernels would record them)."""
    entries = {}
    for v in fwd_kernel.variants(ARCH):
        entries[(v.key["dtype"], v.key["head_dim"])] = {**v.manifest_entry(), "dynamic_smem_bytes": 0}

    def variant(arch, key):
        if arch != ARCH:
            return None
        return next((e for (dt, d), e in entries.items() if d == key["head_dim"] and key.get("dtype", dt) == dt),
                    None)

    monkeypatch.setitem(families.FAMILIES, "attention_fwd", (BINDING,))  # only the family stood in here
    monkeypatch.setattr(BINDING, "variant", variant)
    monkeypatch.setattr(BINDING, "built_keys", lambda arch: [e["key"] for e in entries.values()])
    monkeypatch.setattr(plan_api, "arch_for_device", lambda ordinal: ARCH)
    monkeypatch.setattr(plan_host, "DeviceBuffer", _FakeBuffer)
    monkeypatch.setattr(plan_core, "DeviceBuffer", _FakeBuffer)
    plan_api.clear_cache()
    yield entries
    plan_api.clear_cache()


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _bind(p, dtype="bfloat16", scale=0.125):
    tq, tk = p.total_q, p.total_k

    def arr(name, shape, dt=dtype):
        st = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            st[i] = st[i + 1] * shape[i + 1]
        return DeviceArray(name, 0x7E0000000000, tuple(shape), tuple(st), dt, 0, None)

    arrays = {"q": arr("q", (tq, p.num_heads_q, p.head_dim)), "k": arr("k", (tk, p.num_heads_kv, p.head_dim)),
              "v": arr("v", (tk, p.num_heads_kv, p.head_dim)), "o": arr("o", (tq, p.num_heads_q, p.head_dim)),
              "lse": arr("lse", (p.num_heads_q, tq), "float32")}
    return BINDING.bind(p, arrays, {"softmax_scale": scale})


def _check_values_meet_the_kernel(p, entries, dtype="bfloat16"):
    e = entries[(dtype, p.head_dim)]
    values = _bind(p, dtype)
    assert check_requires(e["requires"], values) == []
    assert len(pack_bytes(e["params"], values)) == len(e["params"])
    return values


def test_dense_causal_plan(cpu_device):
    cu = _cu([1000, 3, 0, 300])
    p = varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=128, causal=True)
    assert (p.family, p.declined, p.arch, p.scheduler) == ("attention_fwd_mma", {}, ARCH, "single")
    assert (p.tile_m, p.tile_n) == fwd_kernel.tile_config(ARCH, 128)[:2]
    assert (p.window_left, p.window_right, p.mask_flags, p.num_sink_tokens) == (-1, 0, 0, 0)
    tiles, chunks = dense_worklist(cu, cu, num_tile_heads=8, pack_gqa=1, tile_m=p.tile_m, tile_n=p.tile_n,
                                   window_left=-1, window_right=0)
    assert sorted(map(tuple, p.worklist.tiles)) == sorted(map(tuple, tiles))
    assert np.array_equal(p.worklist.chunks, chunks) and p.num_ctas == p.num_tiles == len(tiles)
    assert np.array_equal(p.buffers["cu_seqlens_q"].data, cu)
    assert p.buffers["tile_counters"].nbytes == p.MAX_STREAMS * p.COUNTER_BYTES
    assert varblock.plan(cu.copy(), num_heads_q=8, num_heads_kv=2, head_dim=128, causal=True) is p
    values = _check_values_meet_the_kernel(p, cpu_device)
    assert values["tiles"] == p.buffers["tiles"].ptr and values["num_tiles_ptr"] == 0 and values["persistent"] == 0


def test_masks_reach_the_kernel_values(cpu_device):
    cu = _cu([300, 77])
    rng = np.random.default_rng(1)
    doc = rng.integers(0, 3, int(cu[-1])).astype(np.int32)
    p = varblock.plan(cu, num_heads_q=4, num_heads_kv=2, head_dim=64,
                      layout=L.document(cu, cu, doc_ids_q=doc, causal=True))
    assert p.mask_flags == MASK_DOC and np.array_equal(p.buffers["doc_q"].data, doc)
    v = _check_values_meet_the_kernel(p, cpu_device)
    assert v["doc_q"] == p.buffers["doc_q"].ptr and v["mask_flags"] == MASK_DOC
    m1d = rng.random((2, 2, 300, 5)) < 0.3
    p = varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=128,
                      layout=L.from_seer_1d(m1d, cu, cu, block_size=64, head_mode="per_kv_head"))
    assert p.mask_flags == MASK_TOKEN and p.pack_gqa == 4 and p.tok_head_div == 4 and p.tok_block_k == 64
    _check_values_meet_the_kernel(p, cpu_device)
    p = varblock.plan(cu, num_heads_q=4, num_heads_kv=4, head_dim=64,
                      layout=L.attention_sinks(cu, cu, num_sink_tokens=5, window_left=64, causal=True))
    assert p.num_sink_tokens == 5 and _bind(p)["num_sink_tokens"] == 5


def test_backend_and_family_errors(cpu_device):
    cu = _cu([100])
    forced = varblock.plan(cu, num_heads_q=2, head_dim=64, backend="attention_fwd_mma")
    assert forced.family == "attention_fwd_mma" and forced.declined == {}
    with pytest.raises(ValueError, match="unknown attention_fwd kernel family 'fa3'"):
        varblock.plan(cu, num_heads_q=2, head_dim=64, backend="fa3")
    with pytest.raises(ValueError, match="no attention_fwd kernel family can run this problem: attention_fwd_mma: "
                                         "head_dim: 80 is not supported"):
        varblock.plan(cu, num_heads_q=2, head_dim=80)
    with pytest.raises(TypeError, match="dtype: expected 'bfloat16' or 'float16'"):
        varblock.plan(cu, num_heads_q=2, head_dim=64, dtype="float32")


def test_a_faster_family_that_declines_is_recorded(cpu_device, monkeypatch):
    """With a preferred family that declines, auto falls back to the portable one and says why."""
    from varblock.families.base import AttentionFamily

    class Hopper(AttentionFamily):
        name, op = "attention_fwd_sm90", "attention_fwd"

        def supports(self, problem):
            return "needs fixed block sizes" if "variable_spans" in problem.features else "not built"

        def bind(self, plan, arrays, scalars):
            return {}

    monkeypatch.setitem(families.FAMILIES, "attention_fwd", (Hopper(), BINDING))
    cu = _cu([428])
    lay = L.from_flashinfer(np.ones((1, 2, 2), bool), np.array([[100, 328]]), np.array([[200, 228]]), cu, cu)
    p = varblock.plan(cu, num_heads_q=2, num_heads_kv=1, head_dim=64, layout=lay)
    assert p.family == "attention_fwd_mma" and p.declined == {"attention_fwd_sm90": "needs fixed block sizes"}
    with pytest.raises(ValueError, match="kernel family attention_fwd_sm90 cannot run this problem: needs fixed"):
        varblock.plan(cu, num_heads_q=2, num_heads_kv=1, head_dim=64, layout=lay, backend="attention_fwd_sm90")
    _check_values_meet_the_kernel(p, cpu_device)
