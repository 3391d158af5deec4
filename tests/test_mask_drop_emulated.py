"""The forward kernels' partial-chunk mask source (``kernels/common/mask.py``, ``ElementMask.apply_partial``) run on
the CPU with stand-in ``cutlass`` modules, against a NumPy statement of the rule: band (causal / window / sinks),
the ``k_len`` tail and the tile-pairing drop bits (``varblock.abi.CHUNK_DROP_SHIFT``; ``varblock.worklist.dropped``
is the host model of them). Both ways of applying the bits (folded into the band's right bound, as sm90; a pass of
its own, as the portable kernel) and both left-bound compares, over the accumulator column convention both kernels
share (a thread's columns are ``col0 + c``, ``col0`` in {0, 2, 4, 6}, ``c`` in {8n, 8n + 1}).

The stand-ins run in a subprocess (they replace ``cutlass`` in ``sys.modules``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r'''
import sys, types
from types import SimpleNamespace
import numpy as np


class Int32(int):
    def __new__(cls, v=0):
        return int.__new__(cls, int(v))

    def ir_value(self, loc=None, ip=None):
        return int(self)


class Float32(float):
    inf = float("inf")


def _num(name):
    return type(name, (int,), {})


cutlass = types.ModuleType("cutlass")
cute = types.ModuleType("cutlass.cute")
for n in ("Int64", "Uint8", "Uint32", "Uint64"):
    setattr(cutlass, n, _num(n))
cutlass.Int32, cutlass.Float32, cutlass.Boolean = Int32, Float32, bool
cutlass.Constexpr = object
cutlass.const_expr = lambda x: x
cutlass.range_constexpr = lambda *a: range(*a)
cutlass.range = lambda *a, **k: range(*a)
cutlass.min, cutlass.max = min, max
cutlass.dsl_user_op = lambda f: f
cutlass.cute = cute
cute.jit = lambda f: f
cute.size = lambda t, mode=None: t.shape[mode[0]]
mlir = types.ModuleType("cutlass._mlir")
dialects = types.ModuleType("cutlass._mlir.dialects")
arith = types.ModuleType("cutlass._mlir.dialects.arith")
arith.CmpIPredicate = SimpleNamespace(ult="ult")
arith.cmpi = lambda pred, a, b, loc=None, ip=None: (a & 0xFFFFFFFF) < (b & 0xFFFFFFFF)
sys.modules.update({"cutlass": cutlass, "cutlass.cute": cute, "cutlass._mlir": mlir,
                    "cutlass._mlir.dialects": dialects, "cutlass._mlir.dialects.arith": arith})

from varblock.abi import CHUNK_DROP_SHIFT  # noqa: E402
from varblock.kernels.common.mask import ElementMask, MaskSmem  # noqa: E402
from varblock.worklist import dropped  # noqa: E402


class Coords:
    """(row, col) of this thread's accumulator elements: t[rr, cc] -> (rows[rr], cols[cc])."""

    def __init__(self, rows, cols):
        self.rows, self.cols = list(rows), list(cols)
        self.shape = (len(self.rows), len(self.cols))

    def __getitem__(self, ix):
        return (self.rows[ix[0]], self.cols[ix[1]])


def check(rng, tile_m, tile_n, fold, sink_compare):
    wl = int(rng.choice([-1, -1, 0, 5, 70, 200]))
    wr = int(rng.choice([-1, 0, 0, 3, 64]))
    sinks = int(rng.choice([0, 0, 3, 90]))
    k_start = int(rng.integers(0, 300))
    k_len = int(rng.integers(1, tile_n + 1))
    word = k_len | (int(rng.integers(0, 16)) << CHUNK_DROP_SHIFT)
    a_rows = rng.integers(-50, 500, size=tile_m)  # i + diag of every tile row
    p = SimpleNamespace(window_left=Int32(wl), window_right=Int32(wr), num_sink_tokens=Int32(sinks),
                        mask_flags=Int32(0))
    smem = MaskSmem(row_pos=a_rows, row_doc=None, row_tm=None, doc_k=None, tok=None, n_words=tile_n // 32)
    mask = ElementMask(p, smem, tile_m, tile_n, 128, sink_compare, fold)
    t0_cols = [c for n in range(tile_n // 8) for c in (8 * n, 8 * n + 1)]
    got = np.zeros((tile_m, tile_n), dtype=bool)
    for col0 in (0, 2, 4, 6):
        for r0 in range(0, tile_m, 2):
            rows = [r0, r0 + 1]
            acc = np.zeros((2, len(t0_cols)))
            t_scs = Coords(rows, [col0 + c for c in t0_cols])
            mask.apply_partial(acc, t_scs, Coords([0, 8], t0_cols), Int32(col0), Int32(k_start),
                               Int32(word & 0xFFFF), Int32(word >> CHUNK_DROP_SHIFT))
            for rr, r in enumerate(rows):
                for cc, c in enumerate(t0_cols):
                    got[r, col0 + c] = acc[rr, cc] == 0.0
    j = k_start + np.arange(tile_n)[None, :]
    a = a_rows[:, None]
    want = np.arange(tile_n)[None, :] < k_len
    if wl >= 0:
        want = want & ((j < sinks) | (j >= a - wl))
    if wr >= 0:
        want = want & (j <= a + wr)
    want = want & ~dropped(word, np.arange(tile_m)[:, None], np.arange(tile_n)[None, :], tile_m, tile_n)
    assert (got == want).all(), (tile_m, tile_n, fold, sink_compare, wl, wr, sinks, k_start, hex(word))


rng = np.random.default_rng(int(sys.argv[1]))
for tile_m, tile_n in ((128, 128), (128, 64), (64, 64)):
    for fold in (True, False):
        for sink_compare in ("unsigned", "pair"):
            for _ in range(6):
                check(rng, tile_m, tile_n, fold, sink_compare)
print("ok")
'''


@pytest.mark.parametrize("seed", range(3))
def test_partial_mask_source_applies_drop_bits(seed):
    """Every element of random chunks (band, tail, drop bits) masked exactly as the rule says."""
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(seed)], capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout[-3000:] + res.stderr[-3000:]
