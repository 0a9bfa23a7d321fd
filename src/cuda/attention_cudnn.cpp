// cuDNN's fused attention as a second backend (attention_cudnn.h): one cuDNN graph per case
// (element type, shapes, strides, mask, scale, direction), built on first use and kept, its
// tensors given flashgpt's layouts by strides so nothing is copied or transposed:
//   q  [B, Hq, Tq, Dqk]   strides (Tq·q_row, Dqk, q_row, 1)
//   k  [B, Hkv, Tk, Dqk]  strides (kv_rows·k_row, Dqk, k_row, 1); v alike with v_row
//   o  [B, Hq, Tq, Dv]    strides (Tq·Hq·Dv, Dv, Hq·Dv, 1); dq, dk, dv as q, k, v
//   lse [B, Hq, Tq, 1]    fp32, cuDNN's softmax statistics (log Σ exp of the scaled scores)
// The frontend is used with dynamic loading: cuDNN is dlopen'ed on first use, so the program
// starts where the library is missing. Built only with FLASHGPT_HAVE_CUDNN (the CUDA build's
// flashgpt library); the emulated build compiles the stubs at the end, which say so.
#include "flashgpt/cuda/attention_cudnn.h"

#include <fmt/format.h>

#include "flashgpt/core/error.h"

#if FLASHGPT_HAVE_CUDNN
#define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
#include <cudnn_frontend.h>
#include <dlfcn.h>

#include <compare>
#include <cstring>
#include <unordered_map>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/kernel_timing.h"
#include "cuda/stream.h"
#include "flashgpt/cuda/device_memory.h"

namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;  // the frontend's symbols are looked up here (dynamic loading)
}
#endif

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

std::string cudnn_attention_unsupported(const AttentionDims& d, const AttentionMask& m) {
  if (!m.q_segments.empty() || !m.kv_segments.empty()) {
    return "document masks (segment ids) are not supported by the cuDNN backend";
  }
  if (!m.q_offsets.empty()) return "per-sequence query offsets (q_offsets) are not supported by the cuDNN backend";
  if (d.Dqk % 8 != 0 || d.Dv % 8 != 0) {
    return fmt::format("head dims {}/{}: cuDNN's attention needs multiples of 8", d.Dqk, d.Dv);
  }
  const bool mla = d.Dqk == 192 && d.Dv == 128;
  if (!mla && (d.Dqk > 128 || d.Dv > 128)) {
    return fmt::format("head dims {}/{}: the cuDNN backend runs up to 128 (and 192/128)", d.Dqk, d.Dv);
  }
  if (d.Hkv <= 0 || d.Hq % d.Hkv != 0) return fmt::format("heads {}/{}: Hq must be a multiple of Hkv", d.Hq, d.Hkv);
  if (m.causal && m.q_offset != 0) {
    if (m.q_offset != d.Tk - d.Tq) {
      return fmt::format("causal q_offset {}: the cuDNN backend aligns the diagonal to the first key (0) or the "
                         "last (Tk − Tq = {})", m.q_offset, d.Tk - d.Tq);
    }
    if (!m.kv_lengths.empty()) {
      return "causal q_offset Tk − Tq with key padding (kv_lengths): cuDNN would align the diagonal to each "
             "sequence's own length";
    }
  }
  return {};
}

#if FLASHGPT_HAVE_CUDNN

namespace fe = cudnn_frontend;

