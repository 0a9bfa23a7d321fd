// The training step's other ops on the GPU, one CUDA file per family beside its CPU twin
// (src/cuda/<op>_cuda.cu against src/cpu/<op>_cpu.cpp), with the CPU ops' semantics (ops/*.h)
// and every pointer in device memory. Activations are float or bf16 (T); arithmetic, statistics
// (mean, rstd), losses, parameter gradients and optimizer state are fp32. Each call queues its
// kernels on the default stream; errors are flashgpt::Error.
//
// Reductions across rows are deterministic (the same bits on every run) except where noted: the
// norm weight gradients and the embedding table's gradient add into their fp32 outputs with
// atomics unless asked to be deterministic, at the price of a second pass.
#pragma once

#include <cstdint>
#include <vector>

#include "flashgpt/cuda/abi.h"
#include "flashgpt/ops/adamw.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// A bf16 value in device memory (the bit pattern; host code needs no CUDA headers).
struct bf16 {
  uint16_t bits;
};

// --- elementwise (elementwise_cuda.cu) ---
// out = a + b ;  y += x
template <typename T>
void add(T* out, const T* a, const T* b, int64_t n);
template <typename T>
void add_inplace(T* y, const T* x, int64_t n);
// Converts n values between precisions (fp32 master weights to their bf16 copy, and back).
void convert(bf16* out, const float* in, int64_t n);
void convert(float* out, const bf16* in, int64_t n);

// --- embedding (embedding_cuda.cu) ---
// out[b,t,:] = wte[tok[b,t]] + wpe[p + t] (wpe may be null), p = seq_pos[b] when given (device
// int32 [B]: decoding sequences at their own lengths), else pos_offset. Tokens must be < V (the
// caller checks them on the host before they are uploaded).
template <typename T>
void embedding_forward(T* out, const int* tokens, const T* wte, const T* wpe, int64_t B, int64_t Tn, int64_t C,
                       int64_t pos_offset, const int32_t* seq_pos = nullptr);
// The rows of a batch grouped by token, for the deterministic embedding backward: rows
// [starts[k], starts[k + 1]) of `rows` (ascending) hold token ids[k]; count runs. Device pointers.
struct TokenRuns {
  const int* rows = nullptr;
  const int* starts = nullptr;  // count + 1 entries
  const int* ids = nullptr;
  int64_t count = 0;
};
// Builds them on the host from a batch's tokens: rows, starts and ids to upload as TokenRuns.
void group_rows_by_token(const int* tokens, int64_t n, std::vector<int>& rows, std::vector<int>& starts,
                         std::vector<int>& ids);
// dwte[tok] += dout rows; dwpe[pos_offset + t] += Σ_b dout[b, t] (deterministic); either may be null.
// dwte by atomics, or with `runs` one fixed-order sum per token (the same bits on every run).
template <typename T>
void embedding_backward(float* dwte, float* dwpe, const T* dout, const int* tokens, int64_t B, int64_t Tn, int64_t C,
                        int64_t pos_offset, const TokenRuns* runs = nullptr);

// --- norms (norm_cuda.cu) --- rows [N, C]; b may be null.
template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* w, const T* b, int64_t N, int64_t C,
                       float eps);
// dinp written (accumulate = false) or added to; dw and db (may be null) added to: by atomics where
// the row fits the kernel's registers, else (and always with `deterministic`) by a second
// fixed-order pass over the rows (the same bits on every run).
template <typename T>
void layernorm_backward(T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w, const float* mean,
                        const float* rstd, int64_t N, int64_t C, bool accumulate, bool deterministic = false);
// Norm rows that are heads inside wider token rows (QK-norm over the q and k blocks of the fused
// [q | k | v] projection): row r is head r % heads of token r / heads, and one token's row is
// token_stride elements from the next. The default is dense [N, C] rows.
struct HeadRows {
  int64_t heads = 1;
  int64_t token_stride = 0;  // 0: heads·C
};
// RMSNorm's input may be such head rows (`in_rows`); out and rstd stay dense [N, C] and [N].
template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* w, int64_t N, int64_t C, float eps,
                     HeadRows in_rows = {});
