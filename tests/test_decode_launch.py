"""decode's kernel arguments on the CPU: for plans of every cache kind, the values ``ops.decode.launch_values``
computes satisfy the variant's requirements and pack into the parameter list the cubins were built with (the
same packer launch capture proves against the DSL's host code). Runs wherever decode cubins are built."""

from __future__ import annotations

import numpy as np
import pytest

from varblock.decode_plan.plan import DecodePlan, _tile_m
from varblock.decode_plan.worklist import build_worklist
from varblock.ops.decode import launch_values
from varblock.runtime.manifest import cubin_dir, read_arch_variants, read_manifest
from varblock.runtime.params import check_requires, grid_of, pack_bytes
from varblock.runtime.tensors import DeviceArray, compact_strides


def _entries():
    try:
        m = read_manifest(cubin_dir())
    except (FileNotFoundError, ValueError):
        return []
    return [e for arch in m["arches"] for e in read_arch_variants(m, arch) if e["family"] == "decode_fwd"]


ENTRIES = _entries()
pytestmark = pytest.mark.skipif(not ENTRIES, reason="no decode_fwd cubins built")


class _Buf:
    def __init__(self, ptr: int):
        self.ptr = ptr


def _arr(name, ptr, shape, dtype="bfloat16"):
    return DeviceArray(name, ptr, shape, compact_strides(shape), dtype, 0, None)


@pytest.mark.parametrize("paged,page_size", [(True, 1), (True, 16), (True, 128), (False, 1)])
def test_launch_values_pack(paged, page_size):
    rng = np.random.default_rng(page_size)
    B, hkv, g = 5, 4, 8
    kv = rng.integers(5, 5000, B)
    checked = 0
    for e in ENTRIES:
        d, tm = e["key"]["head_dim"], e["key"]["tile_m"]
        # 64-row tiles need more than 16 (token, head) rows: 3..8 new tokens x group 8; 16-row tiles: 2 tokens
        cu_q = np.concatenate([[0], np.cumsum(rng.integers(3, 9, B))]) if tm == 64 else np.arange(B + 1) * 2
        assert _tile_m(cu_q, g) == tm
        checked += 1
        wl = build_worklist(cu_q, kv, num_heads_q=hkv * g, num_heads_kv=hkv, tile_m=tm,
                            tile_n=e["extra"]["tile_n"], layout=None, num_sms=132, ctas_per_sm=2)
        p = DecodePlan(0, hkv * g, hkv, d, B, int(cu_q[-1]), paged, page_size, True, tm, e["extra"]["tile_n"], wl,
                       kv)
        base = 0x7F0000000000
        for i, n in enumerate(("cu_seqlens_q", "items", "chunks", "part_o", "part_lse", "counters")):
            p.buffers[n] = _Buf(base + (i << 32))
        if paged:
            p.page_table_ptr, p.pt_stride = base + (9 << 32), 77
            cache = (1000, page_size, hkv, d)
        else:
            p.buffers["cu_seqlens_k"] = _Buf(base + (10 << 32))
            cache = (int(kv.sum()), hkv, d)
        t = int(cu_q[-1])
        qa = _arr("q", base + (11 << 32), (t, hkv * g, d))
        ka, va = _arr("k_cache", base + (12 << 32), cache), _arr("v_cache", base + (13 << 32), cache)
        oa = _arr("o", base + (14 << 32), (t, hkv * g, d))
        vals = launch_values(p, qa, ka, va, oa, _arr("lse", base + (15 << 32), (hkv * g, t), "float32"), 0.125)
        assert check_requires(e["requires"], vals) == []
        assert len(pack_bytes(e["params"], vals)) == len(e["params"])
        assert grid_of(e["grid"], vals) == (wl.num_items, 1, 1)
        assert vals["k_stride_tok"] == hkv * d and vals["pt_stride"] == (77 if paged else 0)
        assert vals["k_stride_page"] == (page_size * hkv * d if paged else 0)
    assert checked == len(ENTRIES)


def test_prepare_values_pack():
    from varblock.decode_plan.device import prepare_values

    try:
        m = read_manifest(cubin_dir())
    except (FileNotFoundError, ValueError):
        pytest.skip("no cubins")
    preps = [e for a in m["arches"] for e in read_arch_variants(m, a) if e["family"] == "decode_prepare"]
    if not preps:
        pytest.skip("no decode_prepare cubins built")
    bi = _arr("block_indices", 0x7F5000000000, (3, 8, 16), "int32")
    for e in preps:
        for blocks in (None, bi):
            vals = prepare_values(0x7F0000000000, 0x7F1000000000, True, blocks, None, 0x7F2000000000,
                                  0x7F3000000000, 0x7F4000000000, num_groups=24, num_heads_kv=8, group_size=8,
                                  tile_m=16, tile_n=64, row_tiles=1, splits=11, chunk_cap=512, block_size=64,
                                  topk=16 if blocks is not None else 0)
            assert check_requires(e["requires"], vals) == []
            assert len(pack_bytes(e["params"], vals)) == len(e["params"])
            assert grid_of(e["grid"], vals) == (-(-24 * 512 // 128), 1, 1)
