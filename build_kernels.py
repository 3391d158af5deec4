#!/usr/bin/env python3
"""Compile varblock's CuTe DSL kernels ahead of time, on a machine with or without a GPU.

    python build_kernels.py --arch sm90,sm100          # build (incremental: unchanged variants are skipped)
    python build_kernels.py --only 'merge_states*'     # a subset of variants (fnmatch on the variant name)
    python build_kernels.py --check                    # exit 1 when a cubin is missing or stale

Writes cubins/<arch>/<variant>.cubin and what the runtime reads: cubins/manifest.json (the arches, and each kernel
family's params / requires lists stored once) and cubins/<arch>/variants.json (that arch's variants). Also the
worker's record cubins/<arch>/manifest.part.json (build only) and cubins/<arch>/capture.json (what the DSL's own
host code launched for each capture case: the reference that tests/test_launch_capture.py compares the runtime's
packer with). One process per arch: the DSL reads its target from CUTE_DSL_ARCH at import. Needs
`pip install -e .[build]` (nvidia-cutlass-dsl) and, for launch capture, gcc.
"""

from __future__ import annotations

import argparse
import ctypes
import fnmatch
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

from tools.capture.tma_decode import param_mismatches, read_stub_tensormaps  # noqa: E402
from varblock.kernels import registry  # noqa: E402
from varblock.kernels._artifacts import cubin_kernels, ptx_entries  # noqa: E402
from varblock.runtime.hashing import files_hash, text_hash  # noqa: E402
from varblock.runtime.manifest import MANIFEST_FORMAT, content_id, read_arch_variants, read_manifest  # noqa: E402
from varblock.runtime.params import grid_of, pack_bytes  # noqa: E402

