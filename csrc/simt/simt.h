// simt.h: fastgan's SIMT emulator. CUDA device code, compiled as ordinary C++, runs on the CPU with
// every barrier, warp intrinsic and shared-memory access checked.
//
// Model
//   A launch runs its blocks one after another on the calling thread (fwd: in order, rev: reversed,
//   rand:SEED: shuffled). Every CUDA thread of a block is a fiber with its own stack. A fiber runs
//   until it reaches a synchronisation point (__syncthreads, a *_sync warp intrinsic, __syncwarp,
//   the wmma operations) or exits; when no fiber can run, the scheduler checks the rendezvous and
//   releases it. Between sync points the runnable fibers run in the schedule's order
//   (SIMT_SCHEDULE=fwd|rev|rand:SEED): a correct kernel gives the same result in every order.
// Reported as a launch failure (C10_CUDA_KERNEL_LAUNCH_CHECK throws, naming kernel, block, thread
// and source line):
//   __syncthreads reached from different lines, or while a thread of the block has exited;
//   a warp intrinsic whose mask names lanes that never arrive (deadlock), or whose caller is not in
//   its own mask; a shuffle that reads a lane that did not take part; any other deadlock;
//   wmma operations called by a partial or diverged warp, or with misaligned pointers / ldm;
//   cp.async with misaligned addresses; invalid launch configurations (as CUDA rejects them);
//   __trap().
// Shared memory: every __shared__ variable (rewritten by cu2simt.py) and the dynamic shared memory
// are fresh heap blocks of their exact size for every CUDA block, filled with 0xff bytes (NaN for
// floating types) so that reads of unwritten entries show; ASan sees overruns.
// Sanitizers: with ASan the fiber switches are annotated; with TSan every CUDA thread is a TSan fiber
// and only barriers, __syncwarp, warp intrinsics and atomics order threads, so a missing barrier is
// reported as a data race, as is a race between threads of two blocks (unless they have the same
// thread index, whose TSan fiber is reused from block to block, or run 64 blocks apart).
// cp.async: the copy is deferred to the cp.async.wait_group that covers it, and the destination is
// filled with 0xff when the copy is issued, so a read before the wait sees NaN.
// What it cannot see is in docs/design.md ("SIMT emulator").
#pragma once
#if defined(__CUDACC__)
#error "simt.h is for host compilers: it emulates CUDA device code on the CPU"
#endif

// The toolkit's host-compilable headers: the exact layouts of cudaDeviceProp, dim3, float4, __half,
// __nv_bfloat16, ... Their crt/host_defines.h defines __host__, __device__, __global__,
// __forceinline__ and __align__ for a host compiler.
#include <driver_types.h>
#include <vector_types.h>
#include <vector_functions.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
// cu2simt.py rewrites every __shared__ declaration; one it missed must not compile as a local.
#undef __shared__
#define __shared__ SIMT_ERROR_shared_declaration_not_rewritten_by_cu2simt

#include <sys/mman.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define SIMT_TSAN 1
extern "C" void __tsan_ignore_thread_begin();  // in libtsan, not in every version's header
extern "C" void __tsan_ignore_thread_end();
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SIMT_ASAN 1
#endif
// The emulator's own bookkeeping is not instrumented: only the kernel's accesses are checked.
#define SIMT_RT __attribute__((noinline, no_sanitize_thread, no_sanitize_address))

namespace simt {
// With TSan, the accesses of the emulator's bookkeeping (which call instrumented library code) are
// ignored: a scope with a Quiet in it records no reads or writes (synchronisation still counts).
struct Quiet {
#ifdef SIMT_TSAN
  Quiet() { __tsan_ignore_thread_begin(); }
  ~Quiet() { __tsan_ignore_thread_end(); }
#endif
  Quiet(const Quiet&) = delete;
  Quiet& operator=(const Quiet&) = delete;
#ifndef SIMT_TSAN
  Quiet() {}  // (user-provided: no unused-variable warnings)
#endif
};
}  // namespace simt

