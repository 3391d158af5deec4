"""The ``tensormap`` parameter kind on an H200: the TMA copy kernel (descriptors encoded by the runtime from the
manifest recipe) copies bit-exactly, clips tail tiles, writes nothing outside ``dst``, and re-encodes when pointers
or shapes change; the driver's descriptors decode to the recipe and agree with the DSL's captured ones."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.capture.tma_decode import decode, expected_fields  # noqa: E402
from varblock.runtime import tensormap  # noqa: E402

pytestmark = pytest.mark.gpu

DTYPES = ("bfloat16", "float16", "float32")
#: odd row counts and widths that are not multiples of the tile (64 or 32 columns), rows of whole 16-byte units
SHAPES = [(1, 8), (3, 72), (113, 200), (1023, 1000), (64, 64), (130, 40), (4100, 136), (2, 1032)]
_INT = {"bfloat16": "int16", "float16": "int16", "float32": "int32"}
_POISON = {"int16": -21555, "int32": -1414812757}  # 0xABCD, 0xABABABAB: NaN payloads, never random-equal here


def _per16(dtype: str) -> int:
    return 16 // tensormap.DTYPES[dtype][1]


def _padded(torch, rows: int, cols: int, dtype: str, extra: int, fill: int | None):
    """A [rows, cols] view into a [rows + 1, ld] buffer (ld = cols rounded up to 16 B, plus ``extra`` groups):
    random bits, or ``fill`` everywhere. Returns (view, buffer viewed as ints)."""
    it = getattr(torch, _INT[dtype])
    p = _per16(dtype)
    ld = -(-cols // p) * p + extra * p
    if fill is None:
        info = torch.iinfo(it)
        buf = torch.randint(info.min, info.max, (rows + 1, ld), dtype=it, device="cuda")
    else:
        buf = torch.full((rows + 1, ld), fill, dtype=it, device="cuda")
    return buf.view(getattr(torch, dtype))[:rows, :cols], buf


def _check_copy(torch, src_bits, dst_bits, rows, cols, dtype):
    """dst[:rows, :cols] equals src bit for bit; every other element of dst's buffer is still poison."""
    assert torch.equal(dst_bits[:rows, :cols], src_bits[:rows, :cols]), "copied bits differ"
    poison = _POISON[_INT[dtype]]
    outside = torch.ones_like(dst_bits, dtype=torch.bool)
    outside[:rows, :cols] = False
    assert bool((dst_bits[outside] == poison).all()), "elements outside dst were written"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_tma_copy_bit_exact(torch, dtype, rows, cols):
    from varblock.ops.tma_copy import tma_copy

    src, src_bits = _padded(torch, rows, cols, dtype, extra=rows % 3, fill=None)
    dst, dst_bits = _padded(torch, rows, cols, dtype, extra=1 + rows % 2, fill=_POISON[_INT[dtype]])
    assert tma_copy(src, dst) is dst
    torch.cuda.synchronize()
    _check_copy(torch, src_bits, dst_bits, rows, cols, dtype)


def test_new_pointers_and_shapes_re_encode(torch):
    """One cached launch per shape; new pointers get new descriptors (old outputs untouched), a new shape a new
    launch, and returning to an earlier shape reuses its launch with the current pointers."""
    from varblock.ops import tma_copy as op

    dtype, poison = "bfloat16", _POISON["int16"]
    op._prepared.clear()
    runs = []
    for rows, cols in [(300, 136), (300, 136), (77, 520), (300, 136)]:
        src, sb = _padded(torch, rows, cols, dtype, extra=1, fill=None)
        dst, db = _padded(torch, rows, cols, dtype, extra=0, fill=poison)
        op.tma_copy(src, dst)
        runs.append((rows, cols, sb, db))
    torch.cuda.synchronize()
    for rows, cols, sb, db in runs:
        _check_copy(torch, sb, db, rows, cols, dtype)
    assert len(op._prepared) == 2, "one prepared launch per shape"
    first = next(iter(op._prepared.values())).struct
    assert len(first._descs) == 2 * 3, "three (src, dst) pointer pairs seen at shape (300, 136)"


