// Kernels for the emulator's own tests (tests/test_simt_emulator.py): each exercises one feature of
// csrc/simt, correctly (bug == 0) or with a planted bug (bug > 0) that the emulator, ASan/UBSan or
// TSan must report. They are ordinary CUDA: they also compile with nvcc.
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "common/block_reduce.cuh"
#include "common/cp_async.cuh"

namespace selftest {

// ---- block reduction: shuffles + shared memory ---------------------------------------------------
// bug 1: no barrier between the warp totals' writes and their reads
// bug 2: the second-level shuffle runs in lanes < 8 only, with a full mask
// bug 3: the barrier sits inside a branch taken by half of the block
// bug 4: threads past n return before the barrier
// bug 5: a shuffle names a lane that is not in the caller's own mask
__global__ void reduce_kernel(const float* x, float* out, int n, int bug) {
  __shared__ float warp_tot[32];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  float v = tid < n ? x[tid] : 0.f;
  for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  if (lane == 0) warp_tot[warp] = v;
  if (bug == 4 && tid >= n) return;
  if (bug == 3) {
    if (tid % 2 == 0) __syncthreads();
    else __syncthreads();
  } else if (bug != 1) {
    __syncthreads();
  }
  if (warp == 0) {
    v = lane < int(blockDim.x / 32) ? warp_tot[lane] : 0.f;
    if (bug == 2) {
      if (lane < 8)
        for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
    } else if (bug == 5) {
      v += __shfl_down_sync(0x0000ffffu << (lane < 16 ? 16 : 0), v, 1);
    } else {
      for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
    }
    if (lane == 0) *out = v;
  }
}

// ---- fastgan's deterministic block_sum (common/block_reduce.cuh), twice in a row ------------------
__global__ void block_sum_kernel(const double* x, double* out, int n) {
  __shared__ double smem[2 * 32];
  double v[2] = {0, 0};
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    v[0] += x[i];
    v[1] += x[i] * x[i];
  }
  fastgan::block_sum<double, 2>(v, smem);
  double w[2] = {v[0], 1.0};
  fastgan::block_sum<double, 2>(w, smem);  // the second call reuses smem: needs the leading barrier
  if (threadIdx.x == 0) {
    out[0] = v[0];
    out[1] = v[1];
    out[2] = w[1];  // = blockDim.x
  }
}

// ---- warp-synchronous code --------------------------------------------------------------------
// Each lane writes its slot, then reads its neighbour's. bug 1: no __syncwarp between.
__global__ void neighbour_kernel(const int* in, int* out, int bug) {
  __shared__ int slot[64];
  const int t = threadIdx.x;
  slot[t] = in[t] * 3;
  if (bug != 1) __syncwarp();
  out[t] = slot[(t & ~31) + (t + 1) % 32];
}

// ---- warp votes, counts, matches ---------------------------------------------------------------
// out[t]: ballot (even lanes' predicate) of a half-warp mask, any, all, activemask, bar counts.
__global__ void vote_kernel(const int* pred, unsigned* out) {
  const int t = threadIdx.x, lane = t % 32;
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  const unsigned b = __ballot_sync(half, pred[t]);
  const int any = __any_sync(0xffffffffu, pred[t]);
  const int all = __all_sync(0xffffffffu, pred[t]);
  const int cnt = __syncthreads_count(pred[t]);
  const int orr = __syncthreads_or(pred[t]);
  const int andd = __syncthreads_and(pred[t]);
  out[t * 6 + 0] = b;
  out[t * 6 + 1] = unsigned(any);
  out[t * 6 + 2] = unsigned(all);
  out[t * 6 + 3] = unsigned(cnt);
  out[t * 6 + 4] = unsigned(orr);
  out[t * 6 + 5] = unsigned(andd);
}

// Every shuffle flavour and width on doubles (8 bytes) and ints.
__global__ void shuffle_kernel(const double* x, double* out, int w) {
  const int t = threadIdx.x;
  const double v = x[t];
  out[t * 4 + 0] = __shfl_sync(0xffffffffu, v, 3, w);
  out[t * 4 + 1] = __shfl_up_sync(0xffffffffu, v, 2, w);
  out[t * 4 + 2] = __shfl_down_sync(0xffffffffu, v, 5 % w, w);
  out[t * 4 + 3] = double(__shfl_xor_sync(0xffffffffu, t, 1, w));
}

