// The fiber scheduler behind emulator.h: one block at a time, its threads as fibers
// switched at barriers. A fiber starts on its own stack by makecontext/setcontext; after
// that, switches are _setjmp/_longjmp, which (unlike swapcontext) make no system call to
// save the signal mask: most of the emulator's time went there.
#undef _FORTIFY_SOURCE  // its longjmp check rejects jumps between stacks
#include "emulator.h"

#include <dlfcn.h>
#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace gptk_emu {
namespace {

enum class Wait { kNone, kBlock, kWarp };

struct PendingCopy {
  void* dst;
  const void* src;  // null: zero fill
};

struct Fiber {
  ucontext_t context;  // the first entry
  jmp_buf resume;      // where it waits
  ThreadContext thread;
  Wait wait = Wait::kNone;
  bool started = false, done = false;
  std::vector<PendingCopy> open_group;             // cp.async issued since the last commit
  std::vector<std::vector<PendingCopy>> committed;  // oldest first
};

constexpr size_t kStackBytes = 256 * 1024;

struct Block {
  std::vector<Fiber> fibers;
  std::vector<unsigned char> scratch;  // per warp: 32 lanes x kScratchPerLane
  jmp_buf scheduler;
  const std::function<void()>* body = nullptr;
  int current = -1;
};

Block* g_block = nullptr;
std::vector<std::unique_ptr<char[]>> g_stacks;  // reused block after block: no page faults
ThreadContext g_host_context{};
cudaError_t g_last_error = cudaSuccess;
Schedule g_schedule = Schedule::kForward;
bool g_eager_copies = false;
std::mt19937 g_rng(0);
bool g_launch_faulted = false;  // a fault ended the running launch: no more of its blocks run

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "cuda emulator: %s\n", what);
  std::abort();
}

void fiber_main() {
  Block* b = g_block;
  (*b->body)();
  b->fibers[b->current].done = true;
  _longjmp(b->scheduler, 1);
}

void wait_for(Wait w) {
  Block* b = g_block;
  if (b == nullptr) fail("barrier outside a kernel");
  Fiber& f = b->fibers[b->current];
  f.wait = w;
  if (_setjmp(f.resume) == 0) _longjmp(b->scheduler, 1);
}

// Release barriers whose every live participant is waiting; true if any was released.
bool release_barriers(Block& b) {
  bool released = false;
  bool all_block = true, any_block = false;
  for (const Fiber& f : b.fibers) {
    if (f.done) continue;
    if (f.wait == Wait::kBlock) any_block = true;
    else all_block = false;
  }
  if (any_block && all_block) {
    for (Fiber& f : b.fibers) f.wait = Wait::kNone;
    return true;
  }
  const int n = static_cast<int>(b.fibers.size());
  for (int w0 = 0; w0 < n; w0 += 32) {
    bool all = true, any = false;
    for (int i = w0; i < n && i < w0 + 32; ++i) {
      const Fiber& f = b.fibers[i];
      if (f.done) continue;
      if (f.wait == Wait::kWarp) any = true;
      else all = false;
    }
    if (any && all) {
      for (int i = w0; i < n && i < w0 + 32; ++i) b.fibers[i].wait = Wait::kNone;
      released = true;
    }
  }
  return released;
}