// Post-norm's norm of a block's branch (attention or MLP output) before the residual add, of the
// same kind as the add's norm: its weights, and where its statistics go (as layernorm_forward /
// rmsnorm_forward write them; mean only for LayerNorm).
template <typename T>
struct BranchNorm {
  const T* w;
  const T* bias;  // LayerNorm's (null: none); RMSNorm has none and ignores it
  float* mean;    // LayerNorm's
  float* rstd;
};
// The residual stream's add and the next norm in one pass: sum = a + b (rounded to T, written), then
// out = norm(sum), with the statistics of layernorm_forward / rmsnorm_forward. With `branch` (post-
// norm) b is normalised first, each value rounded to T and added without being stored: the bits of
// the branch's norm into a buffer and then the add and norm, in one launch where there were two.
template <typename T>
void add_layernorm_forward(T* sum, T* out, float* mean, float* rstd, const T* a, const T* b, const T* w,
                           const T* bias, int64_t N, int64_t C, float eps, const BranchNorm<T>* branch = nullptr);
template <typename T>
void add_rmsnorm_forward(T* sum, T* out, float* rstd, const T* a, const T* b, const T* w, int64_t N, int64_t C,
                         float eps, const BranchNorm<T>* branch = nullptr);
// inp and dinp laid out as `in_rows` (the forward's input), dout dense.
template <typename T>
void rmsnorm_backward(T* dinp, float* dw, const T* dout, const T* inp, const T* w, const float* rstd, int64_t N,
                      int64_t C, bool accumulate, bool deterministic = false, HeadRows in_rows = {});

// --- activations (activation_cuda.cu) --- input gradients are written.
template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n);
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n);
template <typename T>
void swiglu_forward(T* out, const T* inp, int64_t N, int64_t F);
template <typename T>
void swiglu_backward(T* dinp, const T* inp, const T* dout, int64_t N, int64_t F);

// --- the classifier's loss (cross_entropy_cuda.cu) --- logits [N, Vp], real vocabulary V.
// losses[N] = −log softmax(logits)[target] (0 where target < 0); logits unchanged.
template <typename T>
void cross_entropy_forward(float* losses, const T* logits, const int* targets, int64_t N, int64_t V, int64_t Vp);
// The fused classifier step: losses as above, and logits replaced in place by their gradient
// scale·(softmax − onehot(target)), zero in the padding columns and in rows whose target < 0.
// Only the logits buffer ever holds [N, Vp] values: no probabilities or gradient copy exists.
template <typename T>
void cross_entropy_fused(T* logits_inout, float* losses, const int* targets, int64_t N, int64_t V, int64_t Vp,
                         float scale);

// --- the sampler's candidates (sampling_cuda.cu) --- logits [rows, ld], real columns V ≤ ld.
// ids [rows, k] and vals [rows, k] (fp32) receive each row's best k columns in rank order: the
// higher logit first, the lower id first among equals (sample_token's order), 1 ≤ k ≤
// kMaxDeviceTopK. k = 1 is the greedy choice.
inline constexpr int kMaxDeviceTopK = 128;
template <typename T>
void top_k_rows(const T* logits, int64_t rows, int64_t V, int64_t ld, int k, int32_t* ids, float* vals);

// --- rotary embedding (rope_cuda.cu) --- x [B, Tn, H, ·] in place, heads head_stride apart and
// tokens token_stride apart (0: H·head_stride; wider when x is the q or k block of fused q/k/v
// rows), rotating the first D values of each head at positions p + t (p = seq_pos[b] when given,
// device int32 [B], else pos_offset); cos and sin tables [max_pos, D/2].
template <typename T>
void rope_forward(T* x, const float* cos, const float* sin, int64_t B, int64_t Tn, int64_t H, int64_t D,
                  int64_t head_stride, int64_t pos_offset, const int32_t* seq_pos = nullptr, int64_t token_stride = 0);
