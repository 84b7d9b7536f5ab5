"""The measured eager fallback of bias_act and batch_norm_act (fastgan.ops._choose, issue 15): the
eager path computes the same as the fused op (values, gradients, running statistics), the
measurement touches nothing the caller holds, the choice is cached and reported, and the pins
(environment, SIMT emulator, torch.compile) hold. The rest of the suite runs with the fused path
pinned (tests/conftest.py)."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from fastgan.nn import FusedBatchNormAct2d
from fastgan.ops import _choose, batch_norm_act, bias_act
from fastgan.ops import reference as ref

FAMILIES = ("bias_act", "batch_norm_act")


@pytest.fixture
def auto(monkeypatch):
    _pin(monkeypatch, "auto")
    monkeypatch.delenv("FASTGAN_VERBOSE", raising=False)
    _choose.clear()
    yield monkeypatch
    _choose.clear()


def _pin(monkeypatch, path):
    for f in FAMILIES:
        monkeypatch.setitem(_choose._MODE, f, path)


@pytest.mark.parametrize("act,clamp,gain", [("lrelu", None, 2 ** 0.5), ("relu", 0.7, 1.0), ("gelu", None, 1.0),
                                            ("tanh", 0.5, 3.0), ("softplus", None, 1.0), ("elu", 2.0, 1.5)])
def test_bias_act_eager_path_matches_the_fused_op(monkeypatch, act, clamp, gain):
    x = torch.randn(3, 7, 5, 4, dtype=torch.float64).permute(0, 2, 3, 1)  # non-contiguous
    b = torch.randn(7, dtype=torch.float64)
    out = {}
    for path in ("fused", "eager"):
        _pin(monkeypatch, path)
        xr, br = x.clone().requires_grad_(), b.clone().requires_grad_()
        y = bias_act(xr, br, act=act, gain=gain, clamp=clamp, dim=3)
        g = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
        out[path] = (y, *torch.autograd.grad(y, (xr, br), g))
    for a, e in zip(out["fused"], out["eager"]):
        torch.testing.assert_close(e, a, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out["eager"][0], ref.bias_act(x, b, act=act, gain=gain, clamp=clamp, dim=3))


def test_eager_bias_act_is_finite_where_the_fused_op_is(monkeypatch):
    """softplus at large inputs (exp overflows float32 above 88) and a 2-D x with dim=-1."""
    x = torch.tensor([[-200.0, -5.0, 0.0, 5.0, 95.0, 1e4]], requires_grad=True)
    out = {}
    for path in ("fused", "eager"):
        _pin(monkeypatch, path)
        y = bias_act(x, torch.zeros(6), act="softplus", dim=-1)
        out[path] = (y, *torch.autograd.grad(y.sum(), x))
    for a, e in zip(out["fused"], out["eager"]):
        assert torch.isfinite(e).all()
        torch.testing.assert_close(e, a)


def test_a_cached_eager_choice_still_checks_the_bias(auto):
    """b's dtype and shape are not in the key: a call whose b does not fit takes the fused op (and
    gets its error), whatever the cache says for that key."""
    x = torch.randn(2, 3, 4, 4)
    bias_act(x, torch.randn(3), act="relu")
    (key,) = _choose._cache
    _choose._cache[key] = (True, 1.0, 0.5)
    torch.testing.assert_close(bias_act(x, torch.ones(3), act="relu"), torch.relu(x + 1))
    with pytest.raises(RuntimeError, match="argument 'b'"):
        bias_act(x, torch.ones(1), act="relu")


@pytest.mark.parametrize("act,alpha", [("relu", 0.0), ("lrelu", 0.2), ("lrelu", -0.5), ("linear", 0.0)])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_act_eager_path_matches_the_fused_op(monkeypatch, act, alpha, momentum, training):
    x = torch.randn(6, 4, 3, 5, dtype=torch.float64) * 2 + 0.5
    w, b = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    rm0, rv0 = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    out = {}
    for path in ("fused", "eager"):
        _pin(monkeypatch, path)
        xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
        rm, rv, nbt = rm0.clone(), rv0.clone(), torch.tensor(3)
        y = batch_norm_act(xr, wr, br, rm, rv, training=training, momentum=momentum, act=act, alpha=alpha,
                           num_batches_tracked=nbt)
        g = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
        out[path] = (y, *torch.autograd.grad(y, (xr, wr, br), g), rm, rv)
    for a, e in zip(out["fused"], out["eager"]):
        torch.testing.assert_close(e, a, atol=1e-10, rtol=1e-10)
    if training:  # the running statistics moved, by the cumulative factor 1/3 where momentum is None
        f = 1 / 3 if momentum is None else momentum
        torch.testing.assert_close(out["eager"][4], (1 - f) * rm0 + f * x.mean((0, 2, 3)))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("memory_efficient", [True, False])
def test_batch_norm_act_eager_path_without_stats_or_affine_channels_last(monkeypatch, affine, memory_efficient):
    x = (torch.randn(5, 6, 4, 3, dtype=torch.float64) + 1).to(memory_format=torch.channels_last)
    w, b = (torch.rand(6, dtype=torch.float64) + 0.5, torch.randn(6, dtype=torch.float64)) if affine else (None, None)
    out = {}
    for path in ("fused", "eager"):
        _pin(monkeypatch, path)
        xr = x.clone().requires_grad_()
        wr, br = (None, None) if w is None else (w.clone().requires_grad_(), b.clone().requires_grad_())
        y = batch_norm_act(xr, wr, br, training=True, act="lrelu", alpha=0.1, memory_efficient=memory_efficient)
        wrt = [t for t in (xr, wr, br) if t is not None]
        out[path] = (y, *torch.autograd.grad(y, wrt, torch.randn_like(y, generator=torch.Generator().manual_seed(2))))
    assert out["eager"][0].is_contiguous(memory_format=torch.channels_last)
    for a, e in zip(out["fused"], out["eager"]):
        torch.testing.assert_close(e, a, atol=1e-10, rtol=1e-10)


def test_module_on_the_eager_path_matches_nn(monkeypatch):
    """FusedBatchNormAct2d with the eager path pinned is nn.BatchNorm2d + LeakyReLU, buffers included."""
    _pin(monkeypatch, "eager")
    m = FusedBatchNormAct2d(8, activation="lrelu", negative_slope=0.2, momentum=None).double()
    e = nn.Sequential(nn.BatchNorm2d(8, momentum=None), nn.LeakyReLU(0.2)).double()
    for _ in range(3):
        x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
        torch.testing.assert_close(m(x), e(x))
    for k, v in e[0].state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v)
    m.eval(), e.eval()
    torch.testing.assert_close(m(x), e(x))


def test_measuring_touches_nothing(auto):
    """The first call of a shape times both paths: the running statistics still move once, the RNG
    stream and the caller's tensors are as a call of the fused op leaves them."""
    x = torch.randn(16, 8, 6, 6, requires_grad=True)
    mods = [FusedBatchNormAct2d(8, activation="relu") for _ in range(2)]
    with torch.no_grad():
        for m in mods:
            m.weight.copy_(torch.rand(8) + 0.5)
    _pin(auto, "fused")
    mods[0](x)
    state = torch.get_rng_state()
    _pin(auto, "auto")
    mods[1](x)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(_choose.choices()) == 1
    assert mods[1].weight.grad is None
    assert int(mods[1].num_batches_tracked) == 1
    for k in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(mods[1], k), getattr(mods[0], k), atol=1e-6, rtol=1e-6)


