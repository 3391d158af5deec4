"""CPU tests of the kernel-family dispatcher, the portable family's binding and the ops' argument checks."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from varblock import families
from varblock.families.attention_fwd_mma import AttentionFwdMma
from varblock.families.base import AttentionProblem, FamilyBinding
from varblock.kernels import attention_fwd_mma as fwd_kernel
from varblock.ops.checks import byte_span, check_no_alias, overlapping
from varblock.plan import Plan
from varblock.runtime.tensors import DeviceArray
from varblock.worklist import WorkList


class _Fake(FamilyBinding):
    op = "attention_fwd"

    def __init__(self, name: str, reason: str | None):
        self.name, self.reason = name, reason

    def supports(self, problem):
        return self.reason

    def bind(self, plan, arrays, scalars):
        return {}


def _problem(**kw) -> AttentionProblem:
    base = {"arch": "sm90", "head_dim": 128, "num_heads_q": 8, "num_heads_kv": 2}
    return AttentionProblem(**{**base, **kw})


@pytest.fixture
def fake_families(monkeypatch):
    fast, portable = _Fake("fast", "head_dim: 96 is not supported"), _Fake("portable", None)
    monkeypatch.setitem(families.FAMILIES, "attention_fwd", (fast, portable))
    return fast, portable


def test_auto_picks_first_supporting_and_records_declines(fake_families):
    fast, portable = fake_families
    b, declined = families.choose("attention_fwd", _problem())
    assert b is portable and declined == {"fast": "head_dim: 96 is not supported"}
    fast.reason = None
    assert families.choose("attention_fwd", _problem()) == (fast, {})


def test_forced_backend(fake_families):
    fast, portable = fake_families
    assert families.choose("attention_fwd", _problem(), "portable") == (portable, {})
    with pytest.raises(ValueError, match="backend: kernel family fast cannot run this problem: head_dim: 96"):
        families.choose("attention_fwd", _problem(), "fast")
    with pytest.raises(ValueError, match="unknown attention_fwd kernel family 'slow'; known: fast, portable"):
        families.choose("attention_fwd", _problem(), "slow")
    with pytest.raises(TypeError, match="backend"):
        families.choose("attention_fwd", _problem(), None)


def test_no_family_supports(fake_families):
    fake_families[1].reason = "dtype: float8 is not supported"
    with pytest.raises(ValueError, match="no attention_fwd kernel family.*fast: head_dim.*portable: dtype"):
        families.choose("attention_fwd", _problem())


def test_unknown_op():
    with pytest.raises(ValueError, match="unknown op 'pooling'"):
        families.choose("pooling", _problem())


def test_problem_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown mask kinds or features"):
        _problem(mask_kinds=frozenset({"alibi"}))


def _entry(params=fwd_kernel.PARAM_NAMES, head_dim=128, dtype="bfloat16"):
    return {"name": f"x_d{head_dim}", "key": {"dtype": dtype, "head_dim": head_dim},
            "params": [{"name": n} for n in params], "extra": {"tile_m": 128, "tile_n": 64}}


@pytest.fixture
def portable(monkeypatch):
    """The portable binding over a fake manifest with bf16 d128 and d64 built for sm90."""
    built = {("sm90", 128, "bfloat16"): _entry(), ("sm90", 64, "bfloat16"): _entry(head_dim=64)}
    b = AttentionFwdMma()
    monkeypatch.setattr(b, "variant", lambda arch, key: built.get((arch, key["head_dim"], key.get("dtype",
                                                                                                 "bfloat16"))))
    monkeypatch.setattr(b, "built_keys", lambda arch: [e["key"] for (a, _, _), e in built.items() if a == arch])
    return b


def test_portable_supports(portable):
    assert portable.supports(_problem()) is None
    assert portable.supports(_problem(mask_kinds=frozenset({"causal", "window", "doc", "token"}),
                                      features=frozenset({"pack_gqa", "variable_spans", "device_plan"}))) is None
    assert portable.supports(_problem(head_dim=80)).startswith("head_dim: 80 is not supported")
    assert "built head dims: [64, 128]" in portable.supports(_problem(head_dim=96))
    assert "on sm80" in portable.supports(_problem(arch="sm80"))
    assert portable.supports(_problem(dtype="float32")).startswith("dtype: float32")
    assert "no kernel is built" in portable.supports(_problem(dtype="float16"))
    assert portable.tile_config("sm90", 64) == (128, 64)


def test_portable_declines_what_its_build_lacks(portable, monkeypatch):
    old = [n for n in fwd_kernel.PARAM_NAMES if n not in ("persistent", "num_sink_tokens")]
    monkeypatch.setattr(portable, "variant", lambda arch, key: _entry(params=old))
    assert "no persistent schedule" in portable.supports(_problem(scheduler="persistent"))
    assert "num_sink_tokens" in portable.supports(_problem(mask_kinds=frozenset({"sinks"})))


def _array(name, shape, dtype="bfloat16", ptr=0x7F0000000000, strides=None):
    acc, st = 1, []
    for s in reversed(shape):
        st.append(acc)
        acc *= max(s, 1)
    return DeviceArray(name, ptr, tuple(shape), tuple(strides or reversed(st)), dtype, 0, None)


def _cpu_plan(**kw) -> Plan:
    cu = np.array([0, 100, 103], np.int32)
    wl = WorkList(tiles=np.zeros((3, 8), np.int32), chunks=np.zeros((2, 2), np.int32), tile_m=128, tile_n=64,
                  pack_gqa=1)
    base = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, num_heads_q=4, num_heads_kv=2, head_dim=64, layout=None,
                device_id=0, arch="sm90", family="attention_fwd_mma", tile_m=128, tile_n=64, worklist=wl,
                window_left=-1, window_right=0, mask_flags=0, tok_block_k=1, tok_head_div=1, num_sink_tokens=7)
    return Plan(**{**base, **kw})


def test_bind_gives_every_kernel_parameter():
    """The binding names every parameter of the kernel family (so nothing is left to ops/ by string names)."""
    p = _cpu_plan()
    arrays = {"q": _array("q", (103, 4, 64)), "k": _array("k", (103, 2, 64)), "v": _array("v", (103, 2, 64)),
              "o": _array("o", (103, 4, 64)), "lse": _array("lse", (4, 103), "float32")}
    values = AttentionFwdMma().bind(p, arrays, {"softmax_scale": 0.125})
    assert set(fwd_kernel.PARAM_NAMES) <= set(values)
    assert values["q_stride_tok"] == 256 and values["k_stride_head"] == 64 and values["lse_stride_head"] == 103
    assert values["num_tiles"] == 3 and values["num_sink_tokens"] == 7 and values["window_right"] == 0
    assert values["softmax_scale_log2"] == pytest.approx(0.125 / np.log(2))
    one = AttentionFwdMma().bind(p, {**arrays, "q": _array("q", (1, 1, 64), strides=(999, 7, 1))}, {
        "softmax_scale": 1.0})
    assert (one["q_stride_tok"], one["q_stride_head"]) == (64, 64), "extent-1 modes get compact strides"


def test_byte_span_and_overlap():
    assert byte_span((3, 4), (4, 1), 2) == 24
    assert byte_span((3, 4), (8, 1), 2) == (2 * 8 + 3 + 1) * 2
    assert byte_span((0, 4), (4, 1), 2) == 0
    assert overlapping((0, 10), (9, 20)) and not overlapping((0, 10), (10, 20))
    assert not overlapping((5, 5), (0, 10)), "empty ranges overlap nothing"


def test_check_no_alias():
    check_no_alias([("out", (100, 200)), ("lse", (200, 300))], [("q", (0, 100)), ("k", (300, 400))])
    with pytest.raises(ValueError, match="out: its memory overlaps k's"):
        check_no_alias([("out", (100, 200))], [("q", (0, 100)), ("k", (150, 160))])
    with pytest.raises(ValueError, match="lse: its memory overlaps out's"):
        check_no_alias([("out", (100, 200)), ("lse", (199, 300))], [])


@pytest.mark.parametrize("kw,match", [
    ({"cu_seqlens_q": np.array([0, 103], np.int32)}, "plan: pass either a plan or cu_seqlens_q"),
    ({"cu_seqlens_k": np.array([0, 103], np.int32)}, "plan: pass either a plan or cu_seqlens_k"),
    ({"causal": True}, "plan: pass either a plan or causal"),
    ({"window": (4, 0)}, "plan: pass either a plan or window"),
])
def test_plan_with_planning_arguments_is_refused_before_any_gpu_work(kw, match):
    """Bug 8.4: checked on every call, before the arrays are even looked at (these are not device arrays)."""
    p = _cpu_plan()
    for _ in range(3):
        with pytest.raises(TypeError, match=match):
            varblock.attention(object(), object(), object(), p, **kw)


def test_backend_must_match_the_plan():
    with pytest.raises(ValueError, match="backend: the plan runs kernel family attention_fwd_mma, not fast"):
        varblock.attention(object(), object(), object(), _cpu_plan(), backend="fast")
    with pytest.raises(TypeError, match="plan: expected a varblock Plan"):
        varblock.attention(object(), object(), object(), "plan")
    with pytest.raises(TypeError, match="plan: pass a varblock.plan"):
        varblock.attention(object(), object(), object())


class _TorchLike:
    """A stand-in with the torch tensor methods the fast path reads (its type claims module ``torch``)."""

    def __init__(self, shape, ptr, dtype="bfloat16"):
        self.shape, self.ptr, self.dtype = tuple(shape), ptr, dtype

    def stride(self):
        return tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))

    def get_device(self):
        return 0

    def data_ptr(self):
        return self.ptr


_TorchLike.__module__ = "torch"


def test_warm_fast_path_validates_every_call(monkeypatch):
    """Bug 8.4 on the CPU: with a fast path recorded for these argument signatures, a plan plus planning arguments
    is still refused, and outputs aliasing inputs (same signature, other pointers) are refused per call."""
    import varblock.ops.attention as A
    from varblock.ops.state import state_of

    p = _cpu_plan()
    mb = 1 << 20
    q, k, v = (_TorchLike((103, 4 if n == "q" else 2, 64), (i + 1) * mb) for i, n in enumerate("qkv"))
    out, lse = _TorchLike((103, 4, 64), 10 * mb), _TorchLike((4, 103), 20 * mb, "float32")
    launched = []
    spans = tuple(byte_span(t.shape, t.stride(), 4 if t.dtype == "float32" else 2) for t in (q, k, v, out, lse))
    state_of(p).fast_paths[A._torch_signature(q, k, v, None, out, lse)] = (
        lambda stream, ptrs: launched.append(ptrs), out.shape, lse.shape, spans)
    monkeypatch.setattr(A, "stream_for", lambda stream, ordinal, like=None: type("S", (), {"handle": 7})())
    assert varblock.attention(q, k, v, p, out=out, lse=lse) is out
    assert launched == [(q.ptr, k.ptr, v.ptr, out.ptr, lse.ptr, 0)]
    for _ in range(2):
        with pytest.raises(TypeError, match="plan: pass either a plan or cu_seqlens_q"):
            varblock.attention(q, k, v, p, out=out, lse=lse, cu_seqlens_q=np.array([0, 103], np.int32))
    with pytest.raises(ValueError, match="out: its memory overlaps k's"):
        varblock.attention(q, k, v, p, out=_TorchLike(out.shape, k.ptr + 64), lse=lse)
    with pytest.raises(ValueError, match="lse: its memory overlaps out's"):
        varblock.attention(q, k, v, p, out=out, lse=_TorchLike(lse.shape, out.ptr + 128, "float32"))
    assert len(launched) == 1, "nothing refused was launched"
