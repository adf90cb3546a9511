// Unit tests of the attention op: tiled forward vs the materialised reference, and backward vs finite differences.
#include <catch2/catch.hpp>

#include <array>   // std::array
#include <cmath>   // std::exp, std::log
#include <string>   // std::string
#include <utility>  // std::pair
#include <vector>   // std::vector

#include "support.hpp"

using namespace sdlora;
using test::numeric_gradient;
using test::random_tensor;

namespace {

struct Case {
  std::string name;
  Index batch, lq, lk, heads, head_dim;
  bool causal;
};

// (batch, lq, lk, heads, head_dim, causal) covering causal masks, Lq != Lk, head_dim 8 and an odd head_dim 5.
Case const kCases[] = {
    {"self, D=8", 2, 7, 7, 2, 8, false},   {"causal self, D=8", 2, 9, 9, 2, 8, true},
    {"cross Lq > Lk, D=5", 1, 11, 6, 3, 5, false}, {"cross Lq < Lk, D=8", 2, 4, 13, 2, 8, false},
    {"causal Lq != Lk, D=5", 1, 10, 7, 2, 5, true},
};

template <class T>
Tensor<T> attend(Context<Cpu>& ctx, ops::Attention const& op, Tensor<T> const& q, Tensor<T> const& k,
                 Tensor<T> const& v, Tensor<T>* lse_out = nullptr) {
  auto o = Tensor<T>::uninitialized(q.shape());
  auto lse = Tensor<T>::uninitialized(Shape{q.dim(0), op.heads, q.dim(1)});
  ops::attention_forward<T, Cpu>(ctx, op, o.view(), lse.view(), q.view(), k.view(), v.view());
  if (lse_out) *lse_out = std::move(lse);
  return o;
}
template <class T>
Tensor<T> attend_materialized(Context<Cpu>& ctx, ops::Attention const& op, Tensor<T> const& q, Tensor<T> const& k,
                              Tensor<T> const& v) {
  auto o = Tensor<T>::uninitialized(q.shape());
  ops::attention_forward_materialized<T, Cpu>(ctx, op, o.view(), q.view(), k.view(), v.view());
  return o;
}

/// A backward problem of two batches: random q, k, v, dout (seeds seed .. seed + 3) with their double reference
/// forward (o, lse) and backward (dq, dk, dv) on `threads` threads (0: the default), and q, k, v, dout in float.
struct BackwardProblem {
  struct {
    Tensor<double> q, k, v, dout, o, lse, dq, dk, dv;
  } reference;
  struct {
    Tensor<float> q, k, v, dout;
  } as_float;
};
BackwardProblem backward_problem(ops::Attention const& op, Index lq, Index lk, Index w, std::uint32_t seed,
                                 int threads) {
  BackwardProblem p;
  auto& r = p.reference;
  r.q = random_tensor<double>(Shape{2, lq, w}, seed);
  r.k = random_tensor<double>(Shape{2, lk, w}, seed + 1);
  r.v = random_tensor<double>(Shape{2, lk, w}, seed + 2);
  r.dout = random_tensor<double>(Shape{2, lq, w}, seed + 3);
  Context<Cpu> ctx;
  ctx.num_threads = threads;
  r.o = attend(ctx, op, r.q, r.k, r.v, &r.lse);
  r.dq = Tensor<double>(r.q.shape());
  r.dk = Tensor<double>(r.k.shape());
  r.dv = Tensor<double>(r.v.shape());
  ops::attention_backward<double, Cpu>(ctx, op, r.dq.view(), r.dk.view(), r.dv.view(), r.q.view(), r.k.view(),
                                       r.v.view(), r.o.view(), r.lse.view(), r.dout.view());
  p.as_float = {convert<float>(r.q), convert<float>(r.k), convert<float>(r.v), convert<float>(r.dout)};
  return p;
}

}  // namespace