def test_choice_is_cached_per_key_and_reported(auto, capfd):
    auto.setenv("FASTGAN_VERBOSE", "1")
    calls = []
    real = _choose._time
    auto.setattr(_choose, "_time", lambda fn: calls.append(1) or real(fn))
    x, b = torch.randn(2, 3, 5, 7), torch.randn(3)
    bias_act(x, b, act="lrelu")
    n = len(calls)
    assert n >= 6  # at least 3 interleaved rounds of both paths
    bias_act(x, b, act="lrelu")
    bias_act(torch.randn(2, 3, 5, 7), b, act="lrelu")  # same key: no new measurement
    assert len(calls) == n
    bias_act(x, b, act="relu")  # another key
    assert len(calls) > n
    rows = _choose.choices()
    assert [r[0] for r in rows] == ["bias_act", "bias_act"]
    assert all(r[2] in ("fused", "eager") and r[3] > 0 and r[4] > 0 for r in rows)
    err = capfd.readouterr().err
    assert err.count("fastgan bias_act: float32 (2, 3, 5, 7) contiguous bias=True dim=1") == 2
    assert "act=lrelu" in err and "act=relu" in err and " ms, eager " in err


def test_faster_path_is_chosen(auto):
    """The timings decide: the path made slow on purpose loses, whichever it is."""
    import time
    mod = sys.modules["fastgan.ops.bias_act"]
    fast = lambda: None  # noqa: E731
    slow = lambda: time.sleep(0.003)  # noqa: E731
    x = torch.randn(4, 3, 2, 2)
    for contenders, path in (((fast, slow), "fused"), ((slow, fast), "eager")):
        _choose.clear()
        auto.setattr(mod, "_contenders", lambda *a, c=contenders: c)
        bias_act(x, None, act="relu")
        assert [r[2] for r in _choose.choices()] == [path]


