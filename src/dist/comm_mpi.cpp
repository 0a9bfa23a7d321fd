// The communicator over MPI. Every collective is non-blocking underneath and waited on with a
// deadline, so a dead or hung peer ends the job with a message instead of hanging it forever.
// Only the main thread calls MPI (MPI_THREAD_FUNNELED): OpenMP threads compute, never talk.
#include "dist/comm_mpi.h"

#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "flashgpt/core/error.h"
#include "flashgpt/core/half_precision.h"

namespace flashgpt::dist {

namespace {

bool g_started_mpi = false;

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  fail("{} failed: {}", what, std::string(text, static_cast<size_t>(len)));
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::F64:
      return MPI_DOUBLE;
    case DType::I32:
      return MPI_INT32_T;
    case DType::I64:
      return MPI_INT64_T;
    case DType::U64:
      return MPI_UINT64_T;
    case DType::BF16:
      return MPI_UINT16_T;  // with bf16_sum, not MPI_SUM
  }
  return MPI_BYTE;
}

// MPI has no bfloat16: its sums go through this operation, each pair added in fp32 and rounded.
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = float_to_bf16_bits(bf16_bits_to_float(a[i]) + bf16_bits_to_float(b[i]));
}

MPI_Op sum_op(DType t) {
  if (t != DType::BF16) return MPI_SUM;
  static const MPI_Op op = [] {
    MPI_Op o = MPI_OP_NULL;
    check_mpi(MPI_Op_create(&bf16_sum, 1, &o), "MPI_Op_create");
    return o;
  }();
  return op;
}

int as_int(int64_t n, const char* what) {
  FLASHGPT_CHECK(n >= 0 && n <= INT_MAX, "{}: {} elements is more than one MPI call carries", what, n);
  return static_cast<int>(n);
}

class MpiComm final : public Communicator {
 public:
  MpiComm(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void allreduce_sum(void* data, size_t count, DType t) override {
    start_allreduce_sum(data, count, t);
    wait_all();
  }

  void start_allreduce_sum(void* data, size_t count, DType t) override {
    const size_t chunk = size_t{1} << 30;
    auto* p = static_cast<char*>(data);
    for (size_t done = 0; done < count; done += chunk) {
      const int n = static_cast<int>(std::min(chunk, count - done));
      MPI_Request r;
      check_mpi(MPI_Iallreduce(MPI_IN_PLACE, p + done * dtype_bytes(t), n, mpi_type(t), sum_op(t), comm_, &r),
                "MPI_Iallreduce");
      pending_.push_back(r);
    }
    count_sent(2.0 * (size_ - 1) / size_ * static_cast<double>(count * dtype_bytes(t)));
    int flag = 0;  // let MPI make progress on what is already queued
    MPI_Testall(static_cast<int>(pending_.size()), pending_.data(), &flag, MPI_STATUSES_IGNORE);
  }

  void wait_all() override {
    wait(pending_, "allreduce");
    pending_.clear();
  }

  void reduce_scatter_sum(const void* send, void* recv, std::span<const int64_t> counts, DType t) override {
    std::vector<int> c(counts.size());
    int64_t total = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
      c[i] = as_int(counts[i], "reduce-scatter");
      total += counts[i];
    }
    std::vector<MPI_Request> r(1);
    check_mpi(MPI_Ireduce_scatter(send, recv, c.data(), mpi_type(t), sum_op(t), comm_, &r[0]),
              "MPI_Ireduce_scatter");
    count_sent(static_cast<double>(size_ - 1) / size_ * static_cast<double>(total) * dtype_bytes(t));
    wait(r, "reduce-scatter");
  }

  void allgather(const void* send, void* recv, std::span<const int64_t> counts, DType t) override {
    std::vector<int> c, displ;
    const int64_t total = layout(counts, c, displ, "all-gather");
    const void* src = send;
    if (send == static_cast<const char*>(recv) + static_cast<size_t>(displ[static_cast<size_t>(rank_)]) * dtype_bytes(t)) {
      src = MPI_IN_PLACE;
    }
    std::vector<MPI_Request> r(1);
    check_mpi(MPI_Iallgatherv(src, c[static_cast<size_t>(rank_)], mpi_type(t), recv, c.data(), displ.data(),
                              mpi_type(t), comm_, &r[0]),
              "MPI_Iallgatherv");
    count_sent(static_cast<double>(size_ - 1) / size_ * static_cast<double>(total) * dtype_bytes(t));
    wait(r, "all-gather");
  }

  void gather(const void* send, void* recv, std::span<const int64_t> counts, DType t, int root) override {
    std::vector<int> c, displ;
    layout(counts, c, displ, "gather");
    std::vector<MPI_Request> r(1);
    check_mpi(MPI_Igatherv(send, c[static_cast<size_t>(rank_)], mpi_type(t), recv, c.data(), displ.data(),
                           mpi_type(t), root, comm_, &r[0]),
              "MPI_Igatherv");
    if (rank_ != root) count_sent(static_cast<double>(c[static_cast<size_t>(rank_)]) * dtype_bytes(t));
    wait(r, "gather");
  }