namespace {

constexpr const char* kFrontendVersion = "1.32.0";

// The library, loaded once: its handle for the frontend, or why it is not there.
struct Library {
  bool ok = false;
  std::string detail;
};

const Library& library() {
  static const Library lib = [] {
    Library l;
    void* h = nullptr;
    std::string errors;
    for (const char* name : {"libcudnn.so.9", "libcudnn.so"}) {
      h = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
      if (h) break;
      const char* e = dlerror();
      errors += fmt::format("{}{}", errors.empty() ? "" : "; ", e ? e : name);
    }
    if (!h) {
      l.detail = "cuDNN not found on the library path (" + errors + ")";
      return l;
    }
    fe::cudnn_dlhandle = h;
    size_t version = 0;
    try {
      version = fe::detail::get_backend_version();
    } catch (const std::exception& e) {
      l.detail = std::string("cuDNN loaded but unusable: ") + e.what();
      return l;
    }
    const std::string v = fmt::format("{}.{}.{}", version / 10000, version / 100 % 100, version % 100);
    if (version < 90000) {
      l.detail = "cuDNN " + v + " is older than the 9.0 the backend needs";
      return l;
    }
    l.ok = true;
    l.detail = fmt::format("cuDNN {} (frontend {})", v, kFrontendVersion);
    return l;
  }();
  return lib;
}

void require_library() {
  const Library& l = library();
  FLASHGPT_CHECK(l.ok, "cuDNN attention backend: {}", l.detail);
}

// Everything a graph depends on.
struct Key {
  int type = 0;
  int64_t B = 0, Hq = 0, Hkv = 0, Tq = 0, Tk = 0, Dqk = 0, Dv = 0, kv_rows = 0, q_row = 0, k_row = 0, v_row = 0;
  int causal = 0;  // 0 none, 1 from the first key, 2 to the last
  bool padded = false, backward = false, deterministic = false;
  uint32_t scale_bits = 0;
  auto operator<=>(const Key&) const = default;
};

Key key_of(TensorCoreType type, const AttentionDims& d, const AttentionMask& m, float scale, bool backward,
           bool deterministic) {
  Key k;
  k.type = static_cast<int>(type);
  k.B = d.B, k.Hq = d.Hq, k.Hkv = d.Hkv, k.Tq = d.Tq, k.Tk = d.Tk, k.Dqk = d.Dqk, k.Dv = d.Dv;
  k.kv_rows = d.kv_rows(), k.q_row = d.q_row(), k.k_row = d.k_row(), k.v_row = d.v_row();
  k.causal = !m.causal ? 0 : m.q_offset == 0 ? 1 : 2;
  k.padded = !m.kv_lengths.empty();
  k.backward = backward;
  k.deterministic = backward && deterministic;
  std::memcpy(&k.scale_bits, &scale, sizeof scale);
  return k;
}

// The tensors' ids in the variant pack.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV, kSeqQ, kSeqKv };

struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
};

std::string describe(const Key& k) {
  return fmt::format("{} {} B{} Hq{} Hkv{} Tq{} Tk{} D{}/{}{}{}", k.backward ? "backward" : "forward",
                     k.type == static_cast<int>(TensorCoreType::bf16) ? "bf16" : "fp16", k.B, k.Hq, k.Hkv, k.Tq, k.Tk,
                     k.Dqk, k.Dv, k.causal == 1 ? " causal" : k.causal == 2 ? " causal (bottom right)" : "",
                     k.padded ? " padded" : "");
}

void check_fe(const fe::error_t& status, const Key& k, const char* step) {
  if (status.is_good()) return;
  fe::error_t copy = status;
  throw Error(fmt::format("cuDNN attention {}: {} failed: {}", describe(k), step, copy.get_message()));
}

