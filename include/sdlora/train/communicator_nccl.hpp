/// @file communicator_nccl.hpp
/// @brief NcclCommunicator: the Communicator of one process per GPU, over NCCL (shipped with the CUDA toolkit or as
/// libnccl-dev); the buffers are device memory. Bootstrapped by another Communicator (MPI) that hands the NCCL id
/// from rank 0 to the others. Compiled with the CUDA backend (SDLORA_CUDA=ON); link libnccl. Include it yourself.
///
/// Reduction order: ncclAllReduce's ring or tree order is fixed for a given number of ranks, topology and NCCL
/// version (set NCCL_ALGO=Ring for runs that must repeat bit for bit), not rank order as in MpiCommunicator.
#pragma once

#include <cstdio>      // std::fprintf
#include <cstring>     // std::memcpy
#include <functional>  // std::function
#include <span>        // std::span
#include <string>      // std::string
#include <vector>      // std::vector

#include <cuda_runtime_api.h>  // cudaStream_t, cudaStreamSynchronize, cudaMalloc
#include <nccl.h>              // ncclCommInitRank, ncclAllReduce, ncclBroadcast, ncclCommAbort

#include <sdlora/backend/cuda/check.hpp>  // SDLORA_CUDA_CHECK, CudaError
#include <sdlora/train/communicator.hpp>  // Communicator

namespace sdlora::train {

/// One GPU of an NCCL communicator; the buffers passed to the collectives are device pointers.
class NcclCommunicator {
 public:
  /// Joins the NCCL communicator of `size` ranks named by `id` (made by unique_id() on rank 0) on the current
  /// device; collectives run on `stream` and are waited for. `on_abort` ends the other processes (MPI_Abort).
  NcclCommunicator(ncclUniqueId const& id, int rank, int size, cudaStream_t stream = nullptr,
                   std::function<void(std::string const&)> on_abort = {})
      : rank_(rank), size_(size), stream_(stream), on_abort_(std::move(on_abort)) {
    check(ncclCommInitRank(&comm_, size, id, rank), "ncclCommInitRank");
    SDLORA_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&token_), sizeof(float)), "nccl barrier");
  }
  /// Bootstraps through `host` (any Communicator over the same processes): rank 0 makes the id, `host` broadcasts it.
  template <Communicator Host>
  static NcclCommunicator over(Host& host, cudaStream_t stream = nullptr) {
    ncclUniqueId id{};
    if (host.rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    static_assert(sizeof(ncclUniqueId) % sizeof(float) == 0);
    std::vector<float> words(sizeof(ncclUniqueId) / sizeof(float));
    std::memcpy(words.data(), &id, sizeof id);
    host.broadcast(std::span<float>(words), 0);  // bytes moved unchanged (MPI_FLOAT is copied, not converted)
    std::memcpy(&id, words.data(), sizeof id);
    return NcclCommunicator(id, host.rank(), host.size(), stream,
                            [&host](std::string const& m) { host.abort(m); });
  }
  NcclCommunicator(NcclCommunicator&& o) noexcept
      : rank_(o.rank_), size_(o.size_), stream_(o.stream_), on_abort_(std::move(o.on_abort_)), comm_(o.comm_),
        token_(o.token_) {
    o.comm_ = nullptr;
    o.token_ = nullptr;
  }
  NcclCommunicator(NcclCommunicator const&) = delete;
  NcclCommunicator& operator=(NcclCommunicator const&) = delete;
  NcclCommunicator& operator=(NcclCommunicator&&) = delete;
  ~NcclCommunicator() {
    if (comm_) ncclCommDestroy(comm_);
    if (token_) cudaFree(token_);
  }

  int rank() const { return rank_; }
  int size() const { return size_; }

  /// In place on device memory: buf = Σ over ranks (ncclAllReduce, ncclSum), then the stream is waited for.
  void all_reduce_sum(std::span<float> buf) {
    check(ncclAllReduce(buf.data(), buf.data(), buf.size(), ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce");
    SDLORA_CUDA_CHECK(cudaStreamSynchronize(stream_), "nccl all-reduce");
  }
  void broadcast(std::span<float> buf, int root) {
    check(ncclBroadcast(buf.data(), buf.data(), buf.size(), ncclFloat32, root, comm_, stream_), "ncclBroadcast");
    SDLORA_CUDA_CHECK(cudaStreamSynchronize(stream_), "nccl broadcast");
  }
  /// An all-reduce of one float: returns when every rank has reached it.
  void barrier() { all_reduce_sum(std::span<float>(token_, 1)); }
  /// Aborts the NCCL communicator (pending collectives return) and ends the other processes through on_abort.
  void abort(std::string const& message) {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
    if (on_abort_) on_abort_(message);
    else if (!message.empty()) std::fprintf(stderr, "[nccl] rank %d of %d: %s\n", rank_, size_, message.c_str());
  }

 private:
  static void check(ncclResult_t r, char const* call) {
    if (r != ncclSuccess) SDLORA_THROW(Error, "[nccl] " << call << " failed: " << ncclGetErrorString(r));
  }

  int rank_, size_;
  cudaStream_t stream_;
  std::function<void(std::string const&)> on_abort_;
  ncclComm_t comm_ = nullptr;
  float* token_ = nullptr;  // (1) device scratch of barrier()
};
static_assert(Communicator<NcclCommunicator>);

}  // namespace sdlora::train
