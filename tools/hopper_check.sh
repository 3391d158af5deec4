#!/usr/bin/env bash
# First GPU check of the Hopper forward family (attention_fwd_sm90), one command on an H200:
#   PYTHONPATH=src bash tools/hopper_check.sh            (cubins carried; VARBLOCK_CUBIN_DIR honoured)
# 0. the SASS check of tests/test_attention_sm90.py (when cuobjdump is found);
# 1. smoke: one tile (1 head, 128 tokens, d128, dense), then 2 chunks, then persistent - each under a timeout, with a
#    clear printout (max error vs float64, LSE, unwritten outputs); a hang shows as "TIMEOUT";
# 2. tests/test_attention_sm90_gpu.py (stops at the first failure);
# 3. a short benchmark, both varblock families side by side (no FlexAttention: keeps the command short).
# The whole forward suite against this family is a separate command (see docs/hopper.md).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-src}"
status=0

echo "== SASS check (no predicated R2UR: illegal on sm_90a) =="
export VARBLOCK_CUOBJDUMP="${VARBLOCK_CUOBJDUMP:-$(command -v cuobjdump || ls /usr/local/cuda/bin/cuobjdump 2>/dev/null || true)}"
python -m pytest -q -rs tests/test_attention_sm90.py -k sass || status=1

echo "== smoke (attention_fwd_sm90) =="
timeout -k 5 120 python - <<'EOF' || { rc=$?; [ $rc -ge 124 ] && echo "SMOKE TIMEOUT (rc $rc): the kernel probably hangs"; status=1; }
import time
import numpy as np
import torch
import varblock
from varblock import layout as L

print(torch.cuda.get_device_name(), "cc", torch.cuda.get_device_capability(), flush=True)
b = varblock.families.binding("attention_fwd", "attention_fwd_sm90")
e = b.entry("sm90", 128)
assert e is not None, "no attention_fwd_sm90 cubins in the manifest (build: python build_kernels.py --arch sm90)"
print("variant", e["name"], "smem", e["dynamic_smem_bytes"], "block", e["block"], flush=True)


def ref(q, k, v, cu, causal):
    """float64 attention per head, one sequence."""
    qd, kd, vd = (x.double().cpu().numpy() for x in (q, k, v))
    t, hq, d = qd.shape
    out, lse = np.zeros_like(qd), np.zeros((hq, t))
    for h in range(hq):
        s = qd[:, h] @ kd[:, h * kd.shape[1] // hq].T / np.sqrt(d)
        if causal:
            s = np.where(np.arange(s.shape[1])[None] <= np.arange(t)[:, None] + s.shape[1] - t, s, -np.inf)
        m = s.max(1, keepdims=True)
        p = np.exp(s - m)
        out[:, h] = p @ vd[:, h * kd.shape[1] // hq] / p.sum(1, keepdims=True)
        lse[h] = np.log(p.sum(1)) + m[:, 0]
    return out, lse


def case(name, n, causal, scheduler):
    torch.manual_seed(0)
    q, k, v = (torch.randn(n, 1, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cu = np.array([0, n], np.int32)
    p = varblock.plan(cu, num_heads_q=1, num_heads_kv=1, head_dim=128, causal=causal, backend="attention_fwd_sm90",
                      scheduler=scheduler, cache=False)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((1, n), float("nan"), device="cuda")
    t0 = time.perf_counter()
    varblock.attention(q, k, v, p, out=out, lse=lse, return_lse=True)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) * 1e3
    ro, rl = ref(q, k, v, cu, causal)
    err = np.abs(out.double().cpu().numpy() - ro).max()
    lerr = np.abs(lse.double().cpu().numpy() - rl).max()
    base = np.abs(torch.from_numpy(ro).to(torch.bfloat16).double().numpy() - ro).max()
    ok = np.isfinite(err) and err <= 2 * base + 1e-2 and lerr < 1e-2
    print(f"{'OK  ' if ok else 'FAIL'} {name}: family {p.family}, {p.num_tiles} tiles, scheduler {p.scheduler}, "
          f"max|out-ref| {err:.3e} (bf16 rounding {base:.3e}), max|lse-ref| {lerr:.3e}, "
          f"unwritten {int(torch.isnan(out).sum())} out / {int(torch.isnan(lse).sum())} lse, {dt:.1f} ms", flush=True)
    return ok


oks = [case("one tile, one chunk", 128, False, "single"),
       case("two tiles of two chunks (overlap loop)", 256, False, "single"),
       case("causal 1000 tokens, 8 tiles", 1000, True, "single"),
       case("causal 1000 tokens, persistent", 1000, True, "persistent")]
raise SystemExit(0 if all(oks) else 1)
EOF

echo "== tests/test_attention_sm90_gpu.py =="
timeout -k 5 300 python -m pytest -q -x -rs tests/test_attention_sm90_gpu.py || status=1

echo "== benchmark (W1, W2; both families; no FlexAttention) =="
timeout -k 5 150 python benchmarks/bench_attention.py --workloads W1,W2 --densities 1.0,0.5,0.1 --no-flex || status=1

echo "hopper_check: $([ $status -eq 0 ] && echo PASSED || echo FAILED)"
exit $status
