"""Build-time test (needs the CuTe DSL and gcc): host code that encodes a TMA descriptor through the runtime library
(``cutlass.experimental`` ``create_tensor_map_tiled`` -> ``_cuTensorMapEncodeTiled``) runs against the capture stub,
which records every encode argument; the records equal the recipe of the same descriptor. This proves the stub's
``_cuTensorMapEncodeTiled`` has the signature the DSL's lowered host code calls."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.capture.tma_decode import STUB_MARKER, param_mismatches  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("cutlass") is None or shutil.which("gcc") is None,
                                reason="needs nvidia-cutlass-dsl and gcc (build dependencies)")

_SCRIPT = textwrap.dedent("""
    import json, struct, sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/src"]
    import cutlass, cutlass.cute as cute
    from cutlass import BFloat16, Int32, Int64
    from cutlass.experimental.cuda.tensor_map import (TensorMap, TensorMapL2Promotion, TensorMapSwizzle,
                                                      create_tensor_map_tiled)
    import build_kernels

    @cute.kernel
    def probe_kernel(desc: cutlass.GridConstant[TensorMap], rows: Int32):
        pass

    @cute.jit
    def host(src: Int64, rows: Int32, cols: Int32, ld_src16: Int64):
        desc = create_tensor_map_tiled(src, BFloat16, [cols, rows], [ld_src16], [64, 64],
                                       swizzle=TensorMapSwizzle.s128b, l2_promotion=TensorMapL2Promotion.l2_128b)
        probe_kernel(desc, rows).launch(grid=[1, 1, 1], block=[32, 1, 1])

    compiled = cute.compile(host, Int64(0), Int32(1), Int32(1), Int64(1))
    cap = build_kernels.Capture(Path(sys.argv[2]))
    args = [struct.pack("<q", 0x7F0000001000), struct.pack("<i", 300), struct.pack("<i", 136),
            struct.pack("<q", 256 * 2 // 16)]
    got = cap.run(compiled, args, [128, 4])
    print(json.dumps({"params_hex": got["params_hex"], "tensormaps": got["tensormaps"]}))
""")


def test_stub_records_the_dsl_runtime_encode(tmp_path):
    so = tmp_path / "libvbcapture.so"
    subprocess.check_call(["gcc", "-O2", "-shared", "-fPIC", "-o", str(so), str(ROOT / "tools/capture/capture_stub.c")])
    dump = tmp_path / "dump"
    dump.mkdir()
    env = dict(os.environ, CUTE_DSL_ARCH="sm_90a", CUTE_DSL_KEEP="ptx,cubin", CUTE_DSL_DUMP_DIR=str(dump),
               CUTE_DSL_LIBS=str(so))
    script = tmp_path / "probe_route2.py"  # the DSL compiles from source files only
    script.write_text(_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(ROOT), str(so)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert bytes.fromhex(got["params_hex"][0])[:8] == STUB_MARKER
    (rec,) = got["tensormaps"]
    assert rec == {"dtype": 9, "address": 0x7F0000001000, "dims": [136, 300], "strides": [512], "box": [64, 64],
                   "element_strides": [1, 1], "interleave": 0, "swizzle": 3, "l2_promotion": 2, "oob_fill": 0}
    recipe = {"pointer": "src", "dtype": "bfloat16", "dims": ["cols", "rows"], "strides": [["mul", "ld_src", 2]],
              "box": [64, 64], "element_strides": [1, 1], "interleave": "none", "swizzle": "128B",
              "l2_promotion": "128B", "oob_fill": "none"}
    params = [{"name": "desc", "kind": "tensormap", "size": 128, "recipe": recipe},
              {"name": "rows", "kind": "i32", "size": 4}]
    values = {"src": 0x7F0000001000, "rows": 300, "cols": 136, "ld_src": 256}
    assert param_mismatches(params, values, got["params_hex"], got["tensormaps"]) == []
    assert param_mismatches(params, dict(values, ld_src=264), got["params_hex"], got["tensormaps"]) != []
