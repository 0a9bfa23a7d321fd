// The emulator's instructions for the tensor cores and Hopper's asynchronous units (simt.h):
// mma.m16n8k16, ldmatrix and cp.async (Ampere), and wgmma, mbarriers, tensor copies (TMA) and
// register reallocation (Hopper), each read as the PTX ISA lays out its fragments, descriptors and
// phases, with the faults the hardware would give, or worse, silently wrong numbers.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "cuda/simt/simt.h"
#include "cuda/simt/simt_internal.h"
#include "flashgpt/core/error.h"

namespace flashgpt::simt {

using namespace detail;

namespace {

// Asynchronous operations in groups, as cp.async and wgmma keep them: `open` (issued since the
// last commit) becomes the newest of `groups`; a wait completes the oldest groups until at most
// `pending` remain.
template <typename Op>
void commit_group(std::vector<Op>& open, std::deque<std::vector<Op>>& groups) {
  groups.push_back(std::move(open));
  open.clear();
}
template <typename Op, typename Complete>
void complete_groups(std::deque<std::vector<Op>>& groups, int pending, Complete complete) {
  while (static_cast<int>(groups.size()) > pending) {
    for (Op& op : groups.front()) complete(op);
    groups.pop_front();
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
  commit_group(f.open_copies, f.copy_groups);
}

void cp_async_wait(int pending) {
  complete_groups(launch().current->copy_groups, pending,
                  [](const Fiber::Copy& c) { std::memcpy(c.dst, c.bytes.data(), static_cast<size_t>(c.size)); });
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
  uint32_t swizzle;  // bytes: 128 or 64
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
  if (row_bytes > t.swizzle || row_bytes % 16 != 0) {
    kernel_fault("cp.async.bulk.tensor: a " + std::to_string(t.swizzle) + "-byte-swizzled box row of 16 to " +
                 std::to_string(t.swizzle) + " bytes, not " + std::to_string(row_bytes));
  }
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
  // The box packed row after row, each 16-byte chunk at its address with bits 4–6 XORed by bits
  // 7–9 (the 128-byte swizzle) or bits 4–5 by bits 7–8 (the 64-byte one).
  auto* out = static_cast<unsigned char*>(dst);
  const uint32_t bits = t.swizzle == 128 ? 7 : 3;
  std::vector<std::pair<unsigned char*, std::array<unsigned char, 16>>> chunks;
  for (uint64_t c = 0; c < bytes / 16; ++c) {
    const uint32_t linear = dst_address + static_cast<uint32_t>(16 * c);
    const uint32_t swizzled = linear ^ (((linear >> 7) & bits) << 4);
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
                       const uint64_t* strides_bytes, const uint32_t* box, int swizzle_bytes) {
  if (rank < 1 || rank > 5) fail("simt: tensor map of rank {}", rank);
  if (swizzle_bytes != 128 && swizzle_bytes != 64) fail("simt: a tensor map swizzle of {} bytes", swizzle_bytes);
  TensorMap t{};
  t.swizzle = static_cast<uint32_t>(swizzle_bytes);
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
  commit_group(f.open_mmas, f.mma_groups);
}

void warpgroup_wait(int pending) {
  complete_groups(launch().current->mma_groups, pending, [](Fiber::Mma& op) { apply(op); });
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


}  // namespace flashgpt::simt
