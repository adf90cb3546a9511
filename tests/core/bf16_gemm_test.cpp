// The GEMM's bf16 compute (Context<Cpu>::compute = BF16, backend/cpu/bf16.hpp) on every bf16 unit this CPU has
// (AMX-BF16 tiles, AVX512-BF16 dot products, the float kernels of each ISA path on rounded panels), against its
// definition: operands rounded to bf16 (nearest even), their exact products summed in double. Tolerance: the float
// summation bound of the sgemm test on those products. Then: the result is bf16's, not float's (it differs from the
// float GEMM by bf16 rounding), the same bits on 1 and 2 threads and over several shared depth ranges, 16-bit weight
// sources, and convolutions (implicit GEMM, pointwise, input and weight gradients) against the float path.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <sdlora/sdlora.hpp>

using namespace sdlora;

namespace {

double bf16_round(double v) { return double(float(bfloat16::from_bits(bfloat16::from_float(float(v))))); }

/// The units to test: every one this CPU runs, each with the ISA paths whose kernels it uses (the rounded unit runs
/// on every ISA path's float kernel; the others on AVX-512's).
struct Bf16Path {
  cpu::Bf16Unit unit;
  cpu::Isa isa;
};
std::vector<Bf16Path> bf16_paths() {
  std::vector<Bf16Path> p{{cpu::Bf16Unit::kRounded, cpu::Isa::kPortable}};
  if (cpu::detected_isa() >= cpu::Isa::kAvx2) p.push_back({cpu::Bf16Unit::kRounded, cpu::Isa::kAvx2});
  if (cpu::detected_isa() >= cpu::Isa::kAvx512) p.push_back({cpu::Bf16Unit::kRounded, cpu::Isa::kAvx512});
  if (cpu::detected_bf16_unit() >= cpu::Bf16Unit::kDot) p.push_back({cpu::Bf16Unit::kDot, cpu::Isa::kAvx512});
  if (cpu::detected_bf16_unit() >= cpu::Bf16Unit::kAmx) p.push_back({cpu::Bf16Unit::kAmx, cpu::Isa::kAvx512});
  return p;
}

/// Caps the process's bf16 unit for one scope.
struct Bf16UnitCap {
  explicit Bf16UnitCap(cpu::Bf16Unit u) { cpu::bf16_unit_cap().store(int(u)); }
  ~Bf16UnitCap() { cpu::bf16_unit_cap().store(int(cpu::Bf16Unit::kAuto)); }
};

struct Bf16Case {
  Index batch, m, n, k;
  bool ta, tb;
  float alpha, beta;
};

/// C = alpha op(A) op(B) + beta C in bf16 compute on `path` against the definition; returns the worst error
/// relative to sum |alpha a b| (to compare with the float GEMM's).
std::vector<float> run_bf16(Bf16Case const& cs, Bf16Path path, int threads, std::uint32_t seed, double* rel_to_float) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  Index const lda = (cs.ta ? cs.m : cs.k) + 3, ldb = (cs.tb ? cs.k : cs.n) + 1, ldc = cs.n + 2;
  Index const a_rows = cs.ta ? cs.k : cs.m, b_rows = cs.tb ? cs.n : cs.k;
  std::vector<float> a(cs.batch * a_rows * lda), b(cs.batch * b_rows * ldb), c(cs.batch * cs.m * ldc);
  for (float& v : a) v = dist(rng);
  for (float& v : b) v = dist(rng);
  for (float& v : c) v = dist(rng);
  std::vector<float> const c0 = c;
  Bf16UnitCap const cap(path.unit);
  Context<Cpu> ctx;
  ctx.isa = path.isa;
  ctx.num_threads = threads;
  ctx.compute = DType::BF16;
  cpu::sgemm(ctx, cs.batch, cs.m, cs.n, cs.k, {a.data(), lda, cs.ta}, a_rows * lda, {b.data(), ldb, cs.tb},
             b_rows * ldb, c.data(), ldc, cs.m * ldc, cs.alpha, cs.beta);
  double const u = std::ldexp(1.0, -24);
  double worst_float = 0;  // the largest |float definition - result| / sum |alpha a b|
  for (Index bi = 0; bi < cs.batch; ++bi) {
    float const* ab = a.data() + bi * a_rows * lda;
    float const* bb = b.data() + bi * b_rows * ldb;
    for (Index i = 0; i < cs.m; ++i)
      for (Index j = 0; j < cs.n; ++j) {
        double sum = 0, mag = 0, exact = 0;
        for (Index p = 0; p < cs.k; ++p) {
          double const x = cs.ta ? ab[p * lda + i] : ab[i * lda + p];
          double const y = cs.tb ? bb[j * ldb + p] : bb[p * ldb + j];
          sum += bf16_round(x) * bf16_round(y);
          mag += std::abs(bf16_round(x) * bf16_round(y));
          exact += x * y;
        }
        Index const at = bi * cs.m * ldc + i * ldc + j;
        double const base = cs.beta == 0.f ? 0.0 : cs.beta * double(c0[at]);
        double const ref = cs.alpha * sum + base;
        double const bound = 2 * ((cs.k + 2) * u * std::abs(cs.alpha) * mag + 2 * u * std::abs(base)) + 1e-30;
        if (std::abs(double(c[at]) - ref) > bound) {
          INFO(cpu::bf16_unit_name(path.unit) << " on " << cpu::isa_name(path.isa) << ": batch " << bi << " entry ("
                                              << i << ", " << j << ") of " << cs.m << "x" << cs.n << "x" << cs.k
                                              << " ta " << cs.ta << " tb " << cs.tb);
          REQUIRE(double(c[at]) == Approx(ref).margin(bound));
        }
        if (mag > 0)
          worst_float = std::max(worst_float, std::abs(double(c[at]) - (cs.alpha * exact + base)) / (std::abs(cs.alpha) * mag));
      }
    for (Index i = 0; i < cs.m; ++i)  // padding columns between rows are never written
      for (Index j = cs.n; j < ldc; ++j) REQUIRE(c[bi * cs.m * ldc + i * ldc + j] == c0[bi * cs.m * ldc + i * ldc + j]);
  }
  if (rel_to_float) *rel_to_float = worst_float;
  return c;
}

}  // namespace

