"""tools/sanitize.py on the CPU: every registered kernel family has a smoke case, and every smoke case runs to the end
against a NumPy stand-in for torch with varblock's GPU entry points replaced by fakes that bind the real signatures
(wrong keywords fail), check the shapes the smoke case passes against its plan, and (decode) run the float64
reference on the case's caches, page tables and layouts. The GPU run itself is ``python tools/sanitize.py``."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import varblock  # noqa: E402
from tools import sanitize, sanitize_cases  # noqa: E402
from varblock import layout as L  # noqa: E402
from varblock import reference_decode as R  # noqa: E402


class _T(np.ndarray):
    """A NumPy array with the few torch tensor methods the smoke cases use."""

    def to(self, dtype: Any) -> _T:
        return np.asarray(self).astype(dtype).view(_T)

    def float(self) -> _T:
        return self.to(np.float32)

    def cuda(self) -> _T:
        return self


def _fake_torch(capability: tuple[int, int]) -> SimpleNamespace:
    rng = np.random.default_rng(0)

    def randn(*shape: int, device: str | None = None) -> _T:
        return rng.standard_normal(shape).astype(np.float32).view(_T)

    return SimpleNamespace(
        bfloat16=np.float32, float16=np.float16, float32=np.float32,
        randn=randn, randn_like=lambda x: randn(*x.shape),
        from_numpy=lambda a: np.array(a).view(_T),
        full=lambda shape, val, device=None: np.full(shape, val, np.float32).view(_T),
        isnan=np.isnan, equal=lambda a, b: bool(np.array_equal(a, b)), manual_seed=lambda s: None,
        cuda=SimpleNamespace(synchronize=lambda: None, get_device_capability=lambda: capability))


def _binder(real: Any, calls: list[str], body: Any) -> Any:
    """A fake of ``real``: binds the real signature (TypeError on a wrong call), then runs ``body(arguments)``."""
    sig = inspect.signature(real)

    def fake(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(real.__name__)
        return body(bound.arguments)

    return fake


def _host(x: Any) -> Any:
    return None if x is None else np.asarray(x)


def _plan(a: dict[str, Any]) -> SimpleNamespace:
    """What the fake attention needs from a plan: head counts, head dim, total tokens (host or device cu)."""
    cq = _host(a["cu_seqlens_q"])
    ck = cq if a.get("cu_seqlens_k") is None else _host(a["cu_seqlens_k"])
    hkv = a["num_heads_kv"] or a["num_heads_q"]
    lay = a.get("layout")
    if lay is not None:
        assert np.array_equal(lay.cu_seqlens_q, cq) and np.array_equal(lay.cu_seqlens_k, ck)
        lay.head_map(a["num_heads_q"], hkv)  # raises when the layout's heads fit neither count
    return SimpleNamespace(hq=a["num_heads_q"], hkv=hkv, d=a["head_dim"], tq=int(cq[-1]), tk=int(ck[-1]))


def _attention(a: dict[str, Any]) -> Any:
    p, q, k, v = a["plan"], a["q"], a["k"], a["v"]
    assert q.shape == (p.tq, p.hq, p.d) and k.shape == v.shape == (p.tk, p.hkv, p.d), (q.shape, k.shape, p)
    o, lse = np.zeros(q.shape, np.float32).view(_T), np.zeros((p.hq, p.tq), np.float32).view(_T)
    return (o, lse) if a["return_lse"] else o


def _backward(a: dict[str, Any]) -> Any:
    p, q, k = a["plan"], a["q"], a["k"]
    assert a["dout"].shape == a["out"].shape == q.shape and a["lse"].shape == (p.hq, p.tq)
    assert isinstance(a["deterministic"], bool)
    return tuple(np.zeros(x.shape, np.float32).view(_T) for x in (q, k, a["v"]))


def _plan_decode(a: dict[str, Any]) -> SimpleNamespace:
    """Host plans: the plan's own length and layout checks."""
    from varblock.decode_plan.plan import _check_layout, _check_lengths

    if a["max_kv_len"] is None:
        cq = _host(a["cu_seqlens_q"])
        kv = _host(a["kv_lens"]) if a["kv_lens"] is not None else np.diff(_host(a["cu_seqlens_k"]))
        _check_lengths(cq, kv, a["causal"])
        if a["layout"] is not None:
            _check_layout(a["layout"], kv, a["num_heads_q"], a["num_heads_kv"])
    calls: list[str] = []
    return SimpleNamespace(args=a, calls=calls, status=lambda: (1, 0), prepare=lambda stream=None: calls.append("p"))


