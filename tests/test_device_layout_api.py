"""``varblock.plan_device`` / ``device_layout.rebuild`` on the CPU, with the device simulated: buffers are byte
arrays in a fake address space (every access bounds-checked), and each ``layout_device`` launch runs the NumPy model
of its kernel on that memory after checking that the values name exactly the variant's parameters (from the
registry). So the runtime's wiring — buffer sizes, pointers, scalars, launch order, read-back — is checked here, and
the tables it reads back equal the HOST builders'; the kernels themselves are checked on the GPU
(tests/test_device_layout_gpu.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from tests.test_device_layout_model import _host_tables, _random_case
from varblock.device_layout import builder as builder_mod
from varblock.device_layout import model, model_seer
from varblock.device_layout import plan as plan_mod
from varblock.device_layout import sources as sources_mod
from varblock.device_layout.codes import STATUS_WIDTH
from varblock.kernels import layout_device
from varblock.plan import core as plan_core
from varblock.runtime.tensors import DeviceArray


class FakeMemory:
    """A flat fake device address space: pointer -> bytearray, reads and writes bounds-checked."""

    def __init__(self):
        self.blocks: dict[int, np.ndarray] = {}
        self.next = 1 << 20

    def alloc(self, nbytes: int) -> int:
        ptr = self.next
        self.blocks[ptr] = np.zeros(max(int(nbytes), 0), np.uint8)
        self.next += ((max(int(nbytes), 16) + 255) // 256) * 256 + 256
        return ptr

    def put(self, a: np.ndarray) -> int:
        ptr = self.alloc(a.nbytes)
        self.blocks[ptr][:] = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        return ptr

    def _at(self, ptr: int) -> np.ndarray:
        """The bytes from ``ptr`` to the end of its allocation (pointers into a buffer are allowed)."""
        base = max((b for b in self.blocks if b <= ptr), default=None)
        assert base is not None and ptr - base <= self.blocks[base].shape[0], f"wild pointer {ptr:#x}"
        return self.blocks[base][ptr - base:]

    def read(self, ptr: int, dtype: Any, count: int) -> np.ndarray:
        blk = self._at(ptr)
        n = int(count) * np.dtype(dtype).itemsize
        assert n <= blk.shape[0], f"read of {n} bytes from a {blk.shape[0]}-byte buffer"
        return blk[:n].view(dtype).copy()

    def write(self, ptr: int, a: np.ndarray) -> None:
        raw = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        blk = self._at(ptr)
        assert raw.shape[0] <= blk.shape[0], f"write of {raw.shape[0]} bytes into a {blk.shape[0]}-byte buffer"
        blk[: raw.shape[0]] = raw


MEM = FakeMemory()


class FakeBuffer:
    def __init__(self, ordinal: int, nbytes: int, stream: Any = None):
        self.ordinal, self.nbytes = ordinal, int(nbytes)
        self.ptr = MEM.alloc(self.nbytes)

    @classmethod
    def zeros(cls, ordinal: int, nbytes: int, stream: Any = None) -> FakeBuffer:
        return cls(ordinal, nbytes, stream)

    def to_host(self, dtype: Any, count: int) -> np.ndarray:
        return MEM.read(self.ptr, dtype, count)


class FakeStream:
    handle = 0

    def record(self) -> None:
        return None


class FakeBinding:
    name = "attention_fwd_mma"

    def __init__(self, tile_m: int, tile_n: int):
        self.tiles = (tile_m, tile_n)

    def tile_config(self, arch: str, head_dim: int) -> tuple[int, int]:
        return self.tiles


def _view(a: Any, name: str) -> DeviceArray:
    if a is None:  # as as_device_array
        raise TypeError(f"{name}: expected a CUDA device array, got None")
    a = np.ascontiguousarray(a)
    dt = "bool" if a.dtype == np.bool_ else str(a.dtype)
    return DeviceArray(name, MEM.put(a), tuple(a.shape), tuple(s // a.itemsize for s in a.strides), dt, 0, a)


def _launch(entry: dict, ordinal: int, stream: Any, values: dict) -> None:
    """Run the model of one kernel on fake memory."""
    names = [p["name"] for p in entry["params"]]
    missing = [n for n in names if n not in values]
    assert not missing, f"{entry['name']}: no value for {missing}"
    v = {n: values[n] for n in names}
    stage = entry["key"]["stage"]
    g = LAUNCH_GEO[0]
    B, H, MB, NB = v["batch"], v["num_layout_heads"], v.get("mb", g.mb), v["nb"]
    assert (B, H, MB, NB, v.get("block_q", g.block_q), v.get("block_k", g.block_k)) == (
        g.batch, g.num_layout_heads, g.mb, g.nb, g.block_q, g.block_k)
    if "cu_seqlens_q" in v:
        cq = MEM.read(v["cu_seqlens_q"], np.int32, B + 1).astype(np.int64)
        ck = MEM.read(v["cu_seqlens_k"], np.int32, B + 1).astype(np.int64)
    LAUNCHES.append(stage)
    if stage == "topk":
        K, bm = v["k"], v["mask_batch"]
        idx = MEM.read(v["indices"], np.int32, bm * H * MB * K).reshape(bm, H, MB, K)
        cnt = MEM.read(v["counts"], np.int32, bm * H * MB).reshape(bm, H, MB) if v["has_counts"] else None
        assert v["num_items"] == bm * H * MB
        rules = model.ListRules(v["value"], bool(v["clear"]), bool(v["strict"]), bool(v["pad_ok"]), v["slot_offset"])
        prior = None if v["clear"] else MEM.read(v["kept"], np.uint8, bm * H * MB * NB).reshape(bm, H, MB, NB)
        kept, first = model.topk_cells(idx, cnt, cq, ck, g, rules, prior)
        MEM.write(v["kept"], kept)
        err = np.full(bm * H * MB, -1, np.int32)
        if first >= 0:
            err[(first - v["slot_offset"]) // K] = first
        MEM.write(v["topk_err"], err)
    elif stage == "pack":
        bm, T = v["mask_batch"], v["q_tokens"]
        assert v["num_items"] == H * B * T
        tm = MEM.read(v["mask"], np.uint8, bm * H * T * NB).reshape(bm, H, T, NB)
        MEM.write(v["packed"], model_seer.pack_token_mask(tm, cq, ck, g))
    elif stage == "cells" and entry["key"]["mask_dtype"] == "token":
        bm, T = v["mask_batch"], v["q_tokens"]
        assert v["num_groups"] == model.num_groups(H * B * MB)  # rows only: the cols kernel counts the columns
        tm = MEM.read(v["mask"], np.uint8, bm * H * T * NB).reshape(bm, H, T, NB)
        geo = dataclasses.replace(g, window_left=v["window_left"], window_right=v["window_right"])
        _check_tiling(v, g)
        c = model_seer.token_cells(tm, cq, ck, geo)
        for name in ("info", "row_counts", "row_part"):
            MEM.write(v[name], getattr(c, name))
    elif stage == "cols":
        assert v["num_groups"] == model.num_groups(H * B * NB)
        info = MEM.read(v["info"], np.int32, H * B * MB * NB)
        col_counts, col_part = model.count_columns(info, ck, g)
        MEM.write(v["col_counts"], col_counts)
        MEM.write(v["col_part"], col_part)
    elif stage == "cells":
        bm = v["mask_batch"]
        dt = {"uint8": np.uint8, "int32": np.int32}[entry["key"]["mask_dtype"]]
        raw = MEM.read(v["mask"], dt, bm * H * MB * NB).reshape(bm, H, MB, NB)
        mask = raw.astype(bool) if v["codes"] == 0 else raw
        geo = dataclasses.replace(g, window_left=v["window_left"], window_right=v["window_right"])
        assert v["num_groups"] == model.num_groups(H * B * MB) + model.num_groups(H * B * NB)
        _check_tiling(v, g)
        c = model.mask_cells(mask, cq, ck, geo)
        for name in ("info", "row_counts", "col_counts", "row_part", "col_part"):
            MEM.write(v[name], getattr(c, name))
    elif stage == "scan":
        rg, cg = model.num_groups(H * B * MB), model.num_groups(H * B * NB)
        cells = model.Cells(info=np.zeros(0, np.int32), row_counts=np.zeros((0, 4), np.int32),
                            col_counts=np.zeros((0, 2), np.int32),
                            row_part=MEM.read(v["row_part"], np.int32, 5 * rg).reshape(5, rg),
                            col_part=MEM.read(v["col_part"], np.int32, 2 * cg).reshape(2, cg))
        geo = dataclasses.replace(g, max_entries=v["max_entries"])
        assert (v["max_tiles"], v["max_chunks"], v["max_q_tokens"]) == (g.max_tiles, g.max_chunks, g.max_q_tokens)
        te = MEM.read(v["topk_err"], np.int32, v["topk_rows"]) if v["topk_rows"] else np.zeros(0, np.int32)
        first = int(te[te >= 0].min()) if (te >= 0).any() else -1
        sc = model.scan(cells, cq, ck, geo, first)
        MEM.write(v["row_gp"], sc.row_gp.astype(np.int32))
        MEM.write(v["col_gp"], sc.col_gp.astype(np.int32))
        MEM.write(v["status"], sc.status)
        MEM.write(v["cu_copy_q"], cq.astype(np.int32))
        MEM.write(v["cu_copy_k"], ck.astype(np.int32))
    else:
        rows, cols = H * B * MB, H * B * NB
        rg, cg = model.num_groups(rows), model.num_groups(cols)
        assert v["num_groups"] == rg + cg
        cells = model.Cells(info=MEM.read(v["info"], np.int32, rows * NB),
                            row_counts=MEM.read(v["row_counts"], np.int32, 4 * rows).reshape(rows, 4),
                            col_counts=MEM.read(v["col_counts"], np.int32, 2 * cols).reshape(cols, 2),
                            row_part=np.zeros((5, rg), np.int32), col_part=np.zeros((2, cg), np.int32))
        geo = dataclasses.replace(g, max_entries=v["max_entries"])
        _check_tiling(v, g)
        assert (v["max_tiles"], v["max_chunks"], v["head_mul"]) == (g.max_tiles, g.max_chunks, _head_mul(g))
        sc = model.Scan(MEM.read(v["row_gp"], np.int32, 4 * rg).reshape(4, rg).astype(np.int64),
                        MEM.read(v["col_gp"], np.int32, 2 * cg).reshape(2, cg).astype(np.int64),
                        MEM.read(v["status"], np.int32, STATUS_WIDTH))
        out = model.fill(cells, sc, cq, ck, geo)
        for name in ("rows", "entries", "tiles", "chunks", "cols", "col_entries"):
            MEM.write(v[name], getattr(out, name))


def _check_tiling(v: dict, g: model.Geometry) -> None:
    assert (v["tile_n"], v["tokens_per_tile"], v["tile_heads"]) == (g.tile_n, g.tokens_per_tile, g.tile_heads)


def _head_mul(g: model.Geometry) -> int:
    """Tile head = layout head * head_mul + tile-head index (as the fill kernel takes it)."""
    if g.pack_gqa > 1:
        return 0 if g.head_mode == "broadcast" else 1
    return {"per_q_head": 1, "per_kv_head": g.num_heads_q // g.num_heads_kv, "broadcast": 0}[g.head_mode]


LAUNCHES: list[str] = []
LAUNCH_GEO: list[model.Geometry] = []


@pytest.fixture
def fake_device(monkeypatch):
    entries = {tuple(sorted(var.key.items())): var.manifest_entry() for var in layout_device.variants("sm90")}
    binding = FakeBinding(128, 64)
    monkeypatch.setattr(builder_mod, "DeviceBuffer", FakeBuffer)
    monkeypatch.setattr(plan_core, "DeviceBuffer", FakeBuffer)
    monkeypatch.setattr(builder_mod, "launch_variant", _launch)
    monkeypatch.setattr(builder_mod, "variant_for", lambda fam, ordinal, key: entries[tuple(sorted(key.items()))])
    monkeypatch.setattr(sources_mod, "device_view", _view)
    monkeypatch.setattr(plan_mod, "device_seqlens", lambda q, k: (_view(q, "cu_seqlens_q"), _view(k, "cu_seqlens_k")))
    monkeypatch.setattr(plan_mod, "stream_for", lambda stream, ordinal, like=None: FakeStream())
    monkeypatch.setattr(plan_mod, "arch_for_device", lambda ordinal: "sm90")
    monkeypatch.setattr(plan_mod.families, "choose", lambda op, problem, backend: (binding, {}))
    monkeypatch.setattr(plan_mod, "choose_schedule", lambda p, b, s: setattr(p, "scheduler", "persistent"))
    LAUNCHES.clear()
    LAUNCH_GEO.clear()
    return binding


def _plan(mask, cu_q, cu_k, geo, **kw):
    LAUNCH_GEO[:] = [geo]
    return plan_mod.plan_device(mask=mask, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, num_heads_q=geo.num_heads_q,
                                num_heads_kv=geo.num_heads_kv, head_dim=128, block_q=geo.block_q, block_k=geo.block_k,
                                head_mode=geo.head_mode, window=(geo.window_left, geo.window_right),
                                pack_gqa=geo.pack_gqa > 1, **kw)


@pytest.mark.parametrize("seed", range(25))
def test_plan_device_tables_equal_host_builders(fake_device, seed):
    rng = np.random.default_rng(1000 + seed)
    mask, cu_q, cu_k, geo = _random_case(rng)
    geo = dataclasses.replace(geo, tile_m=128, tile_n=64, max_entries=geo.batch * int(np.prod(mask.shape[1:])))
    if geo.pack_gqa > 128:
        pytest.skip("group larger than the tile")
    p = _plan(mask, cu_q, cu_k, geo)
    assert LAUNCHES == ["cells", "scan", "fill"]
    assert plan_mod.geometry(p) == geo
    got = plan_mod.tables(p)
    want = model.build_from_mask(mask, cu_q, cu_k, geo)
    for name in ("status", "rows", "entries", "tiles", "chunks", "cols", "col_entries"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    if want.error == 0 and (mask.dtype == np.bool_ or mask.shape[0] == geo.batch):
        host = _host_tables(mask, cu_q, cu_k, geo)
        for name, h in zip(("rows", "entries", "tiles", "chunks", "cols", "col_entries"), host):
            if h.size:
                np.testing.assert_array_equal(getattr(got, name), h, err_msg=name)
    assert p.on_device and p.ptr("status") == p.buffers["status"].ptr and p.max_tiles == max(geo.max_tiles, 1)
    n_cu = geo.batch + 1  # the scan kernel copied cu_seqlens into the plan (the attention kernels read the copies)
    assert np.array_equal(MEM.read(p.ptr("cu_seqlens_q"), np.int32, n_cu), cu_q)
    assert np.array_equal(MEM.read(p.ptr("cu_seqlens_k"), np.int32, n_cu), cu_k)
    assert p.pack_gqa == geo.pack_gqa and (p.window_left, p.window_right) == (geo.window_left, geo.window_right)


def test_rebuild_topk_and_status(fake_device):
    cu = np.array([0, 200, 270], np.int32)
    geo = model.Geometry(batch=2, mask_batch=2, num_layout_heads=2, mb=4, nb=4, block_q=64, block_k=64, tile_m=128,
                         tile_n=64, num_heads_q=2, num_heads_kv=2, head_mode="per_q_head", pack_gqa=1,
                         max_entries=3)
    mask = np.zeros((2, 2, 4, 4), bool)
    mask[0, 0, :, 0] = True
    mask[1, 1, 1, :2] = True
    p = _plan(mask, cu, cu, geo, max_kept_blocks=3)
    st = plan_mod.status(p)
    assert (st["ok"], st["error"], st["detail"]) == (False, "capacity", 6)
    with pytest.raises(ValueError, match="6 kept blocks exceed max_kept_blocks"):
        plan_mod.check(p)
    mask2 = np.zeros_like(mask)
    mask2[0, 1, 2, 1] = True
    LAUNCHES.clear()
    plan_mod.rebuild(p, mask=mask2, cu_seqlens_q=cu)
    assert LAUNCHES == ["cells", "scan", "fill"] and plan_mod.status(p)["ok"]
    np.testing.assert_array_equal(plan_mod.tables(p).entries, [[64, 64]])
    with pytest.raises(ValueError, match="expected a cell grid"):
        plan_mod.rebuild(p, mask=mask2[:, :, :3], cu_seqlens_q=cu)
    with pytest.raises(ValueError, match="entries like the plan's"):
        plan_mod.rebuild(p, mask=mask2, cu_seqlens_q=cu[:2])
    # top-k source: K = 2 slots, counts
    idx = np.zeros((2, 2, 4, 2), np.int32)
    idx[..., 1] = 1
    cnt = np.full((2, 2, 4), 2, np.int32)
    cnt[1, 0, 0] = 0
    geo_t = dataclasses.replace(geo, max_entries=64)
    LAUNCH_GEO[:] = [geo_t]
    LAUNCHES.clear()
    pt = plan_mod.plan_device(topk_indices=idx, topk_counts=cnt, cu_seqlens_q=cu, num_heads_q=2, head_dim=128,
                              block_q=64, block_k=64, num_key_blocks=4)
    assert LAUNCHES == ["topk", "cells", "scan", "fill"]
    got = plan_mod.tables(pt)
    want = model.build_from_topk(idx, cnt, cu, cu, geo_t)
    for name in ("status", "rows", "entries", "tiles", "chunks", "cols", "col_entries"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    with pytest.raises(ValueError, match="index slots per row"):
        plan_mod.rebuild(pt, topk_indices=np.zeros((2, 2, 4, 3), np.int32), cu_seqlens_q=cu)
    with pytest.raises(ValueError, match="made from a mask"):  # a mask plan has no top-k buffers
        plan_mod.rebuild(p, topk_indices=np.zeros((2, 2, 4, 4), np.int32), cu_seqlens_q=cu)


def test_bad_arguments(fake_device):
    cu = np.array([0, 100], np.int32)
    m = np.ones((1, 2, 1, 1), bool)
    kw = dict(cu_seqlens_q=cu, num_heads_q=2, head_dim=128)
    LAUNCH_GEO[:] = [model.Geometry(1, 1, 2, 1, 1, 128, 128, 128, 64, 2, 2, "per_q_head", 1, max_entries=2)]
    with pytest.raises(TypeError, match="exactly one of mask=, topk_indices=, fa4=, flex="):
        plan_mod.plan_device(**kw)
    with pytest.raises(TypeError, match="mask: expected a bool, int8, uint8 or int32"):
        plan_mod.plan_device(mask=m.astype(np.float32), **kw)
    with pytest.raises(ValueError, match="mask: expected a 4-D array"):
        plan_mod.plan_device(mask=m[0], **kw)
    with pytest.raises(ValueError, match="mask: 3 heads match neither"):
        plan_mod.plan_device(mask=np.ones((1, 3, 1, 1), bool), **kw)
    with pytest.raises(ValueError, match="block_q"):
        plan_mod.plan_device(mask=m, block_q=24, **kw)
    with pytest.raises(TypeError, match="topk_indices: expected int32"):
        plan_mod.plan_device(topk_indices=np.zeros((1, 2, 1, 1), np.int64), **kw)
    with pytest.raises(ValueError, match="topk_counts: expected shape"):
        plan_mod.plan_device(topk_indices=np.zeros((1, 2, 1, 1), np.int32), topk_counts=np.zeros((1, 2, 2), np.int32),
                             **kw)
    with pytest.raises(ValueError, match="max_kept_blocks"):
        plan_mod.plan_device(mask=m, max_kept_blocks=-1, **kw)
    with pytest.raises(ValueError, match="pack_gqa"):
        plan_mod.plan_device(mask=m, pack_gqa=True, **kw)
    with pytest.raises(TypeError, match="plan made by varblock.plan_device"):
        plan_mod.status(object())


def test_fa4_and_flex_sources(fake_device):
    cu = np.array([0, 200, 270], np.int32)
    B, H, MB, W = 2, 2, 4, 4
    pc, fc = np.zeros((B, H, MB), np.int32), np.zeros((B, H, MB), np.int32)
    pi, fi = np.zeros((B, H, MB, W), np.int32), np.zeros((B, H, MB, W), np.int32)
    pc[0, 0, 1], pi[0, 0, 1, :2] = 2, [0, 2]
    fc[0, 0, 1], fi[0, 0, 1, 0] = 1, 1
    pc[1, 1, 0], pi[1, 1, 0, 0] = 1, 1
    geo = model.Geometry(batch=B, mask_batch=B, num_layout_heads=H, mb=MB, nb=W, block_q=64, block_k=64, tile_m=128,
                         tile_n=64, num_heads_q=2, num_heads_kv=2, head_mode="per_q_head", pack_gqa=1,
                         max_entries=B * H * MB * W)
    LAUNCH_GEO[:] = [geo]
    fa4 = {"mask_block_cnt": pc, "mask_block_idx": pi, "full_block_cnt": fc, "full_block_idx": fi,
           "block_size": (64, 64)}
    p = plan_mod.plan_device(fa4=fa4, cu_seqlens_q=cu, num_heads_q=2, head_dim=128)
    assert LAUNCHES == ["topk", "topk", "cells", "scan", "fill"]
    want = model.build_from_lists((pc, pi), (fc, fi), cu, cu, geo, pad_ok=False)
    got = plan_mod.tables(p)
    for name in ("status", "rows", "entries", "tiles", "chunks", "cols", "col_entries"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert want.error == 0 and got.entries.tolist() == [[64, 64], [0, 64], [128, 64], [64, 6]]
    flex = {"kv_num_blocks": pc, "kv_indices": pi, "BLOCK_SIZE": 64}
    LAUNCHES.clear()
    pf = plan_mod.plan_device(flex=flex, cu_seqlens_q=cu, num_heads_q=2, head_dim=128)
    assert LAUNCHES == ["topk", "cells", "scan", "fill"]
    np.testing.assert_array_equal(plan_mod.tables(pf).status,
                                  model.build_from_lists((pc, pi), None, cu, cu, geo, pad_ok=True).status)
    pc2 = pc.copy()
    pc2[1, 1, 0] = 0
    LAUNCHES.clear()
    plan_mod.rebuild(pf, flex={**flex, "kv_num_blocks": pc2}, cu_seqlens_q=cu)
    assert LAUNCHES == ["topk", "cells", "scan", "fill"] and plan_mod.status(pf)["words"][3] == 2
    with pytest.raises(ValueError, match="varlen-packed"):
        plan_mod.plan_device(fa4={**fa4, "cu_total_m_blocks": cu}, cu_seqlens_q=cu, num_heads_q=2, head_dim=128)
    with pytest.raises(TypeError, match="fa4.mask_block_cnt"):
        plan_mod.plan_device(fa4={"mask_block_idx": pi}, cu_seqlens_q=cu, num_heads_q=2, head_dim=128)
    with pytest.raises(ValueError, match="expected counts of shape"):
        plan_mod.plan_device(fa4={**fa4, "full_block_cnt": fc[:, :1]}, cu_seqlens_q=cu, num_heads_q=2, head_dim=128)
    with pytest.raises(ValueError, match="flex.BLOCK_SIZE"):
        plan_mod.plan_device(flex={**flex, "BLOCK_SIZE": "x"}, cu_seqlens_q=cu, num_heads_q=2, head_dim=128)


def test_seer_1d_source(fake_device):
    from varblock.abi import MASK_TOKEN

    rng = np.random.default_rng(3)
    lens = [100, 0, 250]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    B, H, T, NB = 3, 2, 260, 5
    tm = rng.random((B, H, T, NB)) < 0.4
    geo = model.Geometry(batch=B, mask_batch=B, num_layout_heads=H, mb=-(-T // 64), nb=NB, block_q=64, block_k=64,
                         tile_m=128, tile_n=64, num_heads_q=4, num_heads_kv=2, head_mode="per_kv_head", pack_gqa=2,
                         window_right=0, max_entries=B * H * 5 * NB, q_tokens=T)  # token masks pack GQA by default
    LAUNCH_GEO[:] = [geo]
    p = plan_mod.plan_device(seer_1d=tm, cu_seqlens_q=cu, num_heads_q=4, num_heads_kv=2, head_dim=128, causal=True)
    assert LAUNCHES == ["pack", "cells", "cols", "scan", "fill"]
    assert plan_mod.geometry(p) == geo
    want, packed = model_seer.build_from_token_mask(tm, cu, cu, geo)
    got = plan_mod.tables(p)
    for name in ("status", "rows", "entries", "tiles", "chunks", "cols", "col_entries"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert want.error == 0 and want.rows.shape[0] == H * (2 + 4)
    assert (p.mask_flags, p.tok_block_k, p.tok_head_div, p.tok_strides) == (MASK_TOKEN, 64, 2, (B * T * NB, NB, 1))
    dev = MEM.read(p.ptr("tok_mask"), np.uint8, H * B * T * NB).reshape(H, B * T, NB)
    np.testing.assert_array_equal(dev[:, :350], packed[:, :350])
    with pytest.raises(ValueError, match="source kind cannot change"):
        plan_mod.rebuild(p, mask=np.ones((B, H, 5, NB), bool), cu_seqlens_q=cu)
    with pytest.raises(ValueError, match="expected a cell grid"):
        plan_mod.rebuild(p, seer_1d=tm[:, :, :200], cu_seqlens_q=cu)
    LAUNCHES.clear()
    plan_mod.rebuild(p, seer_1d=~tm, cu_seqlens_q=cu)
    assert LAUNCHES == ["pack", "cells", "cols", "scan", "fill"]
    np.testing.assert_array_equal(plan_mod.tables(p).entries,
                                  model_seer.build_from_token_mask(~tm, cu, cu, geo)[0].entries)
    with pytest.raises(TypeError, match="seer_1d: expected a bool"):
        plan_mod.plan_device(seer_1d=tm.astype(np.int32), cu_seqlens_q=cu, num_heads_q=4, num_heads_kv=2,
                             head_dim=128)