def test_bad_argument_raises_the_fused_ops_error_in_auto(auto):
    with pytest.raises((ValueError, RuntimeError), match="b"):
        bias_act(torch.randn(2, 3, 4), torch.randn(5), act="relu")
    assert _choose.choices() == []


def test_environment_is_read_at_import_and_checked():
    code = ("import fastgan.ops._choose as c, torch; print(c.path('bias_act'), c.path('batch_norm_act'));"
            "from fastgan.ops import batch_norm_act; batch_norm_act(torch.randn(2, 3, 4, 4), training=True)")
    env = dict(os.environ, FASTGAN_BIAS_ACT_PATH="eager", FASTGAN_BATCH_NORM_ACT_PATH="fastest")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["eager", "fastest"]
    assert "FASTGAN_BATCH_NORM_ACT_PATH must be auto, fused or eager, got 'fastest'" in r.stderr
    with pytest.raises(ValueError, match="path must be auto, fused or eager"):
        _choose.set_path("bias_act", "fast")


def test_pins_take_the_fused_op(monkeypatch):
    """Inside pinned() (the SIMT emulator, selftest), under torch.compile and for non-CPU or half
    tensors, the eager path is never taken, even when the environment asks for it."""
    _pin(monkeypatch, "eager")

    def boom(*a, **k):
        raise AssertionError("eager path taken")
    monkeypatch.setattr(sys.modules["fastgan.ops.bias_act"], "_eager", boom)
    x = torch.randn(2, 3, 4)
    with _choose.pinned():
        bias_act(x, None, act="relu")
    bias_act(x.half(), None, act="relu")
    torch.compile(lambda t: bias_act(t, None, act="relu"), fullgraph=True, backend="eager")(x)
    with pytest.raises(AssertionError, match="eager path taken"):
        bias_act(x, None, act="relu")


def test_a_pin_overrides_the_cache_and_modes_skip_it(auto):
    """FASTGAN_*_PATH=eager wins over a cached (or restored) fused choice; under saved-tensor hooks
    or a dispatch mode the fused op runs whatever the cache holds."""
    from torch.utils.flop_counter import FlopCounterMode
    mod = sys.modules["fastgan.ops.bias_act"]
    x = torch.randn(2, 3, 4, 4)
    bias_act(x, None, act="relu")
    (key,) = _choose._cache
    _choose._cache[key] = (False, 1.0, 2.0)
    _pin(auto, "eager")
    calls = []
    real = mod._eager
    auto.setattr(mod, "_eager", lambda *a: calls.append(1) or real(*a))
    bias_act(x, None, act="relu")
    assert calls == [1]
    _pin(auto, "auto")
    _choose._cache[key] = (True, 2.0, 1.0)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        bias_act(x, None, act="relu")
    with FlopCounterMode(display=False):
        bias_act(x, None, act="relu")
    assert calls == [1]
    bias_act(x, None, act="relu")
    assert calls == [1, 1]


def test_no_measurement_under_saved_tensor_hooks_or_vmap(auto):
    """Activation checkpointing packs what autograd saves with hooks, and torch.func transforms wrap
    tensors: the fused op runs there and nothing is measured or cached."""
    from torch.utils.checkpoint import checkpoint
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    y = checkpoint(lambda x: bias_act(x, b, act="lrelu"), x, use_reentrant=False)
    torch.autograd.grad(y.sum(), (x, b))
    torch.func.vmap(lambda t: bias_act(t, None, act="relu"))(torch.randn(3, 4, 6, 5))
    assert _choose.choices() == []
    bias_act(x, b, act="lrelu")
    assert len(_choose.choices()) == 1
