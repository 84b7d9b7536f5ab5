// Driver of the emulator's own tests: `simt_selftest CASE [SCHEDULE [WMMA_MAP]]` runs one case of
// selftest_kernels.cu and prints one line, `case=NAME status=ok|wrong|error detail=...`:
//   ok     the launches ran clean and the results equal the host's reference
//   wrong  they ran clean but a result differs (a planted race or layout bug may do that)
//   error  the emulator reported the launch as failed (detail: its report)
// A sanitizer report ends the process instead (tests/test_simt_emulator.py reads its output).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

void launch_reduce(const float* x, float* out, int n, int threads, int bug);
void launch_block_sum(const double* x, double* out, int n, int threads);
void launch_neighbour(const int* in, int* out, int bug);
void launch_vote(const int* pred, unsigned* out, int threads);
void launch_shuffle(const double* x, double* out, int w);
void launch_hang(int* out);
void launch_trap(int* out, int at);
void launch_atomic(const float* x, float* f, double* d, __half* h, __nv_bfloat16* b, int* mx, int* mn,
                   unsigned* inc, int* cas, int n);
void launch_memory(const float* x, float* y, int n, int bug, int blocks, size_t smem);
void launch_blocks(float* y, int nblocks, int bug);
void launch_wmma_half(const __half* A, const __half* B, const float* bias, float* C, int K, int bug);
void launch_wmma_bf16(const __nv_bfloat16* A, const __nv_bfloat16* B, const float* bias, float* C, int K, int bug);
void launch_wmma_tf32(const float* A, const float* B, float* C, int K);
void launch_cp_async(const float* x, float* out, int tiles, int bug);
void launch_config(dim3 grid, dim3 block, size_t smem, float* y);
void set_max_dyn_smem(int bytes);

namespace {

struct Result {
  std::string status = "ok", detail;
};

// Heap buffers of exactly n elements (ASan sees overruns), 64-byte aligned (wmma needs 32).
template <class T>
struct Buf {
  T* p;
  size_t n;
  explicit Buf(size_t n_, T fill = T()) : n(n_) {
    p = static_cast<T*>(aligned_alloc(64, ((n * sizeof(T) + 63) / 64) * 64));
    for (size_t i = 0; i < n; i++) p[i] = fill;
  }
  ~Buf() { free(p); }
  T& operator[](size_t i) { return p[i]; }
};

std::mt19937 rng(1234);
float uniform() { return std::uniform_real_distribution<float>(-1.f, 1.f)(rng); }

// Runs the launches in f, then turns the emulator's report (if any) into an error result.
Result run(const std::function<bool(std::string&)>& f) {
  Result r;
  std::string detail;
  const bool same = f(detail);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    r.status = "error";
    r.detail = cudaGetErrorString(e);
  } else if (!same) {
    r.status = "wrong";
    r.detail = detail;
  }
  return r;
}

bool close(double a, double b, double tol) { return std::fabs(a - b) <= tol * (1 + std::fabs(b)); }

Result reduce_case(int bug) {
  return run([&](std::string& d) {
    bool ok = true;
    for (int threads : {256, 96}) {
      for (int n : {1, 31, 77, threads}) {
        if (n > threads) continue;
        Buf<float> x(n), out(1);
        double want = 0;
        for (int i = 0; i < n; i++) want += x[i] = uniform();
        launch_reduce(x.p, out.p, n, threads, bug);
        if (cudaPeekAtLastError() != cudaSuccess) return true;
        if (!close(out[0], want, 1e-5)) {
          ok = false;
          d = "threads " + std::to_string(threads) + " n " + std::to_string(n) + ": got " + std::to_string(out[0]) +
              " want " + std::to_string(want);
        }
      }
    }
    return ok;
  });
}

Result block_sum_case() {
  return run([&](std::string& d) {
    bool ok = true;
    for (int threads : {32, 64, 512, 1024}) {
      for (int n : {1, 1000}) {
        Buf<double> x(n), out(3);
        double s = 0, q = 0;
        for (int i = 0; i < n; i++) {
          x[i] = uniform();
          s += x[i];
          q += x[i] * x[i];
        }
        launch_block_sum(x.p, out.p, n, threads);
        if (!close(out[0], s, 1e-12) || !close(out[1], q, 1e-12) || out[2] != threads) {
          ok = false;
          d = "threads " + std::to_string(threads) + " n " + std::to_string(n);
        }
      }
    }
    return ok;
  });
}