template <typename T>
void rope_backward(T* dx, const float* cos, const float* sin, int64_t B, int64_t Tn, int64_t H, int64_t D,
                   int64_t head_stride, int64_t pos_offset, const int32_t* seq_pos = nullptr, int64_t token_stride = 0);

// --- QK-norm and RoPE together (qk_norm_rope_cuda.cu) --- one side (queries or keys) of a layer's
// projected heads: N tokens of `heads` heads of D values, token rows in_ld elements apart in `in`
// (the q or k block of the fused [q | k | v] rows, or dense), normalised into out (token rows out_ld
// apart), rstd [N·heads] as rmsnorm_forward writes it for HeadRows{heads, in_ld}. RoPE rotates the
// columns [rope_at, D) of each head (multi-head attention: all, rope_at 0; MLA: a query head's
// rope part after its hd columns, rope_at hd, and the whole shared rope key).
template <typename T>
struct QkHeads {
  T* out;
  float* rstd;
  const T* in;
  const T* w;  // [D]
  int64_t heads, D, in_ld, out_ld;
  int64_t rope_at = 0;
};
// The positions RoPE rotates by, as rope_forward takes them: token n of the N is position
// (seq_pos ? seq_pos[n / Tn] : pos_offset) + n % Tn of tables cos and sin [max_pos, R/2], R the
// rope part's width (the same on both sides); cos null: no rotation.
struct RopePositions {
  const float* cos = nullptr;
  const float* sin = nullptr;
  int64_t Tn = 0, pos_offset = 0;
  const int32_t* seq_pos = nullptr;
};
// RMSNorm of every query and key head with its side's weight, then (with tables) RoPE over the
// result's rope part, in one launch, each element rounded to T once: what rmsnorm_forward over each
// side and rope_forward over each output compute, in place of four launches.
template <typename T>
void qk_norm_rope_forward(const QkHeads<T>& q, const QkHeads<T>& k, int64_t N, float eps,
                          const RopePositions& rope = {});
// The backward of one side: dout, the gradient of the forward's out (token rows out_ld apart), is
// rotated back and taken through the norm into din (laid out as the forward's in, token rows in_ld
// apart; written), the weight's gradient added to dw [D] (fp32; null: not wanted).
template <typename T>
struct QkHeadGrads {
  T* din;
  float* dw;
  const T* dout;
  const T* in;
  const T* w;
  const float* rstd;  // the forward's
  int64_t heads, D, in_ld, out_ld;
  int64_t rope_at = 0;
};
// What rope_backward over each side's output gradient, then rmsnorm_backward over each side,
// compute, in one launch in place of four; the gradient between the rotation and the norm stays in
// fp32. The weight gradients are summed in registers and added with atomics; deterministic (or a
// side wider than 256), they are the fixed-order column sums instead (two more launches a side).
template <typename T>
void qk_norm_rope_backward(const QkHeadGrads<T>& q, const QkHeadGrads<T>& k, int64_t N, const RopePositions& rope = {},
                           bool deterministic = false);

// --- head slices (elementwise_cuda.cu) --- rows of H heads, head_stride apart; columns
// [offset, offset + width) of each head. MLA's shared rope key is copied into every head's key,
// and its gradient summed back over the heads (in fp32).
//   broadcast_to_heads: dst[n, h, offset + i] = src[n, i]
//   sum_over_heads:     dst[n, i] = Σ_h src[n, h, offset + i]
template <typename T>
void broadcast_to_heads(T* dst, const T* src, int64_t N, int64_t H, int64_t head_stride, int64_t offset,
                        int64_t width);
