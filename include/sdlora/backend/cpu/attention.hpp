/// @file attention.hpp
/// @brief CPU kernels of ops/attention.hpp: single-threaded products on per-head strided maps (the packed GEMM for
/// float, Eigen for double), the thread pool over (batch, head, tile). Include <sdlora/sdlora.hpp> instead.
///
/// Forward: one task per (batch, head, query tile); an online softmax over key tiles keeps a running row max m,
/// row sum l and unnormalised output, so memory per task is one (block_q, block_k) score tile.
/// Backward: when batch * heads covers the threads, one task per (batch, head) walks key tiles and query tiles and
/// accumulates dq, dk, dv in place (5 products per tile pair). Otherwise two passes keep every thread busy without
/// write conflicts: tasks per (batch, head, key tile) accumulate dk, dv; tasks per (batch, head, query tile)
/// accumulate dq (7 products per tile pair: the scores and dout v^T are recomputed).
#pragma once

#include <algorithm>  // std::min
#include <cmath>      // std::exp, std::log
#include <limits>       // std::numeric_limits
#include <optional>     // std::optional
#include <type_traits>  // std::is_same_v, std::decay_t
#include <vector>       // std::vector

#include <Eigen/Core>  // Eigen::Matrix, Eigen::Map, Eigen::Block

#include <sdlora/backend/cpu/gemm.hpp>     // cpu::MatrixMap, cpu::ConstMatrixMap
#include <sdlora/backend/cpu/parallel.hpp> // cpu::parallel_tasks
#include <sdlora/backend/cpu/sgemm.hpp>    // cpu::sgemm
#include <sdlora/backend/cpu/softmax.hpp>  // Impl<Softmax, Cpu>::row
#include <sdlora/ops/attention.hpp>        // Attention, Impl

namespace sdlora::ops {

template <>
struct Impl<Attention, Cpu> {
  /// Below this many multiply-adds (B * H * Lq * Lk * D) a parallel region costs more than it saves.
  static constexpr Index kParallelWork = Index(1) << 18;

  template <HostCompute T>
  static void forward(Context<Cpu>& ctx, Attention const& op, TensorView<T, Cpu> o, TensorView<T, Cpu> lse,
                      TensorView<T const, Cpu> q, TensorView<T const, Cpu> k, TensorView<T const, Cpu> v) {
    Geometry const g(op, q, k);
    Index const tiles_q = (g.lq + g.bq - 1) / g.bq;
    Index const tasks = g.batch * g.heads * tiles_q;
    Index const work = g.batch * g.heads * g.lq * g.lk * g.d;
    T const inf = std::numeric_limits<T>::infinity();
    struct ForwardScratch {
      Mat<T> s, acc;  // (bq, bk) scores then probabilities; (bq, D) unnormalised output
      Vec<T> m, l;    // (bq) running row max and row sum of exp(s - m)
    };
    Context<Cpu> const& run_on = tasks > 1 && work > kParallelWork ? ctx : serial_context(ctx);
    std::vector<std::optional<ForwardScratch>> scratch(std::size_t(run_on.threads()));
    sdlora::cpu::parallel_tasks(run_on, tasks, [&](Index t, int worker) {
      auto& mine = scratch[std::size_t(worker)];
      if (!mine) mine.emplace(ForwardScratch{Mat<T>(g.bq, g.bk), Mat<T>(g.bq, g.d), Vec<T>(g.bq), Vec<T>(g.bq)});
      Mat<T>& s = mine->s;
      Mat<T>& acc = mine->acc;
      Vec<T>& m = mine->m;
      Vec<T>& l = mine->l;
      {
        Index const bh = t / tiles_q, b = bh / g.heads, h = bh % g.heads;
        Index const i0 = (t % tiles_q) * g.bq, nq = std::min(g.bq, g.lq - i0);
        auto const qi = head(q, b, h, i0, nq, g.d);  // (nq, D)
        Index const kend = g.causal ? std::min(g.lk, i0 + nq) : g.lk;
        m.head(nq).setConstant(-inf);
        l.head(nq).setZero();
        acc.topRows(nq).setZero();
        for (Index j0 = 0; j0 < kend; j0 += g.bk) {
          Index const nk = std::min(g.bk, kend - j0);
          auto const kj = head(k, b, h, j0, nk, g.d);  // (nk, D)
          auto const vj = head(v, b, h, j0, nk, g.d);  // (nk, D)
          Eigen::Block<Mat<T>> st = s.topLeftCorner(nq, nk);
          product(ctx, st, qi, false, kj, true, T(g.scale), false);
          if (g.causal) mask_tile(st, i0, j0);
          for (Index r = 0; r < nq; ++r) {
            T const m_new = std::max(m(r), st.row(r).maxCoeff());
            if (m_new == -inf) {  // nothing visible yet in this row (cannot happen with j0 = 0 first; kept safe)
              st.row(r).setZero();
              continue;
            }
            T const alpha = std::exp(m(r) - m_new);  // exp(-inf) = 0 on the first tile
            st.row(r) = (st.row(r).array() - m_new).exp().matrix();
            l(r) = l(r) * alpha + st.row(r).sum();
            acc.row(r) *= alpha;
            m(r) = m_new;
          }
          product(ctx, acc.topRows(nq), st, false, vj, false, T(1), true);
        }
        auto oi = head(o, b, h, i0, nq, g.d);  // (nq, D)
        T* lse_row = lse.data() + (b * g.heads + h) * g.lq + i0;
        for (Index r = 0; r < nq; ++r) {
          oi.row(r) = acc.row(r) / l(r);
          lse_row[r] = m(r) + std::log(l(r));
        }
      }
    });
  }