TEST_CASE("tiled attention forward equals the materialised reference for tiles smaller than L",
          "[ops][attention]") {
  Context<Cpu> ctx;
  for (Case const& c : kCases) {
    INFO(c.name);
    Index const w = c.heads * c.head_dim;
    auto q = random_tensor<double>(Shape{c.batch, c.lq, w}, 1);
    auto k = random_tensor<double>(Shape{c.batch, c.lk, w}, 2);
    auto v = random_tensor<double>(Shape{c.batch, c.lk, w}, 3);
    for (Index i = 0; i < q.numel(); ++i) q(i) *= 4.0;  // peaked probabilities: the running max matters
    ops::Attention op{.heads = c.heads, .causal = c.causal, .block_q = 3, .block_k = 2};
    Tensor<double> lse;
    auto tiled = attend(ctx, op, q, k, v, &lse);
    auto reference = attend_materialized(ctx, op, q, k, v);
    // Tolerance 1e-13 in double: the tiled online softmax only reorders the sums.
    CHECK(test::rel_l2(tiled, reference) < 1e-13);

    // lse is the logsumexp of the scaled, masked scores of row (b=0, h=last, i=lq-1), written out.
    Index const h = c.heads - 1, i = c.lq - 1, visible = c.causal ? std::min(c.lk, i + 1) : c.lk;
    double m = -1e300, s = 0;
    std::vector<double> scores;
    for (Index j = 0; j < visible; ++j) {
      double dot = 0;
      for (Index d = 0; d < c.head_dim; ++d) dot += q.at({0, i, h * c.head_dim + d}) * k.at({0, j, h * c.head_dim + d});
      scores.push_back(dot / std::sqrt(double(c.head_dim)));
      m = std::max(m, scores.back());
    }
    for (double x : scores) s += std::exp(x - m);
    CHECK(lse.at({0, h, i}) == Approx(m + std::log(s)).epsilon(1e-12));

    // float runs the same algorithm: agreement to float rounding (1e-6 relative L2).
    auto qf = convert<float>(q), kf = convert<float>(k), vf = convert<float>(v);
    CHECK(test::rel_l2(attend(ctx, op, qf, kf, vf), reference) < 1e-6);
  }
}

TEST_CASE("causal attention: row i depends only on keys j <= i", "[ops][attention]") {
  Context<Cpu> ctx;
  auto q = random_tensor<double>(Shape{1, 6, 4}, 5);
  auto k = random_tensor<double>(Shape{1, 6, 4}, 6);
  auto v = random_tensor<double>(Shape{1, 6, 4}, 7);
  ops::Attention op{.heads = 1, .causal = true, .block_q = 2, .block_k = 2};
  auto o = attend(ctx, op, q, k, v);
  // Row 0 sees only key 0: its output is v[0].
  for (Index d = 0; d < 4; ++d) CHECK(o.at({0, 0, d}) == Approx(v.at({0, 0, d})).epsilon(1e-14));
  // Changing key 5 leaves rows 0..4 unchanged.
  for (Index d = 0; d < 4; ++d) k.at({0, 5, d}) += 1.0;
  auto o2 = attend(ctx, op, q, k, v);
  for (Index i = 0; i < 5; ++i)
    for (Index d = 0; d < 4; ++d) CHECK(o2.at({0, i, d}) == o.at({0, i, d}));
}

