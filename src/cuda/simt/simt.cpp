// The fiber scheduler behind simt.h: every CUDA thread of a block is a ucontext fiber on its own
// stack; blocks run one at a time in a shuffled order; barriers hand control back to the scheduler, which releases a
// barrier once every thread it concerns has arrived and reports a deadlock when nothing can move.
#include "cuda/simt/simt.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "flashgpt/core/error.h"

#include <csignal>
#include <cstdio>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace flashgpt::simt {

namespace {

constexpr size_t kStackBytes = 64 * 1024;  // kernels keep little on their stacks; small stacks switch fast under ASan
constexpr int kMaxThreads = 1024;
constexpr size_t kSharedOptIn = 232448;  // 227 KiB, an H100's opt-in limit per block
constexpr int kSmCount = 132;

enum class State { Runnable, AtBlock, AtWarp, AtGroup, AtNamed, AtMbarrier, AtRegisters, Done };

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

// Device memory is off limits to host code, as on the hardware, where a host read of a cudaMalloc'd
// pointer faults. Every allocation is its own mapping, [guard page][data pages][guard page], and
// its data pages are readable only inside a DeviceAccess scope (kernels, copies, memsets, the
// emulated GEMMs). Host code touching device memory anywhere else — in any library, instrumented
// or not — faults, and the fault handler names the buffer. The guard pages, and under
// AddressSanitizer the poisoned slack past the last byte, catch kernels running off either end.
struct Mapping {
  unsigned char* base;  // the leading guard page
  size_t total;         // bytes mapped, guards included
  size_t data_pages;    // bytes of the data pages
  size_t bytes;         // bytes asked for
};
struct Allocations {
  std::map<const void*, Mapping> live;  // data start → its mapping
  int open_scopes = 0;
  struct sigaction previous_segv {};
};
Allocations& allocations() {
  static Allocations a;
  return a;
}
size_t page_bytes() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}
void set_open(const void* data, const Mapping& m, bool open) {
  if (mprotect(const_cast<void*>(data), m.data_pages, open ? PROT_READ | PROT_WRITE : PROT_NONE) != 0) {
    fail("simt: cannot change the protection of a {}-byte device buffer", m.bytes);
  }
}

// A fault on a device buffer outside a DeviceAccess scope: say so, then let the previous handler
// (the sanitizer's, with its stack trace, or the default) take the signal.
void on_segv(int sig, siginfo_t* info, void* context) {
  const Allocations& a = allocations();
  const auto* addr = static_cast<const unsigned char*>(info->si_addr);
  auto it = a.live.upper_bound(addr);
  if (it != a.live.begin()) {
    --it;
    const auto* data = static_cast<const unsigned char*>(it->first);
    if (addr < data + it->second.data_pages && a.open_scopes == 0) {
      char line[200];
      const int n = std::snprintf(line, sizeof line,
                                  "simt: host code touched device memory: byte %zu of a %zu-byte cudaMalloc'd buffer "
                                  "(a fault on the GPU too)\n",
                                  static_cast<size_t>(addr - data), it->second.bytes);
      if (n > 0) (void)!write(STDERR_FILENO, line, static_cast<size_t>(n));
    }
  }
  const struct sigaction& prev = a.previous_segv;
  if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction) {
    prev.sa_sigaction(sig, info, context);
    return;
  }
  if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler) {
    prev.sa_handler(sig);
    return;
  }
  signal(sig, SIG_DFL);  // returning re-runs the access, which now kills the process
}

void install_segv_handler() {
  static const bool installed = [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &allocations().previous_segv);
    return true;
  }();
  (void)installed;
}

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

struct Fiber {
  ucontext_t ctx{};
  uint3 idx{};
  int linear = 0;
  State state = State::Runnable;
  unsigned mask = 0;  // the warp barrier's mask while at one
  int barrier = 0;    // the named barrier while at one
  uint32_t mbarrier = 0;  // the shared address of the mbarrier it waits on, while it does
  uint64_t slot = 0;  // the value published for a shuffle
  bool vote = false;  // the predicate published for a ballot
  const void* published = nullptr;  // what a tensor-core collective shares with the warp
  char* stack = nullptr;
  void* fake_stack = nullptr;  // AddressSanitizer's bookkeeping while switched away
  // Asynchronous copies (cp.async) issued and not yet waited for: the open group, then the
  // committed ones, oldest first. Each holds the source bytes as read at issue.
  struct Copy {
    void* dst;
    std::array<unsigned char, 16> bytes;
    int size;
  };
  std::vector<Copy> open_copies;
  std::deque<std::vector<Copy>> copy_groups;
  // Warpgroup MMAs (wgmma) issued and not yet waited for, in the same shape: the open group, then
  // the committed ones. Each holds the operands this thread's outputs need — its two rows of A and
  // its n / 4 columns of B — read at issue or, where !read, at the wait.
  struct Mma {
    MmaType type;
    int n;
    float* d;
    bool accumulate, trans_a, trans_b, a_ready, read;
    uint64_t a_desc, b_desc;
    int rows[2];
    float a[2][16];
    std::vector<float> b;  // [n / 4][16]
  };
  std::vector<Mma> open_mmas;
  std::deque<std::vector<Mma>> mma_groups;
};

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

