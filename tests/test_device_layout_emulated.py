"""The ``layout_device`` kernels' own CuTe DSL source, executed on the CPU by a SIMT emulator
(tests/_simt_emulator.py: every thread a Python thread, warp ballots / shuffles and CTA barriers by barriers,
tensors bounds-checked over fake device memory), driven through ``plan_device`` / ``rebuild`` as on a GPU: the
tables must equal the NumPy model's (and so the host builders'). Covers every kernel (topk, pack, cells x 3, cols,
scan, fill), group boundaries inside a (head, sequence) segment, empty sequences, errors, and a scan over more than
1024 groups (several steps). The emulator replaces ``cutlass`` in ``sys.modules``, so it runs in a subprocess."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_kernels_under_the_simt_emulator():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    r = subprocess.run([sys.executable, "-c", "import tests.test_device_layout_emulated as t; t.main()"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0 and "all emulated cases ok" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


# ------------------------------------------------------------------------------------------- in the subprocess
def _kernels() -> dict[str, Any]:
    from varblock.kernels import _layout_device_fill_impl as fill_impl
    from varblock.kernels import _layout_device_impl as impl
    from varblock.kernels import _layout_device_scan_impl as scan_impl

    return {"topk": impl._topk_kernel, "pack": impl._pack_kernel, "cols": impl._cols_kernel,
            "cells_uint8": impl._make_cells_kernel(False), "cells_int32": impl._make_cells_kernel(False),
            "cells_token": impl._make_cells_kernel(True), "scan": scan_impl._scan_kernel,
            "fill": fill_impl._fill_kernel}


def _launch_emulated(entry: dict, ordinal: int, stream: Any, values: dict) -> None:
    """``launch_variant`` for the fake device: the kernel's source on the SIMT emulator over fake memory."""
    from tests import _simt_emulator as emu
    from tests.test_device_layout_api import LAUNCHES, MEM
    from varblock.runtime.params import grid_of

    key = entry["key"]
    name = key["stage"] + (f"_{key['mask_dtype']}" if "mask_dtype" in key else "")
    ns = {}
    for prm in entry["params"]:
        v = values[prm["name"]]
        if prm["kind"] == "ptr":
            byte = prm["name"] in ("mask", "kept", "packed") and name != "cells_int32"
            dt = np.uint8 if byte else np.int32
            if v == 0:
                ns[prm["name"]] = emu.Ptr(None, 0, prm["name"])
            else:
                raw = MEM._at(v)
                raw = raw[: raw.shape[0] - raw.shape[0] % np.dtype(dt).itemsize]
                ns[prm["name"]] = emu.Ptr(raw.view(dt), 0, prm["name"])
        else:
            ns[prm["name"]] = int(v)
    grid = grid_of(entry["grid"], values)
    LAUNCHES.append(key["stage"])
    emu.run_grid(KERNELS[name], SimpleNamespace(**ns), grid[0], entry["block"][0])


KERNELS: dict[str, Any] = {}


def _patch() -> None:
    from tests import test_device_layout_api as api
    from varblock.device_layout import builder as builder_mod
    from varblock.device_layout import plan as plan_mod
    from varblock.device_layout import sources as sources_mod
    from varblock.kernels import layout_device
    from varblock.plan import core as plan_core

    entries = {tuple(sorted(var.key.items())): var.manifest_entry() for var in layout_device.variants("sm90")}
    binding = api.FakeBinding(128, 64)
    builder_mod.DeviceBuffer = api.FakeBuffer
    plan_core.DeviceBuffer = api.FakeBuffer
    builder_mod.launch_variant = _launch_emulated
    builder_mod.variant_for = lambda fam, ordinal, key: entries[tuple(sorted(key.items()))]
    sources_mod.device_view = api._view
    plan_mod.device_seqlens = lambda q, k: (api._view(q, "cu_seqlens_q"), api._view(k, "cu_seqlens_k"))
    plan_mod.stream_for = lambda stream, ordinal, like=None: api.FakeStream()
    plan_mod.arch_for_device = lambda ordinal: "sm90"
    plan_mod.families.choose = lambda op, problem, backend: (binding, {})
    plan_mod.choose_schedule = lambda p, b, s: setattr(p, "scheduler", "persistent")


def _same(got: Any, want: Any, what: str) -> None:
    for name in ("status", "rows", "entries", "tiles", "chunks", "cols", "col_entries"):
        g, w = getattr(got, name), getattr(want, name)
        if g.shape != w.shape or not np.array_equal(g, w):
            raise AssertionError(f"{what}: {name} differs from the model (shapes {g.shape} / {w.shape})")


