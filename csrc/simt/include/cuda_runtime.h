// The CUDA runtime API for the SIMT emulator (shadows the toolkit's <cuda_runtime.h> in the SIMT
// build): launches run synchronously on the CPU, so streams and synchronisation are no-ops, events
// read the host clock, and launch errors are the emulator's reports. The functions are defined
// inline here (their declarations come from the toolkit's cuda_runtime_api.h); a runtime function
// that fastgan's launchers do not call is left undefined, and using it fails to link.
#pragma once
#include "simt.h"

namespace simt {
// Device properties the launchers read: an sm_90-like device with config().sm_count SMs (small by
// default, so that grid-stride loops and multi-block paths run at test sizes).
inline cudaDeviceProp* device_props() {
  static cudaDeviceProp* p = new cudaDeviceProp();
  const Config& c = config();
  snprintf(p->name, sizeof p->name, "fastgan SIMT emulator (sm_%d%d)", c.cc_major, c.cc_minor);
  p->major = c.cc_major;
  p->minor = c.cc_minor;
  p->multiProcessorCount = c.sm_count;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsPerMultiProcessor = 2048;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 0x7fffffff;
  p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerBlockOptin = 227 * 1024;
  p->regsPerBlock = 65536;
  p->totalGlobalMem = size_t(1) << 34;
  return p;
}

struct Event {
  std::chrono::steady_clock::time_point t;
  bool recorded = false;
};
inline long& live_events() {
  static long n = 0;
  return n;
}
inline std::string& last_error_message() {
  static auto* m = new std::string;
  return *m;
}
}  // namespace simt

inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    default: return "cudaError (other)";
  }
}
inline const char* cudaGetErrorString(cudaError_t e) {
  if (e == cudaErrorLaunchFailure && !simt::last_error_message().empty())
    return simt::last_error_message().c_str();
  return cudaGetErrorName(e);
}
// A launch failure found by the emulator, as cudaErrorLaunchFailure (its text: cudaGetErrorString).
inline cudaError_t cudaGetLastError() {
  std::string e = simt::take_error();
  if (e.empty()) return cudaSuccess;
  simt::last_error_message() = "SIMT emulator: " + e;
  return cudaErrorLaunchFailure;
}
inline cudaError_t cudaPeekAtLastError() {
  return simt::pending_error().empty() ? cudaSuccess : cudaErrorLaunchFailure;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaGetLastError(); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaGetLastError(); }
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  *p = *simt::device_props();
  return cudaSuccess;
}
inline cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* st) {
  *st = simt::config().capturing ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new simt::Event);
  ++simt::live_events();
  return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (e == nullptr) return cudaErrorInvalidResourceHandle;
  delete reinterpret_cast<simt::Event*>(e);
  --simt::live_events();
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  long& k = simt::config().fail_event_record_at;  // fault injection for the error paths
  if (k == 0) {
    k = -1;
    return cudaErrorLaunchFailure;
  }
  if (k > 0) --k;
  auto* ev = reinterpret_cast<simt::Event*>(e);
  ev->t = std::chrono::steady_clock::now();
  ev->recorded = true;
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  auto* ea = reinterpret_cast<simt::Event*>(a);
  auto* eb = reinterpret_cast<simt::Event*>(b);
  if (!ea->recorded || !eb->recorded) return cudaErrorInvalidResourceHandle;
  *ms = std::chrono::duration<float, std::milli>(eb->t - ea->t).count();
  return cudaSuccess;
}
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || value > 227 * 1024) return cudaErrorInvalidValue;
  const void* fn = reinterpret_cast<const void*>(kernel);
  for (simt::KernelAttrs& a : simt::kernel_attrs())
    if (a.fn == fn) {
      a.max_dyn_smem = size_t(value);
      return cudaSuccess;
    }
  simt::kernel_attrs().push_back({fn, size_t(value)});
  return cudaSuccess;
}
