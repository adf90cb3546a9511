/// @file communicator_mpi.hpp
/// @brief MpiCommunicator: the Communicator of processes started by `mpirun -np N` or Slurm's `srun` (OpenMPI,
/// MPICH). The all-reduce gathers every rank's buffer on rank 0, sums it in rank order and broadcasts the sum, so
/// two runs with the same N give the same bits; a watchdog ends the job when a collective waits longer than a
/// timeout (a hung or lost peer). Needs <mpi.h> and libmpi: build with -DSDLORA_MPI=ON. Include it yourself (no
/// umbrella header does); docs/scaling.md.
#pragma once

#include <algorithm>  // std::min
#include <chrono>     // std::chrono
#include <condition_variable>  // std::condition_variable
#include <cstdio>     // std::fprintf
#include <cstdlib>    // std::getenv
#include <mutex>      // std::mutex
#include <span>       // std::span
#include <string>     // std::string
#include <thread>     // std::thread
#include <vector>     // std::vector

#include <mpi.h>  // MPI_Init_thread, MPI_Gather, MPI_Bcast, MPI_Barrier, MPI_Abort

#include <sdlora/core/error.hpp>          // SDLORA_THROW, Error
#include <sdlora/train/communicator.hpp>  // Communicator

namespace sdlora::train {

/// The processes of MPI_COMM_WORLD. Initialises MPI when launched and nobody has (and finalises it then); one per
/// process.
class MpiCommunicator {
 public:
  /// `timeout_seconds`: how long one collective may wait for its peers before the job is aborted (0: forever). A
  /// collective also waits for the slowest rank's step and for rank 0's checkpoints and validation images, so the
  /// timeout must exceed those.
  explicit MpiCommunicator(double timeout_seconds = 1800) : timeout_(timeout_seconds) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized && !launched()) return;  // one process: MPI stays untouched
    if (!initialized) {
      int provided = 0;
      // The watchdog thread calls MPI_Abort while the main thread may be inside a collective.
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      owns_mpi_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    if (size_ > 1 && timeout_ > 0) watchdog_ = std::thread([this] { watch(); });
  }
  MpiCommunicator(MpiCommunicator const&) = delete;
  MpiCommunicator& operator=(MpiCommunicator const&) = delete;
  ~MpiCommunicator() {
    if (watchdog_.joinable()) {
      {
        std::lock_guard lock(mutex_);
        stopping_ = true;
      }
      wake_.notify_all();
      watchdog_.join();
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_mpi_ && !finalized) MPI_Finalize();
  }

  /// Whether an MPI launcher started this process (mpirun / mpiexec of OpenMPI or MPICH, srun with PMI or PMIx).
  /// Without one the communicator is a single process and never initialises MPI (a singleton MPI_Init may try to
  /// start daemons).
  static bool launched() {
    for (char const* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"})
      if (std::getenv(v)) return true;
    return false;
  }

  int rank() const { return rank_; }
  int size() const { return size_; }

  /// buf = Σ over ranks, in rank order: gathered on rank 0 in chunks of at most 4 Mi floats per rank, summed as
  /// ((b0 + b1) + b2) + ..., broadcast back.
  void all_reduce_sum(std::span<float> buf) {
    if (size_ == 1) return;
    Guard g(*this, "all-reduce");
    std::size_t const chunk = std::size_t(1) << 22;
    std::vector<float> gathered;
    for (std::size_t at = 0; at < buf.size(); at += chunk) {
      int const n = int(std::min(chunk, buf.size() - at));
      if (rank_ == 0) gathered.resize(std::size_t(n) * std::size_t(size_));
      check(MPI_Gather(buf.data() + at, n, MPI_FLOAT, rank_ == 0 ? gathered.data() : nullptr, n, MPI_FLOAT, 0,
                       MPI_COMM_WORLD),
            "MPI_Gather");
      if (rank_ == 0)
        for (int r = 1; r < size_; ++r) {
          float const* src = gathered.data() + std::size_t(r) * std::size_t(n);
          float* dst = buf.data() + at;
          for (int i = 0; i < n; ++i) dst[i] += src[i];
        }
      check(MPI_Bcast(buf.data() + at, n, MPI_FLOAT, 0, MPI_COMM_WORLD), "MPI_Bcast");
    }
  }

  void broadcast(std::span<float> buf, int root) {
    if (size_ == 1) return;
    Guard g(*this, "broadcast");
    std::size_t const chunk = std::size_t(1) << 28;
    for (std::size_t at = 0; at < buf.size(); at += chunk)
      check(MPI_Bcast(buf.data() + at, int(std::min(chunk, buf.size() - at)), MPI_FLOAT, root, MPI_COMM_WORLD),
            "MPI_Bcast");
  }

  void barrier() {
    if (size_ == 1) return;
    Guard g(*this, "barrier");
    check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  }

  /// Prints `message` (when not empty) and ends every rank: MPI_Abort makes mpirun / srun kill the others.
  void abort(std::string const& message) {
    if (size_ == 1) return;
    if (!message.empty()) std::fprintf(stderr, "[mpi] rank %d of %d: %s\n", rank_, size_, message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }

 private:
  /// Marks a collective in progress for the watchdog.
  struct Guard {
    MpiCommunicator& c;
    Guard(MpiCommunicator& comm, char const* what) : c(comm) {
      std::lock_guard lock(c.mutex_);
      c.what_ = what;
      c.since_ = std::chrono::steady_clock::now();
      c.busy_ = true;
    }
    ~Guard() {
      std::lock_guard lock(c.mutex_);
      c.busy_ = false;
    }
  };

  void check(int code, char const* call) const {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(code, text, &len);
    SDLORA_THROW(Error, "[mpi] rank " << rank_ << ": " << call << " failed: " << std::string(text, std::size_t(len)));
  }

  /// The watchdog: a collective that has waited longer than the timeout aborts the job with a message naming it.
  void watch() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      wake_.wait_for(lock, std::chrono::milliseconds(200));
      if (stopping_ || !busy_) continue;
      double const waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - since_).count();
      if (waited > timeout_) {
        std::fprintf(stderr,
                     "[mpi] rank %d of %d: the %s waited %.0f s for its peers (timeout %.0f s): a rank hung or was "
                     "lost; aborting the job (the last checkpoint is intact: resume with --resume-from-checkpoint "
                     "latest)\n",
                     rank_, size_, what_, waited, timeout_);
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
    }
  }

  double timeout_;
  int rank_ = 0, size_ = 1;
  bool owns_mpi_ = false;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false, busy_ = false;
  char const* what_ = "";
  std::chrono::steady_clock::time_point since_;
  std::thread watchdog_;
};
static_assert(Communicator<MpiCommunicator>);

}  // namespace sdlora::train