TEST_CASE("attention backward matches central finite differences in double (both parallel schedules)",
          "[ops][attention]") {
  for (Case const& c : kCases) {
    // threads = 1: one task per (batch, head) accumulates dq, dk, dv; threads = 8 > batch * heads: the two-pass
    // schedule (dk, dv per key tile, then dq per query tile). The finite differences run single-threaded.
    for (int threads : {1, 8}) {
      INFO(c.name << ", threads " << threads);
      Context<Cpu> ctx;
      ctx.num_threads = threads;
      Index const w = c.heads * c.head_dim;
      auto q = random_tensor<double>(Shape{c.batch, c.lq, w}, 11);
      auto k = random_tensor<double>(Shape{c.batch, c.lk, w}, 12);
      auto v = random_tensor<double>(Shape{c.batch, c.lk, w}, 13);
      auto dout = random_tensor<double>(Shape{c.batch, c.lq, w}, 14);
      for (Index i = 0; i < q.numel(); ++i) q(i) *= 2.0;
      ops::Attention op{.heads = c.heads, .causal = c.causal, .block_q = 3, .block_k = 4};
      Tensor<double> lse;
      auto o = attend(ctx, op, q, k, v, &lse);
      Tensor<double> dq(q.shape()), dk(k.shape()), dv(v.shape());
      dq.fill(7.0);  // backward overwrites: stale contents must not leak in
      ops::attention_backward<double, Cpu>(ctx, op, dq.view(), dk.view(), dv.view(), q.view(), k.view(), v.view(),
                                           o.view(), lse.view(), dout.view());
      Context<Cpu> serial;
      serial.num_threads = 1;
      auto loss = [&] { return test::inner(attend(serial, op, q, k, v), dout); };
      // Tolerance 1e-6 relative L2: central differences with eps 1e-6 are exact to ~1e-9 here.
      CHECK(test::rel_l2(dq, numeric_gradient(q, loss)) < 1e-6);
      CHECK(test::rel_l2(dk, numeric_gradient(k, loss)) < 1e-6);
      CHECK(test::rel_l2(dv, numeric_gradient(v, loss)) < 1e-6);
    }
  }
}

TEST_CASE("attention accepts strided per-head views of a fused projection and rejects bad shapes",
          "[ops][attention]") {
  Context<Cpu> ctx;
  // q, k, v as column slices of one (B, L, 3 W) tensor: row stride 3 W.
  Index const b = 2, l = 5, w = 8;
  auto qkv = random_tensor<double>(Shape{b, l, 3 * w}, 21);
  std::array<Index, kMaxRank> strides{l * 3 * w, 3 * w, 1};
  TensorView<double const> q(qkv.data(), Shape{b, l, w}, strides), k(qkv.data() + w, Shape{b, l, w}, strides),
      v(qkv.data() + 2 * w, Shape{b, l, w}, strides);
  ops::Attention op{.heads = 2, .block_q = 2, .block_k = 2};
  auto o = Tensor<double>::uninitialized(Shape{b, l, w});
  auto lse = Tensor<double>::uninitialized(Shape{b, 2, l});
  ops::attention_forward<double, Cpu>(ctx, op, o.view(), lse.view(), q, k, v);
  auto ref = attend_materialized(ctx, op, Tensor<double>::from_view(q), Tensor<double>::from_view(k),
                                 Tensor<double>::from_view(v));
  CHECK(test::rel_l2(o, ref) < 1e-13);

  Tensor<double> q3(Shape{b, l, 9});
  CHECK_THROWS_WITH((ops::attention_forward<double, Cpu>(ctx, op, o.view(), lse.view(), q3.view(), k, v)),
                    Catch::Contains("[attention]") && Catch::Contains("(2, 5, 9)"));
  ops::Attention three{.heads = 3};
  CHECK_THROWS_WITH((ops::attention_forward<double, Cpu>(ctx, three, o.view(), lse.view(), q, k, v)),
                    Catch::Contains("not a multiple of 3 heads"));
}

TEST_CASE("default tile sizes with partial tiles: float tiled attention equals the double reference",
          "[ops][attention]") {
  // L = 300 spans 5 query tiles of 64 (the last partial) and 2 key tiles of 256; Lk = 77 is CLIP's context length.
  Context<Cpu> ctx;
  for (auto [lk, causal] : {std::pair<Index, bool>{300, true}, {77, false}}) {
    INFO("Lk " << lk << (causal ? ", causal" : ""));
    Index const heads = 5, w = heads * 8;
    auto q = random_tensor<double>(Shape{2, 300, w}, 31);
    auto k = random_tensor<double>(Shape{2, lk, w}, 32);
    auto v = random_tensor<double>(Shape{2, lk, w}, 33);
    ops::Attention op{.heads = heads, .causal = causal};
    auto reference = attend_materialized(ctx, op, q, k, v);
    // float vs double reference: 1e-6 relative L2 (float rounding of O(L) sums).
    CHECK(test::rel_l2(attend(ctx, op, convert<float>(q), convert<float>(k), convert<float>(v)), reference) < 1e-6);
    CHECK(test::rel_l2(attend(ctx, op, q, k, v), reference) < 1e-13);
  }
}

