/// @file communicator.hpp
/// @brief The processes of a data-parallel training run: the Communicator concept (rank, size, an all-reduce sum of
/// one flat float buffer in a fixed order, broadcast, barrier, abort) and SingleProcess, the default that does
/// nothing. MPI is in communicator_mpi.hpp (SDLORA_MPI=ON), NCCL in communicator_nccl.hpp (CUDA backend).
/// Include <sdlora/train.hpp> instead; docs/scaling.md says how runs scale.
#pragma once

#include <concepts>  // std::convertible_to
#include <span>      // std::span
#include <string>    // std::string

namespace sdlora::train {

/// A group of `size()` processes that train one model. Every collective is called by every rank in the same order.
///   all_reduce_sum(buf)   buf = the element-wise sum of every rank's buf, summed in rank order (0 + 1 + 2 ...), so
///                         that two runs with the same size give the same bits on every rank
///   broadcast(buf, root)  buf = root's buf
///   barrier()             returns once every rank has called it
///   abort(message)        ends every rank of the job (after printing `message`); does nothing in a single process,
///                         whose caller then reports its error as usual
template <class C>
concept Communicator = requires(C& c, std::span<float> buf, int root, std::string const& message) {
  { c.rank() } -> std::convertible_to<int>;
  { c.size() } -> std::convertible_to<int>;
  c.all_reduce_sum(buf);
  c.broadcast(buf, root);
  c.barrier();
  c.abort(message);
};

/// One process: every collective is the identity.
struct SingleProcess {
  int rank() const { return 0; }
  int size() const { return 1; }
  void all_reduce_sum(std::span<float>) {}
  void broadcast(std::span<float>, int) {}
  void barrier() {}
  void abort(std::string const&) {}
};
static_assert(Communicator<SingleProcess>);

}  // namespace sdlora::train