void run_block(dim3 grid, dim3 block_dim, dim3 block_idx, const std::function<void()>& body) {
  if (g_block != nullptr) fail("a launch inside a kernel");
  const int n = static_cast<int>(block_dim.x * block_dim.y * block_dim.z);
  while (static_cast<int>(g_stacks.size()) < n) g_stacks.emplace_back(new char[kStackBytes]);
  Block b;
  b.body = &body;
  b.fibers.resize(n);
  b.scratch.assign(static_cast<size_t>((n + 31) / 32) * 32 * kScratchPerLane, 0);
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.thread.thread_idx = dim3(i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y));
    f.thread.block_idx = block_idx;
    f.thread.block_dim = block_dim;
    f.thread.grid_dim = grid;
    f.thread.lane = i % 32;
    f.thread.warp = i / 32;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = g_stacks[i].get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;  // fiber_main never returns
    makecontext(&f.context, fiber_main, 0);
  }
  g_block = &b;
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (g_schedule == Schedule::kReverse || g_schedule == Schedule::kWarpSerialReverse) {
    std::reverse(order.begin(), order.end());
  }
  const bool warp_serial = g_schedule == Schedule::kWarpSerial || g_schedule == Schedule::kWarpSerialReverse;
  for (;;) {
    bool ran = false, live = false;
    if (g_schedule == Schedule::kShuffle) std::shuffle(order.begin(), order.end(), g_rng);
    // Warp-serial: only the first warp (in `order`) with a runnable thread takes turns, so it
    // runs ahead to the next __syncthreads() before any other warp moves.
    int only_warp = -1;
    if (warp_serial) {
      for (const int i : order) {
        if (!b.fibers[i].done && b.fibers[i].wait == Wait::kNone) {
          only_warp = i / 32;
          break;
        }
      }
    }
    for (const int i : order) {
      Fiber& f = b.fibers[i];
      if (f.done) continue;
      live = true;
      if (f.wait != Wait::kNone || (only_warp >= 0 && i / 32 != only_warp)) continue;
      b.current = i;
      if (_setjmp(b.scheduler) == 0) {  // back here when the fiber waits, ends or faults
        if (f.started) _longjmp(f.resume, 1);
        f.started = true;
        setcontext(&f.context);
      }
      ran = true;
      if (g_launch_faulted) break;
    }
    if (!live || g_launch_faulted) break;
    if (!release_barriers(b) && !ran) fail("deadlock: threads wait at barriers that can never release");
  }
  g_block = nullptr;
}

}  // namespace

ThreadContext& ctx() { return g_block != nullptr ? g_block->fibers[g_block->current].thread : g_host_context; }

void sync_block() { wait_for(Wait::kBlock); }
void sync_warp() { wait_for(Wait::kWarp); }

unsigned char* warp_scratch() {
  return g_block->scratch.data() + static_cast<size_t>(ctx().warp) * 32 * kScratchPerLane;
}

void set_schedule(Schedule s, unsigned seed, bool eager_copies) {
  g_schedule = s;
  g_rng.seed(seed);
  g_eager_copies = eager_copies;
}

namespace {
Fiber& current_fiber() {
  if (g_block == nullptr) fail("cp.async outside a kernel");
  return g_block->fibers[g_block->current];
}

void complete(const std::vector<PendingCopy>& group) {
  for (const PendingCopy& c : group) {
    if (c.src != nullptr) std::memcpy(c.dst, c.src, 16);
    else std::memset(c.dst, 0, 16);
  }
}
}  // namespace

void cp_async_16(void* smem, const void* gmem, bool fill, const char* file, int line) {
  check_aligned(smem, 16, "cp.async shared address", file, line);
  check_aligned(gmem, 16, "cp.async global address", file, line);
  const PendingCopy copy{smem, fill ? gmem : nullptr};
  if (g_eager_copies) complete({copy});
  else current_fiber().open_group.push_back(copy);
}

void cp_async_commit() {
  Fiber& f = current_fiber();
  f.committed.push_back(std::move(f.open_group));
  f.open_group.clear();
}

void cp_async_wait(int pending_groups_allowed) {
  Fiber& f = current_fiber();
  while (static_cast<int>(f.committed.size()) > pending_groups_allowed) {
    complete(f.committed.front());
    f.committed.erase(f.committed.begin());
  }
}

