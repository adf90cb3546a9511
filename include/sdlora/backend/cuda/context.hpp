/// @file context.hpp
/// @brief Context<Cuda>: the explicit runtime state of the CUDA backend (device, stream, cuBLAS and cuBLASLt handles,
/// one GEMM workspace), created in the constructor and destroyed in the destructor. Host C++ (compiles with g++).
/// Include <sdlora/cuda.hpp> instead.
#pragma once

#include <cstddef>  // std::size_t

#include <cublasLt.h>          // cublasLtHandle_t, cublasLtCreate, cublasLtDestroy
#include <cublas_v2.h>         // cublasHandle_t, cublasCreate, cublasSetStream, cublasSetWorkspace
#include <cuda_runtime_api.h>  // cudaStream_t, cudaStreamCreate, cudaSetDevice

#include <sdlora/backend/cuda/check.hpp>   // SDLORA_CUDA_CHECK, SDLORA_CUBLAS_CHECK
#include <sdlora/backend/cuda/memory.hpp>  // BackendMemory<Cuda>
#include <sdlora/core/backend.hpp>         // Context, Cuda

namespace sdlora {

/// Every op of the CUDA backend runs on `stream()` of the context it is given; ops are asynchronous to the host until
/// a result is copied back (to_host, reductions) or synchronize() is called. Not copyable, not movable: the handles
/// belong to this object. Use one context per host thread.
template <>
struct Context<Cuda> {
 public:
  /// 32 MiB: what cuBLAS recommends for Hopper GEMMs (and enough for cuBLASLt epilogue kernels).
  static constexpr std::size_t kWorkspaceBytes = std::size_t(32) << 20;

  /// Allow TF32 tensor cores in float GEMMs (10-bit mantissa products, about 1e-3 relative error). Off by default,
  /// so that float results match the CPU backend to ~1e-6.
  bool allow_tf32 = false;
  /// What training layers keep for backward (nn/saved.hpp), as Context<Cpu>::saved_activations. 16-bit storage is
  /// implemented on the CPU backend only; on Cuda a training forward refuses F16 / BF16 with one line.
  DType saved_activations = DType::F32;

  explicit Context(int device = 0) : device_(device) {
    SDLORA_CUDA_CHECK(cudaSetDevice(device_), "cuda context");
    // A blocking stream: the legacy default stream used by BackendMemory<Cuda> is ordered against it.
    SDLORA_CUDA_CHECK(cudaStreamCreate(&stream_), "cuda context");
    try {
      SDLORA_CUBLAS_CHECK(cublasCreate(&cublas_), "cuda context");
      SDLORA_CUBLAS_CHECK(cublasSetStream(cublas_, stream_), "cuda context");
      // No reduced-precision split-K reductions for half/bfloat16 inputs: accumulation stays in float.
      SDLORA_CUBLAS_CHECK(cublasSetMathMode(cublas_, cublasMath_t(CUBLAS_DEFAULT_MATH |
                                                                  CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
                          "cuda context");
      SDLORA_CUBLAS_CHECK(cublasLtCreate(&cublas_lt_), "cuda context");
      workspace_ = BackendMemory<Cuda>::allocate(kWorkspaceBytes);
      SDLORA_CUBLAS_CHECK(cublasSetWorkspace(cublas_, workspace_, kWorkspaceBytes), "cuda context");
    } catch (...) {
      release();
      throw;
    }
  }
  ~Context() { release(); }

  Context(Context const&) = delete;
  Context& operator=(Context const&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  cublasLtHandle_t cublas_lt() const { return cublas_lt_; }
  /// Scratch for cuBLAS / cuBLASLt calls on stream(); cuBLAS already uses it (cublasSetWorkspace).
  void* workspace() const { return workspace_; }
  std::size_t workspace_bytes() const { return kWorkspaceBytes; }

  /// Waits until every op queued on stream() has finished; throws CudaError for a fault inside a kernel.
  void synchronize() const { SDLORA_CUDA_CHECK(cudaStreamSynchronize(stream_), "cuda synchronize"); }

 private:
  // Never throws: a destructor must not, and a failed cleanup cannot be acted on.
  void release() noexcept {
    if (stream_) (void)cudaStreamSynchronize(stream_);  // the workspace may still be in use by a queued GEMM
    if (cublas_lt_) (void)cublasLtDestroy(cublas_lt_);
    if (cublas_) (void)cublasDestroy(cublas_);
    if (workspace_) {
      try {
        BackendMemory<Cuda>::deallocate(workspace_);
      } catch (...) {
      }
    }
    if (stream_) (void)cudaStreamDestroy(stream_);
    cublas_lt_ = nullptr;
    cublas_ = nullptr;
    workspace_ = nullptr;
    stream_ = nullptr;
  }

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t cublas_lt_ = nullptr;
  void* workspace_ = nullptr;
};

}  // namespace sdlora
