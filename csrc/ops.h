// The schema of every fastgan op, defined once: registered as torch.ops.fastgan.* by fastgan._C and,
// in the SIMT build, as torch.ops.fastgan_simt.* by fastgan._simt (the same kernels, emulated).
#pragma once
#include <torch/library.h>

namespace fastgan {

// One entry per op (a CPU-only build registers a CUDA stub for each; the SIMT build routes each).
inline const char* const kOps[] = {
    "bias_act", "bias_act_backward", "bias_act_",
    "batch_norm_act", "batch_norm_act_backward", "batch_norm_act_update_stats_",
    "class_batch_norm_act", "class_batch_norm_act_backward",
    "conv_transpose2d_act",
    "gan_d_loss", "gan_g_loss", "gan_loss_backward", "grad_penalty", "grad_penalty_backward",
    "diff_augment", "diff_augment_backward",
};

inline void define_ops(torch::Library& m) {
  // ---- bias_act: y = clamp(act(x + b) * gain, -clamp, clamp); clamp < 0 means none. -------------
  // Returns (y, mask); mask is uint8 in x's layout for relu/lrelu (and clamped linear), where the
  // backward needs only the sign/clamp class of each element, else an empty uint8 tensor.
  m.def("bias_act(Tensor x, Tensor? b, int dim, str act, float alpha, float gain, float clamp)"
        " -> (Tensor, Tensor)");
  // ref is the mask (relu/lrelu/clamped linear), y (tanh/sigmoid/elu/selu), x (softplus/swish/
  // gelu; b then given) or an empty tensor (linear without clamp). Returns (grad_x, grad_b);
  // grad_b has shape (C,) when bias_grad, else (0,).
  m.def("bias_act_backward(Tensor grad, Tensor ref, Tensor? b, int dim, str act, float alpha,"
        " float gain, float clamp, bool bias_grad) -> (Tensor, Tensor)");
  // In-place forward for relu/lrelu/linear (FusedLeakyReLU(inplace=True)); returns the mask.
  m.def("bias_act_(Tensor(a!) x, Tensor? b, int dim, str act, float alpha, float gain,"
        " float clamp) -> Tensor");

  // ---- batch_norm_act: y = act(batch_norm(x)), act in linear, relu, lrelu (slope alpha). ---------
  // Functional (autograd needs it): returns (y, mean, var), the per-channel statistics used (batch
  // mean and biased variance when training, copies of the running ones otherwise), in the
  // accumulate dtype (float32 for fp16/bf16/fp32 x, float64 for float64 x). The running-stat update
  // is the separate mutating op below.
  // keep_input only tells the autograd formula to keep x rather than y (the kernels ignore it).
  m.def("batch_norm_act(Tensor x, Tensor? weight, Tensor? bias, Tensor? running_mean,"
        " Tensor? running_var, bool training, float eps, str act, float alpha, bool keep_input)"
        " -> (Tensor, Tensor, Tensor)");
  // ref is y (ref_is_output: linear, lrelu with alpha > 0) or x. grad_mean/grad_var are gradients
  // reaching the mean/var outputs (double backward). Returns (grad_x, grad_weight, grad_bias);
  // grad_weight/grad_bias are empty when weight/bias are None.
  m.def("batch_norm_act_backward(Tensor grad, Tensor ref, Tensor mean, Tensor var, Tensor? weight,"
        " Tensor? bias, Tensor? grad_mean, Tensor? grad_var, bool training, float eps, str act,"
        " float alpha, bool ref_is_output) -> (Tensor, Tensor, Tensor)");
  // running = (1 - f) running + f batch (variance unbiased with count), f = momentum, or
  // 1 / num_batches_tracked (read on the device) when momentum is None. count 0: no change.
  m.def("batch_norm_act_update_stats_(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean,"
        " Tensor var, Tensor? num_batches_tracked, float? momentum, SymInt count) -> ()");
  // ---- class_batch_norm_act: class-conditional BatchNorm + act (conditional GANs) -----------------
  // Batch statistics per channel, affine per (class, channel): out = act(w[y] * xhat + b[y]) with
  // weight, bias (K, C) and y (N,) int64 in [0, K). Returns (out, mean, var) as batch_norm_act; the
  // running-stat update is batch_norm_act_update_stats_. The backward keeps x.
  m.def("class_batch_norm_act(Tensor x, Tensor y, Tensor weight, Tensor bias, Tensor? running_mean,"
        " Tensor? running_var, bool training, float eps, str act, float alpha) -> (Tensor, Tensor, Tensor)");
  // Returns (grad_x, grad_weight (K, C), grad_bias (K, C)).
  m.def("class_batch_norm_act_backward(Tensor grad, Tensor x, Tensor y, Tensor mean, Tensor var, Tensor weight,"
        " Tensor bias, Tensor? grad_mean, Tensor? grad_var, bool training, float eps, str act, float alpha)"
        " -> (Tensor, Tensor, Tensor)");
  // ---- conv_transpose: y = clamp(act(conv_transpose2d(x, weight) + bias) * gain, -clamp, clamp) -
  // Returns (y, ref): ref is what bias_act_backward reads (csrc/conv_transpose/conv_transpose.h):
  // the uint8 mask (relu/lrelu/clamped linear), the pre-activation without bias (softplus/swish/
  // gelu) or an empty tensor. y and ref are channels_last exactly when x is.
  m.def("conv_transpose2d_act(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding,"
        " int[2] output_padding, int groups, int[2] dilation, str act, float alpha, float gain,"
        " float clamp) -> (Tensor, Tensor)");
  // ---- gan_loss: fused GAN losses (csrc/gan_loss/gan_loss.h) -----------------------------------
  // One pass computes the loss (0-dim, fp32 for fp16/bf16/fp32 logits, fp64 for fp64) and
  // d loss / d logits (same dtype as the loss, the logits' shapes), which the backward only scales.
  // kind: ns, minimax, hinge, wgan, lsgan, rals, rpgan; reduction: mean, sum. The D loss returns
  // (loss, stats, grad_real, grad_fake); stats = [mean sigmoid(real), mean sigmoid(fake)] when
  // `stats`, else empty. real_label/fake_label are the BCE targets of ns/minimax.
  m.def("gan_d_loss(Tensor real, Tensor fake, str kind, str reduction, float real_label,"
        " float fake_label, bool stats) -> (Tensor, Tensor, Tensor, Tensor)");
  // (loss, grad_fake, grad_real); real is read by rals and rpgan only (grad_real is empty otherwise).
  m.def("gan_g_loss(Tensor fake, Tensor? real, str kind, str reduction) -> (Tensor, Tensor, Tensor)");
  // (grad * g0, grad * g1) in dtype; grad has one element.
  m.def("gan_loss_backward(Tensor grad, Tensor g0, Tensor g1, ScalarType dtype) -> (Tensor, Tensor)");
  // Gradient penalty from g = dD/dx (csrc/gan_loss/penalty.h): returns (penalty, per-sample norms);
  // squared: weight * mean ||g_i||^2 (R1), else weight * mean (||g_i|| - center)^2 (WGAN-GP).
  m.def("grad_penalty(Tensor g, float center, float weight, bool squared) -> (Tensor, Tensor)");
  m.def("grad_penalty_backward(Tensor grad, Tensor g, Tensor norms, float center, float weight,"
        " bool squared) -> Tensor");
  // ---- diff_augment: y = G(A x + b) per sample (csrc/diff_augment/diff_augment.h) ---------------
  // x (N, C, H, W); params (N, 7) float32 rows (b, s, k, ty, tx, top, left); cutout (height, width).
  // bias false drops b (the op is then linear in x: the backward's backward). y is laid out like x.
  m.def("diff_augment(Tensor x, Tensor params, int[2] cutout, bool bias) -> Tensor");
  // gx = A G^T grad, laid out like grad.
  m.def("diff_augment_backward(Tensor grad, Tensor params, int[2] cutout) -> Tensor");
}

}  // namespace fastgan
