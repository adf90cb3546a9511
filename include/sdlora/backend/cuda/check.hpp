/// @file check.hpp
/// @brief CudaError and the macros that check every CUDA runtime and cuBLAS call: SDLORA_CUDA_CHECK(expr, "op")
/// and SDLORA_CUBLAS_CHECK(expr, "op"). Host C++ (compiles with g++). Include <sdlora/cuda.hpp> instead.
///
/// A failed call throws CudaError with a message that starts with the op, then the CUDA error name and string,
/// the checked expression and its file:line, e.g.
///   "[gemm] CUBLAS_STATUS_INVALID_VALUE: an invalid value was used as an argument (cublasGemmStridedBatchedEx(...)
///    at include/sdlora/backend/cuda/gemm.hpp:97)".
/// After every kernel launch call SDLORA_CUDA_CHECK(cudaGetLastError(), "op"): launch errors (bad configuration,
/// missing kernel image for this GPU) surface there; faults inside a kernel surface at the next synchronising call.
#pragma once

#include <cublas_v2.h>         // cublasStatus_t, cublasGetStatusName, cublasGetStatusString
#include <cuda_runtime_api.h>  // cudaError_t, cudaGetErrorName, cudaGetErrorString

#include <sdlora/core/error.hpp>  // Error, SDLORA_THROW

namespace sdlora {

/// A CUDA runtime or cuBLAS call that failed (including out of device memory).
struct CudaError : Error {
  using Error::Error;
};

namespace detail {
[[noreturn]] inline void throw_cuda_error(cudaError_t status, char const* op, char const* expr, char const* file,
                                          int line) {
  // Reset the thread's last error: a later launch check (cudaGetLastError) must not report this one again.
  // (A sticky error, a fault inside a kernel, stays and is reported by every later call, as it should.)
  (void)cudaGetLastError();
  SDLORA_THROW(CudaError, "[" << op << "] " << cudaGetErrorName(status) << ": " << cudaGetErrorString(status) << " ("
                              << expr << " at " << file << ":" << line << ")");
}
[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, char const* op, char const* expr, char const* file,
                                            int line) {
  SDLORA_THROW(CudaError, "[" << op << "] " << cublasGetStatusName(status) << ": " << cublasGetStatusString(status)
                              << " (" << expr << " at " << file << ":" << line << ")");
}
}  // namespace detail

}  // namespace sdlora

/// Evaluates a cudaError_t expression once; throws CudaError naming `op` unless it is cudaSuccess.
#define SDLORA_CUDA_CHECK(expr, op)                                                               \
  do {                                                                                            \
    cudaError_t const sdlora_cuda_status_ = (expr);                                               \
    if (sdlora_cuda_status_ != cudaSuccess)                                                       \
      ::sdlora::detail::throw_cuda_error(sdlora_cuda_status_, op, #expr, __FILE__, __LINE__); \
  } while (false)

/// Evaluates a cublasStatus_t expression once; throws CudaError naming `op` unless it is CUBLAS_STATUS_SUCCESS.
#define SDLORA_CUBLAS_CHECK(expr, op)                                                               \
  do {                                                                                              \
    cublasStatus_t const sdlora_cublas_status_ = (expr);                                            \
    if (sdlora_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                             \
      ::sdlora::detail::throw_cublas_error(sdlora_cublas_status_, op, #expr, __FILE__, __LINE__); \
  } while (false)
