/// @file reduce.cuh
/// @brief Kernel and launcher of backend/cuda/reduce.hpp: per-block reductions in double. nvcc only.
/// Include <sdlora/cuda_kernels.cuh> instead.
#pragma once

#include <sdlora/backend/cuda/check.hpp>           // SDLORA_CUDA_CHECK
#include <sdlora/backend/cuda/kernels/common.cuh>  // block_reduce, kBlockSize, reduce_blocks, load
#include <sdlora/backend/cuda/reduce.hpp>          // launch_reduce declaration

namespace sdlora::ops::gpu {

// partials (gridDim.x) = op over this block's elements of term(a[i], b[i]).
template <class T, class Op, class Term>
__global__ void reduce_kernel(double* partials, T const* a, T const* b, Index n, Op op, Term term) {
  __shared__ double scratch[kBlockSize / kWarpSize];
  double acc = Op::kIdentity;
  Index const stride = Index(gridDim.x) * blockDim.x;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    acc = op(acc, term(double(load(a[i])), double(load(b[i]))));
  acc = block_reduce(acc, op, threadIdx.x, blockDim.x, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

struct SumTerm {
  SDLORA_DEVICE double operator()(double a, double) const { return a; }
};
struct SquareTerm {
  SDLORA_DEVICE double operator()(double a, double) const { return a * a; }
};
struct DotTerm {
  SDLORA_DEVICE double operator()(double a, double b) const { return a * b; }
};
struct AbsTerm {
  SDLORA_DEVICE double operator()(double a, double) const { return fabs(a); }
};

template <class T>
void launch_reduce(cudaStream_t stream, Reduce::Kind kind, double* partials, T const* a, T const* b, Index n) {
  int const blocks = reduce_blocks(n);
  switch (kind) {
    case Reduce::Kind::Sum:
      reduce_kernel<<<blocks, kBlockSize, 0, stream>>>(partials, a, b, n, SumOp{}, SumTerm{});
      break;
    case Reduce::Kind::SumSquares:
      reduce_kernel<<<blocks, kBlockSize, 0, stream>>>(partials, a, b, n, SumOp{}, SquareTerm{});
      break;
    case Reduce::Kind::Dot:
      reduce_kernel<<<blocks, kBlockSize, 0, stream>>>(partials, a, b, n, SumOp{}, DotTerm{});
      break;
    case Reduce::Kind::MaxAbs:
      reduce_kernel<<<blocks, kBlockSize, 0, stream>>>(partials, a, b, n, MaxOp{}, AbsTerm{});
      break;
  }
  SDLORA_CUDA_CHECK(cudaGetLastError(), "reduce");
}

}  // namespace sdlora::ops::gpu

#define SDLORA_CUDA_INSTANTIATE_REDUCE(T)                                                                \
  template void ::sdlora::ops::gpu::launch_reduce<T>(cudaStream_t, ::sdlora::ops::Reduce::Kind, double*, \
                                                     T const*, T const*, ::sdlora::Index);