TEST_CASE("bf16 compute equals its definition on every bf16 unit and kernel path", "[core][gemm][bf16]") {
  // Ragged M, N and K (one value; odd depths; depth blocks of 256 and a remainder), transposes, alpha / beta,
  // batches, AMX's 32-deep steps and 32-row tiles cut anywhere, whole tiles added onto C.
  std::vector<Bf16Case> const cases{
      {1, 1, 1, 1, false, false, 1.f, 0.f},     {1, 13, 37, 5, false, false, 1.f, 0.f},
      {2, 29, 50, 300, true, false, 0.5f, 1.f}, {3, 12, 32, 7, false, true, 2.f, 0.5f},
      {1, 145, 70, 513, true, true, 1.f, -1.f}, {1, 300, 400, 64, false, true, 1.f, 0.f},
      {2, 7, 1000, 33, false, false, -1.f, 0.f}, {1, 200, 9, 260, false, false, 1.f, 1.f},
      {1, 64, 96, 40, false, false, 1.f, 1.f},  // whole tiles accumulating onto C (AMX's in-place tiles)
  };
  std::uint32_t seed = 1;
  for (Bf16Path const path : bf16_paths()) {
    double worst_float = 0;
    for (Bf16Case const& cs : cases) {
      double w = 0;
      run_bf16(cs, path, 2, seed++, &w);
      worst_float = std::max(worst_float, w);
    }
    INFO(cpu::bf16_unit_name(path.unit) << " on " << cpu::isa_name(path.isa) << ": worst error against the float "
                                        << "product " << worst_float);
    CHECK(worst_float > 1e-4);  // bf16's 8 bits, not float's 24: the operands were rounded
    CHECK(worst_float < 1e-2);
  }
}

TEST_CASE("bf16 compute gives the same bits for 1 and 2 threads and over several shared depth ranges",
          "[core][gemm][bf16]") {
  for (Bf16Path const path : bf16_paths()) {
    INFO(cpu::bf16_unit_name(path.unit) << " on " << cpu::isa_name(path.isa));
    Bf16Case const cs{2, 150, 700, 520, false, true, 1.f, 0.f};
    CHECK(run_bf16(cs, path, 1, 3, nullptr) == run_bf16(cs, path, 2, 3, nullptr));
    // Shared panels over one and several depth ranges (a limit of 40,000 floats of shared panels).
    Index const m = 300, n = 400, k = 700;
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    std::vector<float> a(m * k), b(k * n);
    for (float& v : a) v = dist(rng);
    for (float& v : b) v = dist(rng);
    Bf16UnitCap const cap(path.unit);
    auto product = [&](int threads, Index limit) {
      std::vector<float> c(m * n, 0.f);
      Context<Cpu> ctx;
      ctx.isa = path.isa;
      ctx.num_threads = threads;
      ctx.compute = DType::BF16;
      cpu::gemm_packed(ctx, 1, m, n, k, cpu::matrix_packer_a({a.data(), k, false}, 0),
                       cpu::matrix_packer_b({b.data(), n, false}, 0), cpu::StridedOutput{c.data(), 0, n}, n, 1.f,
                       0.f, {}, limit);
      return c;
    };
    std::vector<float> const whole = product(2, cpu::kSharedPanelFloats);
    CHECK(product(2, 40000) == whole);
    CHECK(product(1, 40000) == whole);
  }
}