def _decode(a: dict[str, Any]) -> Any:
    """The float64 reference on the smoke case's arrays (shapes, page tables and layouts must fit)."""
    pa = a["plan"].args
    q = np.asarray(a["q"], np.float64)
    assert q.shape[1:] == (pa["num_heads_q"], pa["head_dim"])
    kv = _host(pa["kv_lens"])
    if pa["max_kv_len"] is not None:
        lens = kv if kv is not None else np.diff(_host(pa["cu_seqlens_k"]))
        assert lens.max(initial=0) <= pa["max_kv_len"] and q.shape[0] == pa["total_q"]
        if pa["block_indices"] is not None:
            bi = _host(pa["block_indices"])
            nb = -(-lens // pa["block_size"])
            assert ((bi >= -1) & (bi < np.maximum(nb, 1)[:, None, None])).all()
    pt = _host(pa["page_table"])
    if pt is not None:  # every page a sequence uses is a page of the cache
        lens = kv if kv is not None else np.zeros(pt.shape[0], np.int64)
        used = np.arange(pt.shape[1])[None, :] < -(-lens // pa["page_size"])[:, None]
        assert ((pt[used] >= 0) & (pt[used] < a["k_cache"].shape[0])).all()
    out, lse = R.decode(q, np.asarray(a["k_cache"], np.float64), np.asarray(a["v_cache"], np.float64),
                        cu_seqlens_q=_host(pa["cu_seqlens_q"]), kv_lens=kv, page_table=_host(pa["page_table"]),
                        cu_seqlens_k=_host(pa["cu_seqlens_k"]), layout=pa["layout"], causal=pa["causal"])
    out, lse = out.astype(np.float32).view(_T), lse.astype(np.float32).view(_T)
    return (out, lse) if a["return_lse"] else out


def _pooling(a: dict[str, Any]) -> tuple[Any, Any]:
    p = a["plan"]
    assert a["q"].shape == (p.tq, p.hq, p.d) and a["lse"].shape == (p.hq, p.tq) and a["per_sequence"] is False
    return np.zeros(3, np.float32).view(_T), np.zeros(3, np.float32).view(_T)


def _tma_copy(a: dict[str, Any]) -> Any:
    a["dst"][...] = a["src"]
    return a["dst"]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from varblock import device_layout as dl
    from varblock.device_layout import plan as dplan
    from varblock.ops import attention_backward, attention_pooling, decode, tma_copy

    calls: list[str] = []
    table = [
        (varblock, "plan", varblock.plan, _plan),
        (varblock, "attention", varblock.attention, _attention),
        (varblock, "merge_states", varblock.merge_states, lambda a: (a["out_parts"][0], a["lse_parts"][0])),
        (varblock, "attention_backward", attention_backward.attention_backward, _backward),
        (varblock, "plan_decode", decode.plan_decode, _plan_decode),
        (varblock, "decode", decode.decode, _decode),
        (varblock, "plan_device", dplan.plan_device, _plan),
        (varblock, "attention_pooling", attention_pooling.attention_pooling, _pooling),
        (dl, "rebuild", dplan.rebuild, lambda a: None),
        (dl, "check", dplan.check, lambda a: None),
        (tma_copy, "tma_copy", tma_copy.tma_copy, _tma_copy),
    ]
    for module, name, real, body in table:
        monkeypatch.setattr(module, name, _binder(real, calls, body), raising=False)
    return calls


def test_every_registered_family_has_a_smoke_case():
    assert sanitize.coverage_problem(sanitize.registered_families()) is None
    assert "no smoke case" in sanitize.coverage_problem([*sanitize.SMOKE, "new_family"])
    assert "unregistered" in sanitize.coverage_problem(list(sanitize.SMOKE)[1:])


@pytest.mark.parametrize("family", sorted(sanitize_cases.SMOKE))
def test_smoke_case_runs_against_fakes(fakes, family, capsys):
    sanitize_cases.SMOKE[family](_fake_torch((9, 0)))
    out = capsys.readouterr().out
    assert "skipped" not in out and out.count(": ok") >= 1
    assert fakes, "the smoke case launched nothing"


def test_sm90_only_families_skip_elsewhere(fakes, capsys):
    for family in ("tma_copy", "attention_fwd_sm90"):
        sanitize_cases.SMOKE[family](_fake_torch((8, 0)))
        assert f"{family}: not an sm90 GPU, skipped" in capsys.readouterr().out
    assert not fakes
    sanitize_cases.SMOKE["attention_bwd_mma"](_fake_torch((12, 0)))
    assert "d256 is not built for this arch, skipped" in capsys.readouterr().out


def test_device_layout_sources_are_valid_layouts():
    """The list / token-mask sources are what the host importers accept (the device builders' models equal them)."""
    cu = sanitize_cases._cu(sanitize_cases.LENS)
    nb = -(-np.asarray(sanitize_cases.LENS) // 64)
    for name, src, hq, hkv, kw in sanitize_cases.device_layout_sources(np.random.default_rng(6)):
        causal = kw.get("causal", False)
        if "fa4" in src:
            L.from_fa4({k: v for k, v in src["fa4"].items() if k != "block_size"}, cu, cu, block_size=(64, 64),
                       causal=causal)
        elif "flex" in src:
            f = src["flex"]
            L.from_flex(kv_num_blocks=f["kv_num_blocks"], kv_indices=f["kv_indices"],
                        full_kv_num_blocks=f["full_kv_num_blocks"], full_kv_indices=f["full_kv_indices"],
                        BLOCK_SIZE=(64, 64), cu_seqlens_q=cu, cu_seqlens_k=cu, causal=causal)
        elif "seer_1d" in src:
            L.from_seer_1d(src["seer_1d"], cu, cu, block_size=64, causal=causal)
        elif "topk_indices" in src:
            idx = src["topk_indices"]
            assert (idx >= 0).all() and (idx < np.maximum(nb, 1)[:, None, None, None]).all(), name
        else:
            m = src["mask"]
            assert m.shape[2:] == (nb.max(), nb.max()) and m.shape[1] in (1, hq, hkv), name


def test_help_runs_without_a_gpu():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "sanitize.py"), "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and "compute-sanitizer" in res.stdout
