#!/usr/bin/env python3
"""Run every kernel family on a small smoke set under compute-sanitizer (memcheck, racecheck, synccheck, initcheck).

    python tools/sanitize.py                  # all four tools; exit 1 on any reported error or hazard
    python tools/sanitize.py --tools memcheck --only attention_fwd_mma
    python tools/sanitize.py --smoke          # run the smoke set once without a sanitizer (what each tool runs)

Needs a CUDA GPU, built cubins, torch (inputs) and `compute-sanitizer` on PATH (or $COMPUTE_SANITIZER). Only
varblock's own kernels are checked (``--kernel-name kns=vb_``: every entry name starts with vb_); the smoke set's
torch kernels are not ours.

Every family in the kernel registry must have a smoke case in ``SMOKE`` below (the script fails otherwise), so a
new kernel family cannot land without being sanitized: add a function that launches it on odd lengths, GQA and each
of its mask kinds / code paths.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
LENS = [1, 3, 113, 0, 200]


def _cu(lens: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _qkv(torch, tq: int, tk: int, hq: int, hkv: int, d: int, dtype: str = "bfloat16"):
    dt = getattr(torch, dtype)
    return (torch.randn(tq, hq, d, device="cuda").to(dt), torch.randn(tk, hkv, d, device="cuda").to(dt),
            torch.randn(tk, hkv, d, device="cuda").to(dt))


_T0 = time.perf_counter()


def _check_finite(torch, what: str, *xs) -> None:
    torch.cuda.synchronize()
    for x in xs:
        if torch.isnan(x.float()).any():
            raise RuntimeError(f"{what}: NaN in the output")
    print(f"  [{time.perf_counter() - _T0:7.1f} s] {what}: ok", flush=True)


# ------------------------------------------------------------------------------------------------ smoke cases
def _attention_layouts(L) -> list[tuple[str, object, int, int]]:
    """(name, layout, Hq, Hkv) covering every mask kind of the forward."""
    cu = _cu(LENS)
    cu_k = _cu([5, 1, 300, 0, 64])
    rng = np.random.default_rng(0)
    t = max(LENS)
    m1d = rng.random((len(LENS), 2, t, (t + 63) // 64)) < 0.4
    doc = np.concatenate([np.repeat(np.arange(3), [n // 3, n // 3, n - 2 * (n // 3)]) for n in LENS]).astype(np.int32)
    row = np.array([[100, 28, 300], [128, 128, 172]])
    col = np.array([[64, 200, 164], [1, 255, 172]])
    out = [
        ("random per_kv_head causal", L.random_blocks(cu, cu, density=0.5, num_heads=2, head_mode="per_kv_head",
                                                      causal=True, seed=1), 8, 2),
        ("random per_q_head q!=k", L.random_blocks(cu, cu_k, density=0.5, num_heads=4, head_mode="per_q_head",
                                                   causal=True, seed=2, block_q=64, block_k=64), 4, 1),
        ("sliding window", L.sliding_window(cu, cu, window_left=32, window_right=0, num_heads=1), 4, 4),
        ("sinks + window", L.attention_sinks(cu, cu, sink_blocks=1, window_left=32, causal=True, num_heads=1,
                                             block_q=64, block_k=64), 4, 2),
        ("document", L.document(cu, cu, doc_ids_q=doc, causal=True, num_heads=1), 4, 2),
        ("seer 1d token mask", L.from_seer_1d(m1d, cu, cu, block_size=64, head_mode="per_kv_head"), 8, 2),
        ("flashinfer variable blocks", L.from_flashinfer(np.random.default_rng(2).random((2, 3, 3)) < 0.6, row,
                                                         col, _cu([428]), _cu([428])), 4, 2),
    ]
    return out


def smoke_attention(torch, backend: str = "auto") -> None:
    import varblock
    from varblock import layout as L

    cu = _cu(LENS)
    tq = int(cu[-1])
    for sched in ("single", "persistent"):
        for causal in (False, True):
            for d in (64, 128):
                q, k, v = _qkv(torch, tq, tq, 8, 2, d)
                p = varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=d, causal=causal, scheduler=sched,
                                  backend=backend)
                o = varblock.attention(q, k, v, p)
                _check_finite(torch, f"dense causal={causal} d={d} {sched}", o)
        for name, lay, hq, hkv in _attention_layouts(L):
            cq, ck = lay.cu_seqlens_q, lay.cu_seqlens_k
            q, k, v = _qkv(torch, int(cq[-1]), int(ck[-1]), hq, hkv, 128)
            p = varblock.plan(cq, ck, num_heads_q=hq, num_heads_kv=hkv, head_dim=128, layout=lay, scheduler=sched,
                              backend=backend)
            o, lse = varblock.attention(q, k, v, p, return_lse=True)
            _check_finite(torch, f"{name} {sched}", o)
    # pack-GQA, fp16, d96 (d64 for the Hopper family, which has no d96)
    d = 64 if backend == "attention_fwd_sm90" else 96
    q, k, v = _qkv(torch, tq, tq, 8, 2, d, "float16")
    o = varblock.attention(q, k, v, varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=d, causal=True,
                                                   pack_gqa=True, backend=backend))
    _check_finite(torch, f"pack-gqa fp16 d{d}", o)


def smoke_attention_sm90(torch) -> None:
    """The Hopper forward on the same cases (sm90 only: elsewhere it has no kernels)."""
    if torch.cuda.get_device_capability()[0] != 9:
        print("  attention_fwd_sm90: not an sm90 GPU, skipped", flush=True)
        return
    smoke_attention(torch, backend="attention_fwd_sm90")


def smoke_prepare(torch) -> None:
    """Device plans: the prepare kernel builds the work list on the GPU, the forward reads its tile count."""
    import varblock

    cu = torch.tensor(_cu(LENS), device="cuda")
    tq = int(_cu(LENS)[-1])
    for causal, window in ((False, None), (True, None), (True, (40, 0))):
        q, k, v = _qkv(torch, tq, tq, 8, 2, 128)
        p = varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=128, causal=causal, window=window,
                          max_seqlen_q=max(LENS), total_q=tq)
        o = varblock.attention(q, k, v, p)
        _check_finite(torch, f"device plan causal={causal} window={window}", o)


def smoke_merge_states(torch) -> None:
    import varblock

    for s, t, h, d, dt in ((1, 3, 2, 64, "float32"), (4, 113, 3, 128, "bfloat16"), (3, 1, 1, 256, "float16")):
        parts = torch.randn(s, t, h, d, device="cuda").to(getattr(torch, dt))
        lse = torch.randn(s, h, t, device="cuda")
        lse[0, :, : max(1, t // 3)] = float("-inf")
        o, ls = varblock.merge_states(parts, lse)
        _check_finite(torch, f"merge_states S={s} {dt}", o)
    parts = torch.randn(2, 77, 4, 128, device="cuda")
    o, _ = varblock.merge_states(parts, torch.randn(2, 4, 77, device="cuda"), out_dtype="bfloat16")
    _check_finite(torch, "merge_states fp32 -> bf16", o)


#: kernel family name -> smoke function (every registered family needs one)
SMOKE: dict[str, Callable] = {
    "attention_fwd_mma": smoke_attention,
    "attention_fwd_sm90": smoke_attention_sm90,
    "attention_prepare": smoke_prepare,
    "merge_states": smoke_merge_states,
}


def registered_families() -> list[str]:
    from varblock.kernels.registry import families

    return [f.name for f in families()]


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
    cmd = [exe, "--tool", tool, "--kernel-name", "kns=vb_", "--error-exitcode", "99", "--print-limit", "50",
           "--report-api-errors", "no"]
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
        (log_dir / f"sanitize_{tool}_{family}.log").write_text(text)
    counts = [int(m.group(2)) for m in _SUMMARY.finditer(text)]
    reported = sum(counts) if counts else -1
    line = (f"{tool:10s} {family:20s} exit {code if code is not None else 'TIMEOUT':>7}  reported "
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
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    if args.smoke:
        run_smoke(only)
        return 0
    log_dir = Path(args.log_dir) if args.log_dir else None
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for tool in tools:
        if tool not in TOOLS:
            ap.error(f"--tools: unknown tool {tool!r}; known: {', '.join(TOOLS)}")
    missing = [f for f in registered_families() if f not in SMOKE]
    if missing:
        print(f"no smoke case for kernel families {missing}: add one to tools/sanitize.py SMOKE")
        return 1
    fams = [f for f in SMOKE if only is None or f in only]
    bad = 0
    for tool in tools:
        for fam in fams:
            n, line = sanitize(tool, fam, log_dir, args.timeout)
            print(line, flush=True)
            bad += n
    print(f"sanitizer: {'CLEAN' if bad == 0 else 'REPORTS FOUND'} ({bad} errors/hazards/failures) over "
          f"{', '.join(fams)} with {', '.join(tools)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