Result neighbour_case(int bug) {
  return run([&](std::string& d) {
    Buf<int> in(64), out(64);
    for (int i = 0; i < 64; i++) in[i] = i;
    launch_neighbour(in.p, out.p, bug);
    for (int t = 0; t < 64; t++)
      if (out[t] != 3 * ((t & ~31) + (t + 1) % 32)) {
        d = "lane " + std::to_string(t) + " read " + std::to_string(out[t]);
        return false;
      }
    return true;
  });
}

Result vote_case() {
  return run([&](std::string& d) {
    for (int threads : {64, 48}) {
      Buf<int> pred(threads);
      Buf<unsigned> out(threads * 6);
      int total = 0;
      for (int i = 0; i < threads; i++) total += pred[i] = (i % 3 == 0) || i == 40;
      launch_vote(pred.p, out.p, threads);
      for (int t = 0; t < threads; t++) {
        const int w0 = t / 32 * 32, lane = t % 32, lanes = std::min(32, threads - w0);
        unsigned ballot = 0, all_mask = 0, any = 0, all = 1;
        for (int k = 0; k < lanes; k++) {
          const bool in_half = lane < 16 ? k < 16 : k >= 16;
          if (in_half && pred[w0 + k]) ballot |= 1u << k;
          all_mask |= 1u << k;
          any |= unsigned(pred[w0 + k] != 0);
          all &= unsigned(pred[w0 + k] != 0);
        }
        const unsigned want[6] = {ballot, any, all, unsigned(total), unsigned(total > 0), unsigned(total == threads)};
        for (int j = 0; j < 6; j++)
          if (out[t * 6 + j] != want[j]) {
            d = "threads " + std::to_string(threads) + " thread " + std::to_string(t) + " value " + std::to_string(j);
            return false;
          }
      }
    }
    return true;
  });
}

Result shuffle_case() {
  return run([&](std::string& d) {
    for (int w : {1, 2, 4, 8, 16, 32}) {
      Buf<double> x(64), out(64 * 4);
      for (int i = 0; i < 64; i++) x[i] = uniform();
      launch_shuffle(x.p, out.p, w);
      for (int t = 0; t < 64; t++) {
        const int lane = t % 32, w0 = t - lane, base = lane & ~(w - 1);
        const int idx = base + (3 & (w - 1));
        const int up = lane - base >= 2 ? lane - 2 : lane;
        const int dn = lane - base + 5 % w < w ? lane + 5 % w : lane;
        const int xr = (lane ^ 1) < base + w ? (lane ^ 1) : lane;
        const double want[4] = {x[w0 + idx], x[w0 + up], x[w0 + dn], double(w0 + xr)};
        for (int j = 0; j < 4; j++)
          if (out[t * 4 + j] != want[j]) {
            d = "width " + std::to_string(w) + " thread " + std::to_string(t) + " op " + std::to_string(j);
            return false;
          }
      }
    }
    return true;
  });
}

Result atomic_case() {
  return run([&](std::string& d) {
    const int n = 500;
    Buf<float> x(n), f(1);
    Buf<double> dsum(1);
    Buf<__half> h(2, __float2half(0.f));
    Buf<__nv_bfloat16> b(2, __float2bfloat16(0.f));
    Buf<int> mx(1, -1000000), mn(1, 1000000), cas(1);
    Buf<unsigned> inc(1);
    double s = 0;
    int hi = -1000000, lo = 1000000;
    for (int i = 0; i < n; i++) {
      x[i] = uniform();
      s += x[i];
      hi = std::max(hi, int(x[i] * 1000));
      lo = std::min(lo, int(x[i] * 1000));
    }
    launch_atomic(x.p, f.p, dsum.p, h.p, b.p, mx.p, mn.p, inc.p, cas.p, n);
    const bool ok = close(f[0], s, 1e-4) && close(dsum[0], s, 1e-12) && __half2float(h[0]) == n / 2 &&
                    __half2float(h[1]) == n / 2 && __bfloat162float(b[0]) == n / 2 &&
                    __bfloat162float(b[1]) == n / 2 && mx[0] == hi && mn[0] == lo && inc[0] == unsigned(n) &&
                    cas[0] == 2 * n;
    if (!ok) d = "an atomic result differs";
    return ok;
  });
}