TEST_CASE("the fused float tile (AVX2 / AVX-512) equals the generic path and the double reference for head widths "
          "40, 64, 80, 160",
          "[ops][attention]") {
  // SD 1.5's heads are 40, 80 and 160 wide (320 / 640 / 1280 channels over 8 heads), SDXL's 64. Lq = 203 spans four
  // query tiles (the last of 11 rows, not a multiple of the 4-row register tile), Lk = 300 two key tiles (the last of
  // 44 keys) and Lk = 77 one tile padded to the vector width. q, k and v are strided slices of one fused (B, L, 3W)
  // projection. Tolerance: 1e-6 relative L2 against the double reference (float rounding of O(L) sums), as above;
  // the fused and the generic float paths differ only by rounding (order of sums, a polynomial exp within 2 ulp).
  for (Index d : {40, 64, 80, 160})
    for (Index lk : {300, 77}) {
      INFO("D " << d << ", Lk " << lk);
      Index const heads = 2, w = heads * d, lq = 203;
      auto q = random_tensor<double>(Shape{2, lq, w}, 41);
      auto k = random_tensor<double>(Shape{2, lk, w}, 42);
      auto v = random_tensor<double>(Shape{2, lk, w}, 43);
      ops::Attention op{.heads = heads};
      Context<Cpu> ctx;
      Tensor<double> lse_ref;
      auto const reference = attend(ctx, op, q, k, v, &lse_ref);
      // q in the middle third of a (B, Lq, 3W) projection, k and v in the outer thirds of a (B, Lk, 3W) one.
      auto fused_q = Tensor<float>::uninitialized(Shape{2, lq, 3 * w});
      auto fused_kv = Tensor<float>::uninitialized(Shape{2, lk, 3 * w});
      for (Index b = 0; b < 2; ++b) {
        for (Index i = 0; i < lq; ++i)
          for (Index c = 0; c < w; ++c) fused_q.at({b, i, w + c}) = float(q.at({b, i, c}));
        for (Index j = 0; j < lk; ++j)
          for (Index c = 0; c < w; ++c) {
            fused_kv.at({b, j, c}) = float(k.at({b, j, c}));
            fused_kv.at({b, j, 2 * w + c}) = float(v.at({b, j, c}));
          }
      }
      std::array<Index, kMaxRank> const sq{lq * 3 * w, 3 * w, 1}, skv{lk * 3 * w, 3 * w, 1};
      TensorView<float const> const qs(fused_q.data() + w, Shape{2, lq, w}, sq);
      TensorView<float const> const ks(fused_kv.data(), Shape{2, lk, w}, skv);
      TensorView<float const> const vs(fused_kv.data() + 2 * w, Shape{2, lk, w}, skv);
      auto run = [&](cpu::Isa isa, Tensor<float>& lse) {
        Context<Cpu> c;
        c.isa = isa;
        auto o = Tensor<float>::uninitialized(Shape{2, lq, w});
        lse = Tensor<float>::uninitialized(Shape{2, heads, lq});
        ops::attention_forward<float, Cpu>(c, op, o.view(), lse.view(), qs, ks, vs);
        return o;
      };
      Tensor<float> lse_generic, lse_avx2, lse_avx512;
      auto const generic = run(cpu::Isa::kPortable, lse_generic);  // the packed-GEMM path
      auto const avx2 = run(cpu::Isa::kAvx2, lse_avx2);            // capped to what the CPU has
      auto const avx512 = run(cpu::Isa::kAvx512, lse_avx512);
      CHECK(test::rel_l2(generic, reference) < 1e-6);
      CHECK(test::rel_l2(avx2, reference) < 1e-6);
      CHECK(test::rel_l2(avx512, reference) < 1e-6);
      CHECK(test::rel_l2(avx2, generic) < 1e-6);
      CHECK(test::rel_l2(avx512, generic) < 1e-6);
      CHECK(test::rel_l2(lse_avx2, lse_ref) < 1e-6);
      CHECK(test::rel_l2(lse_avx512, lse_ref) < 1e-6);
    }
}

