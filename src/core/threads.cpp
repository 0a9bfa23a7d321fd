#include "flashgpt/core/threads.h"

#include <omp.h>

extern "C" void openblas_set_num_threads(int num_threads);

namespace flashgpt {

int set_num_threads(int n) {
  if (n > 0) {
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
  }
  return omp_get_max_threads();
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace flashgpt
