// What the C++ autograd registrations share (torch::autograd::Function under the Autograd key, in
// each family's _cpu.cpp, which every build compiles). Why C++: at small tensors the Python path of
// torch.library.register_autograd (a Python setup_context and backward per call) costs more than
// the kernel; see docs/design.md.
//
// Two rules of torch::autograd::Function that these files rely on:
//  - backward returns one entry per forward argument (undefined for non-tensors), but
//    ctx->needs_input_grad(i) counts only the tensors present: an absent optional has no index.
//  - ops called from backward go through the dispatcher (find_op), so their own autograd (C++ or
//    Python) records the graph of a double backward.
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

namespace fastgan {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <class Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// A saved tensor that may be undefined back to an optional argument.
inline c10::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

inline bool present(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }
}  // namespace fastgan
