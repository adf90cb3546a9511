/// @file gemm.hpp
/// @brief CPU batched GEMM: float through sdlora's packed GEMM (backend/cpu/sgemm.hpp: run-time ISA dispatch, one
/// thread-pool loop over independent output tiles); double (gradient checks) through Eigen, single-threaded per matrix.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <type_traits>  // std::is_same_v

#include <Eigen/Core>  // Eigen::Map, Eigen::OuterStride

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/backend/cpu/sgemm.hpp>  // cpu::sgemm
#include <sdlora/ops/gemm.hpp>              // Gemm, Impl

namespace sdlora::ops {

namespace cpu {
template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixMap = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ConstMatrixMap = Eigen::Map<RowMatrix<T> const, Eigen::Unaligned, Eigen::OuterStride<>>;

/// The matrix at batch index i of a rank-2 or rank-3 view, as an Eigen map with the view's row stride.
template <class T>
ConstMatrixMap<T> matrix(TensorView<T const, Cpu> const& v, Index i) {
  T const* p = v.rank() == 3 ? v.data() + i * v.stride(0) : v.data();
  return ConstMatrixMap<T>(p, v.dim(-2), v.dim(-1), Eigen::OuterStride<>(v.stride(-2)));
}
template <class T>
MatrixMap<T> matrix(TensorView<T, Cpu> const& v, Index i) {
  T* p = v.rank() == 3 ? v.data() + i * v.stride(0) : v.data();
  return MatrixMap<T>(p, v.dim(-2), v.dim(-1), Eigen::OuterStride<>(v.stride(-2)));
}
}  // namespace cpu

template <>
struct Impl<Gemm, Cpu> {
  template <HostCompute T>
  static void run(Context<Cpu>& ctx, Gemm const& op, TensorView<T, Cpu> c, TensorView<T const, Cpu> a,
                  TensorView<T const, Cpu> b) {
    Index const batch = c.rank() == 3 ? c.dim(0) : 1;
    if constexpr (std::is_same_v<T, float>) {
      Index const k = op.trans_a ? a.dim(-2) : a.dim(-1);
      sdlora::cpu::sgemm(ctx, batch, c.dim(-2), c.dim(-1), k, {a.data(), a.stride(-2), op.trans_a},
                 a.rank() == 3 ? a.stride(0) : 0, {b.data(), b.stride(-2), op.trans_b}, b.rank() == 3 ? b.stride(0) : 0,
                 c.data(), c.stride(-2), c.rank() == 3 ? c.stride(0) : 0, float(op.alpha), float(op.beta));
      return;
    }
    auto one = [&](Index i) {
      auto cm = cpu::matrix(c, i);
      auto am = cpu::matrix(a, a.rank() == 3 ? i : 0);
      auto bm = cpu::matrix(b, b.rank() == 3 ? i : 0);
      T const alpha = T(op.alpha);
      if (op.beta == 0.0) {
        if (!op.trans_a && !op.trans_b) cm.noalias() = alpha * (am * bm);
        else if (op.trans_a && !op.trans_b) cm.noalias() = alpha * (am.transpose() * bm);
        else if (!op.trans_a && op.trans_b) cm.noalias() = alpha * (am * bm.transpose());
        else cm.noalias() = alpha * (am.transpose() * bm.transpose());
      } else {
        if (op.beta != 1.0) cm *= T(op.beta);
        if (!op.trans_a && !op.trans_b) cm.noalias() += alpha * (am * bm);
        else if (op.trans_a && !op.trans_b) cm.noalias() += alpha * (am.transpose() * bm);
        else if (!op.trans_a && op.trans_b) cm.noalias() += alpha * (am * bm.transpose());
        else cm.noalias() += alpha * (am.transpose() * bm.transpose());
      }
    };
    // One matrix per task, each single-threaded inside Eigen (no nested parallelism, no spin-waiting partner).
    Index const work = batch * c.dim(-2) * c.dim(-1) * (op.trans_a ? a.dim(-2) : a.dim(-1));
    sdlora::cpu::parallel_for(ctx, batch, batch > 1 && work > (Index(1) << 18), one);
  }
};

}  // namespace sdlora::ops
