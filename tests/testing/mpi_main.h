// The main() of the test programs that run under mpirun: every rank runs every test with the
// job's collectives bounded by `timeout_s`, only rank 0 prints the report, and the job fails when
// any rank had a failure.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>

#include "flashgpt/dist/comm.h"

namespace flashgpt::testing {

inline int run_tests_on_every_rank(int argc, char** argv, double timeout_s) {
  ::testing::InitGoogleTest(&argc, argv);
  dist::Communicator& w = dist::world();
  w.set_timeout(timeout_s);
  if (w.rank() != 0) {  // one report: rank 0's (a failure on another rank still fails the job)
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  const int failed = w.sum(rc != 0 ? 1 : 0);
  if (w.rank() == 0 && failed > 0) std::fprintf(stderr, "%d rank(s) had failures\n", failed);
  dist::finalize();
  return failed > 0 ? 1 : 0;
}

}  // namespace flashgpt::testing