constexpr int warpSize = 32;
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace simt {

// ---- configuration (environment defaults, changed at run time through the extension) ---------
struct Config {
  std::string schedule = "fwd";  // fwd | rev | rand:SEED
  unsigned seed = 1;
  int sm_count = 2;              // cudaDeviceProp::multiProcessorCount
  int cc_major = 9, cc_minor = 0;
  int wmma_map = 0;              // 0 strided, 1 blocked: the element <-> lane mapping of fragments
  bool capturing = false;        // what cudaStreamIsCapturing reports
  bool strict_sites = false;     // warp intrinsics of one rendezvous must come from one line
  long fail_event_record_at = -1;  // fault injection: the k-th cudaEventRecord from now fails
  float wmma_fault = 0;            // fault injection: added to one element of every mma_sync of
                                   // block (0,0,0), warp 0 (a tensor-core error confined to one tile)
  size_t stack_kb = 256;
};
inline Config& config() {
  static Config* c = [] {
    auto* c = new Config;
    if (const char* e = getenv("SIMT_SCHEDULE")) c->schedule = e;
    if (c->schedule.rfind("rand:", 0) == 0) c->seed = unsigned(strtoul(c->schedule.c_str() + 5, nullptr, 10));
    if (const char* e = getenv("SIMT_SM_COUNT")) c->sm_count = std::max(1, atoi(e));
    if (const char* e = getenv("SIMT_WMMA_MAP")) c->wmma_map = std::string(e) == "blocked";
    if (const char* e = getenv("SIMT_STRICT_SITES")) c->strict_sites = e[0] == '1';
    if (const char* e = getenv("SIMT_STACK_KB")) c->stack_kb = strtoul(e, nullptr, 10);
#if defined(SIMT_ASAN) || defined(SIMT_TSAN)
    c->stack_kb = std::max<size_t>(c->stack_kb, 1024);
#endif
    return c;
  }();
  return *c;
}
inline void set_schedule(const std::string& s) {
  Config& c = config();
  c.schedule = s;
  c.seed = s.rfind("rand:", 0) == 0 ? unsigned(strtoul(s.c_str() + 5, nullptr, 10)) : 1u;
}

enum Op { NONE, BAR, SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, BALLOT, SYNCWARP, WMMA };
inline const char* op_name(int op) {
  static const char* n[] = {"none", "__syncthreads", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                            "__shfl_xor_sync", "__ballot_sync/__any_sync/__all_sync", "__syncwarp",
                            "wmma::*_sync"};
  return n[op];
}

namespace detail {
enum St { RUN, WAIT, DONE };

struct CpAsync {
  void* dst;
  const void* src;
  int bytes, src_bytes;
  long group;  // -1: not committed yet
};

struct Fiber {
  void* sp = nullptr;  // saved stack pointer (x86-64 switch)
#if !defined(__x86_64__)
  ucontext_t ctx;
#endif
  char* stack = nullptr;
  size_t stack_size = 0;
  unsigned lin = 0;
  uint3 tid{};
  int st = DONE;
  int op = NONE, line = 0, width = 32, arg = 0;
  unsigned mask = 0;
  const char* file = "";
  alignas(16) unsigned char in[16], out[16];
  int pred = 0;
  bool unwind = false;  // its block failed: unwind the kernel's frames at the next resume
  void* tsan = nullptr;
  void* asan_fake = nullptr;
  std::vector<CpAsync> cp;
  long cp_next_group = 0;
};

struct SharedVar {
  const void* key;
  void* p;
  size_t bytes;
};

struct State {
  std::vector<Fiber*> fibers;  // pool, grows
  unsigned nthreads = 0;
  void* main_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t main_ctx;
#endif
  Fiber* cur = nullptr;
  std::function<void()> body;
  std::string err;
  const char* kernel = "";
  const char* launch_file = "";
  int launch_line = 0;
  size_t dyn_smem_bytes = 0;
  size_t static_smem_bytes = 0, max_dyn_smem = 48 * 1024;
  std::vector<SharedVar> shared;    // this block's shared variables (dynamic: key == nullptr)
  std::vector<void*> to_free;       // shared blocks and sync objects of this launch, freed at its end
  int bar_count_result = 0;
  void* tsan_main = nullptr;
  // TSan sync objects (only their addresses matter): the host's writes before a launch reach every
  // thread of it, every thread's writes reach the host after it. Barriers and warp rendezvous of
  // the k-th block run synchronise through set k % 64 of block_sync_pool, so that blocks stay
  // unordered (but for blocks 64 apart): a fresh set per block would cost TSan a vector clock per
  // object and block, gigabytes for a large grid.
  int host_to_dev = 0, dev_to_host = 0;
  int block_sync_pool[64][33] = {};
  int* block_sync = nullptr;  // [0]: __syncthreads, [1 + w]: warp w
  unsigned long block_serial = 0;
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
  std::mutex launch_mu;
};
inline State& S() {
  static State* s = new State;  // never destroyed (LSan-clean, usable at exit)
  return *s;
}

// ---- fiber switching --------------------------------------------------------------------------
#if defined(__x86_64__)
// simt_switch(&save, to): saves the callee-saved registers and the stack pointer in *save, switches
// to the stack `to` (prepared by init_fiber or saved by an earlier switch) and returns there.
// (Weak symbols: every translation unit that includes this header emits them; the linker keeps one.)
extern "C" void simt_switch(void** save, void* to);
extern "C" void simt_fiber_start();
asm(R"(
  .text
  .weak simt_switch
  .hidden simt_switch
  .type simt_switch,@function
simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size simt_switch,.-simt_switch
  .weak simt_fiber_start
  .hidden simt_fiber_start
  .type simt_fiber_start,@function
simt_fiber_start:
  call simt_fiber_main
  ud2
  .size simt_fiber_start,.-simt_fiber_start
)");
#endif
extern "C" void simt_fiber_main();

SIMT_RT inline void switch_to_main(bool dying) {
  State& s = S();
  Fiber* f = s.cur;
#ifdef SIMT_TSAN
  __tsan_switch_to_fiber(s.tsan_main, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef SIMT_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &f->asan_fake, s.main_stack_bottom, s.main_stack_size);
#endif
  (void)dying;
#if defined(__x86_64__)
  simt_switch(&f->sp, s.main_sp);
#else
  swapcontext(&f->ctx, &s.main_ctx);
#endif
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(f->asan_fake, nullptr, nullptr);
#endif
}

SIMT_RT inline void resume(Fiber* f) {
  State& s = S();
  s.cur = f;
  threadIdx = f->tid;
#ifdef SIMT_TSAN
  __tsan_switch_to_fiber(f->tsan, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef SIMT_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->stack, f->stack_size);
#endif
#if defined(__x86_64__)
  simt_switch(&s.main_sp, f->sp);
#else
  swapcontext(&s.main_ctx, &f->ctx);
#endif
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  s.cur = nullptr;
}

SIMT_RT inline void fail(const std::string& m) {
  State& s = S();
  if (s.err.empty()) s.err = m;
}
SIMT_RT inline std::string where(const Fiber* f) {
  char b[256];
  snprintf(b, sizeof b, "block (%u,%u,%u) thread (%u,%u,%u) [warp %u lane %u]", blockIdx.x, blockIdx.y,
           blockIdx.z, f->tid.x, f->tid.y, f->tid.z, f->lin / 32, f->lin % 32);
  return b;
}
SIMT_RT inline std::string site(const Fiber* f) {
  char b[512];
  snprintf(b, sizeof b, "%s(mask=0x%08x) at %s:%d", op_name(f->op), f->mask, f->file, f->line);
  return b;
}

// Thrown inside a fiber to unwind the kernel's frames (destructors run) when its block has failed.
struct Unwind {};

// Parks the calling fiber at a sync point until the scheduler releases it (or unwinds it).
SIMT_RT inline void wait(int op, unsigned mask, const char* file, int line) {
  Fiber* f = S().cur;
  f->op = op;
  f->mask = mask;
  f->file = file;
  f->line = line;
  f->st = WAIT;
  switch_to_main(false);
  if (S().cur->unwind) throw Unwind{};
}

// Device code found an error: record it and end this thread; the block is abandoned.
[[noreturn]] SIMT_RT inline void device_fail(const std::string& m) {
  {
    Quiet q;
    fail(m);
  }
  throw Unwind{};
}

SIMT_RT inline void poison(void* p, size_t n) {
  volatile unsigned char* c = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) c[i] = 0xff;  // NaN for float/half/double, -1 for integers
}

// A fresh, poisoned heap block for a shared variable of this CUDA block (freed at launch end).
SIMT_RT inline void* shared_alloc(size_t bytes, size_t align) {
  Quiet q;  // the allocation is not a write by the fiber that got there first
  State& s = S();
  void* p = nullptr;
  if (posix_memalign(&p, std::max<size_t>(align, 16), std::max<size_t>(bytes, 1)) != 0) std::abort();
  poison(p, bytes);
  s.to_free.push_back(p);
  return p;
}

SIMT_RT inline void* shared_lookup(const void* key, size_t bytes, size_t align, bool dynamic) {
  Quiet q;
  State& s = S();
  for (const SharedVar& v : s.shared)
    if (v.key == key) return v.p;
  if (!dynamic) {
    s.static_smem_bytes += bytes;
    // Without cudaFuncSetAttribute a block gets 48 KB in all; with it, up to 227 KB (sm_90).
    const size_t limit = s.max_dyn_smem > 48 * 1024 ? 227 * 1024 : 48 * 1024;
    if (s.static_smem_bytes + s.dyn_smem_bytes > limit) {
      char b[200];
      snprintf(b, sizeof b, "the block uses %zu bytes of static and %zu of dynamic shared memory, more "
               "than the 48 KB a kernel gets without cudaFuncSetAttribute", s.static_smem_bytes,
               s.dyn_smem_bytes);
      device_fail(b);
    }
  }
  void* p = shared_alloc(bytes, align);
  s.shared.push_back({key, p, bytes});
  return p;
}

// __shared__ T name;  ->  auto& name = shared_var<T>(&key, alignment);   (cu2simt.py)
template <class T>
inline T& shared_var(const void* key, size_t align = alignof(T)) {
  return *static_cast<T*>(shared_lookup(key, sizeof(T), std::max(align, alignof(T)), false));
}
// extern __shared__ T name[];  ->  T* name = dyn_shared<T>();
template <class T>
inline T* dyn_shared() {
  State& s = S();
  if (s.dyn_smem_bytes == 0) return nullptr;
  return static_cast<T*>(shared_lookup(nullptr, s.dyn_smem_bytes, 16, true));
}

SIMT_RT inline Fiber* make_fiber() {
  Fiber* f = new Fiber;
  f->stack_size = config().stack_kb * 1024;
  const size_t pg = 4096;
  void* m = mmap(nullptr, f->stack_size + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    perror("simt: mmap");
    std::abort();
  }
  mprotect(m, pg, PROT_NONE);  // guard page below the stack
  f->stack = static_cast<char*>(m) + pg;
#ifdef SIMT_TSAN
  // One TSan fiber per emulated thread slot, reused by the thread of the same index in every block
  // (so that its stack and bookkeeping are not reported): threads of different blocks are
  // unordered, except for the same thread index, which follows program order.
  f->tsan = __tsan_create_fiber(0);
#endif
  return f;
}

SIMT_RT inline void init_fiber(Fiber* f) {
  f->unwind = false;
#if defined(__x86_64__)
  // Stack top: [6 callee-saved registers (zero)] [return address = simt_fiber_start], arranged so
  // that simt_fiber_start runs with the stack aligned as after a call.
  uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack) + f->stack_size) & ~uintptr_t(15);
  void** slot = reinterpret_cast<void**>(top - 8);
  *slot = reinterpret_cast<void*>(&simt_fiber_start);
  for (int i = 1; i <= 6; ++i) slot[-i] = nullptr;
  f->sp = slot - 6;
