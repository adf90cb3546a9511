/// @file nccl_check.cu
/// @brief Compile check of the NCCL communicator in an nvcc translation unit with the CUDA backend (issue 17): it
/// satisfies the Communicator concept and bootstraps over another communicator. Runs nothing.
#include <sdlora/train/communicator_nccl.hpp>

namespace {
[[maybe_unused]] sdlora::train::NcclCommunicator over_single(sdlora::train::SingleProcess& host) {
  return sdlora::train::NcclCommunicator::over(host);
}
}  // namespace
