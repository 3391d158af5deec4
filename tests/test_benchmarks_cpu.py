"""CPU tests of the benchmark helpers (benchmarks/anchors.py, bench_attention.py, plots.py): argument parsing, the
JSON row schema, kept-pair counting and every anchor's host input (FA4 fields, SeerAttention masks, Flex lists)
checked against varblock's layouts by brute force. No GPU, torch, FA4 or Triton needed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import anchors as A  # noqa: E402
import bench_attention as BA  # noqa: E402

from varblock import layout as L  # noqa: E402
from varblock.layout import decode as LD  # noqa: E402

CU = np.array([0, 256, 768, 1280], np.int32)  # three sequences, multiples of 128


def _token_mask_packed(lay: L.BlockSparseLayout, hl: int) -> np.ndarray:
    """Dense [total, total] bool of layout head ``hl`` over the packed tokens (block diagonal per sequence)."""
    tot = int(lay.cu_seqlens_q[-1])
    out = np.zeros((tot, tot), dtype=np.bool_)
    for b in range(lay.batch_size):
        q0, q1 = int(lay.cu_seqlens_q[b]), int(lay.cu_seqlens_q[b + 1])
        k0, k1 = int(lay.cu_seqlens_k[b]), int(lay.cu_seqlens_k[b + 1])
        out[q0:q1, k0:k1] = lay.token_mask(b, hl)
    return out


# ------------------------------------------------------------------------------------------------------ arguments


def test_parse_args_defaults_and_suite():
    a = BA.parse_args([])
    assert (a.workloads, a.head_dim, a.block, a.reps, a.warmup, a.suite) == ("W1,W2,W3", 128, 128, 10, 3, None)
    cells = BA.cells_from_args(a)
    assert len(cells) == 6 and {c.causal for c in cells} == {False, True}
    full = BA.cells_from_args(BA.parse_args(["--suite", "full"]))
    keys = {(c.workload, c.causal, c.head_dim, c.block) for c in full}
    for need in [("W1", False, 128, 128), ("W2", False, 128, 128), ("W3", False, 128, 128), ("W1", True, 128, 128),
                 ("W1", False, 64, 128), ("W1", True, 128, 64), ("VB", False, 128, None)]:
        assert need in keys
    vb = [c for c in full if c.workload == "VB"][0]
    assert vb.densities == (0.5, 0.1)


def test_cells_cross_product_skips_causal_vb():
    cells = BA.cells_from_args(BA.parse_args(["--workloads", "W1,VB", "--causal", "both", "--densities", "0.5"]))
    assert [(c.workload, c.causal, c.block) for c in cells] == [("W1", False, 128), ("W1", True, 128),
                                                                 ("VB", False, None)]


@pytest.mark.parametrize("argv", [["--workloads", "W9"], ["--densities", "0.5,x"], ["--densities", "0"],
                                  ["--densities", "1.5"], ["--reps", "0"], ["--warmup", "-1"], ["--block", "40"],
                                  ["--suite", "nope"]])
def test_parse_args_rejects(argv, capsys):
    with pytest.raises(SystemExit):
        BA.parse_args(argv)


# ------------------------------------------------------------------------------------------------------ rows / JSON


def test_make_row_normalises_and_validates():
    r = A.make_row("forward", "W1", "fa4", causal=np.bool_(True), density=0.5, block=(64, 64), head_dim=128,
                   ms=float("nan"), tflops=float("nan"), note="n/a: x")
    assert r["ms"] is None and r["tflops"] is None and r["block"] == "64x64" and r["causal"] is True
    assert list(r) == list(A.ROW_KEYS)
    with pytest.raises(ValueError, match="tflops / tbps"):
        A.make_row("decode", "B1", "s", causal=False, density=None, block=64, head_dim=128, ms=1, tflops=1, tbps=1)
    with pytest.raises(TypeError, match="system"):
        A.make_row("forward", "W1", 3, causal=False, density=1.0, block=128, head_dim=128, ms=1.0)
    with pytest.raises(ValueError, match="head_dim"):
        A.make_row("forward", "W1", "s", causal=False, density=1.0, block=128, head_dim=0, ms=1.0)
    with pytest.raises(TypeError, match="ms"):
        A.make_row("forward", "W1", "s", causal=False, density=1.0, block=128, head_dim=64, ms="fast")


def test_json_round_trip(tmp_path):
    rows = [A.make_row("forward", "W2", "varblock:x", causal=False, density=0.1, block=128, head_dim=128, ms=2.0,
                       tflops=600.5),
            A.make_row("decode", "B64", "seer", causal=False, density=None, block=64, head_dim=128, ms=0.2, tbps=3.5)]
    p = A.write_json(tmp_path / "sub" / "r.json", rows, {"device": "cpu"})
    data = json.loads(p.read_text())
    assert data["meta"] == {"device": "cpu"} and A.read_json(p) == rows
    (tmp_path / "bare.json").write_text(json.dumps(rows))
    assert A.read_json(tmp_path / "bare.json") == rows
    bad = dict(rows[0])
    del bad["note"]
    with pytest.raises(ValueError, match="missing keys"):
        A.check_row(bad)


# ------------------------------------------------------------------------------------------------------ pairs


@pytest.mark.parametrize("causal", [False, True])
def test_point_flops_count_kept_pairs(causal):
    cell = BA.Cell("W1", causal, (0.3,), 64, 128)
    pt = BA.make_point(cell, 0.3, on_gpu=False)
    code = A.packed_cell_codes(pt.layout, 128)[pt.layout.head_map(pt.hq, pt.hkv)]
    diag = 128 * 129 // 2  # a causal diagonal cell of equal-length sequences
    pairs = int((code == 2).sum()) * 128 * 128 + int((code == 1).sum()) * diag
    assert (code == 1).any() == causal
    assert pt.flops == 4.0 * 64 * pairs
    assert pt.tensors is None


def test_variable_layout_spans_and_density():
    rng = np.random.default_rng(0)
    s = BA.variable_spans(16384, rng)
    assert s.sum() == 16384 and set(s.tolist()) == set(BA.VB_SIZES)
    with pytest.raises(ValueError, match="total"):
        BA.variable_spans(1000, rng)
    assert BA.variable_spans(320, rng).sum() == 320
    lay = BA.variable_layout(2048, 2, 0.3, seed=3)
    assert lay.num_heads == 2 and lay.head_mode == "per_kv_head" and not lay.is_fixed
    for h in range(2):  # every query token keeps its diagonal key, and no row is empty
        tm = lay.token_mask(0, h)
        assert tm[np.arange(2048), np.arange(2048)].all()
    assert 0.3 <= lay.density() < 0.6


# ------------------------------------------------------------------------------------------------------ FA4


@pytest.mark.parametrize("head_mode,heads", [("per_kv_head", 2), ("broadcast", 1), ("per_q_head", 8)])
def test_fa4_fields_hold_the_layout_blocks(head_mode, heads):
    lay = L.random_blocks(CU, CU, density=0.4, num_heads=heads, head_mode=head_mode, seed=2)
    f = A.fa4_fields(lay, 8)
    TM = int((np.diff(CU) // 128).sum())
    assert f.full_block_cnt.shape == (8, TM) and f.mask_block_cnt.shape == (8, TM)
    assert f.block_size == (128, 128) and f.cu_block_idx_offsets is not None
    assert int(f.mask_block_cnt.sum()) == 0  # non-causal random blocks are all full
    hm = lay.head_map(8, 2)
    # brute force: FA4's per-sequence slots (cu_block_idx_offsets[b] + m * N_b) against the layout's token mask
    for hq in range(8):
        for b in range(3):
            nb = (int(CU[b + 1]) - int(CU[b])) // 128
            m0 = int(f.cu_total_m_blocks[b])
            tm = lay.token_mask(b, int(hm[hq]))[::128, ::128]
            for m in range(nb):
                base = int(f.cu_block_idx_offsets[b]) + m * nb
                got = f.full_block_idx[hq, base:base + f.full_block_cnt[hq, m0 + m]]
                assert got.tolist() == np.flatnonzero(tm[m]).tolist()


def test_fa4_fields_rejects_variable_spans():
    with pytest.raises(ValueError, match="fixed block"):
        A.fa4_fields(BA.variable_layout(1024, 1, 0.5), 1)
    with pytest.raises(TypeError, match="layout"):
        A.fa4_fields("nope", 1)


def test_load_fa4_reports_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    with pytest.raises(ImportError, match="FA4"):
        A.load_fa4()


# ------------------------------------------------------------------------------------------------------ Seer


@pytest.mark.parametrize("bs", [64, 128])
def test_seer_mask_matches_token_mask(bs):
    lay = L.random_blocks(CU, CU, density=0.5, num_heads=2, head_mode="per_kv_head", causal=True, seed=4,
                          block_q=bs, block_k=bs)
    m = A.seer_block_mask_2d(lay, 8, 2)
    nb = -(-int(np.diff(CU).max()) // bs)
    assert m.shape == (3, 8, nb, nb) and m.dtype == np.bool_
    for b in range(3):
        n = int(CU[b + 1] - CU[b])
        for hq in range(8):
            # what Seer's kernel computes: kept blocks expanded to tokens, causal (seqlen_q == seqlen_k)
            tok = np.repeat(np.repeat(m[b, hq], bs, 0), bs, 1)[:n, :n] & np.tri(n, dtype=np.bool_)
            assert np.array_equal(tok, lay.token_mask(b, hq // 4))
        assert not m[b, :, n // bs:].any() and not m[b, :, :, n // bs:].any()


def test_seer_mask_rejects_what_the_kernel_cannot_run():
    with pytest.raises(ValueError, match="causal"):
        A.seer_block_mask_2d(L.random_blocks(CU, CU, density=0.5, seed=1), 1, 1)
    cu_k = np.array([0, 256, 768, 1408], np.int32)
    with pytest.raises(ValueError, match="seqlen_q == seqlen_k"):
        A.seer_block_mask_2d(L.causal(CU, cu_k), 1, 1)
    with pytest.raises(ValueError, match="square"):
        A.seer_block_mask_2d(L.causal(CU, CU, block_q=128, block_k=64), 1, 1)


def test_seer_decode_mask_round_trip():
    rng = np.random.default_rng(5)
    kv = np.array([100, 64, 300])
    m = np.zeros((3, 2, 5), dtype=np.bool_)
    for b, n in enumerate(kv):
        m[b, :, :-(-n // 64)] = rng.random((2, -(-n // 64))) < 0.5
    lay = LD.from_seer_decode_mask(m, kv_lens=kv, block_size=64)
    assert np.array_equal(A.seer_decode_mask(lay), m)
    with pytest.raises(ValueError, match="per KV head"):
        A.seer_decode_mask(LD.from_seer_decode_mask(m, kv_lens=kv, block_size=64, head_mode="per_q_head"))


def _fake_seer(root: Path) -> None:
    pkg = root / "seer_attn" / "kernels" / "varlen"
    pkg.mkdir(parents=True)
    for d in (root / "seer_attn", root / "seer_attn" / "kernels", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "utils.py").write_text("VALUE = 7\n")
    (pkg / "fake_kernel.py").write_text("from flash_attn import flash_attn_varlen_func as f\n"
                                        "from .utils import VALUE\n")


def test_load_seer_imports_with_stand_in(tmp_path, monkeypatch):
    _fake_seer(tmp_path)
    for name in [m for m in sys.modules if m == "seer_attn" or m.startswith("seer_attn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", list(sys.path))
    prev = sys.modules.get("flash_attn")
    mod = A.load_seer("fake_kernel", tmp_path)
    try:
        assert mod.VALUE == 7 and mod.__name__ == "seer_attn.kernels.varlen.fake_kernel"
        with pytest.raises(RuntimeError, match="stand-in"):
            mod.f()
        assert sys.modules.get("flash_attn") is prev  # the stand-in lived for the import only
    finally:
        for name in [m for m in sys.modules if m == "seer_attn" or m.startswith("seer_attn.")]:
            del sys.modules[name]
    with pytest.raises(ImportError, match="seer_path"):
        A.load_seer("missing_kernel", tmp_path)
    with pytest.raises(ValueError, match="module"):
        A.load_seer("../x", tmp_path)


# ------------------------------------------------------------------------------------------------------ Flex


@pytest.mark.parametrize("causal", [False, True])
def test_flex_lists_match_token_mask(causal):
    lay = L.random_blocks(CU, CU, density=0.4, num_heads=2, head_mode="per_kv_head", causal=causal, seed=6)
    pc, pi, fc, fi = A.flex_block_lists(lay, 4, 2, 128)
    nb = int(CU[-1]) // 128
    assert pc.shape == fc.shape == (4, nb) and pi.shape == fi.shape == (4, nb, nb)
    for hq in range(4):
        tok = _token_mask_packed(lay, hq // 2)
        full = np.zeros((nb, nb), np.bool_)
        part = np.zeros((nb, nb), np.bool_)
        for r in range(nb):
            full[r, fi[hq, r, :fc[hq, r]]] = True
            part[r, pi[hq, r, :pc[hq, r]]] = True
            assert np.array_equal(np.sort(fi[hq, r]), np.arange(nb))  # kept first, then the rest (a permutation)
        cells = tok.reshape(nb, 128, nb, 128)
        assert np.array_equal(full, cells.all(axis=(1, 3)))
        assert np.array_equal(part, cells.any(axis=(1, 3)) & ~cells.all(axis=(1, 3)))
        assert not (full & part).any() and part.any() == causal


def test_flex_lists_variable_spans_and_misalignment():
    lay = BA.variable_layout(1024, 1, 0.5, seed=2)
    pc, pi, fc, fi = A.flex_block_lists(lay, 2, 1, 64)
    assert int(pc.sum()) == 0 and int(fc.sum()) * 64 * 64 == lay.num_pairs(2, 1)
    with pytest.raises(ValueError, match="multiple of block"):
        A.flex_block_lists(lay, 2, 1, 128)


# ------------------------------------------------------------------------------------------------------ dry run


def test_dry_run_checks_every_anchor_input(tmp_path, capsys):
    out = tmp_path / "dry.json"
    rc = BA.main(["--workloads", "W3,VB", "--densities", "1.0,0.5", "--causal", "both", "--block", "128",
                  "--dry-run", "--json", str(out)])
    assert rc == 0
    rows = A.read_json(out)
    notes = {(r["workload"], r["causal"], r["density"], r["system"]): r["note"] for r in rows}
    assert "same kept cells as varblock's layout: yes" in notes[("W3", False, 0.5, "fa4")]
    assert "dense causal FA4" in notes[("W3", True, 1.0, "fa4")]
    assert notes[("W3", True, 0.5, "fa4")].startswith("n/a")
    assert "Seer mask" in notes[("W3", True, 0.5, "seer")] and notes[("W3", False, 0.5, "seer")].startswith("n/a")
    assert "at 64x64" in notes[("VB", False, 0.5, "flex")] and notes[("VB", False, 0.5, "fa4")].startswith("n/a")
    assert not any("MISMATCH" in n for n in notes.values())
    assert all(r["ms"] is None for r in rows)


def test_summary_table_and_w2_scaling():
    mk = lambda s, d, ms, tf: A.make_row("forward", "W2", s, causal=False, density=d, block=128,  # noqa: E731
                                         head_dim=128, ms=ms, tflops=tf)
    rows = [mk("varblock:a", 1.0, 10.0, 600.0), mk("fa4", 1.0, 12.0, 500.0), mk("varblock:a", 0.1, 1.2, 500.0),
            mk("fa4", 0.1, None, None)]
    t = BA.summary_table(rows)
    assert "| W2 | False | 128 | 128 | 1.0 | 600 | 500 | 1.20 | n/a | n/a | n/a |" in t
    assert "| W2 | False | 128 | 128 | 0.1 | 500 | n/a | n/a | n/a | n/a | n/a |" in t
    (line,) = BA.w2_scaling(rows)
    assert "0.120" in line and line.endswith("OK")
    checks = BA.bar_checks(rows)
    assert checks == ["W2 at 1.0 / 0.5 >= 650 TFLOP/s [density 1.0]: 600.00 -> NOT MET",
                      "W2 at 1.0 / 0.5 >= 1.0x FA4 [density 1.0]: 1.20 -> OK",
                      "W2 at 0.1 >= 600 TFLOP/s [density 0.1]: 500.00 -> NOT MET"]


def test_bar_checks_ratios_and_portable_block_sizes():
    def mk(w, causal, block, system, d, tf):
        return A.make_row("forward", w, system, causal=causal, density=d, block=block, head_dim=128, ms=1.0,
                          tflops=tf)

    rows = [mk("W1", True, 64, "varblock:attention_fwd_mma", 1.0, 300.0),
            mk("W1", True, 64, "varblock:attention_fwd_sm90", 1.0, 520.0), mk("W1", True, 64, "seer", 1.0, 200.0),
            mk("W1", True, 128, "varblock:attention_fwd_mma", 1.0, 320.0),
            mk("VB", False, BA.VB_BLOCK, "varblock:attention_fwd_sm90", 0.5, 480.0),
            mk("VB", False, BA.VB_BLOCK, BA.FLASHINFER, 0.5, 342.0)]
    checks = BA.bar_checks(rows)
    assert "64x64 W1 causal at 1.0 >= 500 TFLOP/s [density 1.0]: 520.00 -> OK" in checks
    assert "64x64 W1 causal >= 2x SeerAttention [density 1.0]: 2.60 -> OK" in checks
    assert "W1 causal >= 600 TFLOP/s [density 1.0]: 320.00 -> NOT MET" in checks
    assert "variable blocks at 0.5 >= 500 TFLOP/s [density 0.5]: 480.00 -> NOT MET" in checks
    assert "variable blocks at 0.5 >= 1.4x FlashInfer (issue's figure) [density 0.5]: 1.40 -> OK" in checks
    assert checks[-1] == "portable family W1 causal 64x64 / 128x128 [density 1.0]: 300 / 320 TFLOP/s -> NOT MET"
    assert "| varblock/FlashInfer (issue) |" in BA.summary_table(rows)


# ------------------------------------------------------------------------------------------------------ plots


def test_write_plots_never_raises(tmp_path, monkeypatch, capsys):
    """A benchmark's ``--plot``: a plotting failure is one printed line (the table and JSON are written already)."""
    import plots

    def broken(rows, out_dir):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(plots, "plot_all", broken)
    plots.write_plots([], tmp_path)
    assert capsys.readouterr().out.strip() == "plot: not written (ImportError: No module named 'matplotlib')"
    monkeypatch.setattr(plots, "plot_all", lambda rows, out_dir: [tmp_path / "forward.png"])
    plots.write_plots([], tmp_path)
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'forward.png'}"


