// The CUDA execution model on the CPU, for testing our kernels where no GPU exists.
//
// A build with FLASHGPT_SIMT compiles the very same .cu sources with the host C++ compiler
// against this header (cuda/platform.h picks it). Each CUDA thread of a block becomes a fiber
// with its own stack; blocks run one at a time, in a shuffled order (the hardware promises none,
// and atomics from different blocks land in it). A fiber runs until it reaches a barrier
// (__syncthreads, __syncwarp, a shuffle, a vote). The scheduler picks a warp at random and runs
// its lanes, in shuffled order, to their next barrier, so warps drift apart by whole phases as
// they may on the hardware: a kernel that touches shared memory without the barrier that should
// order it gets wrong answers instead of passing by luck. The order is random but repeatable
// (FLASHGPT_SIMT_SEED picks another).
//
// What it checks, as the hardware would fail or silently misbehave:
//   - launch limits: threads per block (1024), grid y/z (65535), dynamic shared memory (the
//     opt-in limit of the emulated device);
//   - a shuffle or vote whose mask names a lane that has exited, that waits at another barrier,
//     or that reads from a lane outside the mask; a __syncthreads some threads never reach
//     (reported as a deadlock with every thread's state);
//   - WMMA loads and stores on pointers not 32-byte aligned or with a leading dimension that is
//     not a multiple of 16 bytes;
//   - reads of shared or global memory nobody wrote: dynamic shared memory and every
//     cudaMalloc'd buffer start as 0xFF bytes (NaN in float, bf16 and half).
//   - host code that touches device memory (a fault on the hardware): outside kernels, copies and
//     the emulated library calls every cudaMalloc'd buffer is unreadable, and the fault names it.
//   - Hopper's mbarriers and tensor copies (TMA): a barrier used uninitialised, more arrivals than
//     its count, a copy read before its barrier's wait, a wait that never completes.
// Out-of-bounds accesses are caught when the tests run under AddressSanitizer (and past a page
// boundary by guard pages in any build).
//
// What it does not model: timing, occupancy, memory ordering between blocks (they run in
// sequence), and the accumulation order inside a tensor-core instruction.
#pragma once

#if !defined(FLASHGPT_SIMT)
#error "cuda/simt/simt.h is for FLASHGPT_SIMT builds only"
#endif

#include <cuda_bf16.h>  // the real bf16/half types and their host conversions; dim3, cudaError_t
#include <cuda_fp16.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// Storage classes and qualifiers: shared variables are per block, and blocks run one at a time on
// one host thread, so a function-local static is exactly one copy per block.
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __grid_constant__
#define __grid_constant__

