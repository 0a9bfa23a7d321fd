// Softmax cross-entropy over the real vocabulary V of logits padded to Vp columns: the padding
// columns take no part in the softmax and get zero gradient, so they are never trained on.
#pragma once

#include <cstdint>

namespace flashgpt::ops {

// logits [N, Vp] are replaced in place by the probabilities (padding columns set to 0);
// losses[N] = −log p[target]. Returns the mean loss over rows whose target is ≥ 0.
template <typename T>
double softmax_cross_entropy_forward(T* probs_inout, T* losses, const int* targets, int64_t N, int64_t V, int64_t Vp);

// probs [N, Vp] from the forward become dlogits in place: scale·(p − onehot(target)).
template <typename T>
void softmax_cross_entropy_backward(T* probs_inout, const int* targets, int64_t N, int64_t V, int64_t Vp, T scale);

}  // namespace flashgpt::ops