#else
  getcontext(&f->ctx);
  f->ctx.uc_stack.ss_sp = f->stack;
  f->ctx.uc_stack.ss_size = f->stack_size;
  f->ctx.uc_link = nullptr;
  makecontext(&f->ctx, simt_fiber_main, 0);
#endif
}

// ---- scheduler ----------------------------------------------------------------------------------
SIMT_RT inline void order(std::vector<unsigned>& o, unsigned n, unsigned long salt) {
  const Config& c = config();
  o.resize(n);
  for (unsigned i = 0; i < n; ++i) o[i] = i;
  if (c.schedule == "rev") {
    std::reverse(o.begin(), o.end());
  } else if (c.schedule.rfind("rand", 0) == 0) {
    std::mt19937 g(c.seed * 7919u + unsigned(salt) * 104729u);
    std::shuffle(o.begin(), o.end(), g);
  }
}

// Releases every warp-level rendezvous that is complete; false if none was.
SIMT_RT inline bool resolve_warps() {
  State& s = S();
  bool progress = false;
  const unsigned n = s.nthreads;
  for (unsigned w0 = 0; w0 < n; w0 += 32) {
    const unsigned lanes = std::min(32u, n - w0);
    const unsigned exist = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
    for (unsigned l = 0; l < lanes; ++l) {
      Fiber* f = s.fibers[w0 + l];
      if (f->st != WAIT || f->op == BAR || f->op == NONE) continue;
      const unsigned m = f->mask;
      // Every existing, non-exited lane named in the mask must wait at the same operation with
      // the same mask.
      bool ready = true;
      for (unsigned k = 0; k < 32 && ready; ++k) {
        if (!(m >> k & 1) || !(exist >> k & 1)) continue;
        Fiber* g = s.fibers[w0 + k];
        if (g->st == DONE) continue;
        if (g->st == WAIT && g->op == f->op && g->mask == m) {
          // wmma operations are collective: the whole warp must be at the same one.
          if ((config().strict_sites || f->op == WMMA) && (g->line != f->line || strcmp(g->file, f->file) != 0)) {
            fail("a warp-collective operation reached from different lines (a diverged warp): " + where(f) +
                 " " + site(f) + " vs " + where(g) + " " + site(g));
            return false;
          }
          continue;
        }
        ready = false;
      }
      if (!ready) continue;
      unsigned part = 0;
      for (unsigned k = 0; k < lanes; ++k) {
        Fiber* g = s.fibers[w0 + k];
        if ((m >> k & 1) && g->st == WAIT && g->op == f->op && g->mask == m) part |= 1u << k;
      }
      unsigned ballot = 0;
      for (unsigned k = 0; k < 32; ++k)
        if ((part >> k & 1) && s.fibers[w0 + k]->pred) ballot |= 1u << k;
      for (unsigned k = 0; k < 32; ++k) {
        if (!(part >> k & 1)) continue;
        Fiber* g = s.fibers[w0 + k];
        const int op = g->op;
        if (op == SHFL_IDX || op == SHFL_UP || op == SHFL_DOWN || op == SHFL_XOR) {
          const int w = g->width, base = int(k) & ~(w - 1);
          int src = int(k);
          if (op == SHFL_IDX) {
            src = base + (g->arg & (w - 1));
          } else if (op == SHFL_UP) {
            src = int(k) - base >= g->arg ? int(k) - g->arg : int(k);
          } else if (op == SHFL_DOWN) {
            src = int(k) - base + g->arg < w ? int(k) + g->arg : int(k);
          } else {  // xor may read an earlier segment, not a later one (PTX shfl.bfly)
            src = int(k) ^ g->arg;
            if (src >= base + w) src = int(k);
          }
          if (src < 0 || src > 31 || !(part >> src & 1)) {
            char b[160];
            snprintf(b, sizeof b, " reads lane %d, which did not take part (its value is undefined on a GPU)",
                     src);
            fail(where(g) + " " + site(g) + b);
            return false;
          }
          memcpy(g->out, s.fibers[w0 + src]->in, 16);
        } else if (op == BALLOT) {
          memcpy(g->out, &ballot, 4);
          memcpy(g->out + 4, &part, 4);
        } else if (op == WMMA && part != 0xffffffffu) {
          fail(where(g) + " " + site(g) + ": wmma operations need all 32 lanes of the warp, converged");
          return false;
        }
        g->st = RUN;
        g->op = NONE;
      }
      progress = true;
    }
  }
  return progress;
}