namespace flashgpt::simt {

// The calling fiber's coordinates (valid inside a kernel only).
const uint3& thread_index();
const uint3& block_index();
const dim3& block_dim();
const dim3& grid_dim();
int lane();
void* dynamic_shared();

void sync_block();
// Named barriers, as PTX's bar.sync / bar.arrive with an id (1 … 15; 0 is __syncthreads) and a
// thread count (a multiple of 32): sync_named waits until `threads` threads have arrived at the
// barrier in this round, counting itself; arrive_named counts itself and goes on (a producer
// telling consumers its writes are done). A round that mixes counts is a fault; one that never
// completes shows as a deadlock.
constexpr int kNamedBarriers = 16;
void sync_named(int id, int threads);
void arrive_named(int id, int threads);
// Waits until every lane in mask has arrived at a warp barrier with the same mask.
void sync_warp(unsigned mask);
// Each lane of mask publishes value; returns the value lane src published. src outside mask is an
// error (the hardware returns garbage).
uint64_t exchange(unsigned mask, uint64_t value, int src);
unsigned ballot(unsigned mask, bool predicate);

// The tensor-core primitives of cuda/tensor_core.h, as warp collectives with the PTX ISA's
// fragment layouts: every lane of the warp must call them together.
//   mma_m16n8k16 — D = A·B + C, A 16×16 and B 16×8 in 16-bit elements, two per register, C and D
//   fp32; ldmatrix — count 8×8 matrices of 16-bit elements from shared memory, optionally
//   transposed; cp_async — a copy into shared memory, the bytes past src_bytes zeroed, that lands
//   at random either at once or only when its thread waits for its group: a read before the wait
//   or a race with another warp's reads of the old contents shows as a wrong answer.
enum class MmaType { bf16, f16 };
void mma_m16n8k16(MmaType type, float* d, const uint32_t* a, const uint32_t* b, const float* c);
void ldmatrix(int count, bool trans, uint32_t* out, const void* row);
void cp_async(void* dst, const void* src, int bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending);

// Hopper's warpgroup MMA (wgmma.mma_async, sm_90a), a collective of the four warps of a
// warpgroup (threads 128w … 128w + 127, every one calling it together):
//   D (64 × n, fp32) = A (64 × 16) · B (16 × n) (+ D where accumulate), n a multiple of 8 up to 256.
// A comes from registers (a: four per thread, mma.m16n8k16's A layout for the warp's 16 rows) or,
// where a is null, from shared memory through a_desc; B always from shared memory through b_desc.
// A descriptor is the PTX ISA's 64-bit matrix descriptor (start address, leading and stride byte
// offsets, swizzle mode), read exactly as the hardware reads it: the canonical K-major or, where
// trans_*, MN-major layout, with the swizzle a function of the shared-memory address bits. d is
// this thread's n / 2 accumulators in the wgmma D layout (chunk j of 8 columns: d[4j + e] =
// D[16·warp + lane / 4 + 8(e / 2)][8j + 2(lane % 4) + e % 2]).
// As on the hardware, the product lands only when its thread waits for its group
// (warpgroup_commit closes a group, warpgroup_wait(N) waits until at most N are pending): a read
// of d before the wait sees the old values. The shared operands are read at random either at
// issue or at the wait, so a kernel that overwrites them before waiting gets a wrong answer.
// Not modelled: the wgmma.fence rules (what the hardware requires before the first wgmma and
// after registers change), the generic-to-async proxy fence (fence.proxy.async), a descriptor's
// matrix base offset (refused), and different descriptors from the threads of one warpgroup.
void warpgroup_mma(MmaType type, int n, float* d, const uint32_t* a, uint64_t a_desc, uint64_t b_desc, bool trans_a,
                   bool trans_b, bool accumulate);
void warpgroup_commit();
void warpgroup_wait(int pending);
// Hopper's register reallocation (setmaxnreg.inc / .dec, sm_90a), a collective of a warpgroup's
// 128 threads: each of them may use n registers from here on (24 … 256, a multiple of 8). A block's
// warpgroups start with the most its size allows one block an SM (65536 / threads, a multiple of 8,
// at most 256: what ptxas gives a kernel built for that), and the block's registers are a fixed
// pool: a raise waits until lowerings elsewhere in the block have freed enough, so one that no
// lowering can ever satisfy shows as a deadlock. Faults: a count out of range, a raise that lowers
// or a lowering that raises, the threads of one warpgroup asking for different counts, a block
// that is not whole warpgroups.
void warpgroup_set_max_registers(int n, bool increase);
// Hopper's shared-memory barriers and tensor copies (cuda/tma.h), as the PTX ISA describes them:
//   mbarrier_init(bar, count)   a barrier in 8 bytes of shared memory expecting `count` arrivals a
//                               phase (each phase also waits for the bytes announced to it);
//   mbarrier_arrive(bar, tx)    one arrival, first announcing tx more bytes (expect_tx; 0 for none);
//   mbarrier_wait(bar, parity)  returns once the phase of that parity has completed: phases count
//                               from 0 and the wait on parity p returns while the barrier's current
//                               phase has the other parity;
//   bulk_tensor_load(dst, map, rank, coords, bar)  one box of the tensor `map` describes
//                               (encode_tensor_map), from coords (innermost first, zeros outside the
//                               tensor), into shared memory at dst in the map's swizzle (128 bytes:
//                               each 16-byte chunk's address bits 4–6 XOR bits 7–9; 64 bytes: bits
//                               4–5 XOR bits 7–8), its bytes completing
//                               on bar. The box is read at issue; it lands at random either at once
//                               or only when a thread waits on the barrier, so a read of dst before
//                               the wait gets the old contents.
// A phase completes when its arrivals are in and every announced byte has landed; its waiting
// threads then go on. Faults: a barrier not initialised (or initialised twice), more arrivals than
// its count, a destination not 128-byte aligned, a map not encoded, a box row wider than the swizzle,
// copies never waited for when the block ends; a wait that cannot complete is a deadlock.
void mbarrier_init(void* bar, int count);
void mbarrier_arrive(void* bar, uint32_t tx_bytes);
void mbarrier_wait(void* bar, uint32_t parity);
void bulk_tensor_load(void* dst, const void* map, int rank, const int* coords, void* bar);
// What cuTensorMapEncodeTiled writes into a CUtensorMap (128 bytes at map), in the emulator's own
// form: `rank` dimensions of elem_bytes-byte elements, dims innermost first, strides_bytes of
// dimensions 1…rank − 1, box extents; the swizzle (swizzle_bytes: 128 or 64), zeros outside the
// tensor.
void encode_tensor_map(void* map, const void* base, int rank, int elem_bytes, const uint64_t* dims,
                       const uint64_t* strides_bytes, const uint32_t* box, int swizzle_bytes);

// The calling thread's address of p in the block's shared-memory window (what cvta.to.shared
// gives on the hardware). The emulated dynamic shared memory starts at a random multiple of 128
// bytes in the window, as the hardware promises no more, so a kernel that needs a tile 1024-byte
// aligned must align it itself.
uint32_t shared_address(const void* p);

// Streams and graphs. Work queued on a stream runs at once (one host thread, in order), except
// while that stream captures: then it is recorded exactly as queued (a kernel with the argument
// values of its launch, a copy with its pointers) instead of run, and runs each time the graph
// instantiated from it is launched. While a capture is open, what the hardware refuses during one
// is refused with the hardware's error, and the capture is invalidated (cudaStreamEndCapture then
// fails): calls that wait for the device or may (cudaMemcpy, cudaMemset, cudaMalloc, cudaFree,
// cudaDeviceSynchronize, cudaStreamSynchronize) and work queued on the legacy default stream,
// which would have to wait for the capturing stream.
cudaError_t stream_create(cudaStream_t* stream);
// Whether any stream is capturing now.
bool any_capture_open();
cudaError_t stream_destroy(cudaStream_t stream);
cudaError_t stream_synchronize(cudaStream_t stream);
cudaError_t begin_capture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t end_capture(cudaStream_t stream, cudaGraph_t* graph);
cudaError_t graph_instantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags);
cudaError_t graph_launch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t graph_destroy(cudaGraph_t graph);
cudaError_t graph_exec_destroy(cudaGraphExec_t exec);
cudaError_t copy_async(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t set_bytes_async(void* ptr, int value, size_t bytes, cudaStream_t stream);
// Queues host code standing for device work (an emulated library call such as a GEMM) on stream:
// runs it now, with device memory open to it, or records it while the stream captures. `what`
// names it in errors.
cudaError_t submit(cudaStream_t stream, const char* what, std::function<void()> work);
// A kernel launch on stream: the configuration is checked now (a bad one sets the last error, as
// on the GPU), then run_grid is submitted. body holds the launch's own copies of the arguments.
void launch_grid(const char* name, dim3 grid, dim3 block, size_t shared, cudaStream_t stream,
                 std::function<void()> body);

// Restarts the scheduler's random choices (block order, warp and lane order, when asynchronous
// copies land) from seed; FLASHGPT_SIMT_SEED sets the first seed. Tests use it to show that a
// result does or does not depend on the order in which blocks and threads run.
void reseed(uint64_t seed);

// Runs body once per thread of every block of grid, the blocks in a random order (the kernel's parameters are bound in body).
void run_grid(const char* name, dim3 grid, dim3 block, size_t shared, const std::function<void()>& body);

// While one lives, host code may touch device memory (kernels, copies and memsets open one; so
// does an emulated library call such as a GEMM). Outside these scopes device memory is unreadable,
// so a host read of a device pointer faults where it happens, as on the hardware.
struct DeviceAccess {
  DeviceAccess();
  ~DeviceAccess();
  DeviceAccess(const DeviceAccess&) = delete;
  DeviceAccess& operator=(const DeviceAccess&) = delete;
};

// Whether p lies within (or one past the end of) a live cudaMalloc'd buffer.
bool is_device_pointer(const void* p);

// A kernel's pointer arguments must be null or device memory: on the GPU a kernel that reads a
// host pointer faults. An argument that is a struct holding pointers lists them through a
// kernel_pointers(const S&) found by argument-dependent lookup. Throws flashgpt::Error naming the
// kernel and the argument.
[[noreturn]] void bad_kernel_pointer(const char* kernel, size_t argument);
template <typename... Params>
void check_kernel_pointers(const char* kernel, const std::tuple<Params...>& params) {
  [&]<size_t... I>(std::index_sequence<I...>) {
    (
        [&] {
          const auto& arg = std::get<I>(params);
          if constexpr (std::is_pointer_v<std::decay_t<decltype(arg)>>) {
            if (arg != nullptr && !is_device_pointer(arg)) bad_kernel_pointer(kernel, I);
          } else if constexpr (requires { kernel_pointers(arg); }) {  // a struct of pointers (found by ADL)
            for (const void* p : kernel_pointers(arg)) {
              if (p != nullptr && !is_device_pointer(p)) bad_kernel_pointer(kernel, I);
            }
          }
        }(),
        ...);
  }(std::index_sequence_for<Params...>{});
}

// The runtime API the .cu sources use, on host memory.
cudaError_t malloc_device(void** ptr, size_t bytes);
cudaError_t free_device(void* ptr);
cudaError_t copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t set_bytes(void* ptr, int value, size_t bytes);
cudaError_t get_device(int* device);
cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int device);
// Blocks of `threads` threads and `shared` bytes of dynamic shared memory that one SM of the
// emulated GPU (an H100's limits: 2048 threads, 228 KiB of shared memory, 32 blocks) holds at once.
int max_blocks_per_sm(int threads, size_t shared);
cudaError_t last_error();
cudaError_t device_synchronize();
const char* error_string(cudaError_t e);
const char* error_name(cudaError_t e);
template <typename Kernel>
cudaError_t func_set_attribute(Kernel, cudaFuncAttribute, int) {
  return cudaSuccess;
}

