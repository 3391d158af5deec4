"""Attention references on the GPU (torch) for the GPU tests: a float32 reference from the same low-precision
inputs, and a 'plain low-precision implementation' baseline (S and P rounded to the input dtype) for the tolerance
rule of DESIGN.md section 6. The mask comes from the layout's token-level expansion (layout.token_mask)."""

from __future__ import annotations

import numpy as np


def attention_ref(torch, q, k, v, layout, softmax_scale=None):
    """(out_ref fp32, lse_ref fp32 [Hq, total_q], out_lowprec) for varlen q/k/v torch tensors."""
    total_q, hq, d = q.shape
    hkv = k.shape[1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / np.sqrt(d)
    hmap = layout.head_map(hq, hkv)
    cu_q = layout.cu_seqlens_q.astype(np.int64)
    cu_k = layout.cu_seqlens_k.astype(np.int64)
    out = torch.zeros(total_q, hq, d, dtype=torch.float32, device=q.device)
    out_lp = torch.zeros(total_q, hq, d, dtype=q.dtype, device=q.device)
    lse = torch.full((hq, total_q), float("-inf"), dtype=torch.float32, device=q.device)
    group = hq // hkv
    for b in range(cu_q.shape[0] - 1):
        q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        if q1 == q0:
            continue
        masks = {}
        for h in range(hq):
            hl = int(hmap[h])
            if hl not in masks:
                masks[hl] = torch.from_numpy(layout.token_mask(b, hl)).to(q.device)
            allowed = masks[hl]
            qs = q[q0:q1, h]
            ks = k[k0:k1, h // group]
            vs = v[k0:k1, h // group]
            s = (qs.float() @ ks.float().T) * scale
            s = s.masked_fill(~allowed, float("-inf"))
            m = s.amax(dim=1, keepdim=True)
            empty = torch.isinf(m)
            m = torch.where(empty, torch.zeros_like(m), m)
            p = torch.exp(s - m)
            den = p.sum(dim=1, keepdim=True)
            o = (p @ vs.float()) / torch.where(den > 0, den, torch.ones_like(den))
            out[q0:q1, h] = o
            lse[h, q0:q1] = torch.where(empty[:, 0], torch.full_like(m[:, 0], float("-inf")),
                                        (m + torch.log(torch.where(den > 0, den, torch.ones_like(den))))[:, 0])
            # low-precision baseline: S from a low-precision matmul, P rounded to the input dtype before PV
            s_lp = (qs @ ks.T).float() * scale
            s_lp = s_lp.masked_fill(~allowed, float("-inf"))
            m2 = torch.where(empty, torch.zeros_like(m), s_lp.amax(dim=1, keepdim=True))
            p_lp = torch.exp(s_lp - m2)
            den2 = p_lp.sum(dim=1, keepdim=True)
            o_lp = (p_lp.to(q.dtype) @ vs).float() / torch.where(den2 > 0, den2, torch.ones_like(den2))
            out_lp[q0:q1, h] = o_lp.to(q.dtype)
    return out, lse, out_lp


def check_attention(torch, out, lse, ref_out, ref_lse, base_out, what=""):
    """The rule: max |out - ref| <= 2 * max |baseline - ref| + 1e-5 (FlashAttention's test rule), every element
    written (poison), empty rows exactly 0 with LSE -inf, LSE within a small absolute error."""
    o = out.float()
    assert torch.isfinite(o).all(), f"{what}: non-finite output (unwritten poison or NaN)"
    err = (o - ref_out).abs().max().item() if o.numel() else 0.0
    base = (base_out.float() - ref_out).abs().max().item() if o.numel() else 0.0
    assert err <= 2 * base + 1e-5, f"{what}: out max error {err:.3g} > 2 x baseline {base:.3g} + 1e-5"
    inf_ref = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), inf_ref), f"{what}: LSE -inf pattern differs"
    assert (lse[inf_ref] < 0).all()
    fin = ~inf_ref
    if fin.any():
        lerr = (lse[fin] - ref_lse[fin]).abs().max().item()
        assert lerr <= 1e-3, f"{what}: LSE max abs error {lerr:.3g} > 1e-3"
    empty_rows = inf_ref.T  # [total_q, Hq]
    if empty_rows.any():
        assert (o[empty_rows] == 0).all(), f"{what}: empty rows must be exactly 0"
    return err, base