SIMT_RT inline bool resolve_barrier() {
  State& s = S();
  Fiber* first = nullptr;
  for (unsigned i = 0; i < s.nthreads; ++i) {
    Fiber* f = s.fibers[i];
    if (f->st == DONE) continue;
    if (f->st != WAIT || f->op != BAR) return false;
    if (!first) {
      first = f;
    } else if (f->line != first->line || strcmp(f->file, first->file) != 0) {
      fail("divergent __syncthreads: " + where(first) + " waits at " + first->file + ":" +
           std::to_string(first->line) + " but " + where(f) + " waits at " + f->file + ":" +
           std::to_string(f->line));
      return false;
    }
  }
  if (!first) return false;
  for (unsigned i = 0; i < s.nthreads; ++i)
    if (s.fibers[i]->st == DONE) {
      fail("__syncthreads at " + std::string(first->file) + ":" + std::to_string(first->line) +
           " reached while " + where(s.fibers[i]) + " has already exited the kernel");
      return false;
    }
  int count = 0;
  for (unsigned i = 0; i < s.nthreads; ++i) count += s.fibers[i]->pred != 0;
  s.bar_count_result = count;
  for (unsigned i = 0; i < s.nthreads; ++i) {
    s.fibers[i]->st = RUN;
    s.fibers[i]->op = NONE;
  }
  return true;
}

