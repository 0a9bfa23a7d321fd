// MultiHeadLatentAttention and FlashMLA on the GPU: GPTCuda's latent attention sublayer, step for
// step the CPU's (model/gpt_attention_mla.cpp), from the block's normed input a.ln1 to the head
// outputs a.att and back. Training expands the normed latent c_kv into per-head keys
// [k_nope, k_rope] (Dqk = head_dim + rope_dim) and values (Dv = head_dim) and runs the flash
// kernels over them; decoding attends straight over the latent cache (gpt_cuda_decode.cpp).
// Under context parallelism the group exchanges the latent rows [c_kv, k_rope] and each rank
// expands them over the whole sequences (mla_cp_expand), as the CPU does.
#include <cmath>
#include <type_traits>

#include "cuda/gpt_cuda_model.h"
#include "flashgpt/cuda/attention_cuda.h"
#include "flashgpt/cuda/device_memory.h"
#include "flashgpt/cuda/matmul_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {
namespace gpt_detail {

template <typename T>
void Model<T>::mla_forward(const LayerOffsets& o, LayerActs& a) {
  const GPTConfig& c = config;
  const int64_t N = B_ * Tn_, C = c.n_embd, H = c.n_head, hd = c.head_dim();
  const int64_t nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim(), r = c.q_lora_rank;
  const float eps = static_cast<float>(c.norm_eps);

  // Queries, straight or through the low-rank query latent.
  if (r > 0) {
    matmul_forward(a.cq_pre, a.ln1, W(o.q_down_w), W(o.q_down_b), N, C, r);
    rmsnorm_forward(a.cq, a.cq_rstd, a.cq_pre, W(o.q_down_norm_w), N, r, eps);
    matmul_forward(a.q, a.cq, W(o.q_up_w), static_cast<const T*>(nullptr), N, r, H * dqk);
  } else {
    matmul_forward(a.q, a.ln1, W(o.q_w), W(o.q_b), N, C, H * dqk);
  }
  // The key/value latent and the shared rope key.
  matmul_forward(a.ckv_pre, a.ln1, W(o.kv_down_w), W(o.kv_down_b), N, C, nl);
  rmsnorm_forward(a.ckv, a.ckv_rstd, a.ckv_pre, W(o.kv_norm_w), N, nl, eps);
  if (dr > 0) matmul_forward(a.k, a.ln1, W(o.k_rope_w), W(o.k_rope_b), N, C, dr);
  // QK-norm before RoPE: each query head, and the rope key (without it, qa and kr alias q and k).
  // Both, with the rotation of the query heads' rope parts and of the rope key, in one launch.
  if (c.qk_norm && dr > 0) {
    qk_norm_rope_forward<T>({a.qa, a.q_rstd, a.q, W(o.q_norm_w), H, dqk, H * dqk, H * dqk, hd},
                            {a.kr, a.k_rstd, a.k, W(o.k_norm_w), 1, dr, dr, dr, 0}, N, eps,
                            {rope_cos_.as<float>(), rope_sin_.as<float>(), Tn_, pos0(), seq_pos()});
  } else if (c.qk_norm) {
    rmsnorm_forward(a.qa, a.q_rstd, a.q, W(o.q_norm_w), N * H, dqk, eps);
  } else if (dr > 0) {
    rope_forward(a.qa + hd, rope_cos_.as<float>(), rope_sin_.as<float>(), B_, Tn_, H, dr, dqk, pos0(), seq_pos());
    rope_forward(a.kr, rope_cos_.as<float>(), rope_sin_.as<float>(), B_, Tn_, 1, dr, dr, pos0(), seq_pos());
  }
  const T* v_up = W(o.v_up_w);
  if (c.use_svd) {  // factored: v_up = u · v, [H·hd, rank] · [rank, n_latent]
    const int64_t rank = c.svd_rank;
    gemm<T, T>(false, false, H * hd, nl, rank, 1.0f, W(o.v_up_u_w), rank, W(o.v_up_v_w), nl, 0.0f, a.v_up, nl);
    v_up = a.v_up;
  }
  if (decoding_) {  // straight over the latent cache, the up-projections absorbed
    mla_decode_attention(o, a, v_up);
    return;
  }
  const AttentionDims d{B_, H, H, Tn_, Tn_, dqk, hd, 0};
  const float scale = 1.0f / std::sqrt(static_cast<float>(dqk));
  if (cp) {  // the group's latent rows, expanded over the whole sequences
    mla_cp_expand(o, a, v_up);
    cp_attention_calls_forward(d, scale, a);
    return;
  }
  // Expanded keys [k_nope,h, k_rope] per head, and values, from the latent: k_nope = c_kv · W_k_upᵀ
  // is one product over all heads. With a rope part each head's key row is [k_nope,h, k_rope], so
  // the product lands in a.v (free until the values are formed) and is spread out to the heads.
  if (dr == 0) {
    gemm<T, T>(false, true, N, H * hd, nl, 1.0f, a.ckv, nl, W(o.k_up_w), nl, 0.0f, a.ka, H * hd);
  } else {
    gemm<T, T>(false, true, N, H * hd, nl, 1.0f, a.ckv, nl, W(o.k_up_w), nl, 0.0f, a.v, H * hd);
    copy_rows(a.ka, dqk, H * dqk, a.v, hd, H * hd, H, N, hd);
    broadcast_to_heads(a.ka, a.kr, N, H, dqk, hd, dr);
  }
  matmul_forward(a.v, a.ckv, v_up, static_cast<const T*>(nullptr), N, nl, H * hd);
  attention_forward(d, scale, a);
}

namespace {

// fp32 sums to the run's type and back (a copy in the fp32 mode).
template <typename To, typename From>
void convert_rows(To* out, const From* in, int64_t n) {
  if constexpr (std::is_same_v<To, From>) {
    copy_on_device(out, in, static_cast<size_t>(n) * sizeof(To));
  } else {
    convert(out, in, n);
  }
}

}  // namespace

template <typename T>
void Model<T>::mla_cp_expand(const LayerOffsets& o, LayerActs& a, const T* v_up) {
  const GPTConfig& c = config;
  const int64_t Bs = B_ / 2, Mg = Bs * cp->seq_len(), H = c.n_head, hd = c.head_dim();
  const int64_t nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim();
  cp->gather(a.ckv, nl, a.ckvg, Bs, nl, cp_stage_);  // kept: the backward's dW_k_up and dW_v_up read it
  if (dr == 0) {
    gemm<T, T>(false, true, Mg, H * hd, nl, 1.0f, a.ckvg, nl, W(o.k_up_w), nl, 0.0f, a.kg, H * hd);
  } else {  // as mla_forward: k_nope lands in the values' buffer, then goes to the heads' key rows
    T* krg = cp_dk_;  // the rotated rope keys of the whole sequences (scratch until the backward)
    cp->gather(a.kr, dr, krg, Bs, dr, cp_stage_);
    gemm<T, T>(false, true, Mg, H * hd, nl, 1.0f, a.ckvg, nl, W(o.k_up_w), nl, 0.0f, a.vg, H * hd);
    copy_rows(a.kg, dqk, H * dqk, a.vg, hd, H * hd, H, Mg, hd);
    broadcast_to_heads(a.kg, krg, Mg, H, dqk, hd, dr);
  }
  matmul_forward(a.vg, a.ckvg, v_up, static_cast<const T*>(nullptr), Mg, nl, H * hd);
}

template <typename T>
void Model<T>::mla_cp_latent_backward(const LayerOffsets& o, const LayerActs& a) {
  const GPTConfig& c = config;
  const int64_t Bs = B_ / 2, Mg = Bs * cp->seq_len(), H = c.n_head, hd = c.head_dim();
  const int64_t nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim(), kw = H * dqk, vw = H * hd;
  // The key and value gradients' sums in the run's type, as the expansion's products read them
  // (dK in cp_dk_, dV in cp_dv_); that frees cp_acc_ for the latent rows' fp32 gradients.
  convert_rows(cp_dk_, cp_acc_, Mg * kw);
  convert_rows(cp_dv_, cp_acc_ + Mg * kw, Mg * vw);
  const T* dkg = cp_dk_;
  T* dvg = cp_dv_;
  float* dckvg = cp_acc_;
  // The values: dc_kv = dV · v_up, and v_up's gradient dVᵀ · c_kv (with use_svd through its
  // factors, as mla_backward).
  if (c.use_svd) {
    const int64_t rank = c.svd_rank;
    fill_device_bytes(dv_up_, 0, static_cast<size_t>(vw * nl) * sizeof(float));
    matmul_backward(static_cast<T*>(nullptr), dv_up_, static_cast<float*>(nullptr), dvg, a.ckvg, a.v_up, Mg, nl, vw,
                    false);
    gemm<T, float>(false, false, Mg, nl, vw, 1.0f, dvg, vw, a.v_up, nl, 0.0f, dckvg, nl);
    gemm<float, float>(false, true, vw, rank, nl, 1.0f, dv_up_, nl, M(o.v_up_v_w), nl, 1.0f, G(o.v_up_u_w), rank);
    gemm<float, float>(true, false, rank, nl, vw, 1.0f, M(o.v_up_u_w), rank, dv_up_, nl, 1.0f, G(o.v_up_v_w), nl);
  } else {
    matmul_backward(static_cast<T*>(nullptr), G(o.v_up_w), static_cast<float*>(nullptr), dvg, a.ckvg, W(o.v_up_w), Mg,
                    nl, vw, false);
    gemm<T, float>(false, false, Mg, nl, vw, 1.0f, dvg, vw, W(o.v_up_w), nl, 0.0f, dckvg, nl);
  }
  // The keys: every head's k_nope part (gathered, with a rope part, into the values' buffer, now
  // free), into dW_k_up and dc_kv.
  const T* dk_nope = dkg;
  if (dr > 0) {
    copy_rows(dvg, hd, vw, dkg, dqk, kw, H, Mg, hd);
    dk_nope = dvg;
  }
  matmul_backward(static_cast<T*>(nullptr), G(o.k_up_w), static_cast<float*>(nullptr), dk_nope, a.ckvg,
                  W(o.k_up_w), Mg, nl, vw, false);
  gemm<T, float>(false, false, Mg, nl, vw, 1.0f, dk_nope, vw, W(o.k_up_w), nl, 1.0f, dckvg, nl);
  cp->reduce_scatter(dckvg, dckv_, nl, Bs, nl, cp_stage_);
  // The shared rope key's gradient, summed over the heads (and then over the group).
  if (dr > 0) {
    float* dkrg = cp_acc_ + Mg * nl;
    sum_over_heads(dvg, dkg, Mg, H, dqk, hd, dr);
    convert_rows(dkrg, dvg, Mg * dr);
    cp->reduce_scatter(dkrg, dkr_, dr, Bs, dr, cp_stage_);
  }
}

template <typename T>
void Model<T>::mla_backward(const LayerOffsets& o, const LayerActs& a) {
  const GPTConfig& c = config;
  const int64_t N = B_ * Tn_, C = c.n_embd, H = c.n_head, hd = c.head_dim();
  const int64_t nl = c.latent_dim(), dr = c.mla_rope_dim(), dqk = c.mla_qk_dim(), r = c.q_lora_rank;
  const AttentionDims d{B_, H, H, Tn_, Tn_, dqk, hd, 0};
  const float scale = 1.0f / std::sqrt(static_cast<float>(dqk));
  if (cp) {  // dqa_, then the latent rows' gradients dckv_ and dkr_ (and dW_k_up, dW_v_up)
    cp_attention_calls_backward(d, scale, a);
    mla_cp_latent_backward(o, a);
  } else {
    attention_backward(d, scale, a);  // dqa_, dka_, dv_
    // The rope key is shared: its gradient sums over heads.
    if (dr > 0) sum_over_heads(dkr_, dka_, N, H, dqk, hd, dr);
    // Into the latent: dc_kv = dv · W_v_up + Σ_h dk_nope,h · W_k_up,h. The values first, which
    // frees dv_: with a rope part the heads' dk_nope are gathered there, contiguous, so that the
    // sum over heads, like dW_k_up, is one product over all of them.
    if (c.use_svd) {
      // dv_up = dvᵀ·c_kv, then through v_up = u·v: du += dv_up·vᵀ, dv += uᵀ·dv_up (with the fp32
      // master factors).
      const int64_t rows = H * hd, rank = c.svd_rank;
      fill_device_bytes(dv_up_, 0, static_cast<size_t>(rows * nl) * sizeof(float));
      matmul_backward(dckv_, dv_up_, static_cast<float*>(nullptr), dv_, a.ckv, a.v_up, N, nl, rows, false);
      gemm<float, float>(false, true, rows, rank, nl, 1.0f, dv_up_, nl, M(o.v_up_v_w), nl, 1.0f, G(o.v_up_u_w),
                         rank);
      gemm<float, float>(true, false, rank, nl, rows, 1.0f, M(o.v_up_u_w), rank, dv_up_, nl, 1.0f, G(o.v_up_v_w),
                         nl);
    } else {
      matmul_backward(dckv_, G(o.v_up_w), static_cast<float*>(nullptr), dv_, a.ckv, W(o.v_up_w), N, nl, H * hd,
                      false);
    }
    const T* dk_nope = dka_;
    if (dr > 0) {
      copy_rows(dv_, hd, H * hd, dka_, dqk, H * dqk, H, N, hd);
      dk_nope = dv_;
    }
    matmul_backward(dckv_, G(o.k_up_w), static_cast<float*>(nullptr), dk_nope, a.ckv, W(o.k_up_w), N, nl, H * hd,
                    true);
  }

  // Undo RoPE and QK-norm (the rope key's part into dkr_, or dk_ with QK-norm).
  const T* dq = c.qk_norm ? dq_ : dqa_;
  const T* dk_rope = c.qk_norm && dr > 0 ? dk_ : dkr_;
  if (c.qk_norm && dr > 0) {  // RoPE's inverse and both norms' backward: one launch
    qk_norm_rope_backward<T>({dq_, G(o.q_norm_w), dqa_, a.q, W(o.q_norm_w), a.q_rstd, H, dqk, H * dqk, H * dqk, hd},
                             {dk_, G(o.k_norm_w), dkr_, a.k, W(o.k_norm_w), a.k_rstd, 1, dr, dr, dr, 0}, N,
                             {rope_cos_.as<float>(), rope_sin_.as<float>(), Tn_, pos0(), seq_pos()}, deterministic);
  } else if (c.qk_norm) {
    rmsnorm_backward(dq_, G(o.q_norm_w), dqa_, a.q, W(o.q_norm_w), a.q_rstd, N * H, dqk, false, deterministic);
  } else if (dr > 0) {
    rope_backward(dqa_ + hd, rope_cos_.as<float>(), rope_sin_.as<float>(), B_, Tn_, H, dr, dqk, 0, seq_pos());
    rope_backward(dkr_, rope_cos_.as<float>(), rope_sin_.as<float>(), B_, Tn_, 1, dr, dr, 0, seq_pos());
  }
  rmsnorm_backward(dckv_pre_, G(o.kv_norm_w), dckv_, a.ckv_pre, W(o.kv_norm_w), a.ckv_rstd, N, nl, false,
                   deterministic);

  // Back into the block's normed input.
  matmul_backward(dln_, G(o.kv_down_w), G(o.kv_down_b), dckv_pre_, a.ln1, W(o.kv_down_w), N, C, nl, false);
  if (dr > 0) matmul_backward(dln_, G(o.k_rope_w), G(o.k_rope_b), dk_rope, a.ln1, W(o.k_rope_w), N, C, dr, true);
  if (r > 0) {
    matmul_backward(dcq_, G(o.q_up_w), static_cast<float*>(nullptr), dq, a.cq, W(o.q_up_w), N, r, H * dqk, false);
    rmsnorm_backward(dcq_pre_, G(o.q_down_norm_w), dcq_, a.cq_pre, W(o.q_down_norm_w), a.cq_rstd, N, r, false,
                     deterministic);
    matmul_backward(dln_, G(o.q_down_w), G(o.q_down_b), dcq_pre_, a.ln1, W(o.q_down_w), N, C, r, true);
  } else {
    matmul_backward(dln_, G(o.q_w), G(o.q_b), dq, a.ln1, W(o.q_w), N, C, H * dqk, true);
  }
}

// The class is instantiated in gpt_cuda.cpp; this file instantiates its own members.
template void Model<float>::mla_forward(const LayerOffsets&, LayerActs&);
template void Model<float>::mla_backward(const LayerOffsets&, const LayerActs&);
template void Model<float>::mla_cp_expand(const LayerOffsets&, LayerActs&, const float*);
template void Model<float>::mla_cp_latent_backward(const LayerOffsets&, const LayerActs&);
template void Model<bf16>::mla_forward(const LayerOffsets&, LayerActs&);
template void Model<bf16>::mla_backward(const LayerOffsets&, const LayerActs&);
template void Model<bf16>::mla_cp_expand(const LayerOffsets&, LayerActs&, const bf16*);
template void Model<bf16>::mla_cp_latent_backward(const LayerOffsets&, const LayerActs&);

}  // namespace gpt_detail
}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
