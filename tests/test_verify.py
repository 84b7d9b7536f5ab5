"""fastgan.verify() / FASTGAN_VERIFY=1: every op call checked against its float64 reference.

A kernel that is wrong must be caught at the call, naming the op and its inputs: the tests replace
an op's CPU kernel with a wrong one (a torch.library override) or inject a tensor-core fault into
the emulated CUDA kernel, and expect VerificationError.
"""
import os
import subprocess
import sys

import pytest
import torch

import fastgan
import fastgan.simt
from fastgan.ops import _verify
from conftest import SIMT_OK


@pytest.fixture
def broken(request):
    """Overrides the CPU kernel of torch.ops.fastgan.<name> with fn for the test."""
    libs = []

    def install(name, fn):
        lib = torch.library.Library("fastgan", "IMPL")
        lib.impl(name, fn, "CPU")
        libs.append(lib)

    yield install
    for lib in libs:
        lib._destroy()


def test_correct_ops_pass_forward_and_backward():
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    w = torch.randn(8, 3, 4, 4, requires_grad=True)
    with fastgan.verify():
        assert _verify.verifying()
        y = fastgan.ops.bias_act(x, b, act="lrelu", clamp=0.9)
        bn = fastgan.ops.batch_norm_act(x, torch.ones(8), torch.zeros(8), torch.zeros(8), torch.ones(8),
                                        training=True, act="lrelu", alpha=0.2)
        z = fastgan.ops.conv_transpose2d_act(x, w, None, 2, 1, act="tanh")
        loss = fastgan.ops.d_loss(z.flatten(1).mean(1), y.flatten(1).mean(1), "rals") + \
            fastgan.ops.g_loss(bn.flatten(1).mean(1), "hinge")
        pen = fastgan.ops.grad_norm_penalty(torch.randn(4, 3, requires_grad=True), 2.0, center=1.0)
        (loss + pen).backward()
        fastgan.ops.bias_act_(torch.randn(3, 4), act="relu")
    assert not _verify.verifying()


def test_a_wrong_forward_is_named(broken):
    def wrong(x, b, dim, act, alpha, gain, clamp):
        y = torch.nn.functional.leaky_relu(x + b.view(1, -1, 1, 1), alpha) * gain
        y.view(-1)[7] += 0.5  # one wrong element
        return y, torch.empty(0, dtype=torch.uint8)

    broken("bias_act", wrong)
    x, b = torch.randn(2, 3, 4, 4), torch.randn(3)
    fastgan.ops.bias_act(x, b, act="lrelu")  # not verifying: no check
    with fastgan.verify(), pytest.raises(fastgan.VerificationError,
                                         match=r"bias_act \(x \(2, 3, 4, 4\) float32 contiguous, b \(3,\) float32"
                                               r".* on cpu\): the output differs .* in 1 of 96 elements; first at "
                                               r"\(0, 0, 1, 3\)"):
        fastgan.ops.bias_act(x, b, act="lrelu")


def test_a_wrong_gradient_is_named(broken):
    def wrong_backward(grad, ref, b, dim, act, alpha, gain, clamp, bias_grad):
        gx = grad * 1.01  # a 1% error in the slope
        return gx, gx.sum((0, 2, 3)) if bias_grad else grad.new_empty(0)

    broken("bias_act_backward", wrong_backward)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    with fastgan.verify(), pytest.raises(fastgan.VerificationError, match="the gradient of 'x' differs"):
        fastgan.ops.bias_act(x, None, act="linear")


def test_running_stats_are_checked(broken):
    def wrong_update(rm, rv, mean, var, nbt, momentum, count):
        rm.add_(1.0)

    broken("batch_norm_act_update_stats_", wrong_update)
    x = torch.randn(4, 3, 5, 5)
    with fastgan.verify(), pytest.raises(fastgan.VerificationError, match="running_mean differs"):
        fastgan.ops.batch_norm_act(x, None, None, torch.zeros(3), torch.ones(3), training=True)


def test_verify_false_turns_checks_off_and_compile_is_not_checked(broken):
    broken("bias_act", lambda x, b, dim, act, alpha, gain, clamp: (x * 2, torch.empty(0, dtype=torch.uint8)))
    x = torch.randn(3, 4)
    with fastgan.verify(), fastgan.verify(False):
        fastgan.ops.bias_act(x)  # no error: checks off in the inner block
    torch._dynamo.reset()
    f = torch.compile(lambda t: fastgan.ops.bias_act(t, act="relu"), fullgraph=True)
    with fastgan.verify():
        f(torch.randn(3, 4))  # traced without a graph break, and not checked (compiled code)


def test_environment_variable_turns_it_on():
    code = "import fastgan.ops._verify as v; print(v.verifying())"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, FASTGAN_VERIFY="1"),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


@pytest.mark.simt
@pytest.mark.skipif(not SIMT_OK, reason="needs the SIMT build")
def test_a_tensor_core_fault_in_the_emulated_kernel_is_caught(monkeypatch):
    """The CUDA conv-transpose kernel on the emulator, with an error injected into one tile."""
    monkeypatch.setenv("FASTGAN_CONV_TRANSPOSE_PATH", "fused")
    x = torch.randn(1, 32, 8, 8, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 16, 4, 4, dtype=torch.float16) / 6
    old = fastgan.simt.configure(wmma_fault=0.05)
    try:
        with fastgan.verify(), pytest.raises(fastgan.VerificationError, match="conv_transpose2d_act"):
            fastgan.ops.conv_transpose2d_act(x, w, None, 2, 1)
    finally:
        fastgan.simt.configure(wmma_fault=old["wmma_fault"])
    with fastgan.verify():
        fastgan.ops.conv_transpose2d_act(x, w, None, 2, 1)  # without the fault: passes