// Lane arithmetic of the shuffles: the source lane, or −1 for "keep your own value".
inline int shfl_source(int lane, int target, int width) {
  const int base = lane & ~(width - 1);
  return base + (target & (width - 1));
}

template <typename T>
T shuffle(unsigned mask, T value, int src) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move values of up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  const uint64_t got = exchange(mask, bits, src);
  T out;
  std::memcpy(&out, &got, sizeof(T));
  return out;
}

}  // namespace flashgpt::simt

#define threadIdx (::flashgpt::simt::thread_index())
#define blockIdx (::flashgpt::simt::block_index())
#define blockDim (::flashgpt::simt::block_dim())
#define gridDim (::flashgpt::simt::grid_dim())
constexpr int warpSize = 32;

// The runtime calls, redirected to host memory (the real declarations stay untouched).
#define cudaMalloc(ptr, bytes) ::flashgpt::simt::malloc_device(reinterpret_cast<void**>(ptr), bytes)
#define cudaFree ::flashgpt::simt::free_device
#define cudaMemcpy ::flashgpt::simt::copy
#define cudaMemset ::flashgpt::simt::set_bytes
#define cudaGetDevice ::flashgpt::simt::get_device
#define cudaDeviceGetAttribute ::flashgpt::simt::device_attribute
#define cudaGetLastError ::flashgpt::simt::last_error
#define cudaDeviceSynchronize ::flashgpt::simt::device_synchronize
#define cudaGetErrorString ::flashgpt::simt::error_string
#define cudaGetErrorName ::flashgpt::simt::error_name
#define cudaFuncSetAttribute ::flashgpt::simt::func_set_attribute
#define cudaStreamCreate ::flashgpt::simt::stream_create
#define cudaStreamDestroy ::flashgpt::simt::stream_destroy
#define cudaStreamSynchronize ::flashgpt::simt::stream_synchronize
#define cudaStreamBeginCapture ::flashgpt::simt::begin_capture
#define cudaStreamEndCapture ::flashgpt::simt::end_capture
#define cudaGraphInstantiate ::flashgpt::simt::graph_instantiate
#define cudaGraphLaunch ::flashgpt::simt::graph_launch
#define cudaGraphDestroy ::flashgpt::simt::graph_destroy
#define cudaGraphExecDestroy ::flashgpt::simt::graph_exec_destroy
#define cudaMemcpyAsync ::flashgpt::simt::copy_async
#define cudaMemsetAsync ::flashgpt::simt::set_bytes_async

