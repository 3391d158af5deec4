"""Reading what the compiler produced: PTX entry signatures and the cubin's per-kernel ELF attributes.

Plain Python (no DSL): build_kernels.py uses it to cross-check each variant's declared parameter list against
the compiled kernel, and tests use it on the built cubins.
"""

from __future__ import annotations

import re
import struct
from typing import Any

_PTX_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\((.*?)\)", re.S)
_PTX_PARAM_BYTES = re.compile(r"\.param\s+\.align\s+(\d+)\s+\.b8\s+\w+\[(\d+)\]")
_PTX_PARAM_SCALAR = re.compile(r"\.param\s+\.([usfb])(\d+)")


def ptx_entries(ptx: str) -> dict[str, list[int]]:
    """``{entry name: [parameter size in bytes, ...]}`` from the PTX ``.entry`` signatures."""
    out = {}
    for m in _PTX_ENTRY.finditer(ptx):
        sizes = []
        for p in (x.strip() for x in m.group(2).split(",")):
            if not p:
                continue
            mb = _PTX_PARAM_BYTES.match(p)
            if mb:
                sizes.append(int(mb.group(2)))
                continue
            ms = _PTX_PARAM_SCALAR.match(p)
            if not ms:
                raise ValueError(f"unrecognised PTX parameter {p!r}")
            sizes.append(int(ms.group(2)) // 8)
        out[m.group(1)] = sizes
    return out


def cubin_kernels(blob: bytes) -> dict[str, dict[str, Any]]:
    """Per-kernel facts from a cubin's ELF sections: parameter (offset, size) list, required block size, register
    count, parameter bank size and static shared memory."""
    if blob[:4] != b"\x7fELF":
        raise ValueError("not an ELF cubin")
    (shoff,) = struct.unpack_from("<Q", blob, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", blob, 0x3A)
    secs, symtab = [], None
    for i in range(shnum):
        name, typ, _flags, _addr, off, size, link, _info, _align, entsize = struct.unpack_from(
            "<IIQQQQIIQQ", blob, shoff + i * shentsize)
        secs.append((name, off, size))
        if typ == 2:  # SHT_SYMTAB
            symtab = (off, size, link, entsize)
    stroff = secs[shstrndx][1]
    symbols: dict[int, str] = {}
    if symtab is not None:
        off, size, link, entsize = symtab
        names_off = secs[link][1]
        for i in range(size // entsize):
            (nm,) = struct.unpack_from("<I", blob, off + i * entsize)
            symbols[i] = blob[names_off + nm: blob.index(b"\0", names_off + nm)].decode()

    def sname(n: int) -> str:
        return blob[stroff + n: blob.index(b"\0", stroff + n)].decode()

    kernels: dict[str, dict[str, Any]] = {}
    for n, _off, size in secs:
        nm = sname(n)
        if nm.startswith(".text."):
            kernels.setdefault(nm[6:], {"static_smem": 0})
        elif nm.startswith(".nv.shared.") and not nm.startswith(".nv.shared.reserved"):
            kernels.setdefault(nm[11:], {"static_smem": 0})["static_smem"] = size
    for n, off, size in secs:
        nm = sname(n)
        if nm == ".nv.info":  # global attributes, keyed by symbol index: registers, stack frame (local memory)
            for attr, data in _attributes(blob, off, size):
                if attr in (0x2F, 0x11) and len(data) == 8:
                    sym, value = struct.unpack("<II", data)
                    if symbols.get(sym) in kernels:
                        kernels[symbols[sym]]["regs" if attr == 0x2F else "frame_bytes"] = value
            continue
        if not nm.startswith(".nv.info."):
            continue
        k = kernels.setdefault(nm[9:], {"static_smem": 0})
        kparams = {}
        for attr, data in _attributes(blob, off, size):
            if attr == 0x17:  # EIATTR_KPARAM_INFO {u32 index; u16 ordinal; u16 offset; u32 flags}
                _, ordinal, poff, flags = struct.unpack("<IHHI", data)
                kparams[ordinal] = (poff, (flags >> 18) & 0x3FFF)
            elif attr == 0x10:  # EIATTR_REQNTID
                k["reqntid"] = list(struct.unpack("<3I", data))
            elif attr == 0x19:  # EIATTR_CBANK_PARAM_SIZE
                (k["param_bytes"],) = struct.unpack("<H", data)
        k["params"] = [kparams[i] for i in sorted(kparams)]
    return kernels


def _attributes(blob: bytes, off: int, size: int):
    """(attribute id, data bytes) of an .nv.info section."""
    p, end = off, off + size
    while p < end:
        fmt, attr = blob[p], blob[p + 1]
        if fmt == 4:  # EIFMT_SVAL: 2-byte length, then data
            (ln,) = struct.unpack_from("<H", blob, p + 2)
            yield attr, blob[p + 4: p + 4 + ln]
            p += 4 + ln
        else:
            yield attr, blob[p + 2: p + 4]
            p += 4
