/// @file gemm.hpp
/// @brief CUDA backend of ops/gemm.hpp: one cublasGemmStridedBatchedEx call per op (host code only, no kernels).
/// float: fp32 compute (TF32 tensor cores only with Context<Cuda>::allow_tf32); double: fp64; half and bfloat16:
/// 16-bit inputs and outputs with fp32 accumulation. Host C++ (compiles with g++). Include <sdlora/cuda.hpp> instead.
///
/// Row-major to cuBLAS's column-major: a row-major (r, c) matrix with row stride ld is the column-major (c, r)
/// matrix with leading dimension ld, i.e. its transpose. So C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T:
/// cuBLAS's first operand is b (transposed iff trans_b), its second is a (transposed iff trans_a), m = N, n = M.
/// A rank-2 operand broadcast over the batch gets batch stride 0.
#pragma once

#include <algorithm>    // std::max
#include <cstdint>      // INT32_MAX
#include <type_traits>  // std::is_same_v

#include <cublas_v2.h>  // cublasGemmStridedBatchedEx, cublasComputeType_t, cudaDataType_t

#include <sdlora/backend/cuda/check.hpp>    // SDLORA_CUBLAS_CHECK
#include <sdlora/backend/cuda/context.hpp>  // Context<Cuda>
#include <sdlora/core/dtype.hpp>            // half, bfloat16
#include <sdlora/ops/gemm.hpp>              // Gemm, Impl

namespace sdlora::ops {

namespace gpu {
/// The cuBLAS data type of a storage type. sdlora::half and sdlora::bfloat16 hold the IEEE binary16 and bfloat16
/// bit patterns of __half and __nv_bfloat16 (checked by static_assert in kernels/common.cuh), so their pointers are
/// passed as such.
template <class T>
constexpr cudaDataType_t cuda_data_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
  else if constexpr (std::is_same_v<T, half>) return CUDA_R_16F;
  else if constexpr (std::is_same_v<T, bfloat16>) return CUDA_R_16BF;
  else static_assert(sizeof(T) == 0, "CUDA gemm: T must be float, double, sdlora::half or sdlora::bfloat16");
}

/// The cuBLAS operand of a rank-2 or rank-3 view: leading dimension (row stride) and batch stride (0 = broadcast).
struct GemmOperand {
  int ld;
  long long batch_stride;
};
template <class V>
GemmOperand gemm_operand(V const& v) {
  SDLORA_EXPECTS(v.stride(-2) <= INT32_MAX && v.dim(-1) <= INT32_MAX && v.dim(-2) <= INT32_MAX,
                 "[gemm] " << v.shape() << " exceeds cuBLAS's 32-bit sizes");
  // cuBLAS requires ld >= the column-major row count (our column count) even when there is a single row.
  Index const ld = v.dim(-2) == 1 ? std::max<Index>(v.stride(-2), v.dim(-1)) : v.stride(-2);
  return {int(std::max<Index>(ld, 1)), v.rank() == 3 ? (long long)v.stride(0) : 0LL};
}
}  // namespace gpu

template <>
struct Impl<Gemm, Cuda> {
  template <class T>
  static void run(Context<Cuda>& ctx, Gemm const& op, TensorView<T, Cuda> c, TensorView<T const, Cuda> a,
                  TensorView<T const, Cuda> b) {
    static_assert(sizeof(half) == 2 && sizeof(bfloat16) == 2, "16-bit storage types must be 2 bytes");
    Index const batch = c.rank() == 3 ? c.dim(0) : 1;
    Index const m = c.dim(-2), n = c.dim(-1), k = op.trans_a ? a.dim(-2) : a.dim(-1);
    if (batch == 0 || m == 0 || n == 0) return;
    SDLORA_EXPECTS(batch <= INT32_MAX && k <= INT32_MAX, "[gemm] " << c.shape() << " exceeds cuBLAS's 32-bit sizes");
    gpu::GemmOperand const ga = gpu::gemm_operand(a), gb = gpu::gemm_operand(b), gc = gpu::gemm_operand(c);
    cudaDataType_t const type = gpu::cuda_data_type<T>();
    cublasOperation_t const op_b = op.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS's first operand is b
    cublasOperation_t const op_a = op.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    if constexpr (std::is_same_v<T, double>) {
      double const alpha = op.alpha, beta = op.beta;
      SDLORA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(ctx.cublas(), op_b, op_a, int(n), int(m), int(k), &alpha,
                                                     b.data(), type, gb.ld, gb.batch_stride, a.data(), type, ga.ld,
                                                     ga.batch_stride, &beta, c.data(), type, gc.ld, gc.batch_stride,
                                                     int(batch), CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT),
                          "gemm");
    } else {
      // float, half, bfloat16: fp32 accumulation, alpha and beta in float.
      cublasComputeType_t const compute =
          std::is_same_v<T, float> && ctx.allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      float const alpha = float(op.alpha), beta = float(op.beta);
      SDLORA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(ctx.cublas(), op_b, op_a, int(n), int(m), int(k), &alpha,
                                                     b.data(), type, gb.ld, gb.batch_stride, a.data(), type, ga.ld,
                                                     ga.batch_stride, &beta, c.data(), type, gc.ld, gc.batch_stride,
                                                     int(batch), compute, CUBLAS_GEMM_DEFAULT),
                          "gemm");
    }
  }
};

}  // namespace sdlora::ops
