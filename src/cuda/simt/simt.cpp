// The fiber scheduler behind simt.h: every CUDA thread of a block is a fiber on its own
// stack; blocks run one at a time in a shuffled order; barriers hand control back to the scheduler, which releases a
// barrier once every thread it concerns has arrived and reports a deadlock when nothing can move.
#include "cuda/simt/simt.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cuda/simt/simt_internal.h"
#include "flashgpt/core/error.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace flashgpt::simt {

using namespace detail;

namespace {

constexpr size_t kStackBytes = 64 * 1024;  // kernels keep little on their stacks; small stacks switch fast under ASan

// AddressSanitizer must be told about every stack switch, or it takes the fibers' stacks for
// corrupt ones. No-ops in other builds.
#if defined(__SANITIZE_ADDRESS__)
const void* g_scheduler_stack = nullptr;  // the launching thread's stack, learnt on the first switch
size_t g_scheduler_stack_size = 0;
inline void switch_to(void** fake, const void* bottom, size_t size) { __sanitizer_start_switch_fiber(fake, bottom, size); }
inline void switched_from_scheduler(void* fake) {
  __sanitizer_finish_switch_fiber(fake, &g_scheduler_stack, &g_scheduler_stack_size);
}
inline void switched_back(void* fake) { __sanitizer_finish_switch_fiber(fake, nullptr, nullptr); }
#else
inline void switch_to(void**, const void*, size_t) {}
inline void switched_from_scheduler(void*) {}
inline void switched_back(void*) {}
#endif

// Switching stacks. On x86-64 by hand: swapcontext would save and restore the signal mask with a
// system call at every switch, and under AddressSanitizer its interceptor clears the shadow of the
// whole stack it enters; the two were most of an emulated launch's time. This pushes the
// callee-saved registers, stores the stack pointer in *save, loads `load` and pops that stack's.
// (The floating-point control words are not switched: no kernel changes them.)
#if defined(__x86_64__)
extern "C" void flashgpt_simt_switch(void** save, void* load);
asm(R"(
  .text
  .p2align 4
  .globl flashgpt_simt_switch
  .hidden flashgpt_simt_switch
  .type flashgpt_simt_switch, @function
flashgpt_simt_switch:
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
  .size flashgpt_simt_switch, .-flashgpt_simt_switch
)");

inline void switch_context(Context& save, const Context& load) { flashgpt_simt_switch(&save.sp, load.sp); }

// A context that starts `entry` (which must never return) on the stack [stack, stack + bytes): the
// first switch to it pops six zero registers and returns into entry, as if called, with the ABI's
// alignment (rsp ≡ 8 mod 16 on entry) and a null return address that ends any unwinding there.
void start_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  auto** sp = reinterpret_cast<void**>((reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t{15});
  *--sp = nullptr;
  *--sp = reinterpret_cast<void*>(entry);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  c.sp = sp;
}
#else
inline void switch_context(Context& save, const Context& load) { swapcontext(&save.uc, &load.uc); }

void start_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

const char* state_name(State s) {
  switch (s) {
    case State::Runnable: return "running";
    case State::AtBlock: return "at __syncthreads";
    case State::AtWarp: return "at a warp barrier";
    case State::AtGroup: return "at a warpgroup instruction";
    case State::AtNamed: return "at a named barrier";
    case State::AtMbarrier: return "waiting on an mbarrier";
    case State::AtRegisters: return "waiting for registers (setmaxnreg.inc)";
    case State::Done: return "exited";
  }
  return "?";
}

// Fiber stacks, mapped once with a guard page below each and reused by every launch.
class StackPool {
 public:
  char* get(size_t i) {
    while (stacks_.size() <= i) {
      const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
      void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
      if (p == MAP_FAILED) fail("simt: cannot map a fiber stack of {} bytes", kStackBytes);
      mprotect(p, page, PROT_NONE);  // an overflow faults instead of corrupting a neighbour
      stacks_.push_back(static_cast<char*>(p) + page);
    }
    return stacks_[i];
  }

