"""CPU tests of the backward / decode / pooling / layout benchmarks' host side (benchmarks/bench_backward.py,
bench_decode.py, bench_pooling.py, bench_layout.py): argument handling, the inputs every anchor gets (Flex decode
lists, Seer masks, probe masks, pack indices) checked against varblock's layouts by brute force, the bar checks and
the dry runs. No GPU, torch or Triton needed."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import anchors as A  # noqa: E402
import bench_backward as BB  # noqa: E402
import bench_decode as BD  # noqa: E402
import bench_layout as BLY  # noqa: E402
import bench_pooling as BP  # noqa: E402

from varblock import layout as L  # noqa: E402
from varblock.layout import BlockSparseLayout  # noqa: E402
from varblock.layout import decode as LD  # noqa: E402

# ------------------------------------------------------------------------------------------------------ decode


def _odd_decode_layout(seed: int = 0) -> LD.DecodeLayout:
    """Per-KV-head random blocks over odd KV lengths (short last blocks), Hkv 8 (the benchmark's)."""
    rng = np.random.default_rng(seed)
    kv = np.array([130, 64, 1, 300])
    nb = -(-kv // BD.BLOCK)
    rows, blocks = [], []
    for b in range(kv.size):
        for h in range(BD.HKV):
            keep = rng.permutation(nb[b])[: rng.integers(1, nb[b] + 1)]
            rows += [b * BD.HKV + h] * keep.size
            blocks += list(keep)
    return LD.from_block_lists(np.array(rows), np.array(blocks), kv_lens=kv, block_size=BD.BLOCK, num_heads=BD.HKV)


@pytest.mark.parametrize("q_tokens", [1, 3, 16])
def test_flex_decode_lists_hold_the_layout_blocks_split_by_causality(q_tokens):
    lay = _odd_decode_layout(q_tokens)
    kn, ki, fn, fi = BD.flex_kv_lists(lay, BD.HQ, q_tokens)
    assert kn.shape == fn.shape == (4, BD.HQ, 1) and ki.shape == fi.shape == (4, BD.HQ, 1, 5)
    g = BD.HQ // BD.HKV
    for b in range(lay.batch_size):
        L_b = int(lay.kv_lens[b])
        for hq in range(BD.HQ):
            kept = lay.row(b, hq // g)
            part = ki[b, hq, 0, : kn[b, hq, 0]]
            full = fi[b, hq, 0, : fn[b, hq, 0]]
            assert sorted(np.concatenate([part, full]).tolist()) == kept.tolist()
            for blk in kept:  # full iff every new token t (key limit L - n + t) sees the block's last key
                last = min((int(blk) + 1) * BD.BLOCK, L_b) - 1
                assert (blk in full) == (last <= L_b - q_tokens)
    assert "flex blocks" in BD.check_same_blocks(lay, q_tokens)


def test_flex_decode_lists_refuse_per_q_head_layouts():
    lay = LD.dense_decode(np.array([128]), block_size=64, num_heads=BD.HQ, head_mode="per_q_head")
    with pytest.raises(ValueError, match="per_kv_head"):
        BD.flex_kv_lists(lay, BD.HQ, 1)


def test_decode_kept_bytes_counts_kept_keys_and_q_out():
    lay = _odd_decode_layout(3)
    keys = sum(min((int(blk) + 1) * 64, int(lay.kv_lens[b])) - int(blk) * 64
               for b in range(lay.batch_size) for h in range(BD.HKV) for blk in lay.row(b, h))
    assert BD.kept_bytes(lay, 2) == keys * BD.D * 2 * 2 + 2 * 4 * 2 * BD.HQ * BD.D * 2


@pytest.mark.parametrize("density", [1.0, 0.25])
def test_decode_layout_density(density):
    lay = BD.decode_layout(np.random.default_rng(1), 3, 4096, density)
    assert lay.density() == pytest.approx(density)
    assert np.array_equal(A.seer_decode_mask(lay).sum(axis=-1), np.diff(lay.indptr).reshape(3, BD.HKV))


def test_decode_dry_run(capsys):
    args = types.SimpleNamespace(q_tokens=2, seer_path=str(A.DEFAULT_SEER_PATH))
    assert BD.dry_run(args) == 0
    out = capsys.readouterr().out
    assert out.count("kept blocks") == len(BD.SHAPES) * len(BD.DENSITIES)


def test_decode_bars_use_seer_ratio():
    def row(system, ms, tbps, dens=0.25):
        return A.make_row("decode", "64x32k", system, causal=False, density=dens, block=64, head_dim=128, ms=ms,
                          tbps=tbps)

    assert BD.check_bars([row("varblock", 1.0, 3.5), row("seer", 1.3, 2.7)])
    assert not BD.check_bars([row("varblock", 1.0, 3.5), row("seer", 1.1, 3.2)])  # 1.1x < 1.2x at 0.25
    assert not BD.check_bars([row("varblock", 1.0, 3.7, 1.0)])  # below 3.8 TB/s dense
    assert BD.check_bars([row("varblock", 1.0, 3.9, 1.0), row("seer", None, None, 1.0)])


def _forget_seer() -> None:
    """Drop every imported ``seer_attn`` module (a fake package must not outlive its test)."""
    for name in [m for m in sys.modules if m.startswith("seer_attn")]:
        del sys.modules[name]


def _fake_seer(tmp_path: Path, body: str) -> Path:
    d = tmp_path / "seer_attn" / "kernels" / "varlen"
    d.mkdir(parents=True)
    for p in (tmp_path / "seer_attn", tmp_path / "seer_attn" / "kernels", d):
        (p / "__init__.py").write_text("")
    (d / "utils.py").write_text("VALUE = 7\n")
    (d / "block_sparse_flash_decode_varlen_mask.py").write_text(body)
    return tmp_path


def test_seer_decode_loads_without_einops(tmp_path, monkeypatch):
    root = _fake_seer(tmp_path, "from einops import rearrange\nfrom .utils import VALUE\n")
    _forget_seer()
    monkeypatch.setitem(sys.modules, "einops", None)  # not installed
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        mod = BD.load_seer_decode(str(root))
    finally:
        _forget_seer()
    assert mod.VALUE == 7
    with pytest.raises(RuntimeError, match="stand-in"):
        mod.rearrange()
    assert "einops" not in sys.modules  # the stand-in was there for the import only


def test_seer_decode_other_import_errors_propagate(tmp_path, monkeypatch):
    root = _fake_seer(tmp_path, "import not_a_module_anywhere_xyz\n")
    _forget_seer()
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        with pytest.raises(ModuleNotFoundError, match="not_a_module_anywhere_xyz"):
            BD.load_seer_decode(str(root))
    finally:
        _forget_seer()


# ------------------------------------------------------------------------------------------------------ backward


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block", [64, 128])
def test_probe_mask_equals_token_mask(causal, block):
    cu = np.array([0, 640, 1024], np.int32)
    lay = L.random_blocks(cu, cu, density=0.4, num_heads=2, head_mode="per_kv_head", causal=causal, seed=5,
                          block_q=block, block_k=block)
    for hl in range(2):
        for rows in (100, 640, 5000):
            assert np.array_equal(BB.probe_mask(lay, hl, rows), lay.token_mask(0, hl)[:rows])


def test_backward_problems_of_the_quick_suite():
    args = BB.parse_args(["--suite", "quick"])
    probs = BB.problems(args)
    assert [(p.name, p.causal, p.density, p.block) for p in probs] == [
        ("W1", False, 1.0, 128), ("W1", False, 0.1, 128), ("W1", True, 1.0, 128), ("W1", True, 0.1, 128),
        ("W1 Hq=Hkv=32", True, 1.0, 64)]
    seer = probs[-1]
    assert (seer.hq, seer.hkv, seer.seer_cell) == (32, 32, True)
    assert seer.flops == 10 * BB.D * seer.layout.num_pairs(32, 32)
    full = BB.problems(BB.parse_args([]))
    assert len(full) == 3 * 2 * 3 + 2
    assert len(BB.problems(BB.parse_args(["--no-seer", "--workloads", "W3", "--causal", "yes"]))) == 3


@pytest.mark.parametrize("argv", [["--workloads", "W9"], ["--densities", "1.5"], ["--densities", "x"],
                                  ["--block", "100"], ["--rep", "0"]])
def test_backward_bad_arguments(argv):
    with pytest.raises(SystemExit):
        BB.parse_args(argv)


def _bwd_row(w, causal, dens, system, ms, block=128):
    tf = 1e3 / ms if ms else None
    return A.make_row("backward", w, system, causal=causal, density=dens, block=block, head_dim=128, ms=ms,
                      tflops=tf)


def test_backward_bars(capsys):
    rows = [_bwd_row("W2", False, 1.0, "varblock", 10.0), _bwd_row("W2", False, 0.1, "varblock", 1.4),
            _bwd_row("W2", False, 1.0, "varblock-det", 12.0), _bwd_row("W2", False, 0.1, "varblock-det", 1.5)]
    assert not BB.report(rows)  # 1e3 / 10 = 100 TFLOP/s < 250
    out = capsys.readouterr().out
    assert "time(0.1) / time(1.0) = 0.140" in out and "-> OK" in out and "100.0 TFLOP/s" in out
    rows = [_bwd_row("W1 Hq=Hkv=32", True, 1.0, "varblock", 2.0, 64), _bwd_row("W1 Hq=Hkv=32", True, 1.0, "seer",
                                                                              2.5, 64)]
    assert not BB.report(rows)  # 1.25x < 1.5x
    assert "SeerAttention / varblock = 1.25x" in capsys.readouterr().out
    rows = [_bwd_row("W3", True, 1.0, "varblock", 1.0), _bwd_row("W3", True, 1.0, "varblock-det", 1.4)]
    assert not BB.report(rows)  # deterministic 1.4x > 1.3x


def test_backward_dry_run_quick(capsys):
    args = BB.parse_args(["--suite", "quick", "--dry-run"])
    assert BB.dry_run(args) == 0
    out = capsys.readouterr().out
    assert "seer mask OK" in out and out.count("probe masks OK") == 5


# ------------------------------------------------------------------------------------------------------ pooling


def test_pooling_pack_index_and_seer_key_blocks():
    cu = np.array([0, 3, 3, 10], np.int32)
    seq, pos = BP.pack_index(cu)
    assert seq.tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 2, 2] and pos.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 6]
    assert BP.seer_key_blocks(BP.cu_of("W1"), 64) == 128
    assert BP.seer_key_blocks(BP.cu_of("W3"), 64) == 8
    with pytest.raises(ValueError, match="power-of-two"):
        BP.seer_key_blocks(np.array([0, 64 * 3], np.int32), 64)


def test_pooling_dry_run_and_arguments(capsys):
    assert BP.main(["--dry-run"]) == 0
    assert capsys.readouterr().out.count("pack index OK") == 3
    with pytest.raises(SystemExit):
        BP.main(["--workloads", "W7", "--dry-run"])
    with pytest.raises(ValueError, match="power-of-two"):
        BP.main(["--dry-run", "--block", "48"])  # W1's 8192 / 48 key blocks: Seer's maxpool cannot load them


def test_pooling_bars(capsys):
    def row(w, system, ms):
        return A.make_row("pooling", w, system, causal=True, density=1.0, block=64, head_dim=128, ms=ms)

    assert BP.check_bars([row("W1", "varblock-fwd", 2.0), row("W1", "varblock-pool", 1.0),
                          row("W1", "seer-total", 5.0)])
    assert not BP.check_bars([row("W1", "varblock-fwd", 2.0), row("W1", "varblock-pool", 1.0),
                              row("W1", "seer-total", 4.0)])  # 1.33x < 1.5x
    assert not BP.check_bars([row("W2", "varblock-fwd", 2.0), row("W2", "varblock-pool", 1.5)])  # 0.75 > 0.6
    assert "SeerAttention / varblock 1.33x" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------ layout


def test_layout_padded_mask_gives_the_packed_layout():
    padded, cu = BLY.w1_padded_mask(0.1)
    packed, _ = BLY.w1_block_mask(32, 0.1)
    assert padded.shape == (8, 32, 64, 64)
    for causal in (False, True):
        a = BlockSparseLayout.from_block_mask(padded, cu, cu, block_q=128, block_k=128, head_mode="per_q_head",
                                              causal=causal)
        b = BlockSparseLayout.from_block_mask(packed, cu, cu, block_q=128, block_k=128, head_mode="per_q_head",
                                              causal=causal)
        assert a.equals(b)


def test_layout_rows_follow_the_schema():
    r = A.check_row(BLY._row("device", True, 0.03, "note"))
    assert (r["bench"], r["workload"], r["system"], r["density"], r["ms"]) == ("layout", "W1", "device", 0.1, 0.03)