// The graph of case k, validated by the frontend: for the current GPU, or (sm > 0, no GPU needed)
// for compute capability sm / 10 . sm % 10.
std::shared_ptr<fe::graph::Graph> make_graph(const Key& k, int sm = 0) {
  const auto io = k.type == static_cast<int>(TensorCoreType::bf16) ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF;
  auto g = std::make_shared<fe::graph::Graph>();
  if (sm > 0) g->set_sm_version(sm);
  g->set_io_data_type(io).set_intermediate_data_type(fe::DataType_t::FLOAT).set_compute_data_type(fe::DataType_t::FLOAT);
  auto tensor = [&](const char* name, int64_t uid, std::vector<int64_t> dims, std::vector<int64_t> strides) {
    return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dims).set_stride(strides));
  };
  const std::vector<int64_t> q_dims{k.B, k.Hq, k.Tq, k.Dqk}, q_strides{k.Tq * k.q_row, k.Dqk, k.q_row, 1};
  const std::vector<int64_t> k_dims{k.B, k.Hkv, k.Tk, k.Dqk}, k_strides{k.kv_rows * k.k_row, k.Dqk, k.k_row, 1};
  const std::vector<int64_t> v_dims{k.B, k.Hkv, k.Tk, k.Dv}, v_strides{k.kv_rows * k.v_row, k.Dv, k.v_row, 1};
  const std::vector<int64_t> o_dims{k.B, k.Hq, k.Tq, k.Dv}, o_strides{k.Tq * k.Hq * k.Dv, k.Dv, k.Hq * k.Dv, 1};
  const std::vector<int64_t> s_dims{k.B, k.Hq, k.Tq, 1}, s_strides{k.Hq * k.Tq, k.Tq, 1, 1};
  auto q = tensor("Q", kQ, q_dims, q_strides);
  auto kt = tensor("K", kK, k_dims, k_strides);
  auto v = tensor("V", kV, v_dims, v_strides);
  std::shared_ptr<fe::graph::Tensor_attributes> seq_q, seq_kv;
  if (k.padded) {
    const std::vector<int64_t> one{k.B, 1, 1, 1}, unit{1, 1, 1, 1};
    seq_q = tensor("seq_len_q", kSeqQ, one, unit);
    seq_q->set_data_type(fe::DataType_t::INT32);
    seq_kv = tensor("seq_len_kv", kSeqKv, one, unit);
    seq_kv->set_data_type(fe::DataType_t::INT32);
  }
  float scale = 0;
  std::memcpy(&scale, &k.scale_bits, sizeof scale);
  if (!k.backward) {
    fe::graph::SDPA_attributes a;
    a.set_name("flashgpt_attention").set_generate_stats(true).set_attn_scale(scale);
    if (k.causal == 1) a.set_causal_mask(true);
    if (k.causal == 2) a.set_causal_mask_bottom_right(true);
    if (k.padded) a.set_padding_mask(true).set_seq_len_q(seq_q).set_seq_len_kv(seq_kv);
    auto [o, stats] = g->sdpa(q, kt, v, a);
    o->set_output(true).set_uid(kO).set_dim(o_dims).set_stride(o_strides);
    stats->set_output(true).set_uid(kStats).set_data_type(fe::DataType_t::FLOAT).set_dim(s_dims).set_stride(s_strides);
  } else {
    auto o = tensor("O", kO, o_dims, o_strides);
    auto dout = tensor("dO", kDO, o_dims, o_strides);
    auto stats = tensor("Stats", kStats, s_dims, s_strides);
    stats->set_data_type(fe::DataType_t::FLOAT);
    fe::graph::SDPA_backward_attributes a;
    a.set_name("flashgpt_attention_backward").set_attn_scale(scale);
    if (k.causal == 1) a.set_causal_mask(true);
    if (k.causal == 2) a.set_causal_mask_bottom_right(true);
    if (k.padded) a.set_padding_mask(true).set_seq_len_q(seq_q).set_seq_len_kv(seq_kv);
    if (k.deterministic) a.set_deterministic_algorithm(true);
    auto [dq, dk, dv] = g->sdpa_backward(q, kt, v, o, dout, stats, a);
    dq->set_output(true).set_uid(kDQ).set_dim(q_dims).set_stride(q_strides);
    dk->set_output(true).set_uid(kDK).set_dim(k_dims).set_stride(k_strides);
    dv->set_output(true).set_uid(kDV).set_dim(v_dims).set_stride(v_strides);
  }
  check_fe(g->validate(), k, "validating the graph");
  return g;
}

// The process's cuDNN handle, plans and workspace (one GPU, as the rest of the CUDA backend).
struct State {
  std::mutex mutex;
  cudnnHandle_t handle = nullptr;
  std::map<Key, Plan> plans;
  DeviceBuffer workspace, seq_q;
  int64_t seq_q_B = 0, seq_q_T = 0;
};

