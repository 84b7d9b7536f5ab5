// Asynchronous global -> shared copies (cp.async, sm_80+), wrapped so that every build has a body:
//   sm_80+ device code   the PTX instructions;
//   the SIMT emulator    deferred copies that land at the matching wait (simt.h), so a missing wait
//                        or barrier shows as NaN reads and TSan races;
//   otherwise            a synchronous copy (nvcc's host pass and older archs, which never run it).
#pragma once
#include <cuda_runtime.h>

namespace fastgan {

// 16 bytes from gmem to smem, or 16 zero bytes when !pred. Both addresses 16-byte aligned.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
#if defined(FASTGAN_SIMT)
  ::simt::cp_async(smem, gmem, 16, pred ? 16 : 0);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = pred ? 16 : 0;  // 0 source bytes: the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
#else
  *reinterpret_cast<uint4*>(smem) = pred ? *reinterpret_cast<const uint4*>(gmem) : make_uint4(0, 0, 0, 0);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(FASTGAN_SIMT)
  ::simt::cp_async_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N of the committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(FASTGAN_SIMT)
  ::simt::cp_async_wait(N);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

}  // namespace fastgan
