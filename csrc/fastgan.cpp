// fastgan._C: the schema of every op (TORCH_LIBRARY), the build-facts module (pybind11), and, in a
// build without CUDA kernels, CUDA kernels that fail with instructions instead of the dispatcher's
// generic "could not run with arguments from the 'CUDA' backend".
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#include "conv_transpose/conv_transpose.h"
#include "ops.h"

#ifdef FASTGAN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

TORCH_LIBRARY(fastgan, m) { fastgan::define_ops(m); }

#ifndef FASTGAN_WITH_CUDA
static void no_cuda_kernel(const c10::OperatorHandle& op, torch::jit::Stack*) {
  TORCH_CHECK(false, "fastgan: ", op.schema().name(),
              " was called on a CUDA tensor, but this fastgan was built without CUDA kernels. "
              "Rebuild it with a CUDA build of torch and the CUDA toolkit: "
              "FASTGAN_CUDA=1 pip install --no-build-isolation --force-reinstall --no-deps . "
              "(set CUDA_HOME if nvcc is not found); `fastgan info` shows what was built.");
}

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  for (const char* name : fastgan::kOps) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&no_cuda_kernel>());
  }
}
#endif

static pybind11::dict build_info() {
  pybind11::dict d;
  d["version"] = FASTGAN_VERSION;
  d["torch"] = TORCH_VERSION;
#ifdef FASTGAN_WITH_CUDA
  d["cuda"] = true;
  d["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
#else
  d["cuda"] = false;
  d["cuda_version"] = pybind11::none();
#endif
  d["archs"] = FASTGAN_ARCHS;
  pybind11::list ops;
  for (const char* name : fastgan::kOps) ops.append(name);
  d["ops"] = ops;
  return d;
}

// The conv-transpose path chosen for each shape so far: [(key, path, t_aten_s, t_fused_s, note)].
static pybind11::list conv_transpose_paths() {
  pybind11::list out;
  for (const auto& [key, c] : fastgan::conv_transpose::PathCache::get().entries()) {
    out.append(pybind11::make_tuple(key, fastgan::conv_transpose::path_name(c.path),
                                    c.t_aten, c.t_fused, c.note));
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgan's compiled kernels; the ops live in torch.ops.fastgan";
  m.def("build_info", &build_info, "Facts recorded when this binary was compiled");
  m.def("conv_transpose_paths", &conv_transpose_paths, "the conv-transpose path chosen for each shape so far");
  m.def("clear_conv_transpose_paths", [] { fastgan::conv_transpose::PathCache::get().clear(); },
        "forget the chosen paths (the next call of each shape chooses again)");
  m.def(
      "set_conv_transpose_path",
      [](const std::string& key, const std::string& path, double t_aten, double t_fused) {
        const auto p = fastgan::conv_transpose::parse_path(path);
        TORCH_CHECK(p != fastgan::conv_transpose::Path::Auto, "fastgan: path must be 'aten', 'aten_cl' or 'fused', got '",
                    path, "'");
        fastgan::conv_transpose::PathCache::get().store(key, p, t_aten, t_fused, "(restored)");
      },
      "restore a choice (a key from conv_transpose_paths()): a resumed run takes the paths it took before");
}