SHARED_SOURCES = [SRC / "varblock/kernels/registry.py", SRC / "varblock/kernels/_dsl.py"]
STUB_SRC = ROOT / "tools/capture/capture_stub.c"
WORK = ROOT / "build" / "kernels"  # scratch: capture stub, DSL dumps (not shipped)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default=",".join(registry.DEFAULT_ARCHES),
                    help=f"comma-separated build arches, of {sorted(registry.ARCHES)} (default: all)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="arches compiled in parallel")
    ap.add_argument("--only", default=None, help="fnmatch pattern(s) on variant names, comma-separated")
    ap.add_argument("--check", action="store_true", help="only report missing or stale cubins (exit 1 if any)")
    ap.add_argument("--force", action="store_true", help="rebuild even when a cubin is up to date")
    ap.add_argument("--no-capture", action="store_true", help="skip launch capture (no gcc needed)")
    ap.add_argument("--out", default=str(ROOT / "cubins"), help="output folder (default: ./cubins)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.arches = [a.strip() for a in args.arch.split(",") if a.strip()]
    for a in args.arches:
        if a not in registry.ARCHES:
            ap.error(f"--arch: unknown arch {a!r}; known: {', '.join(registry.ARCHES)}")
    args.patterns = [p.strip() for p in args.only.split(",")] if args.only else None
    return args


def family_sources() -> dict[str, list[Path]]:
    """Per family, the files whose bytes stamp its cubins: its own sources plus the shared build helpers."""
    return {f.name: [*map(Path, f.sources), *SHARED_SOURCES] for f in registry.families()}


def family_hashes() -> dict[str, str]:
    return {name: files_hash(files) for name, files in family_sources().items()}


def variant_stamp(entry: dict, fam_hash: str) -> str:
    body = {k: v for k, v in entry.items() if k in ("family", "name", "arch", "key", "params", "block", "grid",
                                                       "requires", "extra")}
    return text_hash(fam_hash + json.dumps(body, sort_keys=True))


def selected(name: str, patterns: list[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatch(name, p) for p in patterns)


def built_variants(out: Path, arches: list[str]) -> dict[str, dict[str, dict]]:
    """arch -> variant name -> manifest entry, as built under ``out`` (empty when nothing is)."""
    if not (out / "manifest.json").exists():
        return {arch: {} for arch in arches}
    manifest = read_manifest(out)
    return {arch: {e["name"]: e for e in read_arch_variants(manifest, arch)} for arch in arches}


# ------------------------------------------------------------------------------------------------------------------
# --check
# ------------------------------------------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        built = built_variants(out, args.arches)
    except ValueError as ex:  # an older manifest format
        print(f"check: {ex}")
        return 1
    fh = family_hashes()
    problems = []
    for arch in args.arches:
        have = built[arch]
        for v in registry.all_variants(arch):
            if not selected(v.name, args.patterns):
                continue
            e = have.get(v.name)
            if e is None or not (out / arch / e["cubin"]).exists():
                problems.append(f"{arch}/{v.name}: missing")
            elif e["stamp"] != variant_stamp(v.manifest_entry(), fh[v.family]):
                problems.append(f"{arch}/{v.name}: stale (sources or variant definition changed)")
    for p in problems:
        print(p)
    print(f"check: {len(problems)} missing or stale" if problems else "check: all cubins up to date")
    return 1 if problems else 0


# ------------------------------------------------------------------------------------------------------------------
# driver: one worker process per arch
# ------------------------------------------------------------------------------------------------------------------


def drive(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stub = WORK / "libvbcapture.so"
    if not args.no_capture:
        stub.parent.mkdir(parents=True, exist_ok=True)
        subprocess.check_call(["gcc", "-O2", "-shared", "-fPIC", "-o", str(stub), str(STUB_SRC)])
    pending = list(args.arches)
    running: list[tuple[str, subprocess.Popen]] = []
    rc = 0
    t0 = time.time()
    while pending or running:
        while pending and len(running) < max(1, args.jobs):
            arch = pending.pop(0)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", arch, "--out", str(out)]
            cmd += ["--only", args.only] if args.only else []
            cmd += ["--force"] if args.force else []
            cmd += ["--no-capture"] if args.no_capture else []
            running.append((arch, subprocess.Popen(cmd)))
        time.sleep(0.2)
        for item in list(running):
            arch, proc = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode != 0:
                    print(f"[{arch}] FAILED (exit {proc.returncode})", flush=True)
                    rc = 1
    merge_manifest(out)
    print(f"build: {'FAILED' if rc else 'ok'} in {time.time() - t0:.1f} s -> {out / 'manifest.json'}", flush=True)
    return rc


def merge_manifest(out: Path) -> None:
    """Write ``manifest.json`` (each family's distinct params / requires lists once, under a content id) and
    ``<arch>/variants.json`` (entries naming those ids) from every arch's ``manifest.part.json`` under ``out``."""
    families: dict[str, dict] = {}
    arches: dict[str, dict] = {}
    dsl_version = None
    for part in sorted(out.glob("*/manifest.part.json")):
        arch = part.parent.name
        if arch not in registry.ARCHES:
            continue
        p = json.loads(part.read_text())
        dsl_version = dsl_version or p["dsl_version"]
        for name, h in p["family_hashes"].items():
            fam = families.setdefault(name, {"hash": h, "sources": [], "params": {}, "requires": {}})
            fam["hash"], fam["sources"] = h, p["family_sources"].get(name, fam["sources"])
        variants = []
        for e in p["variants"]:
            e = dict(e)
            for table in ("params", "requires"):
                cid = content_id(e[table])
                families[e["family"]][table].setdefault(cid, e[table])
                e[table] = cid
            variants.append(e)
        doc = {"format": MANIFEST_FORMAT, "arch": arch, "variants": variants}
        (out / arch / "variants.json").write_text(json.dumps(doc, indent=1) + "\n")
        arches[arch] = {"target": registry.ARCHES[arch]["target"], "runs_on": registry.ARCHES[arch]["runs_on"],
                        "variants": f"{arch}/variants.json", "count": len(variants)}
    manifest = {"format": MANIFEST_FORMAT, "dsl_version": dsl_version, "arches": dict(sorted(arches.items())),
                "families": dict(sorted(families.items()))}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------------------------
# worker: compile one arch's variants in this process
# ------------------------------------------------------------------------------------------------------------------


class _Cfg(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint32 * 3), ("block", ctypes.c_uint32 * 3), ("smem", ctypes.c_uint64),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.c_void_p), ("nattrs", ctypes.c_uint32)]


class _Attr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_int32), ("pad", ctypes.c_char * 4), ("val", ctypes.c_uint32 * 16)]


