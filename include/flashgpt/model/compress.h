// Compressing a trained latent-attention model: every layer's value up-projection W_v_up
// [n_head·head_dim, n_latent] is replaced by its truncated SVD at a given rank, stored as the
// factors v_up_u [n_head·head_dim, r] and v_up_v [r, n_latent] of a use_svd model (the MLA
// document's SVD option). A model already factored is re-factored at the new rank.
#pragma once

#include <vector>

#include "flashgpt/model/checkpoint.h"

namespace flashgpt {

struct SvdLayerReport {
  int layer = 0;
  int full_rank = 0;               // min(n_head·head_dim, n_latent) (or the old rank)
  double retained_energy = 0;      // Σ_{i<r} σ_i² / Σ σ_i²
  double relative_error = 0;       // ‖W − W_r‖_F / ‖W‖_F
};

// Returns the compressed checkpoint (no optimizer or training state: its shapes changed) and fills
// one report per layer. Throws naming the field when the model has no latent attention or the
// rank is out of range.
CheckpointData compress_value_up_svd(const CheckpointData& in, int rank, std::vector<SvdLayerReport>* report);

}  // namespace flashgpt
