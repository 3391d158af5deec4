"""Issue 10's forward report from benchmark rows (benchmarks/anchors.py schema): the side-by-side table, the
performance bar line by line and W2's density scaling.

    python benchmarks/forward_report.py fwd.json      # re-print the report of a bench_attention.py --json run
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anchors as A  # noqa: E402

VB_SIZES = (64, 128, 192)  # the variable-block workload's span sizes
VB_BLOCK = "var" + "/".join(map(str, VB_SIZES))  # the block field of VB rows
FLASHINFER = "flashinfer (issue 10)"  # the system name of the rows citing issue 10's FlashInfer figures




def _key(r: dict[str, Any]) -> tuple:
    return (r["workload"], r["causal"], r["head_dim"], str(r["block"]), r["density"])


RATIO_SYSTEMS = (("fa4", "FA4"), ("seer", "Seer"), ("flex", "Flex"), (FLASHINFER, "FlashInfer (issue)"))


def _best_varblock(by: dict[str, dict[str, Any]]) -> float | None:
    return max((r["tflops"] for s, r in by.items() if s.startswith("varblock") and r["tflops"] is not None),
               default=None)


def _points(rows: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    points: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        points.setdefault(_key(r), {})[r["system"]] = r
    return points


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: one line per point, TFLOP/s per system, then the best varblock family's speed over each
    anchor's (> 1: varblock is faster; the FlashInfer ratio is against issue 10's figure, not this run)."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    head = "| workload | causal | d | block | density | " + " | ".join(systems)
    head += "".join(f" | varblock/{label}" for _, label in RATIO_SYSTEMS) + " |"
    lines = [head, "|---|---|---:|---|---:|" + "---:|" * (len(systems) + len(RATIO_SYSTEMS))]
    for (w, c, d, b, dens), by in _points(rows).items():
        tf = {s: by[s]["tflops"] for s in by}
        vb = _best_varblock(by)
        ratios = " | ".join(f"{vb / tf[s]:.2f}" if vb is not None and tf.get(s) else "n/a" for s, _ in RATIO_SYSTEMS)
        cells = " | ".join(f"{tf[s]:.0f}" if tf.get(s) is not None else "n/a" for s in systems)
        lines.append(f"| {w} | {c} | {d} | {b} | {dens} | {cells} | {ratios} |")
    return "\n".join(lines)


# (what, workload, causal, head_dim, block, densities, against (None: absolute TFLOP/s), at least)
BARS: tuple[tuple[str, str, bool, int, Any, tuple[float, ...], str | None, float], ...] = (
    ("W1 at 1.0 / 0.5 >= 650 TFLOP/s", "W1", False, 128, 128, (1.0, 0.5), None, 650.0),
    ("W1 at 1.0 / 0.5 >= 1.0x FA4", "W1", False, 128, 128, (1.0, 0.5), "fa4", 1.0),
    ("W2 at 1.0 / 0.5 >= 650 TFLOP/s", "W2", False, 128, 128, (1.0, 0.5), None, 650.0),
    ("W2 at 1.0 / 0.5 >= 1.0x FA4", "W2", False, 128, 128, (1.0, 0.5), "fa4", 1.0),
    ("W2 at 0.1 >= 600 TFLOP/s", "W2", False, 128, 128, (0.1,), None, 600.0),
    ("W1 at 0.1 >= 1.0x FA4", "W1", False, 128, 128, (0.1,), "fa4", 1.0),
    ("W1 causal >= 600 TFLOP/s", "W1", True, 128, 128, (1.0,), None, 600.0),
    ("W3 at 1.0 >= 350 TFLOP/s", "W3", False, 128, 128, (1.0,), None, 350.0),
    ("64x64 W1 causal at 1.0 >= 500 TFLOP/s", "W1", True, 128, 64, (1.0,), None, 500.0),
    ("64x64 W1 causal >= 2x SeerAttention", "W1", True, 128, 64, (1.0, 0.5, 0.1), "seer", 2.0),
    ("variable blocks at 0.5 >= 500 TFLOP/s", "VB", False, 128, None, (0.5,), None, 500.0),
    ("variable blocks at 0.5 >= 1.4x FlashInfer (issue's figure)", "VB", False, 128, None, (0.5,), FLASHINFER, 1.4),
    ("d64 W1 at 0.5 >= 450 TFLOP/s", "W1", False, 64, 128, (0.5,), None, 450.0),
)


def bar_checks(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Issue 10's performance bar, one line per measured (bar, density): the best varblock family's TFLOP/s or its
    ratio to an anchor, OK / NOT MET; plus the portable family at 64x64 against 128x128 (W1 causal)."""
    points, out = _points(rows), []
    for what, w, causal, d, block, dens, against, need in BARS:
        blk = str(block) if block is not None else VB_BLOCK
        for x in dens:
            by = points.get((w, causal, d, blk, x))
            vb = _best_varblock(by) if by else None
            ref = by.get(against, {}).get("tflops") if by and against else None
            if vb is None or (against is not None and not ref):
                continue
            got = vb if against is None else vb / ref
            out.append(f"{what} [density {x}]: {got:.2f} -> {'OK' if got >= need else 'NOT MET'}")
    portable = "varblock:attention_fwd_mma"
    for x in (1.0, 0.5, 0.1):
        t64 = points.get(("W1", True, 128, "64", x), {}).get(portable, {}).get("tflops")
        t128 = points.get(("W1", True, 128, "128", x), {}).get(portable, {}).get("tflops")
        if t64 and t128:
            out.append(f"portable family W1 causal 64x64 / 128x128 [density {x}]: {t64:.0f} / {t128:.0f} TFLOP/s -> "
                       f"{'OK' if t64 >= t128 else 'NOT MET'}")
    return out


def w2_scaling(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per varblock family: W2 non-causal time(0.1) / time(1.0) against the bar <= 0.15."""
    out = []
    for s in dict.fromkeys(r["system"] for r in rows if r["system"].startswith("varblock")):
        t = {r["density"]: r["ms"] for r in rows if r["system"] == s and r["workload"] == "W2"
             and not r["causal"] and r["head_dim"] == 128 and r["ms"] is not None}
        if 1.0 in t and 0.1 in t:
            ratio = t[0.1] / t[1.0]
            out.append(f"W2 non-causal {s}: time(0.1) / time(1.0) = {ratio:.3f} (bar <= 0.15) -> "
                       f"{'OK' if ratio <= 0.15 else 'NOT MET'}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python benchmarks/forward_report.py RESULTS.json [MORE.json ...]", file=sys.stderr)
        return 2
    rows = [r for f in args for r in A.read_json(f) if r["bench"] == "forward"]
    print(summary_table(rows))
    for line in w2_scaling(rows) + bar_checks(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
