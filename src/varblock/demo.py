"""``python -m varblock.demo``: run varblock's kernels on this machine's GPU, or explain what is missing.

With a CUDA GPU (and torch or cupy to make inputs) it runs the kernels on fresh random inputs, checks them
against the float64 references and prints timings. Without one it says so, shows what was built, and exits 0.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import varblock


def _gpu_status() -> str | None:
    """None when a CUDA device is usable, else why not."""
    try:
        from cuda.bindings import driver

        (err,) = driver.cuInit(0)
        if int(err) != 0:
            return f"the CUDA driver reports {err}"
        err, n = driver.cuDeviceGetCount()
        return None if int(err) == 0 and n > 0 else "no CUDA device is visible"
    except Exception as ex:
        return f"no CUDA driver ({ex})"


def _built() -> str:
    try:
        from varblock.runtime.manifest import load_manifest

        m = load_manifest()
    except FileNotFoundError as ex:
        return str(ex)
    counts = {a: info["count"] for a, info in m["arches"].items()}
    return f"{sum(counts.values())} kernels in {m['_dir']}: " + ", ".join(f"{a}: {n}" for a, n in counts.items())


def _warm_ms(torch, fn, warmup: int = 5, reps: int = 30) -> float:
    """Median time of one warm call in milliseconds: CUDA events around each of ``reps`` calls, after ``warmup``
    untimed calls (so module loading and first-launch costs are excluded)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def _first_call_ms(torch, fn) -> float:
    """Wall time of the first call including its synchronisation (module load, first launch)."""
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def _merge_demo(torch) -> None:
    s, t, h, d = 4, 4096, 16, 128
    op = torch.randn(s, t, h, d, device="cuda")
    lse = torch.randn(s, h, t, device="cuda") * 3
    lse[:, :, :7] = float("-inf")
    first = _first_call_ms(torch, lambda: varblock.merge_states(op, lse, out_dtype="bfloat16"))
    out, lse_out = varblock.merge_states(op, lse, out_dtype="bfloat16")
    torch.cuda.synchronize()
    w = torch.softmax(lse.double().permute(0, 2, 1), dim=0).nan_to_num(0.0)
    ref = (w[..., None] * op.double()).sum(0)
    err = (out.double() - ref).abs().max().item()
    ms = _warm_ms(torch, lambda: varblock.merge_states(op, lse, out=out, lse=lse_out))
    gbs = (op.numel() * 4 + lse.numel() * 4 + out.numel() * 2 + lse_out.numel() * 4) / ms / 1e6
    print(f"merge_states: S={s} total_q={t} H={h} D={d} fp32 -> bf16: max abs error vs float64 {err:.2e}; "
          f"warm call {ms:.3f} ms ({gbs:.0f} GB/s moved; median of 30, CUDA events); first call {first:.1f} ms "
          "(includes loading the cubin)")


def _attention_demo(torch) -> None:
    from varblock import layout as L
    from varblock.reference import attention_forward

    lens = [1000, 37, 0, 2048, 513]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    hq, hkv, d = 8, 2, 128
    lay = L.random_blocks(cu, cu, density=0.3, num_heads=hkv, head_mode="per_kv_head", causal=True, seed=0)
    q = torch.randn(int(cu[-1]), hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(int(cu[-1]), hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    p = varblock.plan(cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay)
    first = _first_call_ms(torch, lambda: varblock.attention(q, k, v, p))
    out, lse = varblock.attention(q, k, v, p, return_lse=True)
    torch.cuda.synchronize()
    ref, ref_lse = attention_forward(q.float().cpu().numpy(), k.float().cpu().numpy(), v.float().cpu().numpy(), lay)
    err = float(np.abs(out.float().cpu().numpy() - ref).max())
    ms = _warm_ms(torch, lambda: varblock.attention(q, k, v, p, out=out))
    print(f"attention: varlen batch {lens}, Hq={hq} Hkv={hkv} D={d} bf16, causal block-sparse density "
          f"{lay.density():.2f} ({p.num_tiles} tiles, {p.scheduler} schedule): max abs error vs float64 {err:.2e}; "
          f"warm call {ms:.3f} ms = {p.flops() / ms / 1e9:.0f} TFLOP/s on kept pairs (median of 30, CUDA events; "
          f"a problem this small is launch-bound, see benchmarks/ for speed); first call {first:.1f} ms "
          "(includes loading the cubin)")


def main() -> int:
    print(f"varblock {varblock.__version__}: {_built()}")
    why = _gpu_status()
    if why is not None:
        print(f"No GPU here ({why}). varblock's kernels are prebuilt cubins for NVIDIA GPUs (sm80, sm90, sm100, "
              "sm120); on a machine with one, this demo runs them on random inputs and checks them against the "
              "float64 references. Everything host-side (layouts, references, build, launch capture) works here.")
        return 0
    try:
        import torch
    except ImportError:
        print("A GPU is present, but the demo makes its inputs with torch, which is not installed "
              "(pip install torch).")
        return 0
    print(f"GPU: {torch.cuda.get_device_name()}")
    _attention_demo(torch)
    _merge_demo(torch)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