SIMT_RT inline std::string describe_hang() {
  State& s = S();
  std::string m = "deadlock: no thread can make progress";
  int shown = 0;
  for (unsigned i = 0; i < s.nthreads && shown < 6; ++i) {
    Fiber* f = s.fibers[i];
    if (f->st == WAIT) {
      m += "\n    " + where(f) + " waits in " + site(f);
      if (f->op != BAR) {
        const unsigned w0 = f->lin / 32 * 32;
        for (unsigned k = 0; k < 32; ++k) {
          if (!(f->mask >> k & 1) || w0 + k >= s.nthreads) continue;
          Fiber* g = s.fibers[w0 + k];
          if (g->st == DONE || (g->st == WAIT && g->op == f->op && g->mask == f->mask)) continue;
          m += " (lane " + std::to_string(k) + " of its mask never arrives: it is " +
               (g->st == WAIT ? "at " + site(g) : std::string("running")) + ")";
          break;
        }
      }
      ++shown;
    }
  }
  for (unsigned i = 0; i < s.nthreads; ++i)
    if (s.fibers[i]->st == DONE) {
      m += "\n    " + where(s.fibers[i]) + " (and maybe others) has exited";
      break;
    }
  return m;
}

SIMT_RT inline void block_begin_fibers(unsigned n) {
  State& s = S();
  while (s.fibers.size() < n) s.fibers.push_back(make_fiber());
  for (unsigned i = 0; i < n; ++i) {
    Fiber* f = s.fibers[i];
    f->lin = i;
    f->tid = uint3{i % blockDim.x, (i / blockDim.x) % blockDim.y, i / (blockDim.x * blockDim.y)};
    f->st = RUN;
    f->op = NONE;
    f->pred = 0;
    f->cp.clear();
    f->cp_next_group = 0;
    init_fiber(f);
  }
}

SIMT_RT inline bool run_block(dim3 bid, unsigned long salt) {
  State& s = S();
  blockIdx = uint3{bid.x, bid.y, bid.z};
  s.shared.clear();
  s.static_smem_bytes = 0;
  const unsigned n = s.nthreads;
  s.block_sync = s.block_sync_pool[s.block_serial++ % 64];
  block_begin_fibers(n);
#ifdef SIMT_TSAN
  __tsan_release(&s.host_to_dev);  // what the host did so far reaches the block's threads
#endif
  std::vector<unsigned> o;
  for (unsigned round = 0;; ++round) {
    order(o, n, salt * 1000003ul + round);
    bool ran = false;
    for (unsigned i : o) {
      Fiber* f = s.fibers[i];
      if (f->st != RUN) continue;
      resume(f);
      ran = true;
      if (!s.err.empty()) break;
    }
    if (s.err.empty()) {
      bool all_done = true;
      for (unsigned i = 0; i < n; ++i) all_done &= s.fibers[i]->st == DONE;
      if (all_done) return true;
      if (ran) continue;
      if (resolve_warps()) continue;
      if (s.err.empty() && resolve_barrier()) continue;
      if (s.err.empty()) fail(describe_hang());
    }
    // The block failed: unwind every thread that has not finished (their frames may own memory).
    for (unsigned i = 0; i < n; ++i) {
      Fiber* f = s.fibers[i];
      if (f->st == DONE) continue;
      f->unwind = true;
      resume(f);
    }
    return false;
  }
}
}  // namespace detail

// ---- launch ------------------------------------------------------------------------------------
struct KernelAttrs {
  const void* fn;
  size_t max_dyn_smem;
};
inline std::vector<KernelAttrs>& kernel_attrs() {
  static auto* v = new std::vector<KernelAttrs>;
  return *v;
}

// The first error of the launches since the last check (cleared by take_error).
inline std::string& pending_error() {
  static auto* e = new std::string;
  return *e;
}
inline std::string take_error() {
  std::string e;
  e.swap(pending_error());
  return e;
}

