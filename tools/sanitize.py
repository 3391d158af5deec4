#!/usr/bin/env python3
"""Run every kernel family on a small smoke set under compute-sanitizer (memcheck, racecheck, synccheck, initcheck).

    python tools/sanitize.py                  # all four tools; exit 1 on any reported error or hazard
    python tools/sanitize.py --tools memcheck --only attention_fwd_mma
    python tools/sanitize.py --smoke          # run the smoke set once without a sanitizer (what each tool runs)

Needs a CUDA GPU, built cubins, torch (inputs) and `compute-sanitizer` on PATH (or $COMPUTE_SANITIZER). Only
varblock's own kernels are checked (``--kernel-name kns=vb_``: every entry name starts with vb_); the smoke set's
torch kernels are not ours.

Every family in the kernel registry must have a smoke case in ``SMOKE`` (tools/sanitize_cases.py; the script fails
otherwise, and tests/test_sanitize_smoke.py checks it on the CPU), so a new kernel family cannot land without being
sanitized: add a function there that launches it on odd lengths, GQA and each of its mask kinds / code paths.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT / "src", ROOT):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from tools.sanitize_cases import SMOKE  # noqa: E402

TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")


def registered_families() -> list[str]:
    from varblock.kernels.registry import families

    return [f.name for f in families()]


def coverage_problem(registered: list[str]) -> str | None:
    """Why ``SMOKE`` does not match the registered kernel families (a family without a smoke case, or a smoke case
    for no family), or None."""
    missing = [f for f in registered if f not in SMOKE]
    stale = [f for f in SMOKE if f not in registered]
    if missing:
        return f"no smoke case for kernel families {missing}: add one to tools/sanitize_cases.py SMOKE"
    if stale:
        return f"smoke cases for unregistered kernel families {stale}: remove them from tools/sanitize_cases.py SMOKE"
    return None


def run_smoke(only: list[str] | None) -> None:
    import torch

    torch.manual_seed(0)
    for name, fn in SMOKE.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        fn(torch)
        torch.cuda.synchronize()
        print(f"smoke {name}: ok ({time.perf_counter() - t0:.1f} s)", flush=True)


# ------------------------------------------------------------------------------------------------ the driver
_SUMMARY = re.compile(r"(ERROR|RACECHECK) SUMMARY: (\d+) (errors?|hazards? displayed)")


def sanitize(tool: str, family: str, log_dir: Path | None, timeout: float) -> tuple[int, str]:
    """Run one family's smoke set under one tool; returns (reported errors/hazards, summary line)."""
    exe = os.environ.get("COMPUTE_SANITIZER") or shutil.which("compute-sanitizer") or \
        "/usr/local/cuda/bin/compute-sanitizer"
    # host API errors are not kernel bugs (cuda-bindings probes driver entry points with cuGetProcAddress)
    cmd = [exe, "--tool", tool, "--error-exitcode", "99", "--print-limit", "50", "--report-api-errors", "no"]
    if tool != "initcheck":  # initcheck must see every kernel's writes (torch fills the inputs), so no filter
        cmd[3:3] = ["--kernel-name", "kns=vb_"]
    if tool == "racecheck":
        cmd += ["--racecheck-report", "all"]
    cmd += [sys.executable, __file__, "--smoke", "--only", family]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
        text, code = res.stdout + res.stderr, res.returncode
    except subprocess.TimeoutExpired as ex:
        text = (ex.stdout or b"").decode() + (ex.stderr or b"").decode() if isinstance(ex.stdout, bytes) else \
            (ex.stdout or "") + (ex.stderr or "")
        code = None
    if log_dir is not None:
        tag = family if "," not in family else "grouped"
        (log_dir / f"sanitize_{tool}_{tag}.log").write_text(text)
    counts = [int(m.group(2)) for m in _SUMMARY.finditer(text)]
    reported = sum(counts) if counts else -1
    label = family if "," not in family else "all selected"
    line = (f"{tool:10s} {label:20s} exit {code if code is not None else 'TIMEOUT':>7}  reported "
            f"{reported if reported >= 0 else '?'}  ({time.perf_counter() - t0:.0f} s)")
    if code is None:
        return 1, line + f"  (no result within {timeout:.0f} s)"
    if code not in (0, 99) or "Traceback" in text:
        tail = text.strip().splitlines()[-1][:200] if text.strip() else ""
        return max(reported, 1), line + "  SMOKE FAILED: " + tail
    if not counts:
        return 1, line + "  (no summary line found)"
    return reported + (code != 0), line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="run the smoke set once (what the sanitizer runs)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated compute-sanitizer tools")
    ap.add_argument("--only", default=None, help="comma-separated kernel family names")
    ap.add_argument("--log-dir", default=os.environ.get("OUT"), help="write one log per tool and family here")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per (tool, family) run")
    ap.add_argument("--grouped", action="store_true",
                    help="one sanitizer process per tool for all selected families (less start-up time, one log "
                         "per tool; a failure names the tool, rerun per family to locate it)")
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    unknown = [f for f in only or () if f not in SMOKE]
    if unknown:
        ap.error(f"--only: unknown kernel families {unknown}; known: {', '.join(SMOKE)}")
    problem = coverage_problem(registered_families())
    if problem:
        print(problem)
        return 1
    if args.smoke:
        run_smoke(only)
        return 0
    log_dir = Path(args.log_dir) if args.log_dir else None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for tool in tools:
        if tool not in TOOLS:
            ap.error(f"--tools: unknown tool {tool!r}; known: {', '.join(TOOLS)}")
    fams = [f for f in SMOKE if only is None or f in only]
    bad = 0
    for tool in tools:
        for fam in [",".join(fams)] if args.grouped else fams:
            n, line = sanitize(tool, fam, log_dir, args.timeout)
            print(line, flush=True)
            bad += n
    print(f"sanitizer: {'CLEAN' if bad == 0 else 'REPORTS FOUND'} ({bad} errors/hazards/failures) over "
          f"{', '.join(fams)} with {', '.join(tools)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