  template <HostCompute T>
  static void backward(Context<Cpu>& ctx, Attention const& op, TensorView<T, Cpu> dq, TensorView<T, Cpu> dk,
                       TensorView<T, Cpu> dv, TensorView<T const, Cpu> q, TensorView<T const, Cpu> k,
                       TensorView<T const, Cpu> v, TensorView<T const, Cpu> o, TensorView<T const, Cpu> lse,
                       TensorView<T const, Cpu> dout) {
    Geometry const g(op, q, k);
    Index const heads_total = g.batch * g.heads;
    Index const tiles_q = (g.lq + g.bq - 1) / g.bq, tiles_k = (g.lk + g.bk - 1) / g.bk;
    int const threads = ctx.threads();
    Index const work = heads_total * g.lq * g.lk * g.d;

    // D_i = rowsum(dout_i * o_i) for every (batch, head, query row).
    auto delta = Tensor<T, Cpu>::uninitialized(Shape{g.batch, g.heads, g.lq});  // (B, H, Lq)
    sdlora::cpu::parallel_for(ctx, heads_total, heads_total * g.lq * g.d > 32768, [&](Index bh) {
      Index const b = bh / g.heads, h = bh % g.heads;
      auto const oh = head(o, b, h, 0, g.lq, g.d);      // (Lq, D)
      auto const doh = head(dout, b, h, 0, g.lq, g.d);  // (Lq, D)
      T* dst = delta.data() + bh * g.lq;
      for (Index r = 0; r < g.lq; ++r) dst[r] = oh.row(r).dot(doh.row(r));
    });
    TileArgs<T> const args{ctx, g, q, k, v, lse, dout, delta.data()};

    if (heads_total >= threads || threads == 1) {
      // One task per (batch, head): no other task writes its dq, dk, dv slices.
      Context<Cpu> const& run_on = heads_total > 1 && work > kParallelWork ? ctx : serial_context(ctx);
      ScratchPerWorker<T> scratch(run_on, g);
      sdlora::cpu::parallel_tasks(run_on, heads_total, [&](Index bh, int worker) {
        {
          Index const b = bh / g.heads, h = bh % g.heads;
          auto dqh = head(dq, b, h, 0, g.lq, g.d);  // (Lq, D)
          auto dkh = head(dk, b, h, 0, g.lk, g.d);  // (Lk, D)
          auto dvh = head(dv, b, h, 0, g.lk, g.d);  // (Lk, D)
          dqh.setZero();
          dkh.setZero();
          dvh.setZero();
          for (Index j0 = 0; j0 < g.lk; j0 += g.bk)
            for (Index i0 = g.causal ? j0 / g.bq * g.bq : 0; i0 < g.lq; i0 += g.bq)
              tile_backward(args, scratch.get(worker), b, h, i0, j0, &dqh, i0, &dkh, &dvh, j0);
        }
      });
      return;
    }
    // Pass 1: dk, dv per (batch, head, key tile).
    Context<Cpu> const& run_on = work > kParallelWork ? ctx : serial_context(ctx);
    ScratchPerWorker<T> scratch(run_on, g);
    sdlora::cpu::parallel_tasks(run_on, heads_total * tiles_k, [&](Index t, int worker) {
      {
        Index const bh = t / tiles_k, b = bh / g.heads, h = bh % g.heads;
        Index const j0 = (t % tiles_k) * g.bk, nk = std::min(g.bk, g.lk - j0);
        auto dkj = head(dk, b, h, j0, nk, g.d);  // (nk, D)
        auto dvj = head(dv, b, h, j0, nk, g.d);  // (nk, D)
        dkj.setZero();
        dvj.setZero();
        for (Index i0 = g.causal ? j0 / g.bq * g.bq : 0; i0 < g.lq; i0 += g.bq)
          tile_backward<T>(args, scratch.get(worker), b, h, i0, j0, nullptr, 0, &dkj, &dvj, 0);
      }
    });
    // Pass 2: dq per (batch, head, query tile).
    sdlora::cpu::parallel_tasks(run_on, heads_total * tiles_q, [&](Index t, int worker) {
      {
        Index const bh = t / tiles_q, b = bh / g.heads, h = bh % g.heads;
        Index const i0 = (t % tiles_q) * g.bq, nq = std::min(g.bq, g.lq - i0);
        auto dqi = head(dq, b, h, i0, nq, g.d);  // (nq, D)
        dqi.setZero();
        Index const kend = g.causal ? std::min(g.lk, i0 + nq) : g.lk;
        for (Index j0 = 0; j0 < kend; j0 += g.bk)
          tile_backward<T>(args, scratch.get(worker), b, h, i0, j0, &dqi, 0, nullptr, nullptr, 0);
      }
    });
  }