def _mask_cases() -> None:
    from tests.test_device_layout_api import _plan
    from tests.test_device_layout_model import _geometry
    from varblock.device_layout import model
    from varblock.device_layout import plan as plan_mod

    rng = np.random.default_rng(5)
    cases = [  # (lens_q, lens_k, heads (hq, hkv, mode), block_q, block_k, mb, nb, window, density, codes, pack)
        ([130, 0, 257, 64], [130, 0, 300, 64], (4, 2, "per_q_head"), 64, 64, 6, 7, (-1, 0), 0.4, None, 1),
        ([1, 700, 33], [1, 900, 100], (4, 2, "per_kv_head"), 128, 64, 7, 16, (-1, -1), 0.3, np.int8, 1),
        ([500, 20], [500, 20], (8, 2, "per_kv_head"), 64, 128, 9, 5, (100, 0), 0.5, None, 4),
        ([90, 0, 0, 333], [90, 0, 0, 333], (2, 1, "broadcast"), 16, 64, 22, 7, (-1, -1), 0.2, np.int32, 1),
    ]
    for i, (lq, lk, (hq, hkv, mode), bq, bk, mb, nb, (wl, wr), dens, codes, pack) in enumerate(cases):
        cu_q, cu_k = _cu(lq), _cu(lk)
        B = len(lq)
        geo = _geometry(B, B, hq, hkv, mode, mb, nb, bq, bk, 128, 64, pack, wl, wr)
        h = geo.num_layout_heads
        mask = rng.random((B, h, mb, nb)) < dens
        if codes is not None:
            mask = (rng.integers(1, 3, size=mask.shape) * mask).astype(codes)
        geo = dataclasses.replace(geo, max_entries=B * h * mb * nb)
        p = _plan(mask, cu_q, cu_k, geo)
        _same(plan_mod.tables(p), model.build_from_mask(mask, cu_q, cu_k, geo), f"mask case {i}")
        print(f"mask case {i}: ok ({plan_mod.status(p)['message']})", flush=True)
    # errors: a bad code in a padding cell, capacity, mask shape, bad cu_seqlens
    cu = _cu([200, 70])
    geo = _geometry(2, 2, 2, 2, "per_q_head", 4, 4, 64, 64, 128, 64, cap=3)
    mask = np.zeros((2, 2, 4, 4), bool)
    mask[0, 0, :, 0] = True
    mask[1, 1, 1, :2] = True
    codes = mask.astype(np.int32)
    codes[1, 0, 3, 2] = 7
    for what, m, c, g in (("capacity", mask, cu, geo), ("code", codes, cu, dataclasses.replace(geo, max_entries=64)),
                          ("cu_seqlens", mask, np.array([0, 200, 150], np.int32), geo)):
        p = _plan(m, c, c, g, max_kept_blocks=g.max_entries)
        _same(plan_mod.tables(p), model.build_from_mask(m, c, c, g), f"error case {what}")
        print(f"error case {what}: ok ({plan_mod.status(p)['message']})", flush=True)