struct Launch {
  const char* name = "";
  dim3 grid, block;
  uint3 block_idx{};
  std::vector<Fiber> fibers;
  void* shared = nullptr;
  size_t shared_bytes = 0;
  uint32_t shared_base = 0;  // where the dynamic shared memory starts in the block's shared window
  const std::function<void()>* body = nullptr;
  Fiber* current = nullptr;
  // Named barriers (bar.sync / bar.arrive with an id and a thread count): arrivals so far and the
  // count the current round waits for, per id.
  std::array<int, kNamedBarriers> named_arrived{}, named_expected{};
  // mbarriers by shared address: arrivals a phase, those still missing, bytes announced and not yet
  // landed (negative while copies land before their announcement), phases completed, and the
  // tensor copies signalling it that have not landed (16-byte chunks: destination and bytes).
  struct Mbarrier {
    int count = 0, missing = 0;
    int64_t tx = 0;
    uint64_t phase = 0;
    std::vector<std::pair<unsigned char*, std::array<unsigned char, 16>>> unlanded;
  };
  std::map<uint32_t, Mbarrier> mbarriers;
  // Register reallocation (setmaxnreg), per warpgroup: the count its threads may use, the count
  // its current call asks for, and how many of its threads have made a call (empty until one does).
  std::vector<int> group_registers, register_request, register_calls;
  ucontext_t scheduler{};
  std::exception_ptr error;
};

Launch* g_launch = nullptr;
cudaError_t g_last_error = cudaSuccess;
StackPool g_stacks;

std::mt19937_64& order_rng() {
  static std::mt19937_64 rng([] {
    const char* s = std::getenv("FLASHGPT_SIMT_SEED");
    return s ? std::strtoull(s, nullptr, 10) : 0x5eedULL;
  }());
  return rng;
}

constexpr uint64_t kMaxShuffledBlocks = uint64_t{1} << 26;

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
  swapcontext(&f->ctx, &l.scheduler);
  switched_from_scheduler(f->fake_stack);
}

void fiber_entry() {
  Launch& l = *g_launch;
  switched_from_scheduler(nullptr);
  try {
    (*l.body)();
  } catch (...) {
    if (!l.error) l.error = std::current_exception();
  }
  l.current->state = State::Done;  // returning resumes the scheduler (uc_link)
#if defined(__SANITIZE_ADDRESS__)
  switch_to(nullptr, g_scheduler_stack, g_scheduler_stack_size);  // this fiber's stack is finished with
#endif
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

// Runs f until it reaches a barrier or exits (its own function: swapcontext returns twice).
[[gnu::noinline]] void resume(Launch& l, Fiber& f) {
  l.current = &f;
  void* fake = nullptr;
  switch_to(&fake, f.stack, kStackBytes);
  swapcontext(&l.scheduler, &f.ctx);
  switched_back(fake);
  l.current = nullptr;
}

// Makes f start at fiber_entry on `stack` and return to the scheduler when done.
[[gnu::noinline]] void prepare(Launch& l, Fiber& f, char* stack) {
  f.state = State::Runnable;
  f.open_copies.clear();
  f.copy_groups.clear();
  f.open_mmas.clear();
  f.mma_groups.clear();
  f.stack = stack;
  f.fake_stack = nullptr;
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = &l.scheduler;
  makecontext(&f.ctx, fiber_entry, 0);
}

// Scheduling: a warp runs all its runnable lanes (in shuffled order) to their next barrier and its
// warp barriers are released at once, so warps drift apart by whole phases, as on the hardware.
// Which warp runs next is drawn per block from one of two policies: any ready warp at random, or
// the first ready warp of a random priority order — which runs each warp as far as it can go
// before the next starts, exposing a read of what a later warp was to write before a barrier.
// A __syncthreads releases when every live thread is at it.
void run_block(Launch& l, std::vector<int>& order) {
  for (size_t i = 0; i < l.fibers.size(); ++i) prepare(l, l.fibers[i], g_stacks.get(i));
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

namespace {

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

void check_shared(const void* p, size_t bytes, const char* what, uintptr_t align = 16) {
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

}  // namespace

void mma_m16n8k16(MmaType type, float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  struct Operands {
    uint32_t a[4], b[2];
  } mine{};
  std::memcpy(mine.a, a, sizeof(mine.a));
  std::memcpy(mine.b, b, sizeof(mine.b));
  const auto lanes = begin_collective(&mine, "mma.m16n8k16");
  // The operands whole, from the PTX ISA's fragment layouts (g = lane / 4, t = lane % 4):
  //   A: a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1], a2 = A[g][2t+8, 2t+9], a3 = A[g+8][2t+8, 2t+9]
  //   B: b0 = B[2t, 2t+1][g], b1 = B[2t+8, 2t+9][g]
  float A[16][16], B[16][8];
  for (int o = 0; o < 32; ++o) {
    const auto& op = *static_cast<const Operands*>(lanes[static_cast<size_t>(o)]);
    const int g = o / 4, t = o % 4;
    for (int r = 0; r < 4; ++r) {
      const int row = g + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
      A[row][col] = element_of(type, op.a[r], 0);
      A[row][col + 1] = element_of(type, op.a[r], 1);
    }
    for (int r = 0; r < 2; ++r) {
      B[2 * t + r * 8][g] = element_of(type, op.b[r], 0);
      B[2 * t + r * 8 + 1][g] = element_of(type, op.b[r], 1);
    }
  }
  end_collective();
  // This lane's accumulators: c0, c1 = C[g][2t, 2t+1], c2, c3 = C[g+8][2t, 2t+1].
  const int own = lane(), g = own / 4, t = own % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e >> 1) * 8, col = 2 * t + (e & 1);
    float acc = c[e];
    for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
    d[e] = acc;
  }
}

void ldmatrix(int count, bool trans, uint32_t* out, const void* row) {
  if (count != 1 && count != 2 && count != 4) kernel_fault("ldmatrix loads 1, 2 or 4 matrices");
  const auto lanes = begin_collective(row, "ldmatrix");
  // Matrix i's eight rows are addressed by lanes 8i … 8i + 7; this lane receives, of each, the
  // pair (g, 2t), (g, 2t + 1) — or, transposed, (2t, g), (2t + 1, g).
  const int own = lane(), g = own / 4, t = own % 4;
  for (int i = 0; i < count; ++i) {
    for (int r = 0; r < 8; ++r) check_shared(lanes[static_cast<size_t>(8 * i + r)], 16, "ldmatrix");
    auto at = [&](int r, int c) {
      uint16_t v;
      std::memcpy(&v, static_cast<const unsigned char*>(lanes[static_cast<size_t>(8 * i + r)]) + 2 * c, 2);
      return static_cast<uint32_t>(v);
    };
    out[i] = trans ? (at(2 * t, g) | at(2 * t + 1, g) << 16) : (at(g, 2 * t) | at(g, 2 * t + 1) << 16);
  }
  end_collective();
}

void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) kernel_fault("cp.async copies 4, 8 or 16 bytes");
  if (src_bytes < 0 || src_bytes > bytes) kernel_fault("cp.async: source size outside 0 … copy size");
  check_shared(dst, static_cast<size_t>(bytes), "cp.async destination");
  if (reinterpret_cast<uintptr_t>(dst) % static_cast<uintptr_t>(bytes) != 0 ||
      reinterpret_cast<uintptr_t>(src) % static_cast<uintptr_t>(bytes) != 0) {
    kernel_fault("cp.async: addresses not aligned to the copy size");
  }
  Fiber::Copy c{dst, {}, bytes};
  if (src_bytes > 0) std::memcpy(c.bytes.data(), src, static_cast<size_t>(src_bytes));  // the rest zero-filled
  // On the hardware the bytes land at some moment between issue and wait. Each copy here lands
  // either at once (exposing a reader in another warp that the code did not fence off with a
  // barrier) or only at the wait (exposing a read before the wait), drawn at random.
  if (order_rng()() % 2 == 0) {
    std::memcpy(c.dst, c.bytes.data(), static_cast<size_t>(c.size));
    return;
  }
  launch().current->open_copies.push_back(c);
}