  void broadcast(void* data, size_t bytes, int root) override {
    std::vector<MPI_Request> r(1);
    check_mpi(MPI_Ibcast(data, as_int(static_cast<int64_t>(bytes), "broadcast"), MPI_BYTE, root, comm_, &r[0]),
              "MPI_Ibcast");
    if (rank_ == root) count_sent(static_cast<double>(bytes));
    wait(r, "broadcast");
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub;
    check_mpi(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
    auto c = std::make_unique<MpiComm>(sub, true);
    c->set_timeout(timeout_s_);
    return c;
  }

  void arrive(const char* where, int64_t step) override {
    where_ = where;
    step_ = step;
    constexpr int kTag = 7001;
    if (rank_ != 0) {
      arrived_step_ = step;
      std::vector<MPI_Request> r(1);
      check_mpi(MPI_Isend(&arrived_step_, 1, MPI_INT64_T, 0, kTag, comm_, &r[0]), "MPI_Isend");
      wait(r, "arrival", kGrace);
    } else {
      std::vector<int64_t> steps(static_cast<size_t>(size_), -1);
      std::vector<MPI_Request> r(static_cast<size_t>(size_ - 1));
      for (int i = 1; i < size_; ++i) {
        check_mpi(MPI_Irecv(&steps[static_cast<size_t>(i)], 1, MPI_INT64_T, i, kTag, comm_, &r[static_cast<size_t>(i - 1)]),
                  "MPI_Irecv");
      }
      const auto start = std::chrono::steady_clock::now();
      for (;;) {
        int done = 0;
        check_mpi(MPI_Testall(static_cast<int>(r.size()), r.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
        if (done) break;
        if (seconds_since(start) > timeout_s_) {
          std::string missing;
          for (int i = 1; i < size_; ++i) {
            int flag = 0;
            MPI_Test(&r[static_cast<size_t>(i - 1)], &flag, MPI_STATUS_IGNORE);
            if (!flag) missing += (missing.empty() ? "" : ", ") + std::to_string(i);
          }
          die(fmt::format("rank {} did not reach {} of step {} within {:.0f} s (it died or hangs); ending the job",
                          missing, where, step, timeout_s_));
        }
        pause();
      }
      for (int i = 1; i < size_; ++i) {
        if (steps[static_cast<size_t>(i)] != step) {
          die(fmt::format("rank {} reached {} at step {} while rank 0 is at step {}; the ranks ran apart, ending the "
                          "job",
                          i, where, steps[static_cast<size_t>(i)], step));
        }
      }
    }
    std::vector<MPI_Request> b(1);
    check_mpi(MPI_Ibarrier(comm_, &b[0]), "MPI_Ibarrier");
    wait(b, "arrival barrier", rank_ == 0 ? 0 : kGrace);
  }

  [[noreturn]] void abort(int code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  static constexpr double kGrace = 10;  // ranks other than 0 wait longer, so rank 0 names who is missing

  static double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  }
  static void pause() { std::this_thread::sleep_for(std::chrono::microseconds(50)); }

  int64_t layout(std::span<const int64_t> counts, std::vector<int>& c, std::vector<int>& displ, const char* what) {
    FLASHGPT_CHECK(counts.size() == static_cast<size_t>(size_), "{}: {} counts for {} ranks", what, counts.size(),
                   size_);
    int64_t total = 0;
    for (int64_t n : counts) {
      c.push_back(as_int(n, what));
      displ.push_back(as_int(total, what));
      total += n;
    }
    return total;
  }

  // Waits for the requests; past the deadline prints where it waited and ends the job.
  void wait(std::vector<MPI_Request>& r, const char* what, double extra = 0) {
    if (r.empty()) return;
    const auto start = std::chrono::steady_clock::now();
    for (int spins = 0;; ++spins) {
      int done = 0;
      check_mpi(MPI_Testall(static_cast<int>(r.size()), r.data(), &done, MPI_STATUSES_IGNORE), what);
      if (done) return;
      if (seconds_since(start) > timeout_s_ + extra) {
        die(fmt::format("rank {} waited {:.0f} s for the other ranks in {} (last at {} of step {}): a rank died or "
                        "hangs; ending the job",
                        rank_, timeout_s_ + extra, what, where_, step_));
      }
      if (spins > 2000) pause();
    }
  }

  [[noreturn]] void die(const std::string& message) {
    std::fprintf(stderr, "flashgpt: error: %s\n", message.c_str());
    abort(1);
  }

  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  std::vector<MPI_Request> pending_;
  int64_t arrived_step_ = 0;
  const char* where_ = "start";
  int64_t step_ = 0;
};

}  // namespace

bool mpi_available() { return true; }

std::unique_ptr<Communicator> make_mpi_world() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    g_started_mpi = true;
  }
  return std::make_unique<MpiComm>(MPI_COMM_WORLD, false);
}

void finalize_mpi() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (g_started_mpi && initialized && !finalized) MPI_Finalize();
}

}  // namespace flashgpt::dist