class Capture:
    """Runs a compiled DSL function's host code against the recording stub (see tools/capture/capture_stub.c)."""

    def __init__(self, stub_path: Path):
        self.lib = ctypes.CDLL(str(stub_path))
        self.lib.vbcap_param.restype = ctypes.POINTER(ctypes.c_ubyte)
        self.lib.vbcap_config.restype = ctypes.POINTER(_Cfg)
        self.lib.vbcap_attrs.restype = ctypes.POINTER(_Attr)
        self.lib.vbcap_setattr.restype = ctypes.POINTER(ctypes.c_int)

    def run(self, compiled, arg_bytes: list[bytes], param_sizes: list[int] | None = None) -> dict:
        """Run the host code with ``arg_bytes`` (one per host argument); record the kernel's parameters, whose
        sizes are ``param_sizes`` (default: the same as the host arguments')."""
        lib = self.lib
        lib.vbcap_reset()
        eng = compiled.engine
        init = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)(eng.raw_lookup("cuda_init"))
        load = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)(eng.raw_lookup("cuda_load_to_device"))
        handle, err, dev = ctypes.c_void_p(), ctypes.c_int32(0), ctypes.c_int32(0)
        phandle = ctypes.pointer(handle)

        def vp(o):
            return ctypes.cast(ctypes.pointer(o), ctypes.c_void_p)

        init((ctypes.c_void_p * 2)(vp(phandle), vp(err)))
        if err.value:
            raise RuntimeError(f"captured cuda_init failed: {err.value}")
        load((ctypes.c_void_p * 3)(vp(phandle), vp(dev), vp(err)))
        if err.value:
            raise RuntimeError(f"captured cuda_load_to_device failed: {err.value}")
        sizes = param_sizes if param_sizes is not None else [len(b) for b in arg_bytes]
        lib.vbcap_set_param_sizes(len(sizes), (ctypes.c_int * len(sizes))(*sizes))
        bufs = [ctypes.create_string_buffer(b, len(b)) for b in arg_bytes]
        result = ctypes.c_int32(-1)
        packed = (ctypes.c_void_p * (len(bufs) + 1))(*[ctypes.addressof(b) for b in bufs], ctypes.addressof(result))
        compiled.capi_func(packed)
        if result.value != 0 or lib.vbcap_launches() != 1 or lib.vbcap_failed_asserts():
            raise RuntimeError(f"host code returned {result.value} after {lib.vbcap_launches()} launches and "
                               f"{lib.vbcap_failed_asserts()} failed runtime calls")
        cfg = lib.vbcap_config().contents
        attrs = {int(lib.vbcap_attrs()[i].id): list(lib.vbcap_attrs()[i].val[:3]) for i in range(cfg.nattrs)}
        return {
            "grid": list(cfg.grid), "block": list(cfg.block), "smem": int(cfg.smem), "attrs": attrs,
            "params_hex": [bytes(lib.vbcap_param(i)[: sizes[i]]).hex() for i in range(len(sizes))],
            "func_attrs": [list(lib.vbcap_setattr(i)[:2]) for i in range(lib.vbcap_num_setattr())],
            "tensormaps": read_stub_tensormaps(lib),
        }


