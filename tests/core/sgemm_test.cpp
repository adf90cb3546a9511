// The packed float GEMM (backend/cpu/sgemm.hpp) on every kernel path this CPU can run, against a double reference:
// ragged edges in M, N and K, depths over one block, row strides, transposes, alpha/beta, batches with broadcast
// operands; and the same bits for 1 and 2 threads.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <sdlora/sdlora.hpp>

using namespace sdlora;

namespace {

struct Case {
  Index batch, m, n, k;
  bool ta, tb;
  float alpha, beta;
  bool broadcast_b;
};

/// Runs one case on `isa` with `threads` threads and checks every entry against a double reference with the
/// worst-case float summation bound |err| <= k * u * sum_k |alpha a b| + |beta c| * u (u = 2^-24), doubled for the
/// final scaling; returns C so that callers can compare runs bit for bit.
std::vector<float> run_case(Case const& cs, cpu::Isa isa, int threads, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  Index const lda = (cs.ta ? cs.m : cs.k) + 3, ldb = (cs.tb ? cs.k : cs.n) + 1, ldc = cs.n + 2;
  Index const a_rows = cs.ta ? cs.k : cs.m, b_rows = cs.tb ? cs.n : cs.k;
  std::vector<float> a(cs.batch * a_rows * lda), b((cs.broadcast_b ? 1 : cs.batch) * b_rows * ldb),
      c(cs.batch * cs.m * ldc);
  for (float& v : a) v = dist(rng);
  for (float& v : b) v = dist(rng);
  for (float& v : c) v = dist(rng);
  std::vector<float> const c0 = c;
  Context<Cpu> ctx;
  ctx.isa = isa;
  ctx.num_threads = threads;
  cpu::sgemm(ctx, cs.batch, cs.m, cs.n, cs.k, {a.data(), lda, cs.ta}, a_rows * lda, {b.data(), ldb, cs.tb},
             cs.broadcast_b ? 0 : b_rows * ldb, c.data(), ldc, cs.m * ldc, cs.alpha, cs.beta);
  double const u = std::ldexp(1.0, -24);
  for (Index bi = 0; bi < cs.batch; ++bi) {
    float const* ab = a.data() + bi * a_rows * lda;
    float const* bb = b.data() + (cs.broadcast_b ? 0 : bi * b_rows * ldb);
    for (Index i = 0; i < cs.m; ++i)
      for (Index j = 0; j < cs.n; ++j) {
        double sum = 0, mag = 0;
        for (Index p = 0; p < cs.k; ++p) {
          double const x = cs.ta ? ab[p * lda + i] : ab[i * lda + p];
          double const y = cs.tb ? bb[j * ldb + p] : bb[p * ldb + j];
          sum += x * y;
          mag += std::abs(x * y);
        }
        Index const at = bi * cs.m * ldc + i * ldc + j;
        double const ref = cs.alpha * sum + (cs.beta == 0.f ? 0.0 : cs.beta * double(c0[at]));
        double const bound = 2 * ((cs.k + 2) * u * std::abs(cs.alpha) * mag + 2 * u * std::abs(cs.beta * c0[at])) + 1e-30;
        if (std::abs(double(c[at]) - ref) > bound) {
          INFO("isa " << cpu::isa_name(isa) << " batch " << bi << " entry (" << i << ", " << j << ") of " << cs.m << "x"
                      << cs.n << "x" << cs.k << " ta " << cs.ta << " tb " << cs.tb);
          REQUIRE(double(c[at]) == Approx(ref).margin(bound));
        }
      }
    // Padding columns between rows are never written.
    for (Index i = 0; i < cs.m; ++i)
      for (Index j = cs.n; j < ldc; ++j) REQUIRE(c[bi * cs.m * ldc + i * ldc + j] == c0[bi * cs.m * ldc + i * ldc + j]);
  }
  return c;
}

}  // namespace

TEST_CASE("packed sgemm matches a double reference on every kernel path", "[core][gemm][sgemm]") {
  std::vector<cpu::Isa> paths{cpu::Isa::kPortable};
  if (cpu::detected_isa() >= cpu::Isa::kAvx2) paths.push_back(cpu::Isa::kAvx2);
  if (cpu::detected_isa() >= cpu::Isa::kAvx512) paths.push_back(cpu::Isa::kAvx512);
  std::vector<Case> const cases{
      {1, 1, 1, 1, false, false, 1.f, 0.f, false},      {1, 13, 37, 5, false, false, 1.f, 0.f, false},
      {2, 29, 50, 300, true, false, 0.5f, 1.f, false},  {3, 12, 32, 7, false, true, 2.f, 0.5f, true},
      {1, 145, 70, 513, true, true, 1.f, -1.f, false},   {1, 300, 400, 64, false, true, 1.f, 0.f, false},
      {2, 7, 1000, 33, false, false, -1.f, 0.f, true},   {1, 200, 9, 260, false, false, 1.f, 1.f, false},
  };
  std::mt19937 rng(7);
  for (cpu::Isa isa : paths)
    for (Case const& cs : cases) run_case(cs, isa, 2, rng);
}