void cp_async_commit() {
  Fiber& f = *launch().current;
  f.copy_groups.push_back(std::move(f.open_copies));
  f.open_copies.clear();
}

void cp_async_wait(int pending) {
  Fiber& f = *launch().current;
  while (static_cast<int>(f.copy_groups.size()) > pending) {
    for (const auto& c : f.copy_groups.front()) std::memcpy(c.dst, c.bytes.data(), static_cast<size_t>(c.size));
    f.copy_groups.pop_front();
  }
}

namespace {

// The shared-memory byte address of element (mn, k) of a wgmma operand of 16-bit elements: the
// canonical layouts of the PTX ISA's matrix descriptor, in 16-byte units T (8 elements),
//   K-major,  no swizzle:   rows mn at 16 B within a core matrix, 8-row groups at SBO; k's two
//                           8-element halves at LBO;
//   K-major,  W-byte swizzle (W = 32, 64, 128): rows at W bytes, 8-row groups at SBO, k contiguous;
//   MN-major, no swizzle:   8 mn contiguous, groups of 8 at SBO; k rows at 16 B, 8-k groups at LBO;
//   MN-major, W-byte swizzle: W / 2 mn contiguous, the next W / 2 at LBO; k rows at W bytes, 8-k
//                           groups at SBO;
// then the swizzle: bits [4, 4 + log2(W / 16)) of the address XOR-ed with the bits 3 places up.
uint32_t operand_address(uint64_t desc, bool mn_major, int mn, int k) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
  const uint32_t lbo = static_cast<uint32_t>(desc >> 16 & 0x3FFF) << 4;
  const uint32_t sbo = static_cast<uint32_t>(desc >> 32 & 0x3FFF) << 4;
  const int mode = static_cast<int>(desc >> 62 & 3);  // 0 none, 1 128 B, 2 64 B, 3 32 B
  const uint32_t width = mode == 1 ? 128 : mode == 2 ? 64 : mode == 3 ? 32 : 16;
  const auto m = static_cast<uint32_t>(mn), kk = static_cast<uint32_t>(k);
  uint32_t off = 0;
  if (!mn_major) {
    off = mode == 0 ? (m % 8) * 16 + (m / 8) * sbo + (kk % 8) * 2 + (kk / 8) * lbo : (m % 8) * width + (m / 8) * sbo + kk * 2;
  } else {
    const uint32_t run = width / 2;  // mn elements contiguous
    off = mode == 0 ? (m % 8) * 2 + (m / 8) * sbo + (kk % 8) * 16 + (kk / 8) * lbo
                    : (m % run) * 2 + (m / run) * lbo + (kk % 8) * width + (kk / 8) * sbo;
  }
  uint32_t addr = start + off;
  if (mode != 0) {
    const uint32_t bits = mode == 1 ? 7 : mode == 2 ? 3 : 1;
    addr ^= ((addr >> 7) & bits) << 4;
  }
  return addr;
}