TEST_CASE("bf16 compute reads F32, F16 and BF16 weights as their bf16 roundings, with a bias added last",
          "[core][gemm][bf16]") {
  // y (M, N) = x (M, K) @ W^T + bias for W (N, K) stored in each type (Linear): the 16-bit weights are read
  // straight into the bf16 panels (BF16 copied, F16 widened and rounded).
  Index const m = 45, n = 70, k = 300;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> x(m * k), w(n * k), bias(n);
  for (float& v : x) v = dist(rng);
  for (float& v : w) v = dist(rng);
  for (float& v : bias) v = dist(rng);
  for (Bf16Path const path : bf16_paths())
    for (DType d : {DType::F32, DType::F16, DType::BF16}) {
      INFO(cpu::bf16_unit_name(path.unit) << " on " << cpu::isa_name(path.isa) << ", weight " << dtype_name(d));
      std::vector<std::uint16_t> w16(w.size());
      std::vector<float> stored(w);  // the weight's values as stored
      if (d != DType::F32) {
        cpu::narrow16(w16.data(), w.data(), Index(w.size()), d);
        cpu::widen16(stored.data(), w16.data(), Index(w.size()), d);
      }
      Bf16UnitCap const cap(path.unit);
      Context<Cpu> ctx;
      ctx.isa = path.isa;
      ctx.compute = DType::BF16;
      std::vector<float> y(m * n);
      void const* p = d == DType::F32 ? static_cast<void const*>(w.data()) : w16.data();
      cpu::sgemm_weight(ctx, m, n, k, {x.data(), k, false}, {p, d, k, true}, y.data(), n, 1.f, 0.f, bias.data());
      double const u = std::ldexp(1.0, -24);
      for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < n; ++j) {
          double sum = 0, mag = 0;
          for (Index q = 0; q < k; ++q) {
            double const t = bf16_round(x[i * k + q]) * bf16_round(stored[j * k + q]);
            sum += t;
            mag += std::abs(t);
          }
          double const ref = sum + bias[j];
          REQUIRE(std::abs(double(y[i * n + j]) - ref) <= 2 * (k + 3) * u * (mag + std::abs(bias[j])));
        }
    }
}

TEST_CASE("bf16-compute convolutions are their float results within bf16 rounding", "[core][gemm][bf16][conv]") {
  // Each convolution path (a 3x3 implicit GEMM big enough for Winograd in float, which bf16 compute skips; a strided
  // 3x3; a 1x1) forward, input gradient and weight gradient, in bf16 against float: relative L2 between 1e-5 (it
  // rounded) and 1e-2 (bf16's rounding of sums of ~600 products), on each unit.
  struct Bf16Conv {
    Index c, o, h, k, stride, pad;
  };
  for (Bf16Conv const cv : {Bf16Conv{64, 64, 32, 3, 1, 1}, Bf16Conv{24, 40, 17, 3, 2, 1}, Bf16Conv{48, 32, 9, 1, 1, 0}}) {
    Index const ho = (cv.h + 2 * cv.pad - cv.k) / cv.stride + 1;
    ops::Conv2dGeometry g;
    g.stride = cv.stride;
    g.pad = ops::Pad2d::uniform(cv.pad);
    auto x = Tensor<float, Cpu>::uninitialized(Shape{2, cv.c, cv.h, cv.h});
    auto w = Tensor<float, Cpu>::uninitialized(Shape{cv.o, cv.c, cv.k, cv.k});
    auto dy = Tensor<float, Cpu>::uninitialized(Shape{2, cv.o, ho, ho});
    std::mt19937 rng(9);
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    for (auto* t : {&x, &w, &dy})
      for (Index i = 0; i < t->numel(); ++i) t->data()[i] = dist(rng);
    auto run = [&](DType compute) {
      Context<Cpu> ctx;
      ctx.compute = compute;
      auto y = Tensor<float, Cpu>::zeros(Shape{2, cv.o, ho, ho});
      auto dx = Tensor<float, Cpu>::zeros(Shape{2, cv.c, cv.h, cv.h});
      auto dw = Tensor<float, Cpu>::zeros(Shape{cv.o, cv.c, cv.k, cv.k});
      ops::conv2d_forward<float, Cpu>(ctx, y.view(), x.view(), w.view(), {}, g);
      ops::conv2d_backward_input<float, Cpu>(ctx, dx.view(), dy.view(), w.view(), g);
      ops::conv2d_backward_weight<float, Cpu>(ctx, dw.view(), dy.view(), x.view(), g);
      return std::vector<Tensor<float, Cpu>>{std::move(y), std::move(dx), std::move(dw)};
    };
    auto const want = run(DType::F32);
    for (Bf16Path const path : bf16_paths()) {
      if (path.isa != cpu::detected_isa()) continue;  // the units, each once
      Bf16UnitCap const cap(path.unit);
      auto const got = run(DType::BF16);
      for (std::size_t r = 0; r < 3; ++r) {
        double e = 0, nrm = 0;
        for (Index i = 0; i < want[r].numel(); ++i) {
          double const d = double(got[r].data()[i]) - want[r].data()[i];
          e += d * d;
          nrm += double(want[r].data()[i]) * want[r].data()[i];
        }
        INFO(cpu::bf16_unit_name(path.unit) << ": " << cv.c << " -> " << cv.o << " channels, " << cv.k << "x" << cv.k
                                            << " stride " << cv.stride << ", result " << r << " (y, dx, dw)");
        CHECK(std::sqrt(e / nrm) > 1e-5);
        CHECK(std::sqrt(e / nrm) < 1e-2);
      }
    }
  }
}
