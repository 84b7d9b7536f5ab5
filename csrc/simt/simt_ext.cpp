// fastgan._simt: fastgan's CUDA kernels and launchers, compiled as C++ against the SIMT emulator
// (csrc/simt/simt.h), registered as torch.ops.fastgan_simt.<op> for CPU tensors with the schemas of
// torch.ops.fastgan.<op>. Built when FASTGAN_SIMT=1 (setup.py); the tests use it so that every
// CUDA kernel runs in CI without a GPU.
//
// route(True) also makes the emulated kernels the CPU kernels of torch.ops.fastgan.* (until
// route(False)), so that everything above the ops (autograd, modules, the trainer) runs on them.
#include <torch/extension.h>
#include <torch/library.h>

#include <memory>

#include "conv_transpose/conv_transpose.h"
#include "ops.h"
#include "simt.h"
#include <cuda_runtime.h>

#ifndef FASTGAN_SIMT_FLAVOUR
#define FASTGAN_SIMT_FLAVOUR "plain"
#endif
#ifndef FASTGAN_SIMT_CUDA_INCLUDE
#define FASTGAN_SIMT_CUDA_INCLUDE ""
#endif

TORCH_LIBRARY(fastgan_simt, m) { fastgan::define_ops(m); }

namespace {

// A launch failure that no C10_CUDA_KERNEL_LAUNCH_CHECK reported is an error of the op.
void raise_pending(const char* op) {
  const std::string e = simt::take_error();
  TORCH_CHECK(e.empty(), "SIMT emulator, ", op, ": ", e);
}

void call_simt(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const std::string& name = op.schema().name();  // "fastgan::<op>"
  const std::string target = "fastgan_simt::" + name.substr(name.find("::") + 2);
  auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(target.c_str(), op.schema().overload_name().c_str());
  raise_pending(target.c_str());
  handle.callBoxed(stack);
  raise_pending(target.c_str());
}

std::unique_ptr<torch::Library>& routes() {
  static auto* r = new std::unique_ptr<torch::Library>;
  return *r;
}

// Swallows the dispatcher's "Overriding a previously registered kernel" warning: the override is
// the point of route(True).
struct QuietHandler : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};

void route(bool on) {
  auto& r = routes();
  if (on && !r) {
    QuietHandler quiet;
    c10::WarningUtils::WarningHandlerGuard guard(&quiet);
    r = std::make_unique<torch::Library>(torch::Library::IMPL, "fastgan", c10::DispatchKey::CPU, __FILE__,
                                         __LINE__);
    for (const char* name : fastgan::kOps) r->impl(name, torch::CppFunction::makeFromBoxedFunction<&call_simt>());
  } else if (!on) {
    r.reset();  // deregisters: fastgan's own CPU kernels are back
  }
}

pybind11::dict config_dict() {
  const simt::Config& c = simt::config();
  pybind11::dict d;
  d["schedule"] = c.schedule;
  d["sm_count"] = c.sm_count;
  d["cc"] = pybind11::make_tuple(c.cc_major, c.cc_minor);
  d["wmma_map"] = c.wmma_map ? "blocked" : "strided";
  d["capturing"] = c.capturing;
  d["strict_sites"] = c.strict_sites;
  d["fail_event_record_at"] = c.fail_event_record_at;
  d["wmma_fault"] = c.wmma_fault;
  return d;
}

void configure(pybind11::kwargs kw) {
  simt::Config& c = simt::config();
  for (auto item : kw) {
    const std::string k = pybind11::cast<std::string>(item.first);
    auto v = item.second;
    if (k == "schedule") {
      const std::string s = pybind11::cast<std::string>(v);
      TORCH_CHECK(s == "fwd" || s == "rev" || (s.rfind("rand:", 0) == 0 && s.size() > 5),
                  "fastgan.simt: schedule must be fwd, rev or rand:SEED, got '", s, "'");
      simt::set_schedule(s);
    } else if (k == "sm_count") {
      const int n = pybind11::cast<int>(v);
      TORCH_CHECK(n >= 1, "fastgan.simt: sm_count must be >= 1, got ", n);
      c.sm_count = n;
    } else if (k == "cc") {
      auto t = pybind11::cast<std::pair<int, int>>(v);
      c.cc_major = t.first;
      c.cc_minor = t.second;
    } else if (k == "wmma_map") {
      const std::string s = pybind11::cast<std::string>(v);
      TORCH_CHECK(s == "strided" || s == "blocked", "fastgan.simt: wmma_map must be strided or blocked, got '",
                  s, "'");
      c.wmma_map = s == "blocked";
    } else if (k == "capturing") {
      c.capturing = pybind11::cast<bool>(v);
    } else if (k == "strict_sites") {
      c.strict_sites = pybind11::cast<bool>(v);
    } else if (k == "fail_event_record_at") {
      c.fail_event_record_at = pybind11::cast<long>(v);
    } else if (k == "wmma_fault") {
      c.wmma_fault = pybind11::cast<float>(v);
    } else {
      TORCH_CHECK(false, "fastgan.simt: unknown option '", k, "'");
    }
  }
}

pybind11::dict build_info() {
  pybind11::dict d;
  d["flavour"] = FASTGAN_SIMT_FLAVOUR;
  d["cuda_include"] = FASTGAN_SIMT_CUDA_INCLUDE;  // the toolkit headers it was built with
  pybind11::list ops;
  for (const char* name : fastgan::kOps) ops.append(name);
  d["ops"] = ops;
  return d;
}

pybind11::list conv_transpose_paths() {
  pybind11::list out;
  for (const auto& [key, c] : fastgan::conv_transpose::PathCache::get().entries()) {
    out.append(pybind11::make_tuple(key, fastgan::conv_transpose::path_name(c.path),
                                    c.t_aten, c.t_fused, c.note));
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgan's CUDA kernels on the SIMT emulator: torch.ops.fastgan_simt.* (CPU tensors)";
  m.def("build_info", &build_info, "flavour (plain, asan, tsan) and the ops");
  m.def("config", &config_dict, "the emulator's settings");
  m.def("configure", &configure,
        "set schedule, sm_count, cc, wmma_map, capturing, strict_sites; fault injection: fail_event_record_at, "
        "wmma_fault");
  m.def("route", &route, "make the emulated kernels the CPU kernels of torch.ops.fastgan (True) or not (False)");
  m.def("routed", [] { return bool(routes()); });
  m.def("live_events", [] { return simt::live_events(); }, "cudaEvents created and not destroyed");
  m.def("take_error", &simt::take_error, "the launch error not yet reported, if any");
  m.def("conv_transpose_paths", &conv_transpose_paths, "the emulated launcher's path cache");
  m.def("clear_conv_transpose_paths", [] { fastgan::conv_transpose::PathCache::get().clear(); },
        "forget the emulated launcher's chosen paths");
}