float shared_element(MmaType type, uint32_t addr) {
  const Launch& l = launch();
  if (addr < l.shared_base || addr + 2 > l.shared_base + l.shared_bytes || addr % 2 != 0) {
    kernel_fault("wgmma: an operand element at shared address " + std::to_string(addr) +
                 " lies outside the block's dynamic shared memory");
  }
  uint16_t bits;
  std::memcpy(&bits, static_cast<const unsigned char*>(l.shared) + (addr - l.shared_base), 2);
  return element_of(type, bits, 0);
}

void read_operands(Fiber::Mma& op) {
  if (!op.a_ready) {
    for (int r = 0; r < 2; ++r)
      for (int k = 0; k < 16; ++k) op.a[r][k] = shared_element(op.type, operand_address(op.a_desc, op.trans_a, op.rows[r], k));
  }
  const int t = lane() % 4;
  op.b.resize(static_cast<size_t>(op.n / 4 * 16));
  for (int c = 0; c < op.n / 4; ++c) {
    const int col = 8 * (c / 2) + 2 * t + c % 2;
    for (int k = 0; k < 16; ++k) {
      op.b[static_cast<size_t>(c * 16 + k)] = shared_element(op.type, operand_address(op.b_desc, op.trans_b, col, k));
    }
  }
}

void apply(Fiber::Mma& op) {
  if (!op.read) read_operands(op);
  for (int i = 0; i < op.n / 2; ++i) {
    const int j = i / 4, e = i % 4, r = e >> 1, c = 2 * j + (e & 1);
    float acc = op.accumulate ? op.d[i] : 0.0f;
    for (int k = 0; k < 16; ++k) acc += op.a[r][k] * op.b[static_cast<size_t>(c * 16 + k)];
    op.d[i] = acc;
  }
}

}  // namespace

namespace {

// The emulator's CUtensorMap (128 bytes), what encode_tensor_map writes.
struct TensorMap {
  uint64_t magic;
  const unsigned char* base;
  int32_t rank, elem_bytes;
  uint64_t dims[5];
  uint64_t strides[5];  // bytes; strides[0] is the element size
  uint32_t box[5];
  uint32_t pad;
};
static_assert(sizeof(TensorMap) == 128, "a CUtensorMap is 128 bytes");
constexpr uint64_t kTensorMapMagic = 0x746d61705f736d74ULL;

Launch::Mbarrier& mbarrier_at(void* bar, const char* what) {
  Launch& l = launch();
  check_shared(bar, 8, what, 8);
  const auto it = l.mbarriers.find(shared_address(bar));
  if (it == l.mbarriers.end()) kernel_fault(std::string(what) + ": the mbarrier was never initialised");
  return it->second;
}

// Completes the phase when its arrivals and bytes are all in, releasing the threads waiting on it.
void complete_if_done(Launch& l, uint32_t address, Launch::Mbarrier& m) {
  if (m.missing > 0 || m.tx != 0) return;
  ++m.phase;
  m.missing = m.count;
  for (Fiber& f : l.fibers) {
    if (f.state == State::AtMbarrier && f.mbarrier == address) f.state = State::Runnable;
  }
}

bool has_waiters(const Launch& l, uint32_t address) {
  for (const Fiber& f : l.fibers) {
    if (f.state == State::AtMbarrier && f.mbarrier == address) return true;
  }
  return false;
}

void land(Launch& l, uint32_t address, Launch::Mbarrier& m) {
  for (const auto& [dst, bytes] : m.unlanded) std::memcpy(dst, bytes.data(), bytes.size());
  m.tx -= static_cast<int64_t>(16 * m.unlanded.size());
  m.unlanded.clear();
  complete_if_done(l, address, m);
}

}  // namespace

void mbarrier_init(void* bar, int count) {
  Launch& l = launch();
  check_shared(bar, 8, "mbarrier.init", 8);
  if (count < 1 || count > (1 << 20) - 1) kernel_fault("mbarrier.init: a count of " + std::to_string(count));
  const uint32_t address = shared_address(bar);
  if (l.mbarriers.count(address) != 0) kernel_fault("mbarrier.init: this barrier is already initialised");
  Launch::Mbarrier m;
  m.count = m.missing = count;
  l.mbarriers.emplace(address, std::move(m));
  std::memset(bar, 0, 8);  // the hardware's state word; nothing here reads it
}

