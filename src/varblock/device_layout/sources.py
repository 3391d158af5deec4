"""The device sources of a device layout, checked without reading their contents (the kernels validate those and
report to the status word): a block mask, top-k block indices, FA4 ``BlockSparseTensorsTorch`` (batched), a
FlexAttention ``BlockMask`` (per batch), a SeerAttention 1D token mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from varblock.device_layout.builder import BuildInputs, check_contiguous, device_view, mask_kind
from varblock.runtime.tensors import DeviceArray

_LIMIT = 2**31 - 1


@dataclass
class Source:
    """A checked source: ``shape = (Bm, H, MB, NB)`` of the cell grid, its pointers, block sizes it carries."""

    kind: str  #: "mask", "topk", "lists" or "token"
    shape: tuple[int, int, int, int]  #: (Bm, H, MB, NB); a token mask: (Bm, H, T, NB)
    inputs: BuildInputs
    block_size: tuple[int, int] | None = None
    k2: int = 0  #: slots of the full list (lists)


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _int32_array(x: Any, name: str, ndim: int, what: str) -> DeviceArray:
    a = device_view(x, name)
    check_contiguous(a, ndim, what)
    if a.dtype.rsplit(".", 1)[-1] != "int32":
        raise TypeError(f"{name}: expected int32, got dtype {a.dtype}")
    return a


def _list_pair(cnt: Any, idx: Any, cnt_name: str, idx_name: str, lead: tuple[int, ...] | None
               ) -> tuple[DeviceArray, DeviceArray]:
    ia = _int32_array(idx, idx_name, 4, "[batch or 1, heads, query blocks, slots]")
    ca = _int32_array(cnt, cnt_name, 3, "[batch or 1, heads, query blocks]")
    if tuple(ca.shape) != tuple(ia.shape[:3]) or (lead is not None and tuple(ia.shape[:3]) != lead):
        want = lead if lead is not None else tuple(ia.shape[:3])
        raise ValueError(f"{cnt_name} / {idx_name}: expected counts of shape {want} and indices [*{want}, slots], "
                         f"got {tuple(ca.shape)} and {tuple(ia.shape)}")
    return ca, ia


def _block_size(bs: Any, name: str) -> tuple[int, int]:
    if isinstance(bs, int):
        return bs, bs
    try:
        bq, bk = (int(x) for x in bs)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an int or a (query, key) pair, got {bs!r}") from None
    return bq, bk


def _lists(partial: tuple[Any, Any], full: tuple[Any, Any] | None, names: tuple[str, str, str, str],
           num_key_blocks: int | None, pad_ok: bool, block_size: Any, bs_name: str) -> Source:
    pc, pi = _list_pair(*partial, names[0], names[1], None)
    src = BuildInputs(0, 0, indices=pi.ptr, counts=pc.ptr, k=int(pi.shape[3]), lists=True, pad_ok=pad_ok)
    k2 = 0
    if full is not None:
        fc, fi = _list_pair(*full, names[2], names[3], tuple(pi.shape[:3]))
        src.full_indices, src.full_counts, k2 = fi.ptr, fc.ptr, int(fi.shape[3])
        src.k2 = k2
    bm, h, mb, width = (int(x) for x in pi.shape)
    nb = int(num_key_blocks) if num_key_blocks is not None else max(width, k2)
    if bm * h * mb * (width + k2) > _LIMIT:
        raise ValueError(f"{names[1]}: the index lists exceed the kernels' int32 indexing")
    bsz = _block_size(block_size, bs_name) if block_size is not None else None
    return Source("lists", (bm, h, mb, nb), src, bsz, k2)


def resolve_source(mask: Any, topk_indices: Any, topk_counts: Any, fa4: Any, flex: Any,
                   num_key_blocks: int | None, seer_1d: Any = None) -> Source:
    """The one source given (TypeError when none or several are)."""
    given = [n for n, v in (("mask", mask), ("topk_indices", topk_indices), ("fa4", fa4), ("flex", flex),
                            ("seer_1d", seer_1d)) if v is not None]
    if len(given) != 1:
        raise TypeError(f"plan_device: pass exactly one of mask=, topk_indices=, fa4=, flex=, seer_1d= (got "
                        f"{given or 'none'})")
    if seer_1d is not None:
        a = device_view(seer_1d, "seer_1d")
        check_contiguous(a, 4, "[batch or 1, heads, max query tokens, max key blocks]")
        if a.dtype.rsplit(".", 1)[-1] not in ("bool", "uint8"):
            raise TypeError(f"seer_1d: expected a bool (or uint8 0/1) token mask, got dtype {a.dtype}")
        bm, h, t, nb = (int(x) for x in a.shape)
        return Source("token", (bm, h, t, nb), BuildInputs(0, 0, mask=a.ptr, token=True), (64, 64))
    if mask is not None:
        a = device_view(mask, "mask")
        check_contiguous(a, 4, "[batch or 1, heads, max query blocks, max key blocks]")
        variant, codes = mask_kind(a)
        return Source("mask", tuple(int(x) for x in a.shape), BuildInputs(0, 0, mask=a.ptr, mask_variant=variant,
                                                                          codes=codes))
    if topk_indices is not None:
        ia = _int32_array(topk_indices, "topk_indices", 4, "[batch or 1, heads, max query blocks, K]")
        counts = 0
        if topk_counts is not None:
            ca = _int32_array(topk_counts, "topk_counts", 3, "[batch or 1, heads, max query blocks]")
            if tuple(ca.shape) != tuple(ia.shape[:3]):
                raise ValueError(f"topk_counts: expected shape {tuple(ia.shape[:3])}, got {tuple(ca.shape)}")
            counts = ca.ptr
        bm, h, mb, k = (int(x) for x in ia.shape)
        nb = int(num_key_blocks) if num_key_blocks is not None else mb
        return Source("topk", (bm, h, mb, nb), BuildInputs(0, 0, indices=ia.ptr, counts=counts, k=k))
    if fa4 is not None:
        if _field(fa4, "cu_total_m_blocks") is not None:
            raise ValueError("fa4: varlen-packed FA4 tensors (cu_total_m_blocks) are not supported on the device; "
                             "use the batched form [B, H, M, N] or varblock.layout.from_fa4 on the host")
        full = None
        if _field(fa4, "full_block_cnt") is not None or _field(fa4, "full_block_idx") is not None:
            full = (_field(fa4, "full_block_cnt"), _field(fa4, "full_block_idx"))
        return _lists((_field(fa4, "mask_block_cnt"), _field(fa4, "mask_block_idx")), full,
                      ("fa4.mask_block_cnt", "fa4.mask_block_idx", "fa4.full_block_cnt", "fa4.full_block_idx"),
                      num_key_blocks, False, _field(fa4, "block_size"), "fa4.block_size")
    full = None
    if _field(flex, "full_kv_num_blocks") is not None or _field(flex, "full_kv_indices") is not None:
        full = (_field(flex, "full_kv_num_blocks"), _field(flex, "full_kv_indices"))
    return _lists((_field(flex, "kv_num_blocks"), _field(flex, "kv_indices")), full,
                  ("flex.kv_num_blocks", "flex.kv_indices", "flex.full_kv_num_blocks", "flex.full_kv_indices"),
                  num_key_blocks, True, _field(flex, "BLOCK_SIZE"), "flex.BLOCK_SIZE")
