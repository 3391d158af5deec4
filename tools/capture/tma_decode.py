"""Launch-capture checks for struct parameters (build time and tests; plain Python, no GPU).

Host code that encodes through the runtime library (``cutlass.experimental`` ``TensorMap``) calls
``_cuTensorMapEncodeTiled``, which the capture stub records argument by argument: those descriptors are compared
with the recipe on every argument. The DSL's own TMA atoms (``make_tiled_tma_atom``) do not call it: the host
code bit-packs the descriptor itself, writing words 0-7 (bytes 64-127 stay uninitialised), so on a CPU the bytes
cannot be compared with the driver's encoding. Instead :func:`decode` reads the fields back (layout decoded
empirically, see shared/aot/FINDINGS.md section 3) and :func:`param_mismatches` compares them with what the
recipe gives for the same values: address, rank, extents, byte strides, box, swizzle and element type. Not
compared: the L2-promotion / OOB bits (the driver and the DSL set them differently; both ran correctly on an
H200) and the high bits of strides of 64 GiB or more (never exercised). tests/test_tma_gpu.py decodes the
driver's own encoding with the same function, which checks this decoder against the real encoder.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from varblock.runtime.params import pack_param
from varblock.runtime.tensormap import TensorMapArgs, tensormap_args

#: first bytes of the marker descriptor the stub's _cuTensorMapEncodeTiled writes (then a u32 record index)
STUB_MARKER = b"VBTMSTUB"
#: ranks the decoder reads (the word layout of dimension 4 was not decoded)
MAX_RANK = 4
#: element-type code in bits 7-11 of word 1, as the DSL writes it (float16 and float32 equal the driver enum;
#: bfloat16 is 10, not the enum's 9). Empirical: tests/test_tma_gpu.py decodes the driver's encoding with it.
#: Only the observed types are listed; for others the element type is not compared.
HW_DTYPE = {"float16": 6, "float32": 7, "bfloat16": 10}


def decode(desc: bytes) -> dict[str, Any]:
    """Fields of a sm90/sm100 TMA descriptor (words 0-7): address, rank, dims, strides (bytes, dims 1..),
    box and swizzle code."""
    if len(desc) < 64:
        raise ValueError(f"a TMA descriptor has 128 bytes (64 decoded), got {len(desc)}")
    w = struct.unpack_from("<8Q", desc)
    rank = ((w[1] >> 4) & 7) + 1
    if rank > MAX_RANK:
        raise ValueError(f"decoding rank {rank} descriptors is not supported (at most {MAX_RANK})")
    dims = [((w[4 + i // 2] >> (32 * (i % 2))) & 0xFFFFFFFF) + 1 for i in range(rank)]
    words = [w[1] >> 32, w[2] & 0xFFFFFFFF, w[2] >> 32][: rank - 1]
    # bits 32+ of each (stride >> 4) live in word 3, one byte per stride
    strides = [(lo | (((w[3] >> (8 * i)) & 0xFF) << 32)) << 4 for i, lo in enumerate(words)]
    box = [((w[6] >> 56) & 0xFF) + 1] + [((w[7] >> (8 * i)) & 0xFF) + 1 for i in range(rank - 1)]
    return {"address": w[0], "rank": rank, "dims": dims, "strides": strides, "box": box,
            "swizzle": (w[1] >> 13) & 3, "dtype_code": (w[1] >> 7) & 0x1F}


def expected_fields(args: TensorMapArgs, dtype: str) -> dict[str, Any]:
    """What :func:`decode` must give for a descriptor encoded from ``args`` (element type ``dtype``; its code is
    left out when not in ``HW_DTYPE``)."""
    out = {"address": args.address, "rank": args.rank, "dims": list(args.dims), "strides": list(args.strides),
           "box": list(args.box), "swizzle": args.swizzle}
    if dtype in HW_DTYPE:
        out["dtype_code"] = HW_DTYPE[dtype]
    return out


class StubTensorMap(ctypes.Structure):
    """One ``_cuTensorMapEncodeTiled`` call recorded by tools/capture/capture_stub.c (``vb_tmap``)."""

    _fields_ = [("dtype", ctypes.c_int32), ("rank", ctypes.c_uint32), ("address", ctypes.c_uint64),
                ("dims", ctypes.c_uint64 * 5), ("strides", ctypes.c_uint64 * 5), ("box", ctypes.c_uint32 * 5),
                ("element_strides", ctypes.c_uint32 * 5), ("interleave", ctypes.c_int32),
                ("swizzle", ctypes.c_int32), ("l2_promotion", ctypes.c_int32), ("oob_fill", ctypes.c_int32)]


def read_stub_tensormaps(lib: Any) -> list[dict[str, Any]]:
    """The encode calls the stub recorded since its last reset, as :class:`TensorMapArgs` field dicts."""
    lib.vbcap_tensormap.restype = ctypes.POINTER(StubTensorMap)
    out = []
    for i in range(lib.vbcap_num_tensormaps()):
        t = lib.vbcap_tensormap(i).contents
        r = int(t.rank)
        out.append({"dtype": t.dtype, "address": int(t.address), "dims": list(t.dims[:r]),
                    "strides": list(t.strides[: r - 1]), "box": list(t.box[:r]),
                    "element_strides": list(t.element_strides[:r]), "interleave": t.interleave,
                    "swizzle": t.swizzle, "l2_promotion": t.l2_promotion, "oob_fill": t.oob_fill})
    return out


def args_fields(args: TensorMapArgs) -> dict[str, Any]:
    """``args`` in the form :func:`read_stub_tensormaps` records (every encode argument)."""
    return {"dtype": args.dtype, "address": args.address, "dims": list(args.dims), "strides": list(args.strides),
            "box": list(args.box), "element_strides": list(args.element_strides), "interleave": args.interleave,
            "swizzle": args.swizzle, "l2_promotion": args.l2_promotion, "oob_fill": args.oob_fill}


def _descriptor_mismatch(p: Mapping[str, Any], values: Mapping[str, Any], got: bytes,
                         encoded: Sequence[Mapping[str, Any]]) -> str | None:
    args = tensormap_args(p["name"], p["recipe"], values)
    if got[:8] == STUB_MARKER:  # encoded through the runtime library: every argument was recorded
        (idx,) = struct.unpack_from("<I", got, 8)
        if idx >= len(encoded):
            return f"{p['name']}: stub descriptor #{idx} was not recorded"
        mine, dsl = args_fields(args), dict(encoded[idx])
    else:  # bit-packed by the DSL's host code
        mine = expected_fields(args, p["recipe"]["dtype"])
        dsl = {k: v for k, v in decode(got).items() if k in mine}
    return None if dsl == mine else f"{p['name']}: DSL descriptor is {dsl}, the recipe gives {mine}"


def param_mismatches(params: Sequence[Mapping[str, Any]], values: Mapping[str, Any],
                     captured_hex: Sequence[str], encoded: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """Differences between the DSL's captured parameter bytes and the runtime's packing of ``values`` (empty when
    every parameter agrees: scalars, pointers and ``i32xN`` byte for byte; descriptors field by field, or every
    encode argument when the host code encoded through the stub, whose records are ``encoded``)."""
    if len(params) != len(captured_hex):
        return [f"{len(params)} params declared, {len(captured_hex)} captured"]
    bad = []
    for p, hx in zip(params, captured_hex):
        got = bytes.fromhex(hx)
        if p["kind"] == "tensormap":
            msg = _descriptor_mismatch(p, values, got, encoded)
            if msg:
                bad.append(msg)
        else:
            mine_b = pack_param(p, values)
            if mine_b != got:
                bad.append(f"{p['name']}: runtime packs {mine_b.hex()}, DSL passed {hx}")
    return bad