TEST_CASE("packed sgemm gives the same bits for 1 and 2 threads", "[core][gemm][sgemm]") {
  Case const cs{2, 150, 700, 520, false, true, 1.f, 0.f, false};
  std::mt19937 r1(3), r2(3);
  CHECK(run_case(cs, cpu::Isa::kAuto, 1, r1) == run_case(cs, cpu::Isa::kAuto, 2, r2));
}

TEST_CASE("SDLORA_ISA caps and Context<Cpu>::isa never pick a path the CPU lacks", "[core][isa]") {
  CHECK(cpu::resolve_isa(cpu::Isa::kPortable) == cpu::Isa::kPortable);
  CHECK(cpu::resolve_isa(cpu::Isa::kAvx512) <= cpu::detected_isa());
  CHECK(cpu::gemm_kernel(cpu::Isa::kPortable).isa == cpu::Isa::kPortable);
  CHECK(cpu::gemm_kernel(cpu::Isa::kAuto).isa == cpu::resolve_isa(cpu::Isa::kAuto));
}

TEST_CASE("operands packed once for all tasks give the same bits over one or several depth ranges",
          "[core][gemm][sgemm]") {
  // (M, N, K) where several tasks share A (several N tiles), B (several M chunks) or both; a limit of 40,000 floats
  // of shared panels splits the depth into ranges of 256 or 512 (C then gets each range's sum in turn).
  struct Size {
    Index m, n, k;
  };
  for (Size const sz : {Size{300, 400, 700}, Size{2000, 40, 600}, Size{40, 3000, 530}}) {
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    std::vector<float> a(sz.m * sz.k), b(sz.k * sz.n);
    for (float& v : a) v = dist(rng);
    for (float& v : b) v = dist(rng);
    auto product = [&](int threads, Index limit) {
      std::vector<float> c(sz.m * sz.n, 0.f);
      Context<Cpu> ctx;
      ctx.num_threads = threads;
      cpu::gemm_packed(ctx, 1, sz.m, sz.n, sz.k, cpu::matrix_packer_a({a.data(), sz.k, false}, 0),
                       cpu::matrix_packer_b({b.data(), sz.n, false}, 0), cpu::StridedOutput{c.data(), 0, sz.n}, sz.n,
                       1.f, 0.f, {}, limit);
      return c;
    };
    std::vector<float> const whole = product(2, cpu::kSharedPanelFloats);
    INFO(sz.m << "x" << sz.n << "x" << sz.k);
    CHECK(product(2, 40000) == whole);
    CHECK(product(1, 40000) == whole);
    CHECK(product(1, cpu::kSharedPanelFloats) == whole);
    // And the sum itself: one entry per row against a double reference (float summation bound, as above).
    for (Index i = 0; i < sz.m; i += 37) {
      Index const j = (i * 7) % sz.n;
      double sum = 0, mag = 0;
      for (Index p = 0; p < sz.k; ++p) {
        double const term = double(a[i * sz.k + p]) * b[p * sz.n + j];
        sum += term;
        mag += std::abs(term);
      }
      REQUIRE(std::abs(whole[i * sz.n + j] - sum) <= 2 * (sz.k + 2) * std::ldexp(1.0, -24) * mag);
    }
  }
}