namespace {
// A block's shared memory: static arrays (shared_alloc) and the dynamic buffer, each from
// a 64-byte aligned arena, emptied before each block.
struct Arena {
  std::vector<unsigned char> bytes;
  size_t used = 0;
  unsigned char* base() { return bytes.data() + (-reinterpret_cast<uintptr_t>(bytes.data()) & 63); }
  size_t capacity() const { return bytes.size() - 64; }
  void reset(size_t capacity) {
    if (bytes.size() < capacity + 64) bytes.resize(capacity + 64);
    used = 0;
  }
};
constexpr size_t kStaticSmemLimit = 48 * 1024;  // what ptxas accepts per kernel
Arena g_static_smem, g_dynamic_smem;
size_t g_static_declared = 0;  // bytes the running block's declarations asked for
uint64_t g_block_serial = 0;
size_t g_dynamic_bytes = 0;
int g_smem_limit = 227 * 1024;
std::map<const void*, int> g_allowed;

const void* g_kernel = nullptr;  // the running launch's kernel
std::string g_fault;
uint64_t g_fault_kernel = 0;

uint64_t library_offset(const void* p) {
  Dl_info info{};
  const uint64_t base = dladdr(p, &info) != 0 ? reinterpret_cast<uint64_t>(info.dli_fbase) : 0;
  return reinterpret_cast<uint64_t>(p) - base;
}

// Ends the launch, as the GPU does: the faulting thread is abandoned mid-access (x86 would
// carry a misaligned access out, or trap on an aligned-move instruction), the block's
// other threads and the remaining blocks do not run.
[[noreturn]] void fault(uintptr_t address, int width, const char* what, const char* where) {
  char msg[512];
  std::snprintf(msg, sizeof(msg), "misaligned address: %s at %#lx is not %d-byte aligned at %s", what,
                static_cast<unsigned long>(address), width, where);
  if (g_block == nullptr) fail(msg);  // host code: nothing to end but the process
  g_fault = msg;
  g_fault_kernel = g_kernel != nullptr ? library_offset(g_kernel) : 0;
  set_error(cudaErrorMisalignedAddress);
  g_launch_faulted = true;
  _longjmp(g_block->scheduler, 1);
}
}  // namespace

uint64_t block_serial() {
  if (g_block == nullptr) fail("a __shared__ declaration outside a kernel");
  return g_block_serial;
}

void* shared_alloc(size_t bytes, size_t align) {
  g_static_declared += bytes;
  if (g_static_declared > kStaticSmemLimit) fail("a kernel declares more than 48 KB of static shared memory");
  // An odd multiple of `align`: aligned as declared, not (by luck) more.
  size_t at = (g_static_smem.used + 2 * align - 1) / (2 * align) * (2 * align) + align;
  if (at + bytes > g_static_smem.capacity()) fail("static shared memory arena exhausted");
  g_static_smem.used = at + bytes;
  std::memset(g_static_smem.base() + at, 0xff, bytes);
  return g_static_smem.base() + at;
}

void check_aligned(const void* p, int width, const char* what, const char* file, int line) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  if (address % static_cast<uintptr_t>(width) == 0) return;
  char where[256];
  std::snprintf(where, sizeof(where), "%s:%d", file, line);
  fault(address, width, what, where);
}

void set_kernel(const void* kernel) { g_kernel = kernel; }

int take_fault(char* buf, int len, uint64_t* kernel_offset) {
  if (g_fault.empty()) return 0;
  std::snprintf(buf, static_cast<size_t>(len), "%s", g_fault.c_str());
  *kernel_offset = g_fault_kernel;
  g_fault.clear();
  return 1;
}

struct LaunchRecord {
  uint64_t offset;  // kernel address - the library's load address (a symbol's value in `nm`)
  unsigned grid[3], block[3];
  uint64_t smem;
};
std::vector<LaunchRecord> g_launches;
bool g_dry_run = false;

void record_launch(const void* kernel, const LaunchConfig& c) {
  if (g_last_error == cudaSuccess) g_fault.clear();  // a fault a caller saw returned and never took
  g_launches.push_back(LaunchRecord{library_offset(kernel),
                                    {c.grid.x, c.grid.y, c.grid.z},
                                    {c.block.x, c.block.y, c.block.z},
                                    c.smem});
}
bool dry_run() { return g_dry_run; }
void set_dry_run(bool on) { g_dry_run = on; }
void clear_launches() { g_launches.clear(); }
int launch_count() { return static_cast<int>(g_launches.size()); }
void launch_record(int i, uint64_t* offset, unsigned* grid, unsigned* block, uint64_t* smem) {
  const LaunchRecord& r = g_launches.at(static_cast<size_t>(i));
  *offset = r.offset;
  for (int k = 0; k < 3; ++k) {
    grid[k] = r.grid[k];
    block[k] = r.block[k];
  }
  *smem = r.smem;
}

