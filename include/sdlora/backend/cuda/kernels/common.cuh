/// @file common.cuh
/// @brief What every sdlora CUDA kernel uses: the nvcc-only guard, launch geometry (launch.hpp), loads and
/// stores that widen half/bfloat16 to float and round back to nearest even, block-wide reductions in double, and
/// typed dynamic shared memory.
/// nvcc only. Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#if !defined(__CUDACC__)
#error "sdlora/backend/cuda/kernels/*.cuh define __global__ functions: include <sdlora/cuda_kernels.cuh> from one .cu file compiled by nvcc"
#endif

#include <limits>       // std::numeric_limits
#include <type_traits>  // std::is_same_v, std::conditional_t

#include <cuda_bf16.h>  // __nv_bfloat16, __ushort_as_bfloat16, __bfloat162float, __float2bfloat16_rn
#include <cuda_fp16.h>  // __half, __ushort_as_half, __half2float, __float2half_rn

#include <sdlora/backend/cuda/launch.hpp>  // kBlockSize, grid_size (re-exported for kernels)
#include <sdlora/core/config.hpp>          // SDLORA_DEVICE
#include <sdlora/core/dtype.hpp>           // half, bfloat16
#include <sdlora/core/shape.hpp>           // Index

namespace sdlora::ops::gpu {

// Our 16-bit storage types are the bit patterns cuBLAS and cuda_fp16/cuda_bf16 use: pointers to them are passed to
// cuBLAS as __half / __nv_bfloat16 data.
static_assert(sizeof(half) == sizeof(__half) && alignof(half) == alignof(__half),
              "sdlora::half must be layout-compatible with __half");
static_assert(sizeof(bfloat16) == sizeof(__nv_bfloat16) && alignof(bfloat16) == alignof(__nv_bfloat16),
              "sdlora::bfloat16 must be layout-compatible with __nv_bfloat16");

inline constexpr int kWarpSize = 32;

/// The type kernels compute in: float for the 16-bit storage types, T otherwise.
template <class T>
using compute_t = std::conditional_t<std::is_same_v<T, half> || std::is_same_v<T, bfloat16>, float, T>;

/// Reads a stored element in its compute type.
template <class T>
SDLORA_DEVICE compute_t<T> load(T const& v) {
  if constexpr (std::is_same_v<T, half>) return __half2float(__ushort_as_half(v.bits));
  else if constexpr (std::is_same_v<T, bfloat16>) return __bfloat162float(__ushort_as_bfloat16(v.bits));
  else return v;
}
/// Rounds a compute-type value to the storage type (round to nearest even for the 16-bit types).
template <class T>
SDLORA_DEVICE T store(compute_t<T> v) {
  if constexpr (std::is_same_v<T, half>) return half::from_bits(__half_as_ushort(__float2half_rn(v)));
  else if constexpr (std::is_same_v<T, bfloat16>) return bfloat16::from_bits(__bfloat16_as_ushort(__float2bfloat16_rn(v)));
  else return v;
}

/// Reduction operators of block_reduce, with their identity element.
struct SumOp {
  static constexpr double kIdentity = 0.0;
  SDLORA_DEVICE double operator()(double a, double b) const { return a + b; }
};
struct MaxOp {
  static constexpr double kIdentity = -std::numeric_limits<double>::infinity();
  SDLORA_DEVICE double operator()(double a, double b) const { return a > b ? a : b; }
};

/// Reduces `v` over a block of `block_size` threads (a multiple of 32, at most 1024) with `op`; thread 0 gets the
/// result. `thread` is threadIdx.x and `scratch` holds block_size / 32 doubles of shared memory. Every thread of the
/// block must call it (it synchronises the block).
template <class Op>
SDLORA_DEVICE double block_reduce(double v, Op op, unsigned thread, unsigned block_size, double* scratch) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  unsigned const lane = thread % kWarpSize, warp = thread / kWarpSize, warps = block_size / kWarpSize;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? scratch[lane] : Op::kIdentity;
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  }
  return v;
}

/// Reduces `v` over the block with `op` and returns the result to EVERY thread. `scratch` holds block_size / 32 + 1
/// doubles of shared memory; the call ends with a barrier, so the next call may reuse `scratch` at once. Every thread
/// of the block must call it.
template <class Op>
SDLORA_DEVICE double block_allreduce(double v, Op op, unsigned thread, unsigned block_size, double* scratch) {
  unsigned const warps = block_size / kWarpSize;
  v = block_reduce(v, op, thread, block_size, scratch);
  if (thread == 0) scratch[warps] = v;
  __syncthreads();
  double const result = scratch[warps];
  __syncthreads();
  return result;
}

/// Dynamic shared memory of a kernel as an array of U (one declaration for every instantiation: `extern __shared__`
/// arrays of different types under one name would conflict).
template <class U>
SDLORA_DEVICE U* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char sdlora_dynamic_shared[];
  return reinterpret_cast<U*>(sdlora_dynamic_shared);
}

}  // namespace sdlora::ops::gpu