template <typename T>
void sum_over_heads(T* dst, const T* src, int64_t N, int64_t H, int64_t head_stride, int64_t offset, int64_t width);
// Strided row copies (the decode cache's appends, slices of heads, the gather of each sequence's
// last row): for b < batches, r < rows, i < width,
//   dst[b·dst_batch + (to + r)·dst_ld + i] = src[b·src_batch + (from + r)·src_ld + i],
// where to = dst_row0[b] and from = src_row0[b] when given (device int32 [batches]; a batch with
// either negative is skipped: each sequence's append at its own length), else 0.
template <typename T>
void copy_rows(T* dst, int64_t dst_batch, int64_t dst_ld, const T* src, int64_t src_batch, int64_t src_ld,
               int64_t batches, int64_t rows, int64_t width, const int32_t* dst_row0 = nullptr,
               const int32_t* src_row0 = nullptr);
// Two such copies over the same batches, rows and row offsets in one launch (a decoding step's key
// and value appends; the latent cache's c_kv and rope key), each with its own pointers, strides and
// width; a second of width 0 is none.
template <typename T>
struct RowCopy {
  T* dst = nullptr;
  int64_t dst_batch = 0, dst_ld = 0;
  const T* src = nullptr;
  int64_t src_batch = 0, src_ld = 0;
  int64_t width = 0;
};
template <typename T>
void copy_rows_pair(const RowCopy<T>& a, const RowCopy<T>& b, int64_t batches, int64_t rows,
                    const int32_t* dst_row0 = nullptr, const int32_t* src_row0 = nullptr);
// --- bias (elementwise_cuda.cu) --- out[n, oc] += bias[oc];  db[oc] += Σ_n dout[n, oc]
// (deterministic: fixed-order partial sums, no atomics).
template <typename T>
void add_bias(T* out, const T* bias, int64_t N, int64_t OC);
template <typename T>
void bias_backward(float* db, const T* dout, int64_t N, int64_t OC);

// --- optimizer (adamw_cuda.cu) --- the CPU's AdamW over fp32 master weights; copy (may be null)
// receives the updated weights in bf16 for the next forward.
void adamw_update(float* params, const float* grads, float* m, float* v, int64_t n, const ops::AdamWParams& p,
                  bool decay, float grad_scale, bf16* copy = nullptr);
// Several runs of one parameter array in one launch, each with its own weight-decay switch: the
// same arithmetic, bit for bit, as one adamw_update per run. Parameters [first, last) of the
// arrays, split into `count` runs, run r ending at ends[r] (ascending, the last at `last`) with
// weight decay where decay[r] is not 0; ends and decay in device memory. m and v hold the moments
// of parameters moments_first … (≤ first) only: ZeRO-1's shard, whose moments are all a rank keeps.
struct AdamWRuns {
  int64_t first = 0, last = 0;
  const int64_t* ends = nullptr;
  const uint8_t* decay = nullptr;
  int count = 0;
  int64_t moments_first = 0;
};
void adamw_update_runs(float* params, const float* grads, float* m, float* v, const AdamWRuns& runs,
                       const ops::AdamWParams& p, float grad_scale, bf16* copy = nullptr);
// *out = Σ x² over n values (device memory, double), for global-norm clipping; deterministic.
void sum_squares(double* out, const float* x, int64_t n);

// --- context parallelism's layouts (context_parallel_cuda.cu; context_parallel_cuda.h says what
// they are) --- rank r holds chunks r and 2·ranks−1−r of each sequence; T is float or bf16.
// global = the rank-major rows rearranged into whole sequences.
template <typename T>
void cp_assemble(T* global, const T* rank_major, int ranks, int64_t B, int64_t chunk, int64_t width);
// rank_major = global's rows as each rank holds them (the inverse of cp_assemble), fp32.
void cp_disassemble(float* rank_major, const float* global, int ranks, int64_t B, int64_t chunk, int64_t width);
// acc[b, t, :] += part[b, t, :] for t < rows, both [B, seq_rows, width] dense (rows ≤ seq_rows).
template <typename T>
void cp_add_rows(float* acc, const T* part, int64_t B, int64_t rows, int64_t seq_rows, int64_t width);
// out rows [rows, width] `ld` apart (as T) = in [rows, width] dense (fp32).
template <typename T>
void cp_store_rows(T* out, int64_t ld, const float* in, int64_t rows, int64_t width);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