def _index_and_token_cases() -> None:
    from tests.test_device_layout_api import LAUNCH_GEO
    from varblock.device_layout import model, model_seer
    from varblock.device_layout import plan as plan_mod

    rng = np.random.default_rng(8)
    cu = _cu([200, 70, 0])
    B, H, MB = 3, 2, 4
    geo = model.Geometry(batch=B, mask_batch=B, num_layout_heads=H, mb=MB, nb=MB, block_q=64, block_k=64, tile_m=128,
                         tile_n=64, num_heads_q=H, num_heads_kv=H, head_mode="per_q_head", pack_gqa=1,
                         window_right=0, max_entries=B * H * MB * MB)
    idx = rng.integers(0, 4, size=(B, H, MB, 3)).astype(np.int32)
    idx[1] %= 2
    cnt = rng.integers(0, 4, size=(B, H, MB)).astype(np.int32)
    LAUNCH_GEO[:] = [geo]
    p = plan_mod.plan_device(topk_indices=idx, topk_counts=cnt, cu_seqlens_q=cu, num_heads_q=H, head_dim=128,
                             block_q=64, block_k=64, num_key_blocks=MB, causal=True)
    _same(plan_mod.tables(p), model.build_from_topk(idx, cnt, cu, cu, geo), "top-k")
    idx[1, 0, 1, 2] = 3  # sequence 1 has 2 key blocks: an index error
    plan_mod.rebuild(p, topk_indices=idx, topk_counts=np.full_like(cnt, 3), cu_seqlens_q=cu)
    _same(plan_mod.tables(p), model.build_from_topk(idx, np.full_like(cnt, 3), cu, cu, geo), "top-k error")
    print(f"top-k: ok ({plan_mod.status(p)['message']})", flush=True)
    lens = [60, 0, 130]
    cu = _cu(lens)
    T, NB = 140, 5
    tm = rng.random((3, 2, T, NB)) < 0.4
    geo = model.Geometry(batch=3, mask_batch=3, num_layout_heads=2, mb=-(-T // 64), nb=NB, block_q=64, block_k=64,
                         tile_m=128, tile_n=64, num_heads_q=4, num_heads_kv=2, head_mode="per_kv_head", pack_gqa=2,
                         window_right=0, max_entries=3 * 2 * (-(-T // 64)) * NB, q_tokens=T)
    LAUNCH_GEO[:] = [geo]
    p = plan_mod.plan_device(seer_1d=tm, cu_seqlens_q=cu, num_heads_q=4, num_heads_kv=2, head_dim=128, causal=True)
    want, _ = model_seer.build_from_token_mask(tm, cu, cu, geo)
    _same(plan_mod.tables(p), want, "seer 1D token mask")
    print(f"token mask: ok ({plan_mod.status(p)['message']})", flush=True)


def _multi_step_scan() -> None:
    """The scan kernel alone over 1500 row groups and 1100 column groups (two steps), random group sums."""
    from tests import _simt_emulator as emu
    from tests.test_device_layout_model import _geometry
    from varblock.device_layout import model

    rng = np.random.default_rng(3)
    B, H, MB, NB = 5, 16, 150, 110  # 12000 rows, 8800 columns -> 1500 / 1100 groups
    geo = _geometry(B, B, H, H, "per_q_head", MB, NB, 64, 64, 128, 64, cap=10**7)
    rg, cg = model.num_groups(H * B * MB), model.num_groups(H * B * NB)
    row_part = rng.integers(0, 50, size=(5, rg)).astype(np.int32)
    row_part[4] = -1
    col_part = rng.integers(0, 50, size=(2, cg)).astype(np.int32)
    cu = _cu([64 * 150, 100, 0, 64 * 110, 3])
    cells = model.Cells(np.zeros(0, np.int32), np.zeros((0, 4), np.int32), np.zeros((0, 2), np.int32), row_part,
                        col_part)
    want = model.scan(cells, cu, cu, geo)
    bufs = {"row_gp": np.zeros(4 * rg, np.int32), "col_gp": np.zeros(2 * cg, np.int32),
            "status": np.zeros(8, np.int32), "cu_copy_q": np.zeros(B + 1, np.int32),
            "cu_copy_k": np.zeros(B + 1, np.int32)}
    ins = {"cu_seqlens_q": cu, "cu_seqlens_k": cu, "row_part": row_part.reshape(-1), "col_part": col_part.reshape(-1)}
    p = SimpleNamespace(**{k: emu.Ptr(v, 0, k) for k, v in {**ins, **bufs}.items()}, topk_err=emu.Ptr(None, 0, "te"),
                        batch=B, num_layout_heads=H, mb=MB, nb=NB, block_q=64, block_k=64, topk_rows=0,
                        max_entries=geo.max_entries, max_tiles=geo.max_tiles, max_chunks=geo.max_chunks,
                        max_q_tokens=geo.max_q_tokens)
    emu.run_grid(KERNELS["scan"], p, 1, 1024)
    assert np.array_equal(bufs["row_gp"].reshape(4, rg), want.row_gp), "row group prefixes differ"
    assert np.array_equal(bufs["col_gp"].reshape(2, cg), want.col_gp), "column group prefixes differ"
    assert np.array_equal(bufs["status"], want.status), (bufs["status"], want.status)
    assert np.array_equal(bufs["cu_copy_q"], cu) and np.array_equal(bufs["cu_copy_k"], cu)
    print(f"scan over {rg} + {cg} groups: ok", flush=True)


def _cu(lens: Any) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def main() -> None:
    from tests import _simt_emulator as emu

    emu.install()
    KERNELS.update(_kernels())
    _patch()
    _multi_step_scan()
    _mask_cases()
    _index_and_token_cases()
    print("all emulated cases ok", flush=True)