def _smem_from_host_ir(compiled) -> int | None:
    """Dynamic shared memory is a constant in the lowered host code (launch-config field 2)."""
    low = str(compiled.ir_module)
    mg = re.search(r"(%\d+) = llvm.getelementptr %\d+\[0, 2\] : \(!llvm.ptr\) -> !llvm.ptr, "
                   r"!llvm.struct<\(array<3 x i32>, array<3 x i32>, i64, ptr, ptr, i32\)>", low)
    if not mg:
        return None
    ms = re.search(r"llvm.store (%\d+), " + re.escape(mg.group(1)) + r" : i64", low)
    mc = ms and re.search(re.escape(ms.group(1)) + r" = llvm.mlir.constant\((\d+) : i64\)", low)
    return int(mc.group(1)) if mc else None


def build_variant(variant: registry.Variant, family: registry.Family, arch_dir: Path, capture: Capture | None
                  ) -> tuple[dict, list]:
    import cutlass.cute as cute

    host, cargs = family.compile_args(variant)
    t0 = time.time()
    compiled = cute.compile(host, *cargs)
    seconds = time.time() - t0
    art = compiled.artifacts
    cubin, ptx = art.CUBIN, art.PTX
    entries = list(compiled.kernel_info.keys())
    if len(entries) != 1:
        raise RuntimeError(f"{variant.name}: expected one kernel, got {entries}")
    entry = entries[0]
    ptx_sizes = ptx_entries(ptx)[entry]
    ck = cubin_kernels(cubin)[entry]
    declared = [p.size for p in variant.params]
    if declared != ptx_sizes or declared != [s for _, s in ck["params"]]:
        raise RuntimeError(f"{variant.name}: declared parameter sizes {declared} != PTX {ptx_sizes} / cubin "
                           f"{ck['params']}: the registry's Param list does not match the kernel signature")
    if ck.get("reqntid") and list(variant.block) != ck["reqntid"]:
        raise RuntimeError(f"{variant.name}: block {variant.block} != kernel's required {ck['reqntid']}")
    entry_d = variant.manifest_entry()
    entry_d.update({"entry": entry, "cubin": f"{variant.name}.cubin", "regs": ck.get("regs"),
                    "frame_bytes": ck.get("frame_bytes", 0),
                    "static_smem_bytes": ck["static_smem"], "param_offsets": [o for o, _ in ck["params"]],
                    "compile_seconds": round(seconds, 2), "cluster_dims": None, "pdl": False, "cooperative": False})
    captures = []
    smem_ir = _smem_from_host_ir(compiled)
    if capture is not None:
        smems = set()
        host_params = [{"name": p.name, "kind": p.kind} for p in variant.host_params] or entry_d["params"]
        for case in family.capture_cases(variant):
            got = capture.run(compiled, pack_bytes(host_params, case), [p["size"] for p in entry_d["params"]])
            mine_grid = list(grid_of(variant.grid, case))
            if got["grid"] != mine_grid:
                raise RuntimeError(f"{variant.name}: grid formula gives {mine_grid}, DSL launched {got['grid']}")
            if got["block"] != list(variant.block):
                raise RuntimeError(f"{variant.name}: DSL launched block {got['block']} != {variant.block}")
            bad = param_mismatches(entry_d["params"], case, got["params_hex"], got["tensormaps"])
            if bad:
                raise RuntimeError(f"{variant.name}: packed parameters differ from the DSL's: " + "; ".join(bad))
            smems.add(got["smem"])
            entry_d["cluster_dims"] = got["attrs"].get(4) if any(got["attrs"].get(4, [0])) else None
            entry_d["pdl"] = bool(got["attrs"].get(6, [0])[0])
            entry_d["cooperative"] = bool(got["attrs"].get(2, [0])[0])
            captures.append({"values": case, **got, "attrs": {str(k): v for k, v in got["attrs"].items()}})
        if len(smems) != 1:
            raise RuntimeError(f"{variant.name}: dynamic shared memory varies across shapes: {smems}")
        entry_d["dynamic_smem_bytes"] = smems.pop()
        if smem_ir is not None and smem_ir != entry_d["dynamic_smem_bytes"]:
            raise RuntimeError(f"{variant.name}: host IR smem {smem_ir} != captured {entry_d['dynamic_smem_bytes']}")
    else:
        if smem_ir is None:
            raise RuntimeError(f"{variant.name}: cannot find the dynamic smem size without capture")
        entry_d["dynamic_smem_bytes"] = smem_ir
    (arch_dir / entry_d["cubin"]).write_bytes(cubin)
    return entry_d, captures


