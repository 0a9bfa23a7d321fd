// Truncated singular value decomposition (LAPACK gesdd), for compressing a weight matrix to a
// product of two thin factors: A [M, N] ≈ left [M, r] · right [r, N], the best rank-r
// approximation in the Frobenius norm (Eckart–Young). The singular values are split evenly,
// left = U_r·√Σ_r and right = √Σ_r·V_rᵀ, so both factors train at comparable scales.
#pragma once

#include <cstdint>
#include <vector>

namespace flashgpt::ops {

// Writes left [M, rank] and right [rank, N]; returns every singular value of A, largest first.
// Throws flashgpt::Error if rank is not in [1, min(M, N)] or LAPACK fails to converge.
template <typename T>
std::vector<T> truncated_svd(const T* A, int64_t M, int64_t N, int64_t rank, T* left, T* right);

}  // namespace flashgpt::ops