// Never destroyed: at exit the CUDA runtime may already be gone, and the process's memory goes with it.
State& state() {
  static State& s = *new State;
  return s;
}

// The built plan of case k (caller holds the mutex).
const Plan& plan_of(State& s, const Key& k) {
  auto it = s.plans.find(k);
  if (it != s.plans.end()) return it->second;
  require_library();
  if (!s.handle) {
    const cudnnStatus_t st = fe::detail::create_handle(&s.handle);
    FLASHGPT_CHECK(st == CUDNN_STATUS_SUCCESS, "cuDNN attention backend: cudnnCreate failed ({})",
                   fe::detail::get_error_string(st));
  }
  Plan p;
  p.graph = make_graph(k);
  check_fe(p.graph->build_operation_graph(s.handle), k, "building the operation graph");
  check_fe(p.graph->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}), k, "finding engines");
  check_fe(p.graph->check_support(), k, "checking support");
  check_fe(p.graph->build_plans(), k, "building the plan");
  check_fe(p.graph->get_workspace_size(p.workspace), k, "asking for the workspace size");
  return s.plans.emplace(k, std::move(p)).first->second;
}

// Runs case k with the given tensors, the padding lengths filled in where the mask has them.
void execute_locked(const Key& k, const AttentionMask& m, std::unordered_map<int64_t, void*> pack) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  const Plan& p = plan_of(s, k);
  if (k.padded) {
    if (s.seq_q_B != k.B || s.seq_q_T != k.Tq) {
      const std::vector<int32_t> lengths(static_cast<size_t>(k.B), static_cast<int32_t>(k.Tq));
      s.seq_q = DeviceBuffer(lengths.size() * sizeof(int32_t));
      s.seq_q.upload(lengths.data(), lengths.size() * sizeof(int32_t));
      s.seq_q_B = k.B;
      s.seq_q_T = k.Tq;
    }
    pack[kSeqQ] = s.seq_q.get();
    pack[kSeqKv] = const_cast<int32_t*>(m.kv_lengths.data());
  }
  if (static_cast<int64_t>(s.workspace.bytes()) < p.workspace) {
    synchronize();  // the old workspace may still be in use by queued work
    s.workspace = DeviceBuffer(static_cast<size_t>(p.workspace));
  }
  const cudnnStatus_t st = fe::detail::set_stream(s.handle, current_stream());
  FLASHGPT_CHECK(st == CUDNN_STATUS_SUCCESS, "cuDNN attention {}: cudnnSetStream failed ({})", describe(k),
                 fe::detail::get_error_string(st));
  const int timed = kernel_timing_begin(k.backward ? "cuDNN attention backward" : "cuDNN attention forward",
                                        current_stream());
  check_fe(p.graph->execute(s.handle, pack, p.workspace > 0 ? s.workspace.get() : nullptr), k, "running");
  kernel_timing_end(timed, current_stream());
}

// The frontend reports some failures (a symbol missing from the loaded library) as exceptions of
// its own: they leave as flashgpt::Error too.
template <typename F>
auto guarded(F&& f) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(fmt::format("cuDNN attention backend: {}", e.what()));
  }
}

void execute(const Key& k, const AttentionMask& m, std::unordered_map<int64_t, void*> pack) {
  guarded([&] { execute_locked(k, m, std::move(pack)); });
}

void check_case(const AttentionDims& d, const AttentionMask& m) {
  check_attention_dims(d, m, MaskMemory::Device);
  const std::string why = cudnn_attention_unsupported(d, m);
  FLASHGPT_CHECK(why.empty(), "cuDNN attention backend: {}", why);
}

void* mut(const void* p) { return const_cast<void*>(p); }

}  // namespace

bool cudnn_attention_built() { return true; }

bool cudnn_attention_available(std::string* detail) {
  const Library& l = library();
  if (detail) *detail = l.detail;
  return l.ok;
}