def test_plots_from_small_json(tmp_path):
    pytest.importorskip("matplotlib")
    import plots

    rows = [A.make_row("forward", "W1", s, causal=False, density=d, block=128, head_dim=128, ms=1.0,
                       tflops=base * d) for s, base in (("varblock:a", 600), ("fa4", 650)) for d in (1.0, 0.5, 0.1)]
    rows.append(A.make_row("forward", "VB", "flashinfer (issue 10)", causal=False, density=0.5, block="var",
                           head_dim=128, ms=None, tflops=342.0, note="cited, not this run"))
    rows.append(A.make_row("decode", "B64", "varblock", causal=False, density=None, block=64, head_dim=128,
                           ms=0.1, tbps=3.9))
    rows.append(A.make_row("pooling", "W1", "seer", causal=True, density=1.0, block=64, head_dim=128, ms=None))
    src = A.write_json(tmp_path / "r.json", rows)
    assert plots.main([str(src), "--out", str(tmp_path / "img")]) == 0
    for kind in ("forward", "decode"):
        png = tmp_path / "img" / f"{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "img" / "pooling.png").exists()  # only n/a cells: nothing to plot
    s = plots.series(rows[:6], "tflops")
    assert list(s) == ["varblock:a", "fa4"] and [d for d, _ in s["fa4"]] == [0.1, 0.5, 1.0]
    assert math.isclose(s["fa4"][2][1], 650.0)