void mbarrier_arrive(void* bar, uint32_t tx_bytes) {
  Launch& l = launch();
  Launch::Mbarrier& m = mbarrier_at(bar, "mbarrier.arrive");
  if (tx_bytes >= (1u << 20)) kernel_fault("mbarrier.arrive.expect_tx: more than 2²⁰ − 1 bytes");
  // Every arrival is in but bytes are out: on the hardware they land on their own, completing the
  // phase, and this arrival opens the next; here they land now.
  if (m.missing == 0) land(l, shared_address(bar), m);
  if (m.missing == 0) kernel_fault("mbarrier.arrive: more arrivals than the barrier's count in one phase");
  m.tx += tx_bytes;
  --m.missing;
  const uint32_t address = shared_address(bar);
  if (has_waiters(l, address)) land(l, address, m);
  complete_if_done(l, address, m);
}

void mbarrier_wait(void* bar, uint32_t parity) {
  Launch& l = launch();
  const uint32_t address = shared_address(bar);
  for (;;) {
    Launch::Mbarrier& m = mbarrier_at(bar, "mbarrier.try_wait");
    // The phase of that parity is over: nothing newer need have landed (a wait on the wrong
    // parity returns at once and sees the old contents).
    if ((m.phase & 1) != (parity & 1)) return;
    land(l, address, m);  // the pending phase's copies land no later than a wait on it
    if ((m.phase & 1) != (parity & 1)) return;
    l.current->mbarrier = address;
    yield(State::AtMbarrier);
  }
}

void bulk_tensor_load(void* dst, const void* map, int rank, const int* coords, void* bar) {
  Launch& l = launch();
  const auto& t = *static_cast<const TensorMap*>(map);
  if (t.magic != kTensorMapMagic) kernel_fault("cp.async.bulk.tensor: the tensor map was not encoded");
  if (t.rank != rank) {
    kernel_fault("cp.async.bulk.tensor: a " + std::to_string(rank) + "-d copy through a rank-" +
                 std::to_string(t.rank) + " tensor map");
  }
  const uint64_t row_bytes = t.box[0] * static_cast<uint64_t>(t.elem_bytes);
  if (row_bytes > 128 || row_bytes % 16 != 0) kernel_fault("cp.async.bulk.tensor: a 128-byte-swizzled box row of 16 to 128 bytes");
  uint64_t rows = 1;
  for (int i = 1; i < rank; ++i) rows *= t.box[i];
  const uint64_t bytes = rows * row_bytes;
  check_shared(dst, bytes, "cp.async.bulk.tensor destination");
  const uint32_t dst_address = shared_address(dst);
  if (dst_address % 128 != 0) kernel_fault("cp.async.bulk.tensor: the destination is not 128-byte aligned");
  Launch::Mbarrier& m = mbarrier_at(bar, "cp.async.bulk.tensor");
  std::vector<unsigned char> box(bytes, 0);
  // Box row r (the outer dimensions' indices, dimension 1 fastest) from the tensor; outside it, zeros.
  for (uint64_t r = 0; r < rows; ++r) {
    uint64_t rest = r;
    bool inside = true;
    int64_t offset = 0;
    for (int i = 1; i < rank; ++i) {
      const int64_t c = coords[i] + static_cast<int64_t>(rest % t.box[i]);
      rest /= t.box[i];
      if (c < 0 || c >= static_cast<int64_t>(t.dims[i])) inside = false;
      offset += c * static_cast<int64_t>(t.strides[i]);
    }
    for (uint32_t e = 0; e < t.box[0] && inside; ++e) {
      const int64_t c = coords[0] + static_cast<int64_t>(e);
      if (c < 0 || c >= static_cast<int64_t>(t.dims[0])) continue;
      std::memcpy(&box[r * row_bytes + e * static_cast<uint64_t>(t.elem_bytes)],
                  t.base + offset + c * t.elem_bytes, static_cast<size_t>(t.elem_bytes));
    }
  }
  // Each 16-byte chunk goes to its address with bits 4–6 XORed by bits 7–9 (the 128-byte swizzle).
  auto* out = static_cast<unsigned char*>(dst);
  std::vector<std::pair<unsigned char*, std::array<unsigned char, 16>>> chunks;
  for (uint64_t c = 0; c < bytes / 16; ++c) {
    const uint32_t linear = dst_address + static_cast<uint32_t>(16 * c);
    const uint32_t swizzled = linear ^ (((linear >> 7) & 7) << 4);
    std::array<unsigned char, 16> piece;
    std::memcpy(piece.data(), &box[16 * c], 16);
    chunks.emplace_back(out + (swizzled - dst_address), piece);
  }
  m.unlanded.insert(m.unlanded.end(), chunks.begin(), chunks.end());
  // At once, or at the next wait (at once where a thread already waits: nothing else would land it).
  const uint32_t address = shared_address(bar);
  if (order_rng()() % 2 == 0 || has_waiters(l, address)) land(l, address, m);
}

void encode_tensor_map(void* map, const void* base, int rank, int elem_bytes, const uint64_t* dims,
                       const uint64_t* strides_bytes, const uint32_t* box) {
  if (rank < 1 || rank > 5) fail("simt: tensor map of rank {}", rank);
  TensorMap t{};
  t.magic = kTensorMapMagic;
  t.base = static_cast<const unsigned char*>(base);
  t.rank = rank;
  t.elem_bytes = elem_bytes;
  t.strides[0] = static_cast<uint64_t>(elem_bytes);
  for (int i = 0; i < rank; ++i) {
    t.dims[i] = dims[i];
    t.box[i] = box[i];
    if (i >= 1) t.strides[i] = strides_bytes[i - 1];
  }
  std::memcpy(map, &t, sizeof t);
}