void cudnn_attention_validate(TensorCoreType type, const AttentionDims& d, const AttentionMask& m, float scale,
                              bool backward, int sm) {
  check_case(d, m);
  require_library();
  guarded([&] { make_graph(key_of(type, d, m, scale, backward, false), sm); });
}

size_t cudnn_attention_workspace_bytes(TensorCoreType type, const AttentionDims& d, const AttentionMask& m,
                                       float scale, bool backward) {
  check_case(d, m);
  return guarded([&] {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    return static_cast<size_t>(plan_of(s, key_of(type, d, m, scale, backward, false)).workspace);
  });
}

void cudnn_attention_forward(TensorCoreType type, const AttentionDims& d, const AttentionMask& m, float scale,
                             const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, float* lse) {
  check_case(d, m);
  execute(key_of(type, d, m, scale, false, false), m,
          {{kQ, mut(q)}, {kK, mut(k)}, {kV, mut(v)}, {kO, o}, {kStats, lse}});
}

void cudnn_attention_backward(TensorCoreType type, const AttentionDims& d, const AttentionMask& m, float scale,
                              const uint16_t* q, const uint16_t* k, const uint16_t* v, const uint16_t* o,
                              const float* lse, const uint16_t* dout, uint16_t* dq, uint16_t* dk, uint16_t* dv,
                              bool deterministic) {
  check_case(d, m);
  if (!m.kv_lengths.empty()) {
    // Padding keys get zero gradients, as from our kernels, whether or not cuDNN writes them: rows
    // [0, Tk) of every sequence cleared first (only the heads' columns; rows may hold more).
    for (int64_t b = 0; b < d.B; ++b) {
      FLASHGPT_CUDA_CHECK(cudaMemset2DAsync(dk + b * d.kv_rows() * d.k_row(), static_cast<size_t>(d.k_row()) * 2, 0,
                                   static_cast<size_t>(d.Hkv * d.Dqk) * 2, static_cast<size_t>(d.Tk),
                                   current_stream()));
      FLASHGPT_CUDA_CHECK(cudaMemset2DAsync(dv + b * d.kv_rows() * d.v_row(), static_cast<size_t>(d.v_row()) * 2, 0,
                                   static_cast<size_t>(d.Hkv * d.Dv) * 2, static_cast<size_t>(d.Tk),
                                   current_stream()));
    }
  }
  execute(key_of(type, d, m, scale, true, deterministic), m,
          {{kQ, mut(q)}, {kK, mut(k)}, {kV, mut(v)}, {kO, mut(o)}, {kStats, mut(lse)}, {kDO, mut(dout)}, {kDQ, dq},
           {kDK, dk}, {kDV, dv}});
}

#else  // no cuDNN backend in this build

namespace {
[[noreturn]] void not_built() {
  throw Error("cuDNN attention backend: not in this build (it needs the CUDA build with cudnn.h and the cuDNN "
              "frontend's headers: scripts/fetch-cudnn-frontend.sh, then reconfigure)");
}
}  // namespace

bool cudnn_attention_built() { return false; }

bool cudnn_attention_available(std::string* detail) {
  if (detail) *detail = "not in this build";
  return false;
}

void cudnn_attention_validate(TensorCoreType, const AttentionDims&, const AttentionMask&, float, bool, int) {
  not_built();
}

size_t cudnn_attention_workspace_bytes(TensorCoreType, const AttentionDims&, const AttentionMask&, float, bool) {
  not_built();
}

void cudnn_attention_forward(TensorCoreType, const AttentionDims&, const AttentionMask&, float, const uint16_t*,
                             const uint16_t*, const uint16_t*, uint16_t*, float*) {
  not_built();
}

void cudnn_attention_backward(TensorCoreType, const AttentionDims&, const AttentionMask&, float, const uint16_t*,
                              const uint16_t*, const uint16_t*, const uint16_t*, const float*, const uint16_t*,
                              uint16_t*, uint16_t*, uint16_t*, bool) {
  not_built();
}

#endif

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