template <class... KArgs, class... Args>
std::string launch(const char* name, const char* file, int line, dim3 grid, dim3 block, size_t dyn_smem,
                   void (*kernel)(KArgs...), Args&&... args) {
  using namespace detail;
  State& s = S();
  std::lock_guard<std::mutex> lock(s.launch_mu);
  Quiet quiet;  // the host's bookkeeping (the kernel's parameters are read-only to its threads)
  char where_launched[512];
  snprintf(where_launched, sizeof where_launched, "kernel %s launched at %s:%d with grid (%u,%u,%u) block "
           "(%u,%u,%u) dynamic shared memory %zu: ", name, file, line, grid.x, grid.y, grid.z, block.x,
           block.y, block.z, dyn_smem);
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  size_t max_dyn = 48 * 1024;
  for (const KernelAttrs& a : kernel_attrs())
    if (a.fn == reinterpret_cast<const void*>(kernel)) max_dyn = a.max_dyn_smem;
  if (nthreads == 0 || nthreads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    return std::string(where_launched) + "invalid configuration argument (CUDA rejects this launch)";
  if (dyn_smem > max_dyn)
    return std::string(where_launched) + "too much dynamic shared memory requested (more than 48 KB "
           "needs cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize))";
  s.err.clear();
  s.kernel = name;
  gridDim = grid;
  blockDim = block;
  s.nthreads = unsigned(nthreads);
  s.dyn_smem_bytes = dyn_smem;
  s.max_dyn_smem = max_dyn;
  std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);  // by value, as CUDA copies them
  s.body = [&] { std::apply(kernel, params); };
#ifdef SIMT_TSAN
  if (!s.tsan_main) s.tsan_main = __tsan_get_current_fiber();
#endif
  // Block order: fwd in order, rev reversed, rand shuffled (each block is independent on a GPU).
  std::vector<dim3> blocks;
  blocks.reserve(size_t(grid.x) * grid.y * grid.z);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) blocks.push_back(dim3(bx, by, bz));
  const Config& c = config();
  if (c.schedule == "rev") std::reverse(blocks.begin(), blocks.end());
  else if (c.schedule.rfind("rand", 0) == 0) std::shuffle(blocks.begin(), blocks.end(), std::mt19937(c.seed));
  unsigned long salt = 0;
  for (const dim3& b : blocks) {
    if (!run_block(b, ++salt)) break;
  }
#ifdef SIMT_TSAN
  __tsan_acquire(&s.dev_to_host);  // the host sees every write of the launch (stream order)
#endif
  for (void* p : s.to_free) free(p);
  s.to_free.clear();
  s.shared.clear();
  s.body = nullptr;
  return s.err.empty() ? std::string() : std::string(where_launched) + s.err;
}

// Target of cu2simt.py's rewrite of  kernel<<<grid, block, smem, stream>>>(args).
template <class Stream, class... KArgs, class... Args>
void launch_on(const char* name, const char* file, int line, Stream, dim3 grid, dim3 block, size_t smem,
               void (*kernel)(KArgs...), Args&&... args) {
  std::string e = launch(name, file, line, grid, block, smem, kernel, std::forward<Args>(args)...);
  if (!e.empty() && pending_error().empty()) pending_error() = e;
}
}  // namespace simt

// Emitted by every translation unit (inline, used), called only from simt_fiber_start.
extern "C" inline __attribute__((used)) void simt_fiber_main() {
  using namespace simt::detail;
  State& s = S();
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &s.main_stack_bottom, &s.main_stack_size);
#endif
#ifdef SIMT_TSAN
  __tsan_acquire(&s.host_to_dev);
#endif
  if (!s.cur->unwind) {  // (a thread of a failed block that never started has nothing to unwind)
    try {
      s.body();
    } catch (const Unwind&) {
    }
  }
#ifdef SIMT_TSAN
  __tsan_release(&s.dev_to_host);
#endif
  {
    simt::Quiet q;
    s.cur->st = DONE;
    s.cur->cp.clear();  // copies never waited for are not guaranteed to land: drop them
  }
  switch_to_main(true);
  std::abort();  // a finished fiber is never resumed
}

// ---- device-side API ------------------------------------------------------------------------------
#define SIMT_SITE const char *file_ = __builtin_FILE(), int line_ = __builtin_LINE()

namespace simt::detail {
SIMT_RT inline int barrier(int pred, const char* file, int line) {
  Quiet q;
  State& s = S();
  s.cur->pred = pred != 0;
#ifdef SIMT_TSAN
  __tsan_release(&s.block_sync[0]);
#endif
  wait(BAR, 0, file, line);
#ifdef SIMT_TSAN
  __tsan_acquire(&s.block_sync[0]);
#endif
  return s.bar_count_result;
}
SIMT_RT inline void check_in_mask(unsigned mask, int op, const char* file, int line) {
  Fiber* f = S().cur;
  if (!(mask >> (f->lin % 32) & 1)) {
    f->op = op;
    f->mask = mask;
    f->file = file;
    f->line = line;
    device_fail(where(f) + " calls " + site(f) + " but its own lane is not in the mask");
  }
}
SIMT_RT inline void warp_release(unsigned) {
#ifdef SIMT_TSAN
  __tsan_release(&S().block_sync[1 + S().cur->lin / 32]);
#endif
}
SIMT_RT inline void warp_acquire(unsigned) {
#ifdef SIMT_TSAN
  __tsan_acquire(&S().block_sync[1 + S().cur->lin / 32]);
#endif
}
template <class T>
SIMT_RT T shfl(int op, unsigned mask, T v, int arg, int width, const char* file, int line) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable_v<T>, "shuffle of an unsupported type");
  Quiet q;
  check_in_mask(mask, op, file, line);
  Fiber* f = S().cur;
  if (width <= 0 || width > 32 || (width & (width - 1))) {
    f->op = op;
    f->file = file;
    f->line = line;
    f->mask = mask;
    device_fail(where(f) + " " + site(f) + ": width must be a power of two in [1, 32]");
  }
  memcpy(f->in, &v, sizeof(T));
  f->width = width;
  f->arg = arg;
  warp_release(mask);
  wait(op, mask, file, line);
  warp_acquire(mask);
  T r;
  memcpy(&r, S().cur->out, sizeof(T));
  return r;
}
SIMT_RT inline unsigned ballot(unsigned m, int p, const char* file, int line, unsigned* part) {
  Quiet q;
  check_in_mask(m, BALLOT, file, line);
  S().cur->pred = p != 0;
  warp_release(m);
  wait(BALLOT, m, file, line);
  warp_acquire(m);
  unsigned r;
  memcpy(&r, S().cur->out, 4);
  if (part) memcpy(part, S().cur->out + 4, 4);
  return r;
}
SIMT_RT inline void syncwarp(unsigned m, int op, const char* file, int line) {
  Quiet q;
  check_in_mask(m, op, file, line);
  warp_release(m);
  wait(op, m, file, line);
  warp_acquire(m);
}
}  // namespace simt::detail