// A __syncwarp whose mask names a lane that is waiting at __syncthreads: deadlock.
__global__ void hang_kernel(int* out) {
  if (threadIdx.x == 5) {
    __syncthreads();
  } else {
    if (threadIdx.x < 32) __syncwarp();
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void trap_kernel(int* out, int at) {
  if (int(threadIdx.x) == at) __trap();
  out[threadIdx.x] = 1;
}

// ---- atomics --------------------------------------------------------------------------------------
__global__ void atomic_kernel(const float* x, float* fsum, double* dsum, __half* hsum, __nv_bfloat16* bsum,
                              int* imax, int* imin, unsigned* inc, int* cas, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    atomicAdd(fsum, x[i]);
    atomicAdd(dsum, double(x[i]));
    atomicAdd(hsum + (i % 2), __float2half(1.0f));
    atomicAdd(bsum + (i % 2), __float2bfloat16(1.0f));
    atomicMax(imax, int(x[i] * 1000));
    atomicMin(imin, int(x[i] * 1000));
    atomicInc(inc, 1000000u);
    int old = atomicCAS(cas, 0, 0), seen;  // an atomic read
    do {
      seen = old;
      old = atomicCAS(cas, seen, seen + 2);
    } while (old != seen);
  }
}

// ---- shared memory bounds, dynamic shared memory, alignment, global bounds --------------------------
// bug 1: dynamic shared memory is one float short (the launcher asks for n - 1)
// bug 2: a static shared array is overrun
// bug 3: a float4 load from an address that is not 16-byte aligned
// bug 4: the grid-stride loop forgets the bound (reads past x)
__global__ void memory_kernel(const float* x, float* y, int n, int bug) {
  extern __shared__ float dyn[];
  __shared__ float stat[64];
  for (int i = threadIdx.x; i < n; i += blockDim.x) dyn[i] = x[i];
  __syncthreads();
  if (bug == 2 && threadIdx.x == 0) stat[64 + n % 3] = 1.f;
  if (bug == 3 && threadIdx.x == 0) {
    const float4 v = *reinterpret_cast<const float4*>(x + 1);
    y[0] = v.x;
  }
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; bug == 4 ? i < n + stride : i < n; i += stride)
    y[i] = dyn[i % n] + x[i];
}

// ---- blocks ---------------------------------------------------------------------------------------
// Each block writes its own element. bug 1: blocks 0 and 1 both write element 0 (thread 3 in one,
// thread 7 in the other): a race between blocks, which only TSan sees.
__global__ void blocks_kernel(float* y, int bug) {
  const int b = blockIdx.x;
  if (bug == 1 && b < 2 && threadIdx.x == (b == 0 ? 3 : 7)) y[0] = float(b);
  if (bug != 1 && threadIdx.x == 0) y[b] = float(b);
}

// ---- wmma -----------------------------------------------------------------------------------------
// C[16 x 16] = A[16 x K] B[K x 16] + bias[col] in one warp. bug 1: the bias is added to the fragment
// assuming element e of a lane is column e (a layout CUDA does not specify); bug 2: a misaligned
// pointer; bug 3: only 16 lanes of the warp call mma_sync.
template <class T>
__global__ void wmma_kernel(const T* A, const T* B, const float* bias, float* C, int K, int bug) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  wmma::fill_fragment(c, 0.0f);
  for (int k = 0; k < K; k += 16) {
    wmma::load_matrix_sync(a, A + k + (bug == 2 ? 8 : 0), K);
    wmma::load_matrix_sync(b, B + k * 16, 16);
    if (bug == 3 && threadIdx.x >= 16) continue;
    wmma::mma_sync(c, a, b, c);
  }
  if (bug == 1) {
    for (int e = 0; e < c.num_elements; e++) c.x[e] += bias[e % 16];
    wmma::store_matrix_sync(C, c, 16, wmma::mem_row_major);
  } else {
    wmma::store_matrix_sync(C, c, 16, wmma::mem_row_major);
    __syncwarp();
    for (int i = threadIdx.x; i < 256; i += 32) C[i] += bias[i % 16];
  }
}