def worker(args: argparse.Namespace) -> int:
    arch = args.worker
    out = Path(args.out)
    arch_dir = out / arch
    arch_dir.mkdir(parents=True, exist_ok=True)
    os.environ["CUTE_DSL_ARCH"] = registry.ARCHES[arch]["target"]
    os.environ["CUTE_DSL_KEEP"] = "ptx,cubin"
    os.environ["CUTE_DSL_DUMP_DIR"] = str(WORK / f"dump_{arch}")
    os.makedirs(os.environ["CUTE_DSL_DUMP_DIR"], exist_ok=True)
    stub = WORK / "libvbcapture.so"
    if not args.no_capture:
        os.environ["CUTE_DSL_LIBS"] = str(stub)
    from importlib.metadata import version

    capture = None if args.no_capture else Capture(stub)
    fh = family_hashes()
    part_path = arch_dir / "manifest.part.json"
    cap_path = arch_dir / "capture.json"
    old = {e["name"]: e for e in (json.loads(part_path.read_text())["variants"] if part_path.exists() else [])}
    old_caps = json.loads(cap_path.read_text()) if cap_path.exists() else {}
    entries, caps, n_built, n_skip, failures = [], {}, 0, 0, []
    for fam in registry.families():
        for v in fam.variants_for(arch):
            stamp = variant_stamp(v.manifest_entry(), fh[fam.name])
            prev = old.get(v.name)
            fresh = prev is not None and prev["stamp"] == stamp and (arch_dir / prev["cubin"]).exists()
            if not selected(v.name, args.patterns) or (fresh and not args.force):
                if prev is not None:
                    entries.append(prev)
                    if v.name in old_caps:
                        caps[v.name] = old_caps[v.name]
                n_skip += 1
                continue
            try:
                e, c = build_variant(v, fam, arch_dir, capture)
            except Exception as ex:  # report every failing variant, then fail the build
                failures.append(f"{v.name}: {type(ex).__name__}: {ex}")
                print(f"[{arch}] FAIL {v.name}: {type(ex).__name__}: {ex}", flush=True)
                continue
            e["stamp"] = stamp
            entries.append(e)
            if c:
                caps[v.name] = c
            n_built += 1
            regs = f", regs {e['regs']}, stack frame {e['frame_bytes']} B" if e.get("regs") else ""
            print(f"[{arch}] {v.name}: {e['compile_seconds']:.2f} s{regs}, smem "
                  f"{e['dynamic_smem_bytes']} B, {len(c)} capture cases ok", flush=True)
    part = {"arch": arch, "target": registry.ARCHES[arch]["target"], "dsl_version": version("nvidia-cutlass-dsl"),
            "family_hashes": fh, "variants": entries,
            "family_sources": {n: [str(f.relative_to(SRC)) for f in fs] for n, fs in family_sources().items()}}
    part_path.write_text(json.dumps(part, indent=1) + "\n")
    cap_path.write_text(json.dumps(caps, indent=1) + "\n")
    print(f"[{arch}] built {n_built}, up to date or not selected {n_skip}, failed {len(failures)}", flush=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return check(args)
    if args.worker:
        return worker(args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