uint32_t shared_address(const void* p) {
  const Launch& l = launch();
  const auto* c = static_cast<const unsigned char*>(p);
  const auto* base = static_cast<const unsigned char*>(l.shared);
  if (c < base || c > base + l.shared_bytes) kernel_fault("shared_address: not a pointer into dynamic shared memory");
  return l.shared_base + static_cast<uint32_t>(c - base);
}

void warpgroup_mma(MmaType type, int n, float* d, const uint32_t* a, uint64_t a_desc, uint64_t b_desc, bool trans_a,
                   bool trans_b, bool accumulate) {
  Launch& l = launch();
  Fiber& f = *l.current;
  if (n < 8 || n > 256 || n % 8 != 0) kernel_fault("wgmma: n must be a multiple of 8 from 8 to 256");
  if ((a_desc >> 49 & 7) != 0 || (b_desc >> 49 & 7) != 0) kernel_fault("wgmma: a descriptor's base offset is not modelled");
  const int base = f.linear / 128 * 128;
  if (base + 128 > static_cast<int>(l.fibers.size())) kernel_fault("wgmma needs a whole warpgroup of 128 threads");
  yield(State::AtGroup);  // .sync.aligned: the warpgroup's four warps issue it together
  Fiber::Mma op{type, n, d, accumulate, trans_a, trans_b, a != nullptr, false, a_desc, b_desc, {}, {}, {}};
  const int own = lane(), g = own / 4, w = f.linear % 128 / 32;
  op.rows[0] = 16 * w + g;
  op.rows[1] = 16 * w + g + 8;
  if (a) {
    struct Regs {
      uint32_t a[4];
    } mine{};
    std::memcpy(mine.a, a, sizeof(mine.a));
    const auto lanes = begin_collective(&mine, "wgmma");
    // a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1], a2 = A[g][2t+8, 2t+9], a3 = A[g+8][2t+8, 2t+9].
    for (int r = 0; r < 2; ++r)
      for (int k = 0; k < 16; ++k) {
        const auto& from = *static_cast<const Regs*>(lanes[static_cast<size_t>(4 * g + (k % 8) / 2)]);
        op.a[r][k] = element_of(type, from.a[r + 2 * (k / 8)], k % 2);
      }
    end_collective();
  }
  op.read = order_rng()() % 2 == 0;
  if (op.read) read_operands(op);
  f.open_mmas.push_back(std::move(op));
}

void warpgroup_commit() {
  Fiber& f = *launch().current;
  f.mma_groups.push_back(std::move(f.open_mmas));
  f.open_mmas.clear();
}

void warpgroup_wait(int pending) {
  Fiber& f = *launch().current;
  while (static_cast<int>(f.mma_groups.size()) > pending) {
    for (auto& op : f.mma_groups.front()) apply(op);
    f.mma_groups.pop_front();
  }
}

void warpgroup_set_max_registers(int n, bool increase) {
  Launch& l = launch();
  Fiber& f = *l.current;
  const std::string what = increase ? "setmaxnreg.inc" : "setmaxnreg.dec";
  if (n < 24 || n > 256 || n % 8 != 0) {
    kernel_fault(what + ": a count of 24 to 256 registers in multiples of 8, not " + std::to_string(n));
  }
  const int threads = static_cast<int>(l.fibers.size());
  if (threads % 128 != 0) kernel_fault(what + ": a block of whole warpgroups, not " + std::to_string(threads) + " threads");
  yield(State::AtGroup);  // .sync.aligned: the warpgroup's four warps together
  const size_t groups = static_cast<size_t>(threads / 128), g = static_cast<size_t>(f.linear / 128);
  const int start = std::min(256, 65536 / threads / 8 * 8);
  if (l.group_registers.empty()) {
    l.group_registers.assign(groups, start);
    l.register_request.assign(groups, 0);
    l.register_calls.assign(groups, 0);
  }
  if (l.register_calls[g]++ % 128 == 0) {  // the warpgroup's first thread through this call
    const int now = l.group_registers[g];
    if (increase ? n < now : n > now) {
      kernel_fault(what + ": warpgroup " + std::to_string(g) + " has " + std::to_string(now) + " registers a thread and asks to " +
                   (increase ? "raise" : "lower") + " that to " + std::to_string(n));
    }
    l.register_request[g] = n;
  } else if (l.register_request[g] != n) {
    kernel_fault(what + ": the threads of warpgroup " + std::to_string(g) + " ask for " +
                 std::to_string(l.register_request[g]) + " and " + std::to_string(n) + " registers");
  }
  while (l.group_registers[g] != n) {
    int64_t used = 0;
    for (int r : l.group_registers) used += r;
    if (!increase || used - l.group_registers[g] + n <= static_cast<int64_t>(start) * static_cast<int64_t>(groups)) {
      l.group_registers[g] = n;
      for (Fiber& other : l.fibers)
        if (other.state == State::AtRegisters) other.state = State::Runnable;  // they look again
      break;
    }
    yield(State::AtRegisters);
  }
}

void reseed(uint64_t seed) { order_rng().seed(seed); }