TEST_CASE("a bias added in the GEMM's epilogue gives the bits of a separate pass after it", "[core][gemm][sgemm]") {
  // y = A @ B (+ beta * y) and then y += bias, per row (a convolution's channels) or per column (a Linear's
  // features), against the same GEMM without a bias followed by the plain loop: bit for bit, for ragged edges (M, N
  // not multiples of any register tile), several depth blocks and ranges (C accumulated over them: the bias must
  // come after the last), shared and per-task panels, 1 and 2 threads, beta 0 and 1, and K = 0.
  struct Size {
    Index m, n, k;
  };
  for (Size const sz : {Size{37, 45, 300}, Size{300, 400, 700}, Size{2000, 40, 600}, Size{40, 3000, 530},
                        Size{5, 7, 0}})
    for (float beta : {0.f, 1.f})
      for (bool per_row : {true, false})
        for (int threads : {1, 2}) {
          std::mt19937 rng(17);
          std::uniform_real_distribution<float> dist(-1.f, 1.f);
          std::vector<float> a(sz.m * sz.k), b(sz.k * sz.n), c0(sz.m * sz.n), bias(per_row ? sz.m : sz.n);
          for (auto* v : {&a, &b, &c0, &bias})
            for (float& x : *v) x = dist(rng);
          Context<Cpu> ctx;
          ctx.num_threads = threads;
          auto run = [&](cpu::GemmBias gb) {
            std::vector<float> c = c0;
            cpu::gemm_packed(ctx, 1, sz.m, sz.n, sz.k, cpu::matrix_packer_a({a.data(), sz.k, false}, 0),
                             cpu::matrix_packer_b({b.data(), sz.n, false}, 0), cpu::StridedOutput{c.data(), 0, sz.n},
                             sz.n, 1.f, beta, gb, 40000);
            return c;
          };
          std::vector<float> want = run({});
          for (Index i = 0; i < sz.m; ++i)
            for (Index j = 0; j < sz.n; ++j) want[i * sz.n + j] += bias[per_row ? i : j];
          std::vector<float> const got = run(per_row ? cpu::GemmBias{bias.data(), nullptr}
                                                     : cpu::GemmBias{nullptr, bias.data()});
          INFO(sz.m << "x" << sz.n << "x" << sz.k << " beta " << beta << (per_row ? " row" : " column")
                    << " bias, threads " << threads);
          REQUIRE(got == want);
        }
}

TEST_CASE("weight panels of every kernel path's widths hold the operand, from f32, f16, bf16",
          "[core][gemm][sgemm]") {
  // Panels of every width a kernel path uses: 12 and 32 (AVX-512: the vector transpose and copy on a CPU that has it),
  // 6 and 16 (AVX2: its 8 x 8 transpose and copy on a CPU that has it, else the scalar loops), 4 (the scalar loops);
  // ragged rows and depths (255 = 31 x 8 + 7); depth contiguous in storage (the transposing case) or rows
  // contiguous. Compared with the definition, panel[q][d][i] = x(r0 + q + i, d0 + d), zero past the last row.
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(-2.f, 2.f);
  Index const rows_total = 75, depth_total = 300, ld = depth_total + 3;
  std::vector<float> f(rows_total * ld);
  for (float& v : f) v = dist(rng);
  std::vector<std::uint16_t> h(f.size()), bf(f.size());
  for (std::size_t i = 0; i < f.size(); ++i) {
    h[i] = half(f[i]).bits;
    bf[i] = std::uint16_t(std::bit_cast<std::uint32_t>(f[i]) >> 16);
    f[i] = float(half::from_bits(h[i]));  // so that one reference serves f32 and f16
  }
  auto value = [&](DType dt, Index r, Index d) {
    if (dt == DType::BF16) return std::bit_cast<float>(std::uint32_t(bf[std::size_t(r * ld + d)]) << 16);
    return f[std::size_t(r * ld + d)];
  };
  for (DType dt : {DType::F32, DType::F16, DType::BF16})
    for (Index width : {4, 6, 12, 16, 32})
      for (bool trans : {false, true}) {
        void const* p = dt == DType::F32 ? static_cast<void const*>(f.data())
                        : dt == DType::F16 ? static_cast<void const*>(h.data())
                                           : static_cast<void const*>(bf.data());
        // trans: the operand's element (row, depth) is storage element (depth, row).
        Index const r0 = 3, rows = 37, d0 = 5, depth = trans ? 61 : 255;
        std::vector<float> dst(std::size_t((rows + width - 1) / width * width * depth), -7.f);
        cpu::pack_weight_panels(dst.data(), cpu::WeightSource{p, dt, ld, trans}, r0, rows, d0, depth, width);
        for (Index q = 0; q < rows; q += width)
          for (Index d = 0; d < depth; ++d)
            for (Index i = 0; i < width; ++i) {
              float const got = dst[std::size_t(q * depth + d * width + i)];
              float const want = q + i >= rows ? 0.f
                                 : trans      ? value(dt, d0 + d, r0 + q + i)
                                              : value(dt, r0 + q + i, d0 + d);
              if (got != want) {
                INFO(dtype_name(dt) << " width " << width << " trans " << trans << " row " << q + i << " depth " << d);
                REQUIRE(got == want);
              }
            }
      }
}