// Device built-ins.
inline void __syncthreads() { ::flashgpt::simt::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::flashgpt::simt::sync_warp(mask); }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return ::flashgpt::simt::shuffle(mask, v, ::flashgpt::simt::shfl_source(::flashgpt::simt::lane(), src, width));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::flashgpt::simt::lane();
  const int target = lane ^ lane_mask;
  // A target in a later group of `width` lanes returns the caller's own value.
  const int src = (target & ~(width - 1)) > (lane & ~(width - 1)) ? lane : target;
  return ::flashgpt::simt::shuffle(mask, v, src);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::flashgpt::simt::lane();
  const int end = (lane & ~(width - 1)) + width;
  const int src = lane + static_cast<int>(delta) < end ? lane + static_cast<int>(delta) : lane;
  return ::flashgpt::simt::shuffle(mask, v, src);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::flashgpt::simt::lane();
  const int base = lane & ~(width - 1);
  const int src = lane - static_cast<int>(delta) >= base ? lane - static_cast<int>(delta) : lane;
  return ::flashgpt::simt::shuffle(mask, v, src);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) { return ::flashgpt::simt::ballot(mask, predicate != 0); }
inline int __any_sync(unsigned mask, int predicate) { return ::flashgpt::simt::ballot(mask, predicate != 0) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
  return ::flashgpt::simt::ballot(mask, predicate != 0) == mask;
}