def test_runs_on_the_callers_stream(torch):
    from varblock.ops.tma_copy import tma_copy

    src, sb = _padded(torch, 500, 64, "float16", extra=0, fill=None)
    dst, db = _padded(torch, 500, 64, "float16", extra=0, fill=_POISON["int16"])
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())  # the inputs were filled on the current stream: order s after it
    with torch.cuda.stream(s):
        tma_copy(src, dst)
    s.synchronize()
    _check_copy(torch, sb, db, 500, 64, "float16")


def test_bad_inputs_are_refused(torch):
    from varblock.ops.tma_copy import tma_copy

    a = torch.zeros(64, 64, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ValueError, match="multiple of 16"):
        tma_copy(a[:, 1:], torch.zeros(64, 63, dtype=torch.bfloat16, device="cuda"))
    with pytest.raises(ValueError, match="row stride"):
        tma_copy(torch.zeros(64, 68, dtype=torch.bfloat16, device="cuda")[:, :64], a)
    with pytest.raises(TypeError, match="dtype"):
        tma_copy(a, torch.zeros(64, 64, dtype=torch.float16, device="cuda"))
    with pytest.raises(ValueError, match="shape"):
        tma_copy(a, torch.zeros(64, 72, dtype=torch.bfloat16, device="cuda"))
    with pytest.raises(TypeError, match="dtype"):
        tma_copy(torch.zeros(8, 8, dtype=torch.int32, device="cuda"), torch.zeros(8, 8, dtype=torch.int32,
                                                                                  device="cuda"))


def test_rows_must_be_whole_16_byte_units(torch):
    """A TMA store clips a tail tile at 16-byte granularity (on an H200, 70 bf16 columns got 2 more written), so
    such widths are refused rather than written past the row's end."""
    from varblock.ops.tma_copy import tma_copy

    for dtype, cols in (("bfloat16", 70), ("float32", 130), ("float16", 3)):
        src, _ = _padded(torch, 5, cols, dtype, extra=1, fill=None)
        dst, _ = _padded(torch, 5, cols, dtype, extra=1, fill=0)
        with pytest.raises(ValueError, match="16-byte units"):
            tma_copy(src, dst)


def _copy_entries():
    from varblock.runtime.manifest import cubin_dir

    caps = json.loads((cubin_dir() / "sm90" / "capture.json").read_text())
    from varblock.kernels import tma_copy

    return [(v.manifest_entry(), caps[v.name]) for v in tma_copy.variants("sm90") if v.name in caps]


def test_driver_descriptors_decode_to_the_recipe(torch):
    """The CPU capture check's decoder, applied to the driver's own encoding, gives the recipe's fields."""
    entries = _copy_entries()
    assert entries, "no tma_copy launch captures in the cubin folder"
    for entry, caps in entries:
        for c in caps:
            for p in entry["params"]:
                if p["kind"] == "tensormap":
                    args = tensormap.tensormap_args(p["name"], p["recipe"], c["values"])
                    fields = expected_fields(args, p["recipe"]["dtype"])
                    assert {k: v for k, v in decode(tensormap.encode(args)).items() if k in fields} == fields


def test_driver_and_dsl_descriptors_agree(torch):
    """Words 0-7 of the driver's descriptor equal the DSL's bit-packed ones, except word 1's low nibble and bit 21
    (L2 promotion / OOB settings that differ between the two and both run correctly)."""
    mask1 = ~(0xF | (1 << 21)) & (2**64 - 1)
    diffs = []
    for entry, caps in _copy_entries():
        for c in caps:
            for p, hx in zip(entry["params"], c["params_hex"]):
                if p["kind"] != "tensormap":
                    continue
                drv = list(struct.unpack_from("<8Q", tensormap.encode(
                    tensormap.tensormap_args(p["name"], p["recipe"], c["values"]))))
                dsl = list(struct.unpack_from("<8Q", bytes.fromhex(hx)))
                drv[1] &= mask1
                dsl[1] &= mask1
                if drv != dsl:
                    diffs.append((entry["name"], p["name"], [hex(w) for w in drv], [hex(w) for w in dsl]))
    assert not diffs, diffs
