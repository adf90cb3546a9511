/// @file attention_bench.cpp
/// @brief One multi-head attention forward (ops::attention_forward, float) or backward (ops::attention_backward,
/// given the forward's o and lse) at a chosen shape, default SD 1.5's first-block self-attention at 64x64 latents:
/// q, k, v (1, 4096, 320), 8 heads of 40. Prints one JSON line: the best of `repeats` runs after a warm-up. Small on
/// purpose, so that `valgrind --tool=callgrind` counts the instructions of just this op (valgrind reports no
/// AVX-512: the AVX2 path runs under it):
///   attention_bench [L=4096] [head_dim=40] [heads=8] [repeats=3 (0: one run, no warm-up)] [threads=1]
///                   [forward|backward] [block_q=64] [block_k=256]
#include <algorithm>  // std::min, std::max
#include <chrono>     // std::chrono::steady_clock
#include <cstdio>     // std::printf
#include <cstdlib>    // std::atoi
#include <string>     // std::string

#include <sdlora/backend/cpu/attention.hpp>  // ops::attention_forward on the CPU

using namespace sdlora;

namespace {
Tensor<float> filled(Shape shape, unsigned seed) {
  auto t = Tensor<float>::uninitialized(shape);
  for (Index i = 0; i < t.numel(); ++i) t(i) = float((unsigned(i) * 2654435761u + seed * 1000u) % 1000u) * 1e-3f - 0.5f;
  return t;
}
}  // namespace

int main(int argc, char** argv) {
  Index const l = argc > 1 ? std::atoi(argv[1]) : 4096;
  Index const d = argc > 2 ? std::atoi(argv[2]) : 40;
  Index const heads = argc > 3 ? std::atoi(argv[3]) : 8;
  int const repeats = argc > 4 ? std::atoi(argv[4]) : 3;
  Context<Cpu> ctx;
  ctx.num_threads = argc > 5 ? std::atoi(argv[5]) : 1;
  auto const q = filled(Shape{1, l, heads * d}, 1), k = filled(Shape{1, l, heads * d}, 2),
             v = filled(Shape{1, l, heads * d}, 3);                      // (1, L, H*D)
  auto o = Tensor<float>::uninitialized(q.shape());                      // (1, L, H*D)
  auto lse = Tensor<float>::uninitialized(Shape{1, heads, l});           // (1, H, L)
  ops::Attention op{.heads = heads};
  if (argc > 7) op.block_q = std::atoi(argv[7]);
  if (argc > 8) op.block_k = std::atoi(argv[8]);
  bool const backward = argc > 6 && std::string(argv[6]) == "backward";
  auto const dout = filled(q.shape(), 4);
  auto dq = Tensor<float>::uninitialized(q.shape()), dk = Tensor<float>::uninitialized(q.shape()),
       dv = Tensor<float>::uninitialized(q.shape());  // (1, L, H*D) each
  auto forward = [&] {
    ops::attention_forward<float, Cpu>(ctx, op, o.view(), lse.view(), q.view(), k.view(), v.view());
  };
  if (backward) forward();
  auto run = [&] {
    if (!backward) return forward();
    ops::attention_backward<float, Cpu>(ctx, op, dq.view(), dk.view(), dv.view(), q.view(), k.view(), v.view(),
                                        o.view(), lse.view(), dout.view());
  };
  if (repeats > 0) run();  // warm-up (repeats 0: one cold run, e.g. under callgrind)
  double best = 1e30;
  for (int r = 0; r < std::max(repeats, 1); ++r) {
    auto const t0 = std::chrono::steady_clock::now();
    run();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  double const flops = (backward ? 10.0 : 4.0) * double(l) * double(l) * double(d) * double(heads);
  std::printf("{\"bench\": \"attention_%s\", \"shape\": \"1x%ldx%ld, %ld heads of %ld\", \"seconds\": %.4f, "
              "\"gflops\": %.2f, \"threads\": %d, \"isa\": \"%s\", \"o0\": %.6g}\n",
              backward ? "backward" : "forward", long(l), long(heads * d), long(heads), long(d), best,
              flops / best * 1e-9, ctx.threads(), cpu::isa_name(cpu::resolve_isa(ctx.isa)), double(backward ? dq(0) : o(0)));
  return 0;
}
