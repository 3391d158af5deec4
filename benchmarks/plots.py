"""Plots of benchmark results (rows in the ``benchmarks/anchors.py`` schema): one PNG per bench kind.

    python benchmarks/plots.py RESULTS.json [MORE.json ...] --out docs/img

Each bench kind (``forward``, ``backward``, ``decode``, ``pooling``, ...) gets ``<out>/<bench>.png``: one panel per
configuration (workload, causal, head dim, block), TFLOP/s (or TB/s for bandwidth rows) against density, one line
per system. A panel whose rows carry no density shows one bar per system instead. n/a cells (no value) are left
out; values cited from elsewhere (a note saying "not this run") are drawn dashed. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anchors as A  # noqa: E402

Panel = tuple[str, bool, int, str]


def panel_key(row: dict[str, Any]) -> Panel:
    """(workload, causal, head_dim, block) of a row."""
    return (row["workload"], bool(row["causal"]), int(row["head_dim"]), str(row["block"]))


def panel_title(key: Panel) -> str:
    w, causal, d, block = key
    return f"{w}{' causal' if causal else ''}, d{d}, block {block}"


def metric(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """('tflops', 'TFLOP/s') when any row has TFLOP/s, else ('tbps', 'TB/s')."""
    return ("tflops", "TFLOP/s") if any(r["tflops"] is not None for r in rows) else ("tbps", "TB/s")


def series(rows: Sequence[dict[str, Any]], field: str) -> dict[str, list[tuple[float | None, float]]]:
    """Per system (first-appearance order): (density, value) points with a value, sorted by density."""
    out: dict[str, list[tuple[float | None, float]]] = {}
    for r in rows:
        out.setdefault(r["system"], [])
        if r[field] is not None:
            out[r["system"]].append((r["density"], float(r[field])))
    for pts in out.values():
        pts.sort(key=lambda p: -math.inf if p[0] is None else p[0])
    return {s: p for s, p in out.items() if p}


def _is_cited(rows: Sequence[dict[str, Any]], system: str) -> bool:
    return all("not this run" in r["note"] for r in rows if r["system"] == system)


def plot_bench(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """One figure for the rows of one bench kind; returns the written path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[Panel, list[dict[str, Any]]] = {}
    for r in rows:
        panels.setdefault(panel_key(r), []).append(r)
    field, unit = metric(rows)
    systems = list(dict.fromkeys(r["system"] for r in rows))
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(systems)}
    n = len(panels)
    ncols = min(3, max(n, 1))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False)
    for ax, (key, prow) in zip(axes.flat, panels.items()):
        pts = series(prow, field)
        if all(d is None for p in pts.values() for d, _ in p):
            names = list(pts)
            ax.bar(range(len(names)), [p[0][1] for p in pts.values()], color=[colors[s] for s in names])
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        else:
            for s, p in pts.items():
                xs = [d for d, _ in p if d is not None]
                ys = [v for d, v in p if d is not None]
                ax.plot(xs, ys, marker="o", label=s, color=colors[s], linestyle="--" if _is_cited(prow, s) else "-")
            ax.set_xlabel("density (kept fraction)")
            ax.legend(fontsize=7)
        ax.set_title(panel_title(key), fontsize=9)
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def write_plots(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> None:
    """:func:`plot_all` for a benchmark's ``--plot``: prints each file written; a failure (e.g. no matplotlib) is
    one printed line, since the table and the JSON are written already."""
    try:
        for p in plot_all(rows, out_dir):
            print(f"wrote {p}", flush=True)
    except Exception as ex:
        print(f"plot: not written ({type(ex).__name__}: {ex})", flush=True)


def plot_all(rows: Sequence[dict[str, Any]], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """``<out_dir>/<prefix><bench>.png`` for every bench kind in ``rows``."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        kinds.setdefault(r["bench"], []).append(r)
    paths = []
    for bench, krows in kinds.items():
        if not any(r["tflops"] is not None or r["tbps"] is not None for r in krows):
            print(f"{bench}: no measured values, no plot", flush=True)
            continue
        paths.append(plot_bench(krows, Path(out_dir) / f"{prefix}{bench}.png", f"varblock benchmark: {bench}"))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one PNG per bench kind from benchmark JSON rows")
    ap.add_argument("results", nargs="+", help="JSON files written with --json by the benchmarks")
    ap.add_argument("--out", default="docs/img", help="output folder")
    ap.add_argument("--prefix", default="", help="prefix of the PNG names")
    args = ap.parse_args(argv)
    rows = [r for f in args.results for r in A.read_json(f)]
    for p in plot_all(rows, args.out, args.prefix):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