// bug 1: dynamic shared memory one float short; 2: static overrun; 3: misaligned float4; 4: bounds
Result memory_case(int bug) {
  return run([&](std::string& d) {
    for (int blocks : {1, 3}) {
      const int n = 200;
      Buf<float> x(n), y(n);
      for (int i = 0; i < n; i++) x[i] = uniform();
      launch_memory(x.p, y.p, n, bug, blocks, sizeof(float) * (bug == 1 ? n - 1 : n));
      for (int i = bug == 3 ? 1 : 0; i < n; i++)
        if (y[i] != 2 * x[i]) {
          d = "element " + std::to_string(i);
          return false;
        }
    }
    return true;
  });
}

Result blocks_case(int bug) {
  return run([&](std::string& d) {
    Buf<float> y(8, -1.f);
    launch_blocks(y.p, 8, bug);
    for (int b = bug == 1 ? 1 : 0; b < 8; b++)
      if (bug != 1 && y[b] != float(b)) {
        d = "block " + std::to_string(b);
        return false;
      }
    return true;
  });
}

template <class T>
Result wmma_case(int bug, void (*launch)(const T*, const T*, const float*, float*, int, int), T (*conv)(float),
                 float (*back)(T)) {
  return run([&](std::string& d) {
    const int K = 48;
    Buf<T> A(16 * K), B(K * 16);
    Buf<float> bias(16), C(256);
    for (size_t i = 0; i < A.n; i++) A[i] = conv(uniform());
    for (size_t i = 0; i < B.n; i++) B[i] = conv(uniform());
    for (int i = 0; i < 16; i++) bias[i] = uniform();
    launch(A.p, B.p, bias.p, C.p, K, bug);
    for (int r = 0; r < 16; r++)
      for (int c = 0; c < 16; c++) {
        double want = bias[c];
        for (int k = 0; k < K; k++) want += double(back(A[r * K + k])) * back(B[k * 16 + c]);
        if (!close(C[r * 16 + c], want, 1e-5)) {
          d = "C[" + std::to_string(r) + "][" + std::to_string(c) + "] = " + std::to_string(C[r * 16 + c]) +
              ", want " + std::to_string(want);
          return false;
        }
      }
    return true;
  });
}

float tf32_round(float v) {  // cvt.rna.tf32.f32
  unsigned u;
  memcpy(&u, &v, 4);
  u = (u + 0x1000u) & 0xffffe000u;
  memcpy(&v, &u, 4);
  return v;
}

Result wmma_tf32_case() {
  return run([&](std::string& d) {
    const int K = 24;
    Buf<float> A(16 * K), B(K * 16), C(256);
    for (size_t i = 0; i < A.n; i++) A[i] = uniform();
    for (size_t i = 0; i < B.n; i++) B[i] = uniform();
    launch_wmma_tf32(A.p, B.p, C.p, K);
    for (int r = 0; r < 16; r++)
      for (int c = 0; c < 16; c++) {
        double want = 0;
        for (int k = 0; k < K; k++) want += double(tf32_round(A[r * K + k])) * tf32_round(B[k * 16 + c]);
        if (!close(C[r * 16 + c], want, 1e-5)) {
          d = "C[" + std::to_string(r) + "][" + std::to_string(c) + "]";
          return false;
        }
      }
    return true;
  });
}

Result cp_async_case(int bug) {
  return run([&](std::string& d) {
    const int tiles = 5;
    Buf<float> x(tiles * 128 + 4), out(128);
    for (size_t i = 0; i < x.n; i++) x[i] = uniform();
    launch_cp_async(x.p, out.p, tiles, bug);
    for (int t = 0; t < 128; t++) {
      double want = 0;
      for (int k = 0; k < tiles; k++) want += x[k * 128 + t];
      if (!close(out[t], want, 1e-5)) {
        d = "thread " + std::to_string(t) + ": " + std::to_string(out[t]) + " want " + std::to_string(want);
        return false;
      }
    }
    return true;
  });
}

Result config_case(int which) {
  return run([&](std::string&) {
    Buf<float> y(4);
    switch (which) {
      case 0: launch_config(dim3(0), dim3(64), 0, y.p); break;           // empty grid
      case 1: launch_config(dim3(1), dim3(2048), 0, y.p); break;         // too many threads
      case 2: launch_config(dim3(1), dim3(1, 1, 65), 0, y.p); break;     // blockDim.z > 64
      case 3: launch_config(dim3(1, 70000), dim3(32), 0, y.p); break;    // gridDim.y > 65535
      case 4: launch_config(dim3(1), dim3(32), 64 * 1024, y.p); break;   // 64 KB dynamic, no opt-in
      default:
        set_max_dyn_smem(64 * 1024);                                     // opted in: allowed
        launch_config(dim3(1), dim3(32), 64 * 1024, y.p);
    }
    return true;
  });
}