// 16 bytes past a 32-byte boundary: the 16-byte alignment CUDA promises, no more.
unsigned char* dynamic_smem() { return g_dynamic_smem.base() + 16; }
void set_dynamic_smem(size_t bytes) { g_dynamic_bytes = bytes; }
void set_smem_limit(int bytes) { g_smem_limit = bytes; }
int smem_limit() { return g_smem_limit; }
void allow_dynamic_smem(const void* kernel, int bytes) { g_allowed[kernel] = bytes; }
int dynamic_smem_allowed(const void* kernel) {
  const auto it = g_allowed.find(kernel);
  return it == g_allowed.end() ? 0 : it->second;
}

void set_error(cudaError_t e) {
  if (g_last_error == cudaSuccess) g_last_error = e;
}

void run_grid(dim3 grid, dim3 block, const std::function<void()>& body) {
  g_launch_faulted = false;
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 || grid.y > 65535 ||
      grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration);
    return;
  }
  for (unsigned z = 0; z < grid.z && !g_launch_faulted; ++z)
    for (unsigned y = 0; y < grid.y && !g_launch_faulted; ++y)
      for (unsigned x = 0; x < grid.x && !g_launch_faulted; ++x) {
        g_dynamic_smem.reset(g_dynamic_bytes + 32);  // at base + 16, with 16 bytes of slack
        std::memset(g_dynamic_smem.base(), 0xff, g_dynamic_bytes + 32);
        g_static_smem.reset(4 * kStaticSmemLimit);   // room for the odd-multiple placement
        g_static_declared = 0;
        ++g_block_serial;
        run_block(grid, block, dim3(x, y, z), body);
      }
}

}  // namespace gptk_emu

// -fsanitize=alignment's check calls this for a load, store or reference through a pointer
// not aligned to its type (GCC's and clang's UBSan ABI); no sanitizer runtime is linked.
// Hidden: the library's own calls bind here, never to another library's.
namespace {
struct SourceLocation {
  const char* file;
  uint32_t line, column;
};
struct TypeDescriptor {
  uint16_t kind, info;
  char name[1];
};
struct TypeMismatchData {
  SourceLocation location;
  const TypeDescriptor* type;
  unsigned char log_alignment;
  unsigned char check_kind;  // 0 load, 1 store, others: reference binding, member access ...
};
}  // namespace

extern "C" __attribute__((visibility("hidden"))) void __ubsan_handle_type_mismatch_v1(TypeMismatchData* data,
                                                                                     uintptr_t pointer) {
  const uintptr_t align = uintptr_t{1} << data->log_alignment;
  if (pointer == 0 || pointer % align == 0) return;  // only the alignment check is compiled in
  const char* kinds[] = {"load of", "store to", "reference to", "member access within"};
  char what[256], where[256];
  std::snprintf(what, sizeof(what), "%s %s", data->check_kind < 4 ? kinds[data->check_kind] : "use of",
                data->type->name);
  std::snprintf(where, sizeof(where), "%s:%u", data->location.file, data->location.line);
  gptk_emu::fault(pointer, static_cast<int>(align), what, where);
}
extern "C" __attribute__((visibility("hidden"))) void __ubsan_handle_type_mismatch_v1_abort(TypeMismatchData* data,
                                                                                           uintptr_t pointer) {
  __ubsan_handle_type_mismatch_v1(data, pointer);
}

cudaError_t gptk_emu_get_last_error() {
  const cudaError_t e = gptk_emu::g_last_error;
  gptk_emu::g_last_error = cudaSuccess;
  return e;
}