# ------------------------------------------------------------------------------------------------------ GPU flow


class _FakeTensor:
    """Just enough of a torch tensor (NumPy inside) for run_point's control flow and the output comparison."""

    def __init__(self, a):
        self.a = np.asarray(a, dtype=np.float64)
        self.device = "fake"

    def float(self):
        return self

    def clone(self):
        return _FakeTensor(self.a.copy())

    def norm(self):
        return _FakeTensor(np.linalg.norm(self.a))

    def clamp_min(self, x):
        return _FakeTensor(np.maximum(self.a, x))

    def to(self, device):
        return self

    def __sub__(self, o):
        return _FakeTensor(self.a - o.a)

    def __truediv__(self, o):
        return _FakeTensor(self.a / o.a)

    def __float__(self):
        return float(self.a)


def test_run_point_flow_with_fakes(monkeypatch, capsys):
    import types

    fake_torch = types.ModuleType("torch")
    fake_torch.empty_like = lambda x: _FakeTensor(np.zeros_like(x.a))
    fake_torch.from_numpy = _FakeTensor
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setattr(BA, "bench_interleaved", lambda fns, warmup, rep: {n: (f(), 2.0)[1] for n, f in fns.items()})
    rng = np.random.default_rng(0)
    calls = []

    def plan(*a, backend, **kw):
        if backend == "famB":
            raise ValueError("head_dim 128 not built")
        return "plan"

    monkeypatch.setattr(BA.varblock, "plan", plan)
    monkeypatch.setattr(BA.varblock, "attention", lambda q, k, v, p, out: q)
    fa4 = lambda q, k, v, **kw: (calls.append(sorted(kw)), (_FakeTensor(q.a * 1.001), None))[1]  # noqa: E731
    monkeypatch.setattr(A, "load_fa4", lambda: (fa4, lambda **kw: kw))

    def broken_flex(pt, flex):
        raise RuntimeError("flex exploded\nsecond line")

    monkeypatch.setattr(BA, "run_flex", broken_flex)
    ctx = BA.Context(BA.parse_args([]), ["famA", "famB"], [], off={})
    ctx.fa4, ctx.seer = fa4, types.SimpleNamespace(blocksparse_flash_attn_varlen_fwd=lambda q, *a, **k: (q, None))
    for cell, dens in ((BA.Cell("W3", True, (1.0,), 128, 128), 1.0), (BA.Cell("W3", False, (0.5,), 128, 128), 0.5),
                       (BA.Cell("VB", False, (0.5,), 128, None), 0.5)):
        pt = BA.make_point(cell, dens, on_gpu=False)
        lens, hq, hkv = BA.WORKLOADS[cell.workload]
        pt.tensors = (_FakeTensor(rng.standard_normal((sum(lens), 2))), None, None, None, max(lens))
        BA.run_point(ctx, pt)
    rows = {(r["workload"], r["causal"], r["system"]): r for r in ctx.rows}
    assert rows[("W3", True, "varblock:famA")]["ms"] == 2.0
    assert rows[("W3", True, "varblock:famB")]["note"].startswith("n/a: declined: head_dim 128")
    assert rows[("W3", True, "flex")]["note"] == "failed: RuntimeError: flex exploded"
    assert rows[("W3", True, "seer")]["note"] == "rel. diff vs varblock 0.0e+00"
    assert rows[("W3", True, "fa4")]["note"] == "rel. diff vs varblock 1.0e-03"
    assert calls[0] == ["causal", "cu_seqlens_k", "cu_seqlens_q", "max_seqlen_k", "max_seqlen_q"]
    assert calls[-1] == ["block_sparse_tensors", "cu_seqlens_k", "cu_seqlens_q", "max_seqlen_k", "max_seqlen_q"]
    assert rows[("W3", False, "seer")]["note"].startswith("n/a: SeerAttention's block_sparse_attn_varlen_2d")
    assert rows[("VB", False, "fa4")]["note"].startswith("n/a: FA4 block sparsity takes fixed block sizes")
    cited = rows[("VB", False, "flashinfer (issue 10)")]
    assert cited["tflops"] == BA.FLASHINFER_CITED[0.5] and "not this run" in cited["note"]
    vb = rows[("VB", False, "varblock:famA")]
    assert math.isclose(vb["tflops"], BA.make_point(BA.Cell("VB", False, (0.5,), 128, None), 0.5, False).flops
                        / 2.0 / 1e9)