 private:
  std::vector<char*> stacks_;
};

Launch* g_launch = nullptr;
StackPool g_stacks;

constexpr uint64_t kMaxShuffledBlocks = uint64_t{1} << 26;

}  // namespace

namespace detail {

std::mt19937_64& order_rng() {
  static std::mt19937_64 rng([] {
    const char* s = std::getenv("FLASHGPT_SIMT_SEED");
    return s ? std::strtoull(s, nullptr, 10) : 0x5eedULL;
  }());
  return rng;
}


Launch& launch() {
  if (!g_launch || !g_launch->current) fail("simt: a device built-in was called outside a kernel");
  return *g_launch;
}

[[noreturn]] void kernel_fault(const std::string& what) {
  const Launch& l = launch();
  const Fiber& f = *l.current;
  fail("simt: kernel {} block ({}, {}, {}) thread ({}, {}, {}): {}", l.name, l.block_idx.x, l.block_idx.y,
       l.block_idx.z, f.idx.x, f.idx.y, f.idx.z, what);
}

void yield(State s) {
  Launch& l = launch();
  Fiber* f = l.current;
  f->state = s;
#if defined(__SANITIZE_ADDRESS__)
  switch_to(&f->fake_stack, g_scheduler_stack, g_scheduler_stack_size);
#endif
  switch_context(f->ctx, l.scheduler);
  switched_from_scheduler(f->fake_stack);
}

// Every lane of the (full) warp publishes `mine`; returns the 32 lanes' pointers, valid until the
// caller's matching end_collective (the lanes wait there, their stacks intact).
std::array<const void*, 32> begin_collective(const void* mine, const char* what) {
  Launch& l = launch();
  Fiber& f = *l.current;
  const int base = f.linear / 32 * 32;
  if (base + 32 > static_cast<int>(l.fibers.size())) {
    kernel_fault(std::string(what) + " needs a whole warp of 32 threads");
  }
  f.published = mine;
  sync_warp(0xffffffffu);
  std::array<const void*, 32> lanes{};
  for (int o = 0; o < 32; ++o) lanes[static_cast<size_t>(o)] = l.fibers[static_cast<size_t>(base + o)].published;
  return lanes;
}

void end_collective() { sync_warp(0xffffffffu); }  // every lane has read before any publishes again

float element_of(MmaType t, uint32_t reg, int half) {
  const auto bits = static_cast<uint16_t>(reg >> (16 * half));
  if (t == MmaType::bf16) return __uint_as_float(static_cast<uint32_t>(bits) << 16);
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

void check_shared(const void* p, size_t bytes, const char* what, uintptr_t align) {
  const Launch& l = launch();
  const auto* c = static_cast<const unsigned char*>(p);
  const auto* base = static_cast<const unsigned char*>(l.shared);
  if (c < base || c + bytes > base + l.shared_bytes) {
    kernel_fault(std::string(what) + ": address outside the block's dynamic shared memory");
  }
  if (reinterpret_cast<uintptr_t>(p) % align != 0) {
    kernel_fault(std::string(what) + ": address not " + std::to_string(align) + "-byte aligned");
  }
}


}  // namespace detail

namespace {

// The kernel's body for the current thread; a throw is kept for the scheduler to rethrow. Returns
// normally either way, so that its frames leave no poisoned stack behind under AddressSanitizer.
[[gnu::noinline]] void run_body(Launch& l) {
  try {
    (*l.body)();
  } catch (...) {
    if (!l.error) l.error = std::current_exception();
  }
}

// Where every fiber starts; it ends by handing its stack back to the scheduler for good.
[[noreturn]] void fiber_entry() {
  Launch& l = *g_launch;
  switched_from_scheduler(nullptr);
  run_body(l);
  Fiber& f = *l.current;
  f.state = State::Done;
#if defined(__SANITIZE_ADDRESS__)
  switch_to(nullptr, g_scheduler_stack, g_scheduler_stack_size);  // this fiber's stack is finished with
#endif
  switch_context(f.ctx, l.scheduler);
  std::abort();  // a finished fiber is never resumed
}

std::string describe_states(const Launch& l) {
  std::string out;
  const size_t shown = std::min<size_t>(l.fibers.size(), 64);
  for (size_t i = 0; i < shown; ++i) {
    const Fiber& f = l.fibers[i];
    out += "\n  thread " + std::to_string(f.linear) + ": " + state_name(f.state);
    if (f.state == State::AtWarp) out += " (mask " + std::to_string(f.mask) + ")";
    if (f.state == State::AtNamed) out += " (barrier " + std::to_string(f.barrier) + ")";
    if (f.state == State::AtMbarrier) out += " (shared address " + std::to_string(f.mbarrier) + ")";
  }
  if (shown < l.fibers.size()) out += "\n  …";
  return out;
}

// Releases the complete warp-barrier groups of the warp starting at thread `base`; returns whether
// any was released. A group whose mask names an exited or missing lane can never complete: that
// is a fault.
bool release_warp(Launch& l, int base) {
  bool released = false;
  const int n = static_cast<int>(l.fibers.size());
  for (int lane = 0; lane < 32 && base + lane < n; ++lane) {
    const Fiber& f = l.fibers[static_cast<size_t>(base + lane)];
    if (f.state != State::AtWarp) continue;
    bool complete = true;
    for (int o = 0; o < 32; ++o) {
      if (!(f.mask >> o & 1u)) continue;
      if (base + o >= n) {
        fail("simt: kernel {}: warp barrier mask {:#x} of thread {} names lane {}, which this block does not have",
             l.name, f.mask, f.linear, o);
      }
      const Fiber& g = l.fibers[static_cast<size_t>(base + o)];
      if (g.state == State::Done) {
        fail("simt: kernel {}: thread {} waits at a warp barrier (mask {:#x}) for lane {}, which has exited", l.name,
             f.linear, f.mask, o);
      }
      if (g.state != State::AtWarp || g.mask != f.mask) complete = false;
    }
    if (!complete) continue;
    for (int o = 0; o < 32; ++o)
      if (f.mask >> o & 1u) l.fibers[static_cast<size_t>(base + o)].state = State::Runnable;
    released = true;
  }
  return released;
}

// Releases the warpgroup (threads 128·group …) when all its 128 threads wait at a warpgroup
// instruction; one that has exited while the others wait is a fault.
bool release_group(Launch& l, int group) {
  const int base = group * 128, n = static_cast<int>(l.fibers.size());
  if (base + 128 > n) return false;
  bool any = false, all = true;
  for (int i = base; i < base + 128; ++i) {
    const Fiber& f = l.fibers[static_cast<size_t>(i)];
    any = any || f.state == State::AtGroup;
    all = all && f.state == State::AtGroup;
  }
  if (!any || all) {
    if (all)
      for (int i = base; i < base + 128; ++i) l.fibers[static_cast<size_t>(i)].state = State::Runnable;
    return all;
  }
  for (int i = base; i < base + 128; ++i) {
    if (l.fibers[static_cast<size_t>(i)].state == State::Done) {
      fail("simt: kernel {}: warpgroup {} waits at a warpgroup instruction for thread {}, which has exited", l.name,
           group, i);
    }
  }
  return false;
}

// Runs f until it reaches a barrier or exits (its own function: the switch returns twice).
[[gnu::noinline]] void resume(Launch& l, Fiber& f) {
  l.current = &f;
  void* fake = nullptr;
  switch_to(&fake, f.stack, kStackBytes);
  switch_context(l.scheduler, f.ctx);
  switched_back(fake);
  l.current = nullptr;
}

// Makes f start at fiber_entry on `stack`, which switches back to the scheduler when done.
[[gnu::noinline]] void prepare(Fiber& f, char* stack) {
  f.state = State::Runnable;
  f.open_copies.clear();
  f.copy_groups.clear();
  f.open_mmas.clear();
  f.mma_groups.clear();
  f.stack = stack;
  f.fake_stack = nullptr;
  start_context(f.ctx, stack, kStackBytes, fiber_entry);
}

// A block given up part-way (a fault, a deadlock) leaves fibers suspended inside their kernel's
// frames, whose AddressSanitizer redzones would stay poisoned for the next launch on those stacks:
// cleared when the block is left. (A fiber that ran to its end left nothing poisoned.)
struct AbandonedStacks {
  Launch& l;
  ~AbandonedStacks() {
#if defined(__SANITIZE_ADDRESS__)
    for (const Fiber& f : l.fibers) {
      if (f.state != State::Done && f.stack) __asan_unpoison_memory_region(f.stack, kStackBytes);
    }
#endif
  }
};

// Scheduling: a warp runs all its runnable lanes (in shuffled order) to their next barrier and its
// warp barriers are released at once, so warps drift apart by whole phases, as on the hardware.
// Which warp runs next is drawn per block from one of two policies: any ready warp at random, or
// the first ready warp of a random priority order — which runs each warp as far as it can go
// before the next starts, exposing a read of what a later warp was to write before a barrier.
// A __syncthreads releases when every live thread is at it.
void run_block(Launch& l, std::vector<int>& order) {
  for (size_t i = 0; i < l.fibers.size(); ++i) prepare(l.fibers[i], g_stacks.get(i));
  const AbandonedStacks abandoned{l};
  l.named_arrived.fill(0);
  l.named_expected.fill(0);
  l.mbarriers.clear();
  l.group_registers.clear();
  l.register_request.clear();
  l.register_calls.clear();
  auto& rng = order_rng();
  const int n = static_cast<int>(l.fibers.size()), warps = (n + 31) / 32;
  std::vector<int> priority(static_cast<size_t>(warps));
  for (int w = 0; w < warps; ++w) priority[static_cast<size_t>(w)] = w;
  std::shuffle(priority.begin(), priority.end(), rng);
  const bool by_priority = rng() % 2 == 0;
  std::vector<int> ready;
  ready.reserve(static_cast<size_t>(warps));
  for (;;) {
    ready.clear();
    for (int w : priority) {
      for (int i = w * 32; i < std::min(n, w * 32 + 32); ++i) {
        if (l.fibers[static_cast<size_t>(i)].state == State::Runnable) {
          ready.push_back(w);
          break;
        }
      }
    }
    if (!ready.empty()) {
      const int w = by_priority ? ready.front() : ready[static_cast<size_t>(rng() % ready.size())];
      const int lanes = std::min(32, n - w * 32);
      for (int i = 0; i < lanes; ++i) order[static_cast<size_t>(i)] = w * 32 + i;
      std::shuffle(order.begin(), order.begin() + lanes, rng);
      for (int i = 0; i < lanes; ++i) {
        Fiber& f = l.fibers[static_cast<size_t>(order[static_cast<size_t>(i)])];
        if (f.state != State::Runnable) continue;
        resume(l, f);
        if (l.error) std::rethrow_exception(l.error);
      }
      release_warp(l, w * 32);
      release_group(l, w / 4);
      continue;
    }
    bool all_done = true, all_at_block = true;
    for (const Fiber& f : l.fibers) {
      if (f.state != State::Done) all_done = false;
      if (f.state != State::Done && f.state != State::AtBlock) all_at_block = false;
    }
    if (all_done) {
      for (int id = 1; id < kNamedBarriers; ++id) {
        const int arrived = l.named_arrived[static_cast<size_t>(id)];
        if (arrived != 0) {
          fail("simt: kernel {} block ({}, {}, {}): named barrier {} was left with {} of its round's {} arrivals",
               l.name, l.block_idx.x, l.block_idx.y, l.block_idx.z, id, arrived,
               l.named_expected[static_cast<size_t>(id)]);
        }
      }
      for (const auto& [address, m] : l.mbarriers) {
        if (!m.unlanded.empty()) {
          fail("simt: kernel {} block ({}, {}, {}): tensor copies signalling the mbarrier at shared address {} "
               "were never waited for",
               l.name, l.block_idx.x, l.block_idx.y, l.block_idx.z, address);
        }
      }
      for (const Fiber& f : l.fibers) {
        if (!f.open_copies.empty() || !f.copy_groups.empty()) {
          fail("simt: kernel {} block ({}, {}, {}): thread {} exited with asynchronous copies never waited for",
               l.name, l.block_idx.x, l.block_idx.y, l.block_idx.z, f.linear);
        }
        if (!f.open_mmas.empty() || !f.mma_groups.empty()) {
          fail("simt: kernel {} block ({}, {}, {}): thread {} exited with warpgroup MMAs never waited for", l.name,
               l.block_idx.x, l.block_idx.y, l.block_idx.z, f.linear);
        }
      }
      return;
    }
    if (all_at_block) {
      for (Fiber& f : l.fibers)
        if (f.state == State::AtBlock) f.state = State::Runnable;
      continue;
    }
    // Nothing can run: a warp barrier waits on a lane held elsewhere, or names an exited lane.
    for (int w = 0; w < warps; ++w) release_warp(l, w * 32);
    for (int w = 0; w < warps; w += 4) release_group(l, w / 4);
    fail("simt: kernel {} block ({}, {}, {}) deadlocks: no barrier can complete{}", l.name, l.block_idx.x,
         l.block_idx.y, l.block_idx.z, describe_states(l));
  }
}


}  // namespace

const uint3& thread_index() { return launch().current->idx; }
const uint3& block_index() { return launch().block_idx; }
const dim3& block_dim() { return launch().block; }
const dim3& grid_dim() { return launch().grid; }
int lane() { return launch().current->linear % 32; }
void* dynamic_shared() { return launch().shared; }

void sync_block() { yield(State::AtBlock); }

// One arrival at named barrier id of a round of `threads`: the round's last arrival releases the
// threads waiting at it. Returns whether this arrival completed the round.
bool count_named_arrival(Launch& l, int id, int threads) {
  if (id < 1 || id >= kNamedBarriers) {
    kernel_fault("named barrier " + std::to_string(id) + ": ids 1…" + std::to_string(kNamedBarriers - 1) +
                 " (0 is __syncthreads)");
  }
  const int n = static_cast<int>(l.fibers.size());
  if (threads <= 0 || threads % 32 != 0 || threads > n) {
    kernel_fault("named barrier " + std::to_string(id) + ": thread count " + std::to_string(threads) +
                 " must be a positive multiple of 32 up to the block's " + std::to_string(n));
  }
  auto& expected = l.named_expected[static_cast<size_t>(id)];
  auto& arrived = l.named_arrived[static_cast<size_t>(id)];
  if (arrived > 0 && expected != threads) {
    kernel_fault("named barrier " + std::to_string(id) + ": a round of " + std::to_string(expected) +
                 " threads joined with a count of " + std::to_string(threads));
  }
  expected = threads;
  if (++arrived < threads) return false;
  arrived = 0;
  for (Fiber& f : l.fibers) {
    if (f.state == State::AtNamed && f.barrier == id) f.state = State::Runnable;
  }
  return true;
}

void sync_named(int id, int threads) {
  Launch& l = launch();
  if (count_named_arrival(l, id, threads)) return;
  l.current->barrier = id;
  yield(State::AtNamed);
}

void arrive_named(int id, int threads) { count_named_arrival(launch(), id, threads); }

void sync_warp(unsigned mask) {
  Fiber& f = *launch().current;
  if (!(mask >> (f.linear % 32) & 1u)) kernel_fault("a warp barrier's mask " + std::to_string(mask) + " leaves out the calling lane");
  f.mask = mask;
  yield(State::AtWarp);
}

uint64_t exchange(unsigned mask, uint64_t value, int src) {
  Launch& l = launch();
  Fiber& f = *l.current;
  f.slot = value;
  sync_warp(mask);
  if (src < 0 || src > 31 || !(mask >> src & 1u)) {
    kernel_fault("a shuffle reads lane " + std::to_string(src) + ", outside its mask " + std::to_string(mask));
  }
  const uint64_t got = l.fibers[static_cast<size_t>(f.linear / 32 * 32 + src)].slot;
  sync_warp(mask);  // every lane has read before any publishes again
  return got;
}

unsigned ballot(unsigned mask, bool predicate) {
  Launch& l = launch();
  Fiber& f = *l.current;
  f.vote = predicate;
  sync_warp(mask);
  unsigned bits = 0;
  const int base = f.linear / 32 * 32;
  for (int o = 0; o < 32; ++o)
    if ((mask >> o & 1u) && l.fibers[static_cast<size_t>(base + o)].vote) bits |= 1u << o;
  sync_warp(mask);
  return bits;
}

void reseed(uint64_t seed) { order_rng().seed(seed); }

namespace detail {

// What the GPU says of a launch's configuration before running anything.
cudaError_t launch_config_error(dim3 grid, dim3 block, size_t shared) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  return shared > kSharedOptIn ? cudaErrorInvalidValue : cudaSuccess;
}

}  // namespace detail

