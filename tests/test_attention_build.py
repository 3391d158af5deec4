"""Build-time tests of the attention_fwd_mma family: variant table (no DSL), CPU compile of a few variants (DSL).

The compile tests run the DSL in a subprocess per arch (CUTE_DSL_ARCH is read at import) and check the entry name,
the parameter ABI (sizes from the PTX signature), the block size and the dynamic shared memory the host code asks
for (equal to ``smem_bytes``). Full builds with launch capture are build_kernels.py's job.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from varblock.kernels import attention_fwd_mma as fam
from varblock.kernels import registry

ROOT = Path(__file__).resolve().parent.parent
HAVE_DSL = importlib.util.find_spec("cutlass") is not None


@pytest.mark.parametrize("arch", registry.DEFAULT_ARCHES)
def test_variant_table(arch):
    vs = fam.variants(arch)
    assert len(vs) == len(fam.DTYPES) * len(fam.HEAD_DIMS)
    assert len({v.name for v in vs}) == len(vs)
    for v in vs:
        tm, tn, nw = v.extra["tile_m"], v.extra["tile_n"], v.extra["num_warps"]
        assert (tm, tn, nw) == fam.tile_config(arch, v.key["head_dim"])
        assert v.block == (32 * nw, 1, 1) and v.grid == ("num_ctas", 1, 1)
        assert tm % (16 * nw) == 0 and tn % 64 == 0
        limit = fam.SMEM_LIMIT_PORTABLE_SM8X if arch == "sm80" else fam.SMEM_LIMIT[arch]
        assert v.extra["smem_bytes"] == fam.smem_bytes(tm, tn, v.key["head_dim"]) <= limit
        assert v.extra["entry"] == fam.entry_name(v) == f"vb_{v.name}_0"
        assert [p.name for p in v.params] == list(fam.PARAM_NAMES)
        # every register the accumulators need fits: O (tile_m * D) and S (tile_m * tile_n) per thread
        acc = (tm * v.key["head_dim"] + tm * tn) // (32 * nw)
        assert acc <= 192, (v.name, acc)


def test_param_abi():
    """The scheduler parameters, then num_sink_tokens, are appended after mask_flags: the offsets of the older
    parameters are unchanged."""
    names = list(fam.PARAM_NAMES)
    assert names[:33] == [
        "q", "k", "v", "o", "lse", "cu_seqlens_q", "cu_seqlens_k", "tiles", "chunks", "doc_q", "doc_k", "tok_mask",
        "q_stride_tok", "q_stride_head", "k_stride_tok", "k_stride_head", "v_stride_tok", "v_stride_head",
        "o_stride_tok", "o_stride_head", "lse_stride_head", "tm_stride_head", "tm_stride_tok", "tm_stride_blk",
        "num_tiles", "softmax_scale_log2", "window_left", "window_right", "qhead_per_kvhead", "pack_gqa",
        "tok_block_k", "tok_head_div", "mask_flags"]
    assert names[33:] == ["num_tiles_ptr", "tile_counter", "debug_counts", "persistent", "num_ctas", "num_sink_tokens"]
    # natural alignment (what the PTX signature and the cubin's KPARAM_INFO give)
    off, offsets = 0, {}
    for p in fam.PARAMS:
        off = (off + p.size - 1) // p.size * p.size
        offsets[p.name] = off
        off += p.size
    assert offsets["num_tiles"] == 192 and offsets["mask_flags"] == 224
    assert [offsets[n] for n in names[33:]] == [232, 240, 248, 256, 260, 264] and off == 268
    kinds = {p.name: (p.kind, p.align) for p in fam.PARAMS}
    assert kinds["num_tiles_ptr"] == kinds["tile_counter"] == kinds["debug_counts"] == ("ptr", 4)
    assert kinds["persistent"][0] == kinds["num_ctas"][0] == kinds["num_sink_tokens"][0] == "i32"


def test_capture_cases_cover_the_schedule():
    v = fam.variants("sm90")[0]
    cases = fam.capture_cases(v)
    assert {c["persistent"] for c in cases} == {0, 1}
    for name in ("num_tiles_ptr", "tile_counter", "debug_counts"):
        assert {c[name] == 0 for c in cases} == {True, False}, name
    assert any(c["num_tiles"] == 0 and c["num_tiles_ptr"] != 0 for c in cases)
    assert all(c["num_ctas"] >= 1 for c in cases)
    assert {c["num_sink_tokens"] == 0 for c in cases} == {True, False}


def test_module_imports_without_dsl():
    code = "import sys; import varblock.kernels.attention_fwd_mma as m; m.variants('sm90'); " \
           "print('cutlass' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.stdout.strip() == "False"


_COMPILE = textwrap.dedent("""
    import inspect, json, os, re, sys
    sys.path.insert(0, {src!r})
    from varblock.kernels import attention_fwd_mma as fam, registry
    os.environ["CUTE_DSL_ARCH"] = registry.ARCHES[{arch!r}]["target"]
    os.environ["CUTE_DSL_KEEP"] = "ptx"
    os.environ["CUTE_DSL_DUMP_DIR"] = {dump!r}
    import cutlass.cute as cute
    out = {{}}
    for v in fam.variants({arch!r}):
        if v.name not in {names!r}:
            continue
        host, args = fam.compile_args(v)
        c = cute.compile(host, *args)
        ptx = c.artifacts.PTX
        m = re.search(r"\\.entry\\s+(\\w+)\\s*\\((.*?)\\)", ptx, re.S)
        sizes = []
        for p in m.group(2).split(","):
            p = p.strip()
            if not p:
                continue
            mb = re.search(r"\\.b8\\s+\\w+\\[(\\d+)\\]", p)
            sizes.append(int(mb.group(1)) if mb else int(re.match(r"\\.param\\s+\\.[a-z](\\d+)", p).group(1)) // 8)
        low = str(c.ir_module)
        consts = [int(x) for x in re.findall(r"llvm.mlir.constant\\((\\d+) : i64\\)", low)]
        reqntid = re.search(r"\\.reqntid\\s+(\\d+),\\s*(\\d+),\\s*(\\d+)", ptx)
        out[v.name] = dict(entries=list(c.kernel_info.keys()), ptx_entry=m.group(1), sizes=sizes,
                           host_params=list(inspect.signature(host).parameters),
                           smem_in_host=fam.smem_bytes(v.extra["tile_m"], v.extra["tile_n"], v.key["head_dim"])
                           in consts, reqntid=[int(x) for x in reqntid.groups()] if reqntid else None)
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.build
@pytest.mark.skipif(not HAVE_DSL, reason="nvidia-cutlass-dsl not installed")
@pytest.mark.parametrize("arch,names", [
    ("sm80", ["attention_fwd_mma_bf16_d128", "attention_fwd_mma_fp16_d96"]),
    ("sm90", ["attention_fwd_mma_bf16_d256"]),
    ("sm120", ["attention_fwd_mma_fp16_d192"]),
])
def test_compile(arch, names, tmp_path):
    code = _COMPILE.format(src=str(ROOT / "src"), arch=arch, dump=str(tmp_path), names=names)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert sorted(res) == sorted(names)
    by_name = {v.name: v for v in fam.variants(arch)}
    for name, r in res.items():
        v = by_name[name]
        assert r["entries"] == [fam.entry_name(v)] and r["ptx_entry"] == fam.entry_name(v)
        assert r["sizes"] == [p.size for p in v.params]
        assert r["host_params"] == list(fam.PARAM_NAMES)  # the host signature is generated from PARAMS
        assert r["smem_in_host"], "smem_bytes() is not the size the host code launches with"
        if r["reqntid"]:
            assert r["reqntid"] == list(v.block)


def _i32(x):
    """int64 -> int32 two's-complement wrap (the kernel's Int32 arithmetic)."""
    return ((np.asarray(x, np.int64) + 2**31) % 2**32) - 2**31


@pytest.mark.parametrize("formulation", ["unsigned", "pair"])
def test_sink_left_bound_formulations(formulation):
    """The two int32 formulations of the partial-chunk left bound in ``common/mask.py`` (``ElementMask._band``)
    mask exactly the keys j with num_sink_tokens <= j < a - window_left (a = i + diag), over the parameter ranges
    the family accepts (windows and sinks up to 2**30, keys and diagonal positions of int32 sequences)."""
    rng = np.random.default_rng(1)
    n = 200_000
    a = rng.integers(-(2**20), 2**24, n)  # i + len_k - len_q
    wl = np.where(rng.random(n) < 0.1, -1, rng.integers(0, 2**12, n))
    wl[rng.random(n) < 0.01] = 2**30
    sinks = np.where(rng.random(n) < 0.3, 0, rng.integers(0, 300, n))
    sinks[rng.random(n) < 0.01] = 2**30
    k_start = rng.integers(0, 2**24, n) // 64 * 64
    k_start = np.where(rng.random(n) < 0.5, rng.integers(0, 4, n) * 64, k_start)  # near the sinks
    col0 = rng.integers(0, 4, n) * 2
    cl = rng.integers(0, 16, n) // 2 * 8 + rng.integers(0, 2, n)
    j = k_start + col0 + cl
    want = (wl >= 0) & (j >= sinks) & (j < a - wl)
    sink_end = _i32(sinks - k_start - col0)
    if formulation == "unsigned":
        width = np.where(wl >= 0, np.maximum(_i32(a - wl - sinks), 0), 0)
        got = (_i32(cl - sink_end) % 2**32) < width
    else:
        lo = np.where(wl >= 0, _i32(a - wl - k_start - col0), -(1 << 30))
        got = (cl < lo) & (cl >= sink_end)
    assert np.array_equal(got, want)