def test_bench_interleaved_round_robin(monkeypatch):
    """Every system is called warmup + rep times; the timed calls go round robin with a rotating start."""
    import types

    clock = [0.0]
    order = []

    class Event:
        def __init__(self, enable_timing):
            self.t = None

        def record(self):
            self.t = clock[0]

        def elapsed_time(self, other):
            return other.t - self.t

    fake_torch = types.ModuleType("torch")
    fake_torch.cuda = types.SimpleNamespace(Event=Event, synchronize=lambda: None)
    monkeypatch.setitem(sys.modules, "torch", fake_torch)

    def system(name, cost):
        def call():
            order.append(name)
            clock[0] += cost
        return call

    ms = A.bench_interleaved({"a": system("a", 1.0), "b": system("b", 3.0), "c": system("c", 2.0)}, warmup=2, rep=3)
    assert ms == {"a": 1.0, "b": 3.0, "c": 2.0}
    assert order[:6] == list("abcabc")
    assert order[6:] == list("abc") + list("bca") + list("cab")
    with pytest.raises(ValueError, match="warmup / rep"):
        A.bench_interleaved({"a": system("a", 1.0)}, rep=0)


def test_forward_report_reprints_from_json(tmp_path, capsys):
    import forward_report

    rows = [A.make_row("forward", "W1", s, causal=True, density=1.0, block=128, head_dim=128, ms=1.0, tflops=tf)
            for s, tf in (("varblock:attention_fwd_sm90", 610.0), ("fa4", 580.0))]
    rows.append(A.make_row("decode", "B1", "varblock", causal=False, density=None, block=64, head_dim=128, ms=1.0,
                           tbps=3.0))
    src = A.write_json(tmp_path / "fwd.json", rows)
    assert forward_report.main([str(src)]) == 0
    out = capsys.readouterr().out
    assert "| W1 | True | 128 | 128 | 1.0 | 610 | 580 | 1.05 |" in out and "B1" not in out
    assert "W1 causal >= 600 TFLOP/s [density 1.0]: 610.00 -> OK" in out
    assert forward_report.main([]) == 2