TEST_CASE("the fused float backward tile (AVX2 / AVX-512) equals the generic path and the double reference, on both "
          "schedules, into strided gradients",
          "[ops][attention]") {
  // Head widths 40 and 80 (SD 1.5; 80 is ten AVX2 vectors, split 3 3 2 2), 64 (SDXL) and an odd 5; Lq = 203 and Lk = 300 / 77 with the default tiles (partial last
  // tiles), and tiles of 3 queries and 5 keys (neither a multiple of the 4-row register tile nor of the vector
  // width). threads 1 and 2 with 2 x 2 heads: one task per (batch, head); threads 8: the two-pass schedule. dq, dk
  // and dv are the middle thirds of (B, L, 3W) buffers whose other columns must keep their contents.
  // Tolerance: 1e-5 relative L2 against the double backward (itself checked against finite differences above):
  // float rounding of O(L) sums and a polynomial exp within 2 ulp; the fused and generic float paths are held to
  // the same bound against each other.
  struct Shape3 {
    Index d, lk, bq, bk;
  };
  for (auto [d, lk, bq, bk] : {Shape3{40, 300, 64, 256}, Shape3{40, 77, 64, 256}, Shape3{64, 300, 64, 256},
                               Shape3{80, 77, 64, 256}, Shape3{5, 77, 3, 5}, Shape3{40, 29, 3, 5}})
    for (int threads : {1, 2, 8}) {
      INFO("D " << d << ", Lk " << lk << ", tiles " << bq << " x " << bk << ", threads " << threads);
      Index const heads = 2, w = heads * d, lq = d == 5 ? 31 : 203;
      ops::Attention op{.heads = heads, .block_q = bq, .block_k = bk};
      BackwardProblem const pr = backward_problem(op, lq, lk, w, 51, threads);
      Tensor<double> const &dq_ref = pr.reference.dq, &dk_ref = pr.reference.dk, &dv_ref = pr.reference.dv;
      Tensor<float> const &qf = pr.as_float.q, &kf = pr.as_float.k, &vf = pr.as_float.v, &dof = pr.as_float.dout;
      struct Grads {
        Tensor<float> dq, dk, dv;
      };
      auto run = [&](cpu::Isa isa) {
        Context<Cpu> c;
        c.num_threads = threads;
        c.isa = isa;
        Tensor<float> lse;
        auto const o = attend(c, op, qf, kf, vf, &lse);
        auto gq = Tensor<float>::uninitialized(Shape{2, lq, 3 * w});
        auto gk = Tensor<float>::uninitialized(Shape{2, lk, 3 * w});
        auto gv = Tensor<float>::uninitialized(Shape{2, lk, 3 * w});
        gq.fill(7.f);
        gk.fill(7.f);
        gv.fill(7.f);
        std::array<Index, kMaxRank> const sq{lq * 3 * w, 3 * w, 1}, skv{lk * 3 * w, 3 * w, 1};
        TensorView<float> dq(gq.data() + w, Shape{2, lq, w}, sq), dk(gk.data() + w, Shape{2, lk, w}, skv),
            dv(gv.data() + w, Shape{2, lk, w}, skv);
        ops::attention_backward<float, Cpu>(c, op, dq, dk, dv, qf.view(), kf.view(), vf.view(), o.view(), lse.view(),
                                            dof.view());
        for (auto const* g : {&gq, &gk, &gv}) {  // the outer thirds are untouched
          Index untouched = 0, outside = 0;
          for (Index i = 0; i < g->numel(); ++i)
            if (Index const c3 = i % (3 * w); c3 < w || c3 >= 2 * w) {
              ++outside;
              untouched += (*g)(i) == 7.f;
            }
          CHECK(untouched == outside);
        }
        return Grads{Tensor<float>::from_view(TensorView<float const>(dq)),
                     Tensor<float>::from_view(TensorView<float const>(dk)),
                     Tensor<float>::from_view(TensorView<float const>(dv))};
      };
      Grads const generic = run(cpu::Isa::kPortable), avx2 = run(cpu::Isa::kAvx2), avx512 = run(cpu::Isa::kAvx512);
      for (auto const* g : {&generic, &avx2, &avx512}) {
        CHECK(test::rel_l2(g->dq, dq_ref) < 1e-5);
        CHECK(test::rel_l2(g->dk, dk_ref) < 1e-5);
        CHECK(test::rel_l2(g->dv, dv_ref) < 1e-5);
        CHECK(test::rel_l2(g->dq, generic.dq) < 1e-5);
        CHECK(test::rel_l2(g->dk, generic.dk) < 1e-5);
        CHECK(test::rel_l2(g->dv, generic.dv) < 1e-5);
      }
    }
}

