// What the emulator's three sources share: a launch's fibers and their states, the launch
// itself, and the helpers every instruction uses. simt.cpp runs launches (fibers, the scheduler,
// barriers, warp collectives), simt_instructions.cpp the tensor-core and Hopper instructions, and
// simt_runtime.cpp device memory, streams, graphs and errors. Not for kernels: they see simt.h.
#pragma once

#include <ucontext.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda/simt/simt.h"

namespace flashgpt::simt::detail {

constexpr int kMaxThreads = 1024;
constexpr size_t kSharedOptIn = 232448;  // 227 KiB, an H100's opt-in limit per block
constexpr int kSmCount = 132;

enum class State { Runnable, AtBlock, AtWarp, AtGroup, AtNamed, AtMbarrier, AtRegisters, Done };

// A suspended stack (simt.cpp switches between them): on x86-64 its saved stack pointer, with the
// callee-saved registers pushed below it; elsewhere a ucontext.
struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc{};
#endif
};

struct Fiber {
  Context ctx;
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
  Context scheduler;
  std::exception_ptr error;
};

// The launch running now, whose current fiber is the caller (a fault outside a kernel).
Launch& launch();
// Fails naming the kernel, block and thread, and what they did wrong.
[[noreturn]] void kernel_fault(const std::string& what);
// Hands control back to the scheduler with the calling fiber in state s.
void yield(State s);
// The draws behind every ordering choice (FLASHGPT_SIMT_SEED, simt::reseed).
std::mt19937_64& order_rng();
// What the GPU says of a launch's configuration before running anything.
cudaError_t launch_config_error(dim3 grid, dim3 block, size_t shared);
// What cudaGetLastError returns next.
inline cudaError_t g_last_error = cudaSuccess;

// Every lane of the (full) warp publishes `mine`; returns the 32 lanes' pointers, valid until the
// caller's matching end_collective (the lanes wait there, their stacks intact).
std::array<const void*, 32> begin_collective(const void* mine, const char* what);
void end_collective();
// Half `half` of a register of two 16-bit elements of type t, as a float.
float element_of(MmaType t, uint32_t reg, int half);
// Faults unless [p, p + bytes) lies in the block's dynamic shared memory, p aligned to `align`.
void check_shared(const void* p, size_t bytes, const char* what, uintptr_t align = 16);

}  // namespace flashgpt::simt::detail