  template <HostCompute T>
  static void forward_materialized(Context<Cpu>& ctx, Attention const& op, TensorView<T, Cpu> o,
                                   TensorView<T const, Cpu> q, TensorView<T const, Cpu> k,
                                   TensorView<T const, Cpu> v) {
    Geometry const g(op, q, k);
    Index const heads_total = g.batch * g.heads;
    sdlora::cpu::parallel_for(ctx, heads_total, heads_total > 1, [&](Index bh) {
      Index const b = bh / g.heads, h = bh % g.heads;
      Mat<T> s(g.lq, g.lk);  // (Lq, Lk) scores, then probabilities
      product(ctx, s, head(q, b, h, 0, g.lq, g.d), false, head(k, b, h, 0, g.lk, g.d), true, T(g.scale), false);
      Eigen::Block<Mat<T>> all = s.topLeftCorner(g.lq, g.lk);
      if (g.causal) mask_tile(all, 0, 0);
      for (Index r = 0; r < g.lq; ++r) Impl<Softmax, Cpu>::row(s.data() + r * g.lk, s.data() + r * g.lk, g.lk);
      product(ctx, head(o, b, h, 0, g.lq, g.d), s, false, head(v, b, h, 0, g.lk, g.d), false, T(1), false);
    });
  }

 private:
  template <class T>
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  /// c = alpha * op(a) @ op(b) (+ c with `accumulate`) on the calling thread: the packed GEMM for float (its
  /// run-time ISA path), Eigen for double. a, b, c are row-major Eigen maps or blocks.
  template <class MC, class MA, class MB>
  static void product(Context<Cpu> const& ctx, MC&& c, MA const& a, bool trans_a, MB const& b, bool trans_b,
                      typename std::decay_t<MC>::Scalar alpha, bool accumulate) {
    using T = typename std::decay_t<MC>::Scalar;
    if constexpr (std::is_same_v<T, float>) {
      Context<Cpu> serial{.num_threads = 1, .isa = ctx.isa};
      sdlora::cpu::sgemm(serial, 1, c.rows(), c.cols(), trans_a ? a.rows() : a.cols(), {a.data(), a.outerStride(), trans_a},
                         0, {b.data(), b.outerStride(), trans_b}, 0, c.data(), c.outerStride(), 0, alpha,
                         accumulate ? 1.f : 0.f);
    } else {
      auto run = [&](auto const& pa, auto const& pb) {
        if (accumulate) c.noalias() += alpha * (pa * pb);
        else c.noalias() = alpha * (pa * pb);
      };
      if (trans_a && trans_b) run(a.transpose(), b.transpose());
      else if (trans_a) run(a.transpose(), b);
      else if (trans_b) run(a, b.transpose());
      else run(a, b);
    }
  }
  template <class T>
  using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  template <class T>
  using MatrixMap = cpu::MatrixMap<T>;

  /// Sizes shared by every kernel, read once from the views.
  struct Geometry {
    Index batch, heads, lq, lk, d, bq, bk;
    double scale;
    bool causal;
    template <class VQ, class VK>
    Geometry(Attention const& op, VQ const& q, VK const& k)
        : batch(q.dim(0)),
          heads(op.heads),
          lq(q.dim(1)),
          lk(k.dim(1)),
          d(op.head_dim(q.dim(2))),
          bq(std::min(op.block_q, std::max<Index>(q.dim(1), 1))),
          bk(std::min(op.block_k, k.dim(1))),
          scale(op.resolved_scale(q.dim(2))),
          causal(op.causal) {}
  };

  /// Rows [r0, r0 + n) of head h of batch b in a (B, L, H*D) view, as an (n, D) map with the view's row stride.
  template <class T>
  static cpu::ConstMatrixMap<T> head(TensorView<T const, Cpu> const& x, Index b, Index h, Index r0, Index n,
                                     Index d) {
    return cpu::ConstMatrixMap<T>(x.data() + b * x.stride(0) + r0 * x.stride(1) + h * d, n, d,
                                  Eigen::OuterStride<>(x.stride(1)));
  }
  template <class T>
  static MatrixMap<T> head(TensorView<T, Cpu> const& x, Index b, Index h, Index r0, Index n, Index d) {
    return MatrixMap<T>(x.data() + b * x.stride(0) + r0 * x.stride(1) + h * d, n, d,
                        Eigen::OuterStride<>(x.stride(1)));
  }

