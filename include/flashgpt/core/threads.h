// Thread control: one place that sets OpenMP's and OpenBLAS's thread counts together.
#pragma once

namespace flashgpt {

// n <= 0 keeps the default (all cores). Returns the thread count in effect.
int set_num_threads(int n);
int num_threads();

}  // namespace flashgpt