namespace {

// What the GPU says of a launch's configuration before running anything.
cudaError_t launch_config_error(dim3 grid, dim3 block, size_t shared) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  return shared > kSharedOptIn ? cudaErrorInvalidValue : cudaSuccess;
}

}  // namespace

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

// --- streams and graphs ---------------------------------------------------------------------------

namespace {

struct Queued {
  std::string what;
  std::function<void()> work;
};
using Recording = std::vector<Queued>;

struct StreamState {
  bool capturing = false, invalidated = false;
  Recording recorded;
};

struct Streams {
  std::map<const void*, std::unique_ptr<StreamState>> streams;
  std::map<const void*, std::unique_ptr<Recording>> graphs;                 // captured, not instantiated
  std::map<const void*, std::shared_ptr<const Recording>> execs;          // instantiated
  int capturing = 0;  // streams capturing now
};
Streams& streams() {
  static Streams s;
  return s;
}

// A call the hardware refuses while a capture is open: every open capture is invalidated.
cudaError_t refuse(cudaError_t e) {
  for (auto& [handle, st] : streams().streams) {
    if (st->capturing) st->invalidated = true;
  }
  return e;
}
bool capture_open() { return streams().capturing > 0; }

StreamState* stream_state(cudaStream_t stream) {
  const auto it = streams().streams.find(stream);
  return it == streams().streams.end() ? nullptr : it->second.get();
}

void run_now(const Queued& q) {
  const DeviceAccess device_access;
  q.work();
}

}  // namespace

cudaError_t submit(cudaStream_t stream, const char* what, std::function<void()> work) {
  Queued q{what, std::move(work)};
  if (stream == nullptr) {  // the legacy stream waits for every blocking stream, a capturing one too
    if (capture_open()) return refuse(cudaErrorStreamCaptureImplicit);
    run_now(q);
    return cudaSuccess;
  }
  StreamState* st = stream_state(stream);
  if (st == nullptr) return cudaErrorInvalidResourceHandle;
  if (st->capturing) {
    if (st->invalidated) return cudaErrorStreamCaptureInvalidated;
    st->recorded.push_back(std::move(q));
    return cudaSuccess;
  }
  run_now(q);
  return cudaSuccess;
}

void launch_grid(const char* name, dim3 grid, dim3 block, size_t shared, cudaStream_t stream,
                 std::function<void()> body) {
  if (const cudaError_t e = launch_config_error(grid, block, shared); e != cudaSuccess) {
    g_last_error = e;
    return;
  }
  const cudaError_t e = submit(stream, name, [kernel = std::string(name), grid, block, shared, body = std::move(body)] {
    run_grid(kernel.c_str(), grid, block, shared, body);
  });
  if (e != cudaSuccess) g_last_error = e;
}

bool any_capture_open() { return capture_open(); }

cudaError_t stream_create(cudaStream_t* stream) {
  auto st = std::make_unique<StreamState>();
  *stream = reinterpret_cast<cudaStream_t>(st.get());
  streams().streams.emplace(*stream, std::move(st));
  return cudaSuccess;
}

cudaError_t stream_destroy(cudaStream_t stream) {
  const auto it = streams().streams.find(stream);
  if (it == streams().streams.end()) return cudaErrorInvalidResourceHandle;
  if (it->second->capturing) --streams().capturing;
  streams().streams.erase(it);
  return cudaSuccess;
}

cudaError_t stream_synchronize(cudaStream_t stream) {
  if (stream != nullptr && stream_state(stream) == nullptr) return cudaErrorInvalidResourceHandle;
  if (capture_open()) return refuse(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;  // everything queued has run
}

cudaError_t begin_capture(cudaStream_t stream, cudaStreamCaptureMode) {
  if (stream == nullptr) return cudaErrorStreamCaptureUnsupported;
  StreamState* st = stream_state(stream);
  if (st == nullptr) return cudaErrorInvalidResourceHandle;
  if (st->capturing) return cudaErrorIllegalState;
  st->capturing = true;
  st->invalidated = false;
  st->recorded.clear();
  ++streams().capturing;
  return cudaSuccess;
}

cudaError_t end_capture(cudaStream_t stream, cudaGraph_t* graph) {
  *graph = nullptr;
  StreamState* st = stream_state(stream);
  if (st == nullptr) return cudaErrorInvalidResourceHandle;
  if (!st->capturing) return cudaErrorIllegalState;
  st->capturing = false;
  --streams().capturing;
  Recording recorded = std::move(st->recorded);
  st->recorded.clear();
  if (st->invalidated) return cudaErrorStreamCaptureInvalidated;
  auto g = std::make_unique<Recording>(std::move(recorded));
  *graph = reinterpret_cast<cudaGraph_t>(g.get());
  streams().graphs.emplace(*graph, std::move(g));
  return cudaSuccess;
}

cudaError_t graph_instantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  const auto it = streams().graphs.find(graph);
  if (it == streams().graphs.end()) return cudaErrorInvalidValue;
  auto e = std::make_shared<const Recording>(*it->second);
  *exec = reinterpret_cast<cudaGraphExec_t>(const_cast<Recording*>(e.get()));
  streams().execs.emplace(*exec, std::move(e));
  return cudaSuccess;
}