inline void __syncthreads(SIMT_SITE) { simt::detail::barrier(0, file_, line_); }
inline int __syncthreads_count(int p, SIMT_SITE) { return simt::detail::barrier(p, file_, line_); }
inline int __syncthreads_or(int p, SIMT_SITE) { return simt::detail::barrier(p, file_, line_) != 0; }
inline int __syncthreads_and(int p, SIMT_SITE) {
  return simt::detail::barrier(p, file_, line_) == int(blockDim.x * blockDim.y * blockDim.z);
}
template <class T>
inline T __shfl_sync(unsigned m, T v, int src, int w = 32, SIMT_SITE) {
  return simt::detail::shfl(simt::SHFL_IDX, m, v, src, w, file_, line_);
}
template <class T>
inline T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32, SIMT_SITE) {
  return simt::detail::shfl(simt::SHFL_UP, m, v, int(d), w, file_, line_);
}
template <class T>
inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32, SIMT_SITE) {
  return simt::detail::shfl(simt::SHFL_DOWN, m, v, int(d), w, file_, line_);
}
template <class T>
inline T __shfl_xor_sync(unsigned m, T v, int lm, int w = 32, SIMT_SITE) {
  return simt::detail::shfl(simt::SHFL_XOR, m, v, lm, w, file_, line_);
}
inline unsigned __ballot_sync(unsigned m, int p, SIMT_SITE) {
  return simt::detail::ballot(m, p, file_, line_, nullptr);
}
inline int __any_sync(unsigned m, int p, SIMT_SITE) { return simt::detail::ballot(m, p, file_, line_, nullptr) != 0; }
inline int __all_sync(unsigned m, int p, SIMT_SITE) {
  unsigned part = 0;
  const unsigned b = simt::detail::ballot(m, p, file_, line_, &part);
  return b == part;
}
inline void __syncwarp(unsigned m = 0xffffffffu, SIMT_SITE) {
  simt::detail::syncwarp(m, simt::SYNCWARP, file_, line_);
}
// Lanes of this warp that have not exited (an approximation: a GPU reports the converged lanes).
SIMT_RT inline unsigned __activemask() {
  using namespace simt::detail;
  State& s = S();
  const unsigned w0 = s.cur->lin / 32 * 32;
  unsigned r = 0;
  for (unsigned k = 0; k < 32 && w0 + k < s.nthreads; ++k)
    if (s.fibers[w0 + k]->st != DONE) r |= 1u << k;
  return r;
}
SIMT_RT inline unsigned __lanemask_lt() { return (1u << (simt::detail::S().cur->lin % 32)) - 1; }
[[noreturn]] inline void __trap() {
  using namespace simt::detail;
  device_fail(where(S().cur) + " executed __trap()");
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- atomics: relaxed, as on a GPU (TSan understands the builtins) ---------------------------------
namespace simt::detail {
template <class T, class F>
inline T atomic_rmw(T* p, F f) {
  T old, nv;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  do {
    nv = f(old);
  } while (!__atomic_compare_exchange(p, &old, &nv, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}
// 16-bit floating types: CAS on the containing 32-bit word, as CUDA's own fallback does.
template <class T, class F>
inline T atomic_rmw16(T* p, F f) {
  static_assert(sizeof(T) == 2, "16-bit type expected");
  auto addr = reinterpret_cast<uintptr_t>(p);
  auto* word = reinterpret_cast<unsigned*>(addr & ~uintptr_t(3));
  const unsigned shift = (addr & 2) ? 16 : 0;
  unsigned old = __atomic_load_n(word, __ATOMIC_RELAXED), nv;
  T prev;
  do {
    unsigned short bits = static_cast<unsigned short>(old >> shift);
    memcpy(static_cast<void*>(&prev), &bits, 2);
    T r = f(prev);
    memcpy(&bits, static_cast<const void*>(&r), 2);
    nv = (old & ~(0xffffu << shift)) | (unsigned(bits) << shift);
  } while (!__atomic_compare_exchange_n(word, &old, nv, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return prev;
}
}  // namespace simt::detail
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* p, float v) {
  return simt::detail::atomic_rmw(p, [v](float o) { return o + v; });
}
inline double atomicAdd(double* p, double v) {
  return simt::detail::atomic_rmw(p, [v](double o) { return o + v; });
}
inline __half atomicAdd(__half* p, __half v) {
  return simt::detail::atomic_rmw16(p, [v](__half o) { return __float2half(__half2float(o) + __half2float(v)); });
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
  return simt::detail::atomic_rmw16(
      p, [v](__nv_bfloat16 o) { return __float2bfloat16(__bfloat162float(o) + __bfloat162float(v)); });
}
inline int atomicMax(int* p, int v) {
  return simt::detail::atomic_rmw(p, [v](int o) { return o < v ? v : o; });
}
inline int atomicMin(int* p, int v) {
  return simt::detail::atomic_rmw(p, [v](int o) { return v < o ? v : o; });
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
  return simt::detail::atomic_rmw(p, [v](unsigned o) { return o < v ? v : o; });
}
inline unsigned atomicMin(unsigned* p, unsigned v) {
  return simt::detail::atomic_rmw(p, [v](unsigned o) { return v < o ? v : o; });
}
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline float atomicExch(float* p, float v) {
  return simt::detail::atomic_rmw(p, [v](float) { return v; });
}
inline int atomicCAS(int* p, int cmp, int v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}
inline unsigned atomicInc(unsigned* p, unsigned lim) {
  return simt::detail::atomic_rmw(p, [lim](unsigned o) { return o >= lim ? 0u : o + 1; });
}

// ---- cp.async (sm_80): deferred copies ------------------------------------------------------------
namespace simt {
// cp.async.cg.shared.global [dst], [src], bytes, src_bytes: src_bytes < bytes zero-fills the rest.
SIMT_RT inline void cp_async(void* dst, const void* src, int bytes, int src_bytes, SIMT_SITE) {
  using namespace detail;
  Quiet q;
  Fiber* f = S().cur;
  const auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  if (d % unsigned(bytes) != 0 || (src_bytes > 0 && s % unsigned(bytes) != 0)) {
    char b[256];
    snprintf(b, sizeof b, " cp.async of %d bytes at %s:%d with a misaligned address (shared %p, global %p): "
             "both must be %d-byte aligned", bytes, file_, line_, dst, src, bytes);
    device_fail(where(f) + b);
  }
  poison(dst, size_t(bytes));  // in flight: a read before the matching wait sees NaN
  f->cp.push_back({dst, src, bytes, src_bytes, -1});
}
SIMT_RT inline void cp_async_commit() {
  using namespace detail;
  Quiet q;
  Fiber* f = S().cur;
  for (CpAsync& c : f->cp)
    if (c.group < 0) c.group = f->cp_next_group;
  ++f->cp_next_group;
}
// Completes every committed group but the `pending` most recent ones. The copy is made here, by
// the waiting thread: for TSan it is this thread's write, ordered for others only by a barrier.
SIMT_RT inline void cp_async_take(int pending, std::vector<detail::CpAsync>& done) {
  using namespace detail;
  Quiet q;
  Fiber* f = S().cur;
  const long limit = f->cp_next_group - pending;  // groups below this one complete
  size_t keep = 0;
  for (size_t i = 0; i < f->cp.size(); ++i) {
    const CpAsync c = f->cp[i];
    if (c.group >= 0 && c.group < limit) done.push_back(c);
    else f->cp[keep++] = c;
  }
  f->cp.resize(keep);
}
inline void cp_async_wait(int pending) {
  std::vector<detail::CpAsync> done;
  cp_async_take(pending, done);
  for (const detail::CpAsync& c : done) {  // instrumented: ASan checks the source, TSan the writes
    unsigned char* d = static_cast<unsigned char*>(c.dst);
    if (c.src_bytes > 0) memcpy(d, c.src, size_t(c.src_bytes));
    if (c.src_bytes < c.bytes) memset(d + c.src_bytes, 0, size_t(c.bytes - c.src_bytes));
  }
}
}  // namespace simt

// ---- intrinsics -------------------------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) { return *p; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x ? __builtin_clz(unsigned(x)) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x != x ? 0.f : (x < 0.f ? 0.f : (x > 1.f ? 1.f : x)); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline int __float2int_rn(float x) { return int(nearbyintf(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline int __float_as_int(float x) { int r; memcpy(&r, &x, 4); return r; }
inline unsigned __float_as_uint(float x) { unsigned r; memcpy(&r, &x, 4); return r; }
inline float __int_as_float(int x) { float r; memcpy(&r, &x, 4); return r; }
inline float __uint_as_float(unsigned x) { float r; memcpy(&r, &x, 4); return r; }
inline long long __double_as_longlong(double x) { long long r; memcpy(&r, &x, 8); return r; }
inline double __longlong_as_double(long long x) { double r; memcpy(&r, &x, 8); return r; }
inline long long clock64() { return std::chrono::steady_clock::now().time_since_epoch().count(); }
inline unsigned __cvta_generic_to_shared(const void* p) { return unsigned(reinterpret_cast<uintptr_t>(p)); }
// CUDA's global min/max overloads for the arithmetic types (templates would capture other code).
#define SIMT_MINMAX(T)                              \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
#define SIMT_FMINMAX(T)                                       \
  inline T min(T a, T b) { return std::fmin(a, b); } /* NaN: the other */ \
  inline T max(T a, T b) { return std::fmax(a, b); }
SIMT_MINMAX(int)
SIMT_MINMAX(unsigned)
SIMT_MINMAX(long)
SIMT_MINMAX(unsigned long)
SIMT_MINMAX(long long)
SIMT_MINMAX(unsigned long long)
SIMT_FMINMAX(float)
SIMT_FMINMAX(double)
#undef SIMT_MINMAX
#undef SIMT_FMINMAX
