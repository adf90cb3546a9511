// The packed float GEMM (backend/cpu/sgemm.hpp) on every kernel path this CPU can run, against a double reference:
// ragged edges in M, N and K, depths over one block, row strides, transposes, alpha/beta, batches with broadcast
// operands; and the same bits for 1 and 2 threads.
#include <catch2/catch.hpp>

#include <cmath>
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