// Atomics: one host thread runs every fiber and none yields inside these, so plain updates are atomic.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
template <typename T>
T atomicMax(T* address, T value) {
  const T old = *address;
  *address = old < value ? value : old;
  return old;
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  const T old = *address;
  if (old == compare) *address = value;
  return old;
}
template <typename T>
T atomicExch(T* address, T value) {
  const T old = *address;
  *address = value;
  return old;
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}

// Fast-math intrinsics at full precision (the tests' bounds cover the hardware's approximations).
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int __float_as_int(float x) {
  int i;
  std::memcpy(&i, &x, 4);
  return i;
}
inline unsigned __float_as_uint(float x) {
  unsigned i;
  std::memcpy(&i, &x, 4);
  return i;
}
inline float __int_as_float(int i) {
  float x;
  std::memcpy(&x, &i, 4);
  return x;
}
inline float __uint_as_float(unsigned i) {
  float x;
  std::memcpy(&x, &i, 4);
  return x;
}

// CUDA's min and max take mixed integer and floating types.
template <typename A, typename B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
constexpr std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <typename A, typename B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
constexpr std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

// Warp matrix multiply-accumulate. Each lane's fragment has room for the whole tile (row-major,
// element (r, c) at x[r·cols + c]), so elementwise loops over num_elements behave as on the
// hardware, whose own distribution of elements over lanes is unspecified. Loads fill the whole
// tile (the A and B operands are needed whole); of an accumulator, element e belongs to lane
// e mod 32: mma_sync computes only those and a store writes only those. Lanes run one after
// another here, and a lane that wrote the whole tile would change what the next lane's load of
// the same tile reads, where on the hardware the warp's loads all happen before its stores.
namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  using element_type = T;
  T x[num_elements];
};

namespace detail {
void check_pointer(const void* p, unsigned ldm, size_t element_bytes, const char* what);
}

template <typename Use, int M, int N, int K, typename T, typename L>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, T value) {
  for (auto& e : f.x) e = value;
}
template <typename Use, int M, int N, int K, typename T, typename L, typename V>
  requires(!std::is_same_v<T, V>)
void fill_fragment(fragment<Use, M, N, K, T, L>& f, V value) {
  for (auto& e : f.x) e = static_cast<T>(value);
}

// matrix_a / matrix_b: the layout is part of the fragment type.
template <typename Use, int M, int N, int K, typename T, typename L>
  requires(!std::is_same_v<Use, accumulator>)
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, L>;
  detail::check_pointer(p, ldm, sizeof(T), "wmma::load_matrix_sync");
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same_v<L, row_major> ? p[static_cast<size_t>(r) * ldm + c]
                                                          : p[static_cast<size_t>(c) * ldm + r];
}

template <int M, int N, int K, typename T>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout) {
  detail::check_pointer(p, ldm, sizeof(T), "wmma::load_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      f.x[r * N + c] = layout == mem_row_major ? p[static_cast<size_t>(r) * ldm + c] : p[static_cast<size_t>(c) * ldm + r];
}

template <int M, int N, int K, typename T>
void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  detail::check_pointer(p, ldm, sizeof(T), "wmma::store_matrix_sync");
  const int own = ::flashgpt::simt::lane();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      if ((r * N + c) % 32 == own)
        (layout == mem_row_major ? p[static_cast<size_t>(r) * ldm + c] : p[static_cast<size_t>(c) * ldm + r]) =
            f.x[r * N + c];
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
  // Each lane computes only its own share (element e belongs to lane e mod 32); the others become
  // NaN, so a kernel that leans on elements the hardware would not give this lane sees it.
  const int own = ::flashgpt::simt::lane();
  TC out[M * N];
  for (int r = 0; r < M; ++r)
    for (int n = 0; n < N; ++n) {
      if ((r * N + n) % 32 != own) {
        out[r * N + n] = static_cast<TC>(std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      float acc = static_cast<float>(c.x[r * N + n]);
      for (int k = 0; k < K; ++k) acc += static_cast<float>(a.x[r * K + k]) * static_cast<float>(b.x[k * N + n]);
      out[r * N + n] = static_cast<TC>(acc);
    }
  std::memcpy(d.x, out, sizeof(out));
}

}  // namespace nvcuda::wmma