Result hang_case() {
  return run([&](std::string&) {
    Buf<int> out(64);
    launch_hang(out.p);
    return true;
  });
}

Result trap_case(int at) {
  return run([&](std::string& d) {
    Buf<int> out(64);
    launch_trap(out.p, at);
    for (int i = 0; i < 64; i++)
      if (out[i] != 1) {
        d = "thread " + std::to_string(i);
        return false;
      }
    return true;
  });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s CASE [fwd|rev|rand:SEED [strided|blocked]]\n", argv[0]);
    return 2;
  }
  if (argc > 2) simt::set_schedule(argv[2]);
  if (argc > 3) simt::config().wmma_map = std::string(argv[3]) == "blocked";
  auto h = [](float v) { return __float2half(v); };
  auto hb = [](__half v) { return __half2float(v); };
  auto b = [](float v) { return __float2bfloat16(v); };
  auto bb = [](__nv_bfloat16 v) { return __bfloat162float(v); };
  const std::map<std::string, std::function<Result()>> cases = {
      {"reduce", [] { return reduce_case(0); }},
      {"reduce_no_barrier", [] { return reduce_case(1); }},
      {"reduce_partial_shuffle", [] { return reduce_case(2); }},
      {"reduce_divergent_barrier", [] { return reduce_case(3); }},
      {"reduce_exit_before_barrier", [] { return reduce_case(4); }},
      {"reduce_lane_not_in_mask", [] { return reduce_case(5); }},
      {"block_sum", [] { return block_sum_case(); }},
      {"neighbour", [] { return neighbour_case(0); }},
      {"neighbour_no_syncwarp", [] { return neighbour_case(1); }},
      {"vote", [] { return vote_case(); }},
      {"shuffle", [] { return shuffle_case(); }},
      {"atomic", [] { return atomic_case(); }},
      {"memory", [] { return memory_case(0); }},
      {"memory_dynamic_short", [] { return memory_case(1); }},
      {"memory_static_overrun", [] { return memory_case(2); }},
      {"memory_misaligned_vector", [] { return memory_case(3); }},
      {"memory_grid_stride_bound", [] { return memory_case(4); }},
      {"blocks", [] { return blocks_case(0); }},
      {"blocks_race", [] { return blocks_case(1); }},
      {"wmma_half", [&] { return wmma_case<__half>(0, launch_wmma_half, +h, +hb); }},
      {"wmma_bf16", [&] { return wmma_case<__nv_bfloat16>(0, launch_wmma_bf16, +b, +bb); }},
      {"wmma_layout_assumed", [&] { return wmma_case<__half>(1, launch_wmma_half, +h, +hb); }},
      {"wmma_misaligned", [&] { return wmma_case<__half>(2, launch_wmma_half, +h, +hb); }},
      {"wmma_diverged", [&] { return wmma_case<__half>(3, launch_wmma_half, +h, +hb); }},
      {"wmma_tf32", [] { return wmma_tf32_case(); }},
      {"cp_async", [] { return cp_async_case(0); }},
      {"cp_async_no_wait", [] { return cp_async_case(1); }},
      {"cp_async_no_barrier", [] { return cp_async_case(2); }},
      {"cp_async_misaligned", [] { return cp_async_case(3); }},
      {"config_empty_grid", [] { return config_case(0); }},
      {"config_too_many_threads", [] { return config_case(1); }},
      {"config_block_z", [] { return config_case(2); }},
      {"config_grid_y", [] { return config_case(3); }},
      {"config_smem_no_optin", [] { return config_case(4); }},
      {"config_smem_optin", [] { return config_case(5); }},
      {"deadlock", [] { return hang_case(); }},
      {"trap", [] { return trap_case(40); }},
      {"no_trap", [] { return trap_case(-1); }},
  };
  if (std::string(argv[1]) == "list") {
    for (const auto& c : cases) printf("%s\n", c.first.c_str());
    return 0;
  }
  auto it = cases.find(argv[1]);
  if (it == cases.end()) {
    fprintf(stderr, "unknown case %s\n", argv[1]);
    return 2;
  }
  const Result r = it->second();
  std::string detail = r.detail;
  for (char& c : detail)
    if (c == '\n') c = ' ';
  printf("case=%s status=%s detail=%s\n", argv[1], r.status.c_str(), detail.c_str());
  return 0;
}