// tf32: the same with fp32 inputs rounded to tf32.
__global__ void wmma_tf32_kernel(const float* A, const float* B, float* C, int K) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
  wmma::fill_fragment(c, 0.0f);
  for (int k = 0; k < K; k += 8) {
    wmma::load_matrix_sync(a, A + k, K);
    wmma::load_matrix_sync(b, B + k * 16, 16);
    for (int e = 0; e < a.num_elements; e++) a.x[e] = wmma::__float_to_tf32(a.x[e]);
    for (int e = 0; e < b.num_elements; e++) b.x[e] = wmma::__float_to_tf32(b.x[e]);
    wmma::mma_sync(c, a, b, c);
  }
  wmma::store_matrix_sync(C, c, 16, wmma::mem_row_major);
}

// ---- cp.async double buffer -------------------------------------------------------------------------
// out[i] = sum over tiles t of x[t * 128 + i] (128 threads, 16-byte copies of 4 floats by 32 threads).
// bug 1: no cp_async_wait before reading the tile; bug 2: no barrier after the wait (other threads'
// copies are read); bug 3: a misaligned global address.
__global__ void cp_async_kernel(const float* x, float* out, int tiles, int bug) {
  __shared__ __align__(16) float buf[2][128];
  const int t = threadIdx.x;
  auto issue = [&](int tile) {
    if (t < 32) fastgan::cp_async16(&buf[tile % 2][t * 4], x + tile * 128 + t * 4 + (bug == 3 ? 1 : 0), true);
    fastgan::cp_async_commit();
  };
  float acc = 0.f;
  issue(0);
  for (int k = 0; k < tiles; k++) {
    if (k + 1 < tiles) issue(k + 1);
    else fastgan::cp_async_commit();
    if (bug != 1) fastgan::cp_async_wait<1>();
    if (bug != 2) __syncthreads();
    acc += buf[k % 2][t];
    __syncthreads();
  }
  out[t] = acc;
}

}  // namespace selftest

// ---- launchers --------------------------------------------------------------------------------------
void launch_reduce(const float* x, float* out, int n, int threads, int bug) {
  selftest::reduce_kernel<<<1, threads>>>(x, out, n, bug);
}
void launch_block_sum(const double* x, double* out, int n, int threads) {
  selftest::block_sum_kernel<<<1, threads>>>(x, out, n);
}
void launch_neighbour(const int* in, int* out, int bug) { selftest::neighbour_kernel<<<1, 64>>>(in, out, bug); }
void launch_vote(const int* pred, unsigned* out, int threads) { selftest::vote_kernel<<<1, threads>>>(pred, out); }
void launch_shuffle(const double* x, double* out, int w) { selftest::shuffle_kernel<<<1, 64>>>(x, out, w); }
void launch_hang(int* out) { selftest::hang_kernel<<<1, 64>>>(out); }
void launch_trap(int* out, int at) { selftest::trap_kernel<<<2, 64>>>(out, at); }
void launch_atomic(const float* x, float* f, double* d, __half* h, __nv_bfloat16* b, int* mx, int* mn,
                   unsigned* inc, int* cas, int n) {
  selftest::atomic_kernel<<<3, 96>>>(x, f, d, h, b, mx, mn, inc, cas, n);
}
void launch_memory(const float* x, float* y, int n, int bug, int blocks, size_t smem) {
  selftest::memory_kernel<<<blocks, 64, smem>>>(x, y, n, bug);
}
void launch_blocks(float* y, int nblocks, int bug) { selftest::blocks_kernel<<<nblocks, 32>>>(y, bug); }
void launch_wmma_half(const __half* A, const __half* B, const float* bias, float* C, int K, int bug) {
  selftest::wmma_kernel<__half><<<1, 32>>>(A, B, bias, C, K, bug);
}
void launch_wmma_bf16(const __nv_bfloat16* A, const __nv_bfloat16* B, const float* bias, float* C, int K, int bug) {
  selftest::wmma_kernel<__nv_bfloat16><<<1, 32>>>(A, B, bias, C, K, bug);
}
void launch_wmma_tf32(const float* A, const float* B, float* C, int K) {
  selftest::wmma_tf32_kernel<<<1, 32>>>(A, B, C, K);
}
void launch_cp_async(const float* x, float* out, int tiles, int bug) {
  selftest::cp_async_kernel<<<1, 128>>>(x, out, tiles, bug);
}
void launch_config(dim3 grid, dim3 block, size_t smem, float* y) {
  selftest::memory_kernel<<<grid, block, smem>>>(y, y, 0, 0);
}
void set_max_dyn_smem(int bytes) {
  cudaFuncSetAttribute(selftest::memory_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}
