"""CPU tests of benchmarks/decode_sweep.py: which configurations each benchmark cell gets, the plan keywords they
map to, the summary of measured rows, and the dry run (host work lists of every configuration). No GPU, no torch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import decode_sweep as S  # noqa: E402


def test_split_counts_follow_the_chunks_and_slots():
    # 1 x 128k dense: 8 groups of 2048 chunks, every split count applies
    assert S.split_counts(np.full(8, 2048), 264) == list(S.SPLITS)
    # 256 x 2k dense: 2048 groups of 32 chunks; 4 splits would be 8192 items (> 16 per slot)
    assert S.split_counts(np.full(2048, 32), 264) == [1, 2]
    # a split must keep >= 2 chunks of the longest group; 1 always applies, also to empty groups
    assert S.split_counts(np.array([5, 0, 3]), 264) == [1, 2]
    assert S.split_counts(np.zeros(4, np.int64), 264) == [1]


def test_configs_and_plan_keywords():
    cfgs = S.configs(np.full(8, 512), 264)
    names = [c.name for c in cfgs]
    assert names[:4] == ["auto auto", "auto 1/item", "auto pers", "auto pers1"]
    assert "s=33 auto" in names and "s=33 pers" not in names  # 264 items: one wave, no grid choice
    assert {"s=48 auto", "s=48 1/item", "s=48 pers", "s=48 pers1"} <= set(names)
    assert len(set(names)) == len(names)
    assert S.Config(None, "auto").plan_kwargs(132) == {"num_splits": None}
    assert S.Config(8, "1/item").plan_kwargs(132) == {"num_splits": 8, "persistent": False}
    assert S.Config(8, "pers").plan_kwargs(132) == {"num_splits": 8, "persistent": True}
    assert S.Config(None, "pers1").plan_kwargs(132) == {"num_splits": None, "persistent": True, "num_sms": 132}
    with pytest.raises(ValueError, match="grid"):
        S.Config(1, "static").plan_kwargs(132)


def test_summarize_picks_the_fastest_and_compares_with_auto():
    R = S.Row
    rows = [R("1x128k", 1.0, "auto auto", "paged", 0.164, 3.27, 0.150, 40.0, 264, 264, 33),
            R("1x128k", 1.0, "s=64 auto", "paged", 0.157, 3.43, 0.140, 41.0, 512, 512, 64),
            R("1x128k", 1.0, "s=8 auto", "paged", None, None, None, None, 0, 0, 0, "RuntimeError: x"),
            R("1x128k", 1.0, "auto auto", "contig", 0.150, 3.58, None, 39.0, 264, 264, 33),
            R("2x1k", 0.25, "auto auto", "paged", None, None, None, None, 0, 0, 0, "ValueError: y")]
    lines = S.summarize(rows)
    assert len(lines) == 3
    assert "best s=64 auto" in lines[0] and "+4.5% over auto" in lines[0] and "64 splits" in lines[0]
    assert "best auto auto" in lines[1] and "+0.0% over auto" in lines[1]
    assert "every configuration failed" in lines[2]
    assert "n/a" in S._fmt_row(rows[2]) and "RuntimeError: x" in S._fmt_row(rows[2])


def test_dry_run_lists_every_cell(capsys):
    assert S.dry_run() == 0
    out = capsys.readouterr().out
    for cell in ("64 x   32k 1.00", "1 x  128k 0.25", "256 x    2k 1.00"):
        assert cell in out
    # the plan's own choices on 132 SMs x 2 (docs/decode.md): 33 splits for 1 x 128k, one CTA per item for 256 x 2k
    lines = out.splitlines()
    i = next(k for k, ln in enumerate(lines) if "1 x  128k 1.00" in ln)
    assert "items    264  ctas    264  splits   33" in lines[i + 1]
    j = next(k for k, ln in enumerate(lines) if "256 x    2k 0.25" in ln)
    assert "items   2048  ctas   2048  splits    1" in lines[j + 1]
    assert "items   2048  ctas    264" in lines[j + 3]  # auto pers: forced persistent grid of one CTA per slot