cudaError_t graph_launch(cudaGraphExec_t exec, cudaStream_t stream) {
  const auto it = streams().execs.find(exec);
  if (it == streams().execs.end()) return cudaErrorInvalidValue;
  return submit(stream, "graph launch", [recording = it->second] {
    for (const Queued& q : *recording) q.work();
  });
}

cudaError_t graph_destroy(cudaGraph_t graph) {
  return streams().graphs.erase(graph) == 1 ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t graph_exec_destroy(cudaGraphExec_t exec) {
  return streams().execs.erase(exec) == 1 ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t copy_async(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t stream) {
  return submit(stream, "memcpy", [dst, src, bytes] {
    if (bytes > 0) std::memmove(dst, src, bytes);
  });
}

cudaError_t set_bytes_async(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  return submit(stream, "memset", [ptr, value, bytes] { std::memset(ptr, value, bytes); });
}

DeviceAccess::DeviceAccess() {
  Allocations& a = allocations();
  if (a.open_scopes++ == 0) {
    for (const auto& [data, m] : a.live) set_open(data, m, true);
  }
}

DeviceAccess::~DeviceAccess() {
  Allocations& a = allocations();
  if (--a.open_scopes == 0) {
    for (const auto& [data, m] : a.live) set_open(data, m, false);
  }
}

bool is_device_pointer(const void* p) {
  const Allocations& a = allocations();
  auto it = a.live.upper_bound(p);
  if (it == a.live.begin()) return false;
  --it;
  return static_cast<const unsigned char*>(p) <= static_cast<const unsigned char*>(it->first) + it->second.bytes;
}

void bad_kernel_pointer(const char* kernel, size_t argument) {
  fail("simt: kernel {}: pointer argument {} is not device memory (a kernel reading it faults on a GPU)", kernel,
       argument);
}

cudaError_t malloc_device(void** ptr, size_t bytes) {
  if (capture_open()) return refuse(cudaErrorStreamCaptureUnsupported);
  install_segv_handler();
  const size_t page = page_bytes();
  const size_t data_pages = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
  const size_t total = data_pages + 2 * page;
  void* base = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return cudaErrorMemoryAllocation;
  const Mapping m{static_cast<unsigned char*>(base), total, data_pages, bytes};
  unsigned char* data = m.base + page;
  set_open(data, m, true);
  std::memset(data, 0xFF, data_pages);  // unwritten device memory reads as NaN
#if defined(__SANITIZE_ADDRESS__)
  ASAN_POISON_MEMORY_REGION(data + bytes, data_pages - bytes);  // a kernel reading past the end is reported
#endif
  Allocations& a = allocations();
  if (a.open_scopes == 0) set_open(data, m, false);
  a.live.emplace(data, m);
  *ptr = data;
  return cudaSuccess;
}

cudaError_t free_device(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  if (capture_open()) return refuse(cudaErrorStreamCaptureUnsupported);
  Allocations& a = allocations();
  const auto it = a.live.find(ptr);
  if (it == a.live.end()) return cudaErrorInvalidValue;  // not from malloc_device, or freed twice
  const Mapping m = it->second;
  a.live.erase(it);
#if defined(__SANITIZE_ADDRESS__)
  ASAN_UNPOISON_MEMORY_REGION(m.base, m.total);
#endif
  munmap(m.base, m.total);
  return cudaSuccess;
}

cudaError_t copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (capture_open()) return refuse(cudaErrorStreamCaptureImplicit);  // the legacy stream's copy
  const DeviceAccess device_access;
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t set_bytes(void* ptr, int value, size_t bytes) {
  if (capture_open()) return refuse(cudaErrorStreamCaptureImplicit);
  const DeviceAccess device_access;
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t get_device(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(kSharedOptIn); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 49152; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = kSmCount; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = kMaxThreads; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

int max_blocks_per_sm(int threads, size_t shared) {
  constexpr int kThreadsPerSm = 2048, kBlocksPerSm = 32;
  constexpr size_t kSharedPerSm = 233472, kReservedPerBlock = 1024;  // 228 KiB, less 1 KiB per block
  if (threads <= 0 || threads > kMaxThreads || shared > kSharedOptIn) return 0;
  const int by_threads = kThreadsPerSm / threads;
  const int by_shared = static_cast<int>(kSharedPerSm / (shared + kReservedPerBlock));
  return std::min({by_threads, by_shared, kBlocksPerSm});
}

cudaError_t last_error() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}

cudaError_t device_synchronize() { return capture_open() ? refuse(cudaErrorStreamCaptureUnsupported) : cudaSuccess; }

const char* error_string(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit:
      return "operation would make the legacy stream depend on a capturing blocking stream";
    default: return "unknown error";
  }
}

const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    default: return "cudaErrorUnknown";
  }
}

}  // namespace flashgpt::simt

namespace nvcuda::wmma::detail {

void check_pointer(const void* p, unsigned ldm, size_t element_bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    flashgpt::fail("simt: {}: pointer {} is not 32-byte aligned", what, p);
  }
  if ((ldm * element_bytes) % 16 != 0) {
    flashgpt::fail("simt: {}: leading dimension {} is not a multiple of 16 bytes", what, ldm);
  }
}

}  // namespace nvcuda::wmma::detail
