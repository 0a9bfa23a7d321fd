// cuDNN's fused attention (cuDNN 9's scaled-dot-product-attention graph, through NVIDIA's C++
// frontend): a second attention backend beside our own tensor-core kernels, for comparison in one
// process (bench attention --backend ours,cudnn; bench train --attention-backend) and as a choice
// for training. Same layouts and results as flash_forward_tc / flash_backward_tc
// (attention_cuda.h): q [B, Tq, Hq·Dqk], k and v rows of k_row / v_row elements, o [B, Tq, Hq·Dv],
// lse [B, Hq, Tq] as the natural log-sum-exp of the scaled scores, dk and dv summed over each GQA
// group; every pointer in device memory; work queued on the current stream.
//
// The library is loaded when first needed (libcudnn.so.9 from the loader's path), so a build with
// this backend still starts where cuDNN is missing; its calls then fail with a line saying why.
// The backend exists only in a CUDA build that found the frontend's headers
// (scripts/fetch-cudnn-frontend.sh) and cudnn.h; elsewhere every call says it was not built.
//
// What cuDNN's attention takes, as flashgpt states it: bf16 or fp16; head dims that are multiples
// of 8 up to 128 (up to 256 forward on Hopper, and 192/128 both ways); GQA/MQA; causal masks whose
// diagonal starts at the first key (q_offset 0) or ends at the last (q_offset = Tk − Tq, with no
// key padding); key padding (kv_lengths). Not document masks (segment ids) or per-sequence query
// offsets: cudnn_attention_unsupported names the field, and the calls refuse such cases.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "flashgpt/attention/attention.h"
#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/attention_cuda.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// Which attention a GPU path runs: our tensor-core kernels, or cuDNN's.
enum class AttentionBackend { Ours, Cudnn };

// Whether this build has the backend at all (CUDA, cudnn.h and the frontend's headers found).
bool cudnn_attention_built();

// Loads cuDNN if it was not yet: true when the backend can run (built, the library loaded, version
// 9 or newer); `detail` gets the versions ("cuDNN 9.19.0 (frontend 1.32.0)") or why not.
bool cudnn_attention_available(std::string* detail = nullptr);

// Empty when cuDNN's attention takes these dims and mask; else why not, naming the field. Checks
// flashgpt's own statement of cuDNN's limits above; cuDNN may still refuse a case at its first call
// (the message then is cuDNN's).
std::string cudnn_attention_unsupported(const AttentionDims& d, const AttentionMask& m);

// Builds cuDNN's graph for the case without running it: the frontend's own check of every
// tensor's shape, stride and type and of the attention's options against what cuDNN supports on
// compute capability sm / 10 . sm % 10 (80: A100, 90: H100), which needs no GPU; sm 0: this GPU's.
// Throws flashgpt::Error with the frontend's message when it rejects them. `backward`: the
// backward's graph.
void cudnn_attention_validate(TensorCoreType type, const AttentionDims& d, const AttentionMask& m, float scale,
                              bool backward, int sm = 0);

// Device memory cuDNN's plan for the case asks for (held by the backend, grown as needed).
size_t cudnn_attention_workspace_bytes(TensorCoreType type, const AttentionDims& d, const AttentionMask& m,
                                       float scale, bool backward);

void cudnn_attention_forward(TensorCoreType type, const AttentionDims& d, const AttentionMask& m, float scale,
                             const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, float* lse);

// P recomputed from lse; dq, dk, dv written. `deterministic`: cuDNN's deterministic algorithm.
void cudnn_attention_backward(TensorCoreType type, const AttentionDims& d, const AttentionMask& m, float scale,
                              const uint16_t* q, const uint16_t* k, const uint16_t* v, const uint16_t* o,
                              const float* lse, const uint16_t* dout, uint16_t* dq, uint16_t* dk, uint16_t* dv,
                              bool deterministic = false);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI
