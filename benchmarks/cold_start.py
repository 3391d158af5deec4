"""Cold start of varblock in fresh processes with torch already imported and the inputs already on the GPU.

    python benchmarks/cold_start.py [--runs 7]

Each run is a new interpreter that imports torch, makes its inputs, then times: ``import varblock``; the first
``varblock.plan`` (host cu_seqlens, causal; cuda.core is imported and the device adopted here); the first
``varblock.attention`` call + synchronise (manifest of the device's arch, cubin load, launch); a second call +
synchronise. Prints the median of each phase over the runs and the total, then the modules whose import took
longest in one extra run (``-X importtime``), so what remains of the cold start is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parent.parent / "src")

_CHILD = r"""
import json, sys, time
sys.path.insert(0, {src!r})
import numpy as np
import torch

cu = np.array([0, 1000, 1333, 2048], np.int32)
q = torch.randn(2048, 8, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(2048, 2, 128, device="cuda", dtype=torch.bfloat16)
v = torch.randn_like(k)
torch.cuda.synchronize()
import colorsys  # marks where the import-time listing starts (nothing imported it before)
t0 = time.perf_counter()
import varblock
t1 = time.perf_counter()
p = varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=128, causal=True)
t2 = time.perf_counter()
varblock.attention(q, k, v, p)
torch.cuda.synchronize()
t3 = time.perf_counter()
varblock.attention(q, k, v, p)
torch.cuda.synchronize()
t4 = time.perf_counter()
print(json.dumps({{"import varblock": t1 - t0, "first plan": t2 - t1, "first call + sync": t3 - t2,
                  "total": t3 - t0, "second call + sync": t4 - t3}}))
"""


def run_child(extra: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *extra, "-c", _CHILD.format(src=SRC)], capture_output=True, text=True,
                          check=True, env=env)


def slowest_imports(stderr: str, marker: str = "colorsys", top: int = 15) -> list[tuple[float, str]]:
    """(cumulative ms, module) of the slowest imports after ``marker`` (``-X importtime`` output)."""
    rows, seen = [], False
    for line in stderr.splitlines():
        parts = line[len("import time:"):].split("|") if line.startswith("import time:") else []
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        if seen:
            rows.append((int(parts[1]) / 1e3, name))
        seen = seen or name.strip() == marker
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    runs = [json.loads(run_child([]).stdout.strip().splitlines()[-1]) for _ in range(args.runs)]
    print(f"cold start, median of {args.runs} fresh processes (torch imported and inputs made beforehand):")
    for phase in runs[0]:
        xs = sorted(r[phase] for r in runs)
        print(f"  {phase:22s} {1e3 * xs[len(xs) // 2]:8.1f} ms   (min {1e3 * xs[0]:.1f}, max {1e3 * xs[-1]:.1f})")
    print("slowest imports after torch (cumulative ms, one -X importtime run):")
    for ms, name in slowest_imports(run_child(["-X", "importtime"]).stderr):
        print(f"  {ms:8.1f}  {name}")


if __name__ == "__main__":
    main()