void run_grid(const char* name, dim3 grid, dim3 block, size_t shared, const std::function<void()>& body) {
  if (g_launch) fail("simt: kernel {} launched from inside kernel {} (not supported)", name, g_launch->name);
  if (const cudaError_t e = launch_config_error(grid, block, shared); e != cudaSuccess) {
    g_last_error = e;
    return;
  }
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  Launch l;
  l.name = name;
  l.grid = grid;
  l.block = block;
  l.body = &body;
  l.fibers.resize(threads);
  for (uint32_t z = 0, i = 0; z < block.z; ++z)
    for (uint32_t y = 0; y < block.y; ++y)
      for (uint32_t x = 0; x < block.x; ++x, ++i) {
        l.fibers[i].idx = uint3{x, y, z};
        l.fibers[i].linear = static_cast<int>(i);
      }
  void* smem = nullptr;
  if (posix_memalign(&smem, 128, shared > 0 ? shared : 1) != 0) fail("simt: cannot allocate {} bytes", shared);
  std::unique_ptr<void, decltype(&std::free)> smem_owner(smem, &std::free);
  l.shared = smem;
  l.shared_bytes = shared;
  l.shared_base = static_cast<uint32_t>(128 * (order_rng()() % 8));
  std::vector<int> order(threads);
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  // Blocks run one at a time in a shuffled order: the hardware promises no order between the blocks
  // of a grid, so a kernel that leans on one (or whose atomics' order shows in its result) must
  // show it here too.
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  if (blocks > kMaxShuffledBlocks) {
    fail("simt: kernel {} launches {} blocks, more than the emulator runs", name, blocks);
  }
  std::vector<uint32_t> block_order(blocks);
  for (uint64_t i = 0; i < blocks; ++i) block_order[i] = static_cast<uint32_t>(i);
  std::shuffle(block_order.begin(), block_order.end(), order_rng());
  const DeviceAccess device_access;
  g_launch = &l;
  try {
    for (const uint32_t i : block_order) {
      l.block_idx = uint3{static_cast<uint32_t>(i % grid.x), static_cast<uint32_t>(i / grid.x % grid.y),
                          static_cast<uint32_t>(i / grid.x / grid.y)};
      std::memset(smem, 0xFF, shared);  // unwritten shared memory reads as NaN
      run_block(l, order);
    }
  } catch (...) {
    g_launch = nullptr;
    throw;
  }
  g_launch = nullptr;
}


}  // namespace flashgpt::simt