  /// Sets s(r, c) = -inf where key j0 + c lies after query i0 + r.
  template <class M>
  static void mask_tile(M& s, Index i0, Index j0) {
    using T = typename M::Scalar;
    for (Index r = 0; r < s.rows(); ++r)
      for (Index c = std::max<Index>(0, i0 + r + 1 - j0); c < s.cols(); ++c)
        s(r, c) = -std::numeric_limits<T>::infinity();
  }

  template <class T>
  struct Scratch {
    Mat<T> p, dp;  // (bq, bk) probabilities and dout v^T, then dS in place
    explicit Scratch(Geometry const& g) : p(g.bq, g.bk), dp(g.bq, g.bk) {}
  };
  /// One Scratch per pool worker, made on the worker's first task.
  template <class T>
  class ScratchPerWorker {
   public:
    ScratchPerWorker(Context<Cpu> const& ctx, Geometry const& g) : g_(g), slots_(std::size_t(ctx.threads())) {}
    Scratch<T>& get(int worker) {
      auto& slot = slots_[std::size_t(worker)];
      if (!slot) slot.emplace(g_);
      return *slot;
    }

   private:
    Geometry const& g_;
    std::vector<std::optional<Scratch<T>>> slots_;
  };
  /// The same kernel path on one thread (for problems too small to split).
  static Context<Cpu> const& serial_context(Context<Cpu> const& ctx) {
    thread_local Context<Cpu> serial;
    serial.num_threads = 1;
    serial.isa = ctx.isa;
    return serial;
  }
  template <class T>
  struct TileArgs {
    Context<Cpu> const& ctx;  // the kernel path (each tile's products run on its own thread)
    Geometry const& g;
    TensorView<T const, Cpu> q, k, v, lse, dout;
    T const* delta;  // (B, H, Lq) rowsum(dout * o)
  };

  /// The backward contribution of one (query tile i0, key tile j0) pair of head (b, h). dq, dk and dv are each
  /// accumulated when not null: query tile rows land at dq rows [dq_row0, dq_row0 + nq), key tile rows at dk and dv
  /// rows [dkv_row0, dkv_row0 + nk) (the maps cover either the whole head or just the tile).
  template <class T>
  static void tile_backward(TileArgs<T> const& a, Scratch<T>& scratch, Index b, Index h, Index i0, Index j0,
                            MatrixMap<T>* dq, Index dq_row0, MatrixMap<T>* dk, MatrixMap<T>* dv, Index dkv_row0) {
    Geometry const& g = a.g;
    Index const nq = std::min(g.bq, g.lq - i0), nk = std::min(g.bk, g.lk - j0);
    if (g.causal && j0 > i0 + nq - 1) return;  // every key of the tile lies after every query
    auto const qi = head(a.q, b, h, i0, nq, g.d);     // (nq, D)
    auto const kj = head(a.k, b, h, j0, nk, g.d);     // (nk, D)
    auto const vj = head(a.v, b, h, j0, nk, g.d);     // (nk, D)
    auto const doi = head(a.dout, b, h, i0, nq, g.d);  // (nq, D)
    T const* lse_row = a.lse.data() + (b * g.heads + h) * g.lq + i0;
    T const* delta_row = a.delta + (b * g.heads + h) * g.lq + i0;
    T const scale = T(g.scale);

    Eigen::Block<Mat<T>> p = scratch.p.topLeftCorner(nq, nk);  // (nq, nk)
    product(a.ctx, p, qi, false, kj, true, scale, false);
    if (g.causal) mask_tile(p, i0, j0);
    for (Index r = 0; r < nq; ++r) p.row(r) = (p.row(r).array() - lse_row[r]).exp().matrix();
    Eigen::Block<Mat<T>> ds = scratch.dp.topLeftCorner(nq, nk);  // (nq, nk) dP, then dS
    product(a.ctx, ds, doi, false, vj, true, T(1), false);
    for (Index r = 0; r < nq; ++r) ds.row(r) = (p.row(r).array() * (ds.row(r).array() - delta_row[r])).matrix();
    if (dv) product(a.ctx, dv->middleRows(dkv_row0, nk), p, true, doi, false, T(1), true);
    if (dk) product(a.ctx, dk->middleRows(dkv_row0, nk), ds, true, qi, false, scale, true);
    if (dq) product(a.ctx, dq->middleRows(dq_row0, nq), ds, false, kj, false, scale, true);
  }
};

}  // namespace sdlora::ops