TEST_CASE("bf16 compute: the fused attention tiles on AMX-BF16 are the double reference within bf16 rounding",
          "[ops][attention][bf16]") {
  // Context::compute = BF16 on a CPU with AMX-BF16 runs every product of the fused forward and backward tiles on the
  // tile unit (operands rounded to bf16, sums in float; softmax and exp in float). Head widths 40, 64, 80 and 5,
  // partial query and key tiles (tiles of 3 x 5 too), 1, 2 and 8 threads (both backward schedules). Tolerance: 2e-2
  // relative L2 against the double reference (bf16's 8 bits over sums of up to 300 products), and more than 1e-5
  // (the operands were rounded). Elsewhere attention stays float under bf16 compute: the float path's bits.
  struct Shape3 {
    Index d, lk, bq, bk;
  };
  bool const amx = cpu::bf16_unit() == cpu::Bf16Unit::kAmx;
  for (auto [d, lk, bq, bk] : {Shape3{40, 300, 64, 256}, Shape3{64, 77, 64, 256}, Shape3{80, 77, 64, 256},
                               Shape3{5, 77, 3, 5}, Shape3{40, 29, 3, 5}})
    for (int threads : {1, 2, 8}) {
      INFO("D " << d << ", Lk " << lk << ", tiles " << bq << " x " << bk << ", threads " << threads);
      Index const heads = 2, w = heads * d, lq = d == 5 ? 31 : 203;
      ops::Attention op{.heads = heads, .block_q = bq, .block_k = bk};
      BackwardProblem const pr = backward_problem(op, lq, lk, w, 61, 0);
      Tensor<double> const &o_ref = pr.reference.o, &dq_ref = pr.reference.dq, &dk_ref = pr.reference.dk,
                           &dv_ref = pr.reference.dv;
      Tensor<float> const &qf = pr.as_float.q, &kf = pr.as_float.k, &vf = pr.as_float.v, &dof = pr.as_float.dout;
      auto run = [&](DType compute) {
        Context<Cpu> c;
        c.num_threads = threads;
        c.compute = compute;
        Tensor<float> lse;
        auto o = attend(c, op, qf, kf, vf, &lse);
        Tensor<float> dq(qf.shape()), dk(kf.shape()), dv(vf.shape());
        ops::attention_backward<float, Cpu>(c, op, dq.view(), dk.view(), dv.view(), qf.view(), kf.view(), vf.view(),
                                            o.view(), lse.view(), dof.view());
        return std::array<Tensor<float>, 4>{std::move(o), std::move(dq), std::move(dk), std::move(dv)};
      };
      auto const f32 = run(DType::F32);
      auto const bf16 = run(DType::BF16);
      std::array<Tensor<double> const*, 4> const ref{&o_ref, &dq_ref, &dk_ref, &dv_ref};
      for (std::size_t i = 0; i < 4; ++i) {
        INFO("result " << i << " (o, dq, dk, dv)");
        if (amx) {
          CHECK(test::rel_l2(bf16[i], *ref[i]) < 2e-2);
          CHECK(test::rel_l2(bf16[i], *ref[i]) > 1e-5);
        } else {
          CHECK(test::rel_l2(bf16[i], f32[i]) == 0.0);
        }
      }
    }
}
