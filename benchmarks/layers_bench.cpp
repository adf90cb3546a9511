/// @file layers_bench.cpp
/// @brief Microbenchmark of the image-side layers on the CPU: Conv2d 3x3 at SD 1.5's first-stage size (N = 1,
/// 320 -> 320 channels, 64x64 latents) forward / input-gradient / weight-gradient, a 1x1 conv, Linear at
/// (4096 x 320) @ (320 x 320), GroupNorm(32, 320) + SiLU, a large square sgemm through ops::gemm as the machine's
/// Eigen GEMM peak, and the AdamW update of SD 1.5's rank-4 attention LoRA (256 factors, 797,184 values) tensor by
/// tensor and in one ops::update_many pass. Prints one JSON line per measurement (best of `repeats` runs after one
/// warm-up).
///   usage: layers_bench [size=64] [repeats=5]
#include <algorithm>  // std::min
#include <chrono>     // std::chrono::steady_clock
#include <cstdio>     // std::printf
#include <cstdlib>    // std::atoi
#include <string>     // std::string
#include <vector>     // std::vector

#include <sdlora/sdlora.hpp>
#include <sdlora/train.hpp>  // ops::update, ops::update_many (the optimizers' elementwise pass)

using namespace sdlora;

namespace {

/// The best time of f() over `repeats` runs after a warm-up, each run after an untimed setup() (a training-mode
/// forward before each backward: a backward consumes what its forward saved).
template <class F, class Setup>
double best_seconds(int repeats, F&& f, Setup&& setup) {
  setup();
  f();  // warm-up: first-touch allocation, thread pool start
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    setup();
    auto const t0 = std::chrono::steady_clock::now();
    f();
    auto const t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  return best;
}
template <class F>
double best_seconds(int repeats, F&& f) {
  return best_seconds(repeats, f, [] {});
}

void report(char const* name, std::string const& shape, double seconds, double flops, int threads, double bytes = 0) {
  std::printf("{\"bench\": \"%s\", \"shape\": \"%s\", \"seconds\": %.6f, \"gflops\": %.2f", name, shape.c_str(),
              seconds, flops / seconds * 1e-9);
  if (bytes > 0) std::printf(", \"gbytes_per_s\": %.2f", bytes / seconds * 1e-9);
  std::printf(", \"threads\": %d, \"dtype\": \"float32\"}\n", threads);
  std::fflush(stdout);
}

Tensor<float> filled(Shape shape, float seed) {
  Tensor<float> t(shape);
  for (Index i = 0; i < t.numel(); ++i) t(i) = float((i * 2654435761u + unsigned(seed * 1000)) % 1000) * 1e-3f - 0.5f;
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  Index const size = argc > 1 ? std::atoi(argv[1]) : 64;
  int const repeats = argc > 2 ? std::atoi(argv[2]) : 5;
  Context<Cpu> ctx;
  int const threads = ctx.threads();

  {  // Eigen GEMM peak: C (n, n) = A (n, n) B (n, n).
    Index const n = 2048;
    auto const a = filled(Shape{n, n}, 1), b = filled(Shape{n, n}, 2);
    Tensor<float> c(Shape{n, n});
    double const s = best_seconds(repeats, [&] { ops::gemm<float, Cpu>(ctx, c.view(), a.view(), b.view()); });
    report("sgemm_square", "2048x2048x2048", s, 2.0 * n * n * n, threads);
  }
  {  // Linear: (4096, 320) @ (320, 320)^T + bias.
    nn::Linear<float> linear(320, 320);
    linear.weight.value = filled(Shape{320, 320}, 3);
    auto const x = filled(Shape{4096, 320}, 4);
    double const s = best_seconds(repeats, [&] { linear.forward(ctx, x); });
    report("linear_forward", "4096x320 -> 320", s, 2.0 * 4096 * 320 * 320, threads);
  }
  std::string const shape = "1x320x" + std::to_string(size) + "x" + std::to_string(size);
  double const conv_flops = 2.0 * 320 * 320 * 9 * double(size * size);
  {  // Conv2d 3x3, stride 1, pad 1: forward, then both gradients.
    nn::Conv2d<float> conv(320, 320, 3, 1, 1);
    conv.weight.value = filled(conv.weight.shape(), 5);
    conv.weight.set_trainable(true);
    auto const x = filled(Shape{1, 320, size, size}, 6);
    double const s = best_seconds(repeats, [&] { conv.forward(ctx, x); });
    report("conv2d_3x3_forward", shape + " -> 320", s, conv_flops, threads);
    auto const dy = filled(Shape{1, 320, size, size}, 7);
    double const sb = best_seconds(repeats, [&] { conv.backward(ctx, dy); },
                                   [&] { conv.forward(ctx, x, nn::Mode::Train); });
    report("conv2d_3x3_backward_input_weight", shape + " -> 320", sb, 2.0 * conv_flops, threads);
  }
  {  // Conv2d 1x1 (a plain GEMM on the image).
    nn::Conv2d<float> conv(320, 320, 1);
    conv.weight.value = filled(conv.weight.shape(), 8);
    auto const x = filled(Shape{1, 320, size, size}, 9);
    double const s = best_seconds(repeats, [&] { conv.forward(ctx, x); });
    report("conv2d_1x1_forward", shape + " -> 320", s, 2.0 * 320 * 320 * double(size * size), threads);
  }
  {  // GroupNorm(32, 320) + SiLU, fused: memory-bound, reported in GB/s (read x twice, write y once).
    nn::GroupNorm<float> gn(32, 320, 1e-6, true, true);
    auto const x = filled(Shape{1, 320, size, size}, 10);
    double const s = best_seconds(repeats, [&] { gn.forward(ctx, x); });
    double const elements = 320.0 * double(size * size);
    report("group_norm_silu_forward", shape, s, 10.0 * elements, threads, 3.0 * 4.0 * elements);
  }
  {  // AdamW over SD 1.5's rank-4 attention LoRA factors: 16 transformer blocks (widths 320 x 2, 640 x 2, 1280 x 2,
     // mid 1280, 1280 x 3, 640 x 3, 320 x 3), each with self-attention q/k/v/out (C -> C) and cross-attention
     // q/out (C -> C), k/v (768 -> C); every Linear a (4, in) down and an (out, 4) up factor. Memory-bound: reports
     // GB/s of x, g, m, v read and x, m, v written.
    std::vector<Shape> shapes;
    for (Index c : {320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320})
      for (Index in : {c, c, c, c, c, Index(768), Index(768), c}) {
        shapes.push_back(Shape{4, in});
        shapes.push_back(Shape{c, 4});
      }
    std::vector<Tensor<float>> x, g, m, v;
    double elements = 0;
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      x.push_back(filled(shapes[i], float(i)));
      g.push_back(filled(shapes[i], float(i) + 0.5f));
      m.emplace_back(shapes[i]);
      v.emplace_back(shapes[i]);
      elements += double(x.back().numel());
    }
    ops::fn::AdamWUpdate<float> const rule{0.99999f, 0.1f, 0.999f, 0.001f, -1e-4f, 0.0316f, 1e-8f, true};
    std::string const what = std::to_string(shapes.size()) + " tensors, " + std::to_string(Index(elements)) + " values";
    double const each = best_seconds(repeats, [&] {
      for (std::size_t i = 0; i < x.size(); ++i)
        ops::update<float, Cpu>(ctx, x[i].view(), g[i].view(), m[i].view(), v[i].view(), rule);
    });
    report("adamw_lora_tensor_by_tensor", what, each, 12.0 * elements, threads, 28.0 * elements);
    std::vector<ops::UpdateSlice<float, Cpu, ops::fn::AdamWUpdate<float>>> slices;
    for (std::size_t i = 0; i < x.size(); ++i) slices.push_back({x[i].view(), g[i].view(), m[i].view(), v[i].view(), rule});
    double const fused = best_seconds(repeats, [&] { ops::update_many<float, Cpu, ops::fn::AdamWUpdate<float>>(ctx, slices); });
    report("adamw_lora_update_many", what, fused, 12.0 * elements, threads, 28.0 * elements);
  }
  return 0;
}
