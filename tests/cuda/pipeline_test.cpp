/// @file pipeline_test.cpp
/// @brief The backend-generic pipeline and optimizers on Cuda compared with the Cpu backend: txt2img / img2img on the
/// tiny SD 1.x fixture (on_backend<Cuda> of the loaded checkpoint), and AdamW / SGD / Adafactor steps. Compile-verified
/// only so far: no GPU was available when they were written (the binary exits 77 without one).
///
/// Tolerances:
/// - txt2img / img2img fp32: final latents relative L2 <= 1e-4 (the design's whole-model bound; cuBLAS, the norm and
///   attention kernels sum in other orders than the CPU, and the scheduler feeds each step's rounding into the next)
///   and the decoded images within mean |diff| <= 1/255 over [0, 1] pixels (issue 18: the same picture).
/// - AdamW / SGD fp32 after 5 steps: relative L2 <= 1e-6 against the CPU (nvcc contracts a*b + c into one FMA; sqrt
///   and division are IEEE-rounded on both); Adafactor's arithmetic runs on the host for every backend: bit-exact.
#include <catch2/catch.hpp>

#include <cmath>   // std::abs
#include <memory>  // std::unique_ptr
#include <string>  // std::string
#include <vector>  // std::vector

#include <sdlora/cuda.hpp>
#include <sdlora/pipeline.hpp>
#include <sdlora/train/optimizer.hpp>

#include "pipeline/fixture_options.hpp"  // test::pipeline_fixture_options
#include "support.hpp"                   // fixture, rel_l2, random_tensor

using namespace sdlora;

namespace {

models::StableDiffusion<float, Cpu>& tiny_cpu() {
  static auto sd = models::load_stable_diffusion<float>(test::fixture("models/tiny-sd1"));
  return sd;
}
models::StableDiffusion<float, Cuda>& tiny_cuda() {
  static auto sd = pipeline::on_backend<Cuda>(tiny_cpu());
  return sd;
}
/// Mean |a - b| of images in [-1, 1], measured in [0, 1] pixel units.
double mean_abs_pixels(Tensor<float, Cpu> const& a, Tensor<float, Cpu> const& b) {
  REQUIRE(a.numel() == b.numel());
  double sum = 0;
  for (Index i = 0; i < a.numel(); ++i) sum += std::abs(double(a(i)) - double(b(i))) / 2.0;
  return sum / double(a.numel());
}

}  // namespace

TEST_CASE("cuda txt2img and img2img give the CPU's latents and images", "[cuda][pipeline]") {
  Context<Cpu> cpu;
  Context<Cuda> gpu;
  for (std::string name : {"ddim", "euler_a", "dpmpp_2m"}) {
    INFO(name);
    auto const o = test::pipeline_fixture_options(name);
    auto const ref = pipeline::txt2img(cpu, tiny_cpu(), o);
    auto const out = pipeline::txt2img(gpu, tiny_cuda(), o);
    CHECK(test::rel_l2(out.latents, ref.latents) < 1e-4);
    CHECK(mean_abs_pixels(out.images, ref.images) <= 1.0 / 255.0);
  }
  auto o = test::pipeline_fixture_options("ddim");
  o.strength = 0.6;
  auto const init = test::random_tensor<float>(Shape{3, 16, 16}, 7);  // (3, H, W) in [-1, 1]
  auto const ref = pipeline::img2img(cpu, tiny_cpu(), init.view(), o);
  auto const out = pipeline::img2img(gpu, tiny_cuda(), init.view(), o);
  CHECK(test::rel_l2(out.latents, ref.latents) < 1e-4);
  CHECK(mean_abs_pixels(out.images, ref.images) <= 1.0 / 255.0);
}

TEST_CASE("cuda optimizers step like the CPU ones", "[cuda][optimizer]") {
  for (std::string type : {"adamw", "sgd", "adafactor"}) {
    INFO(type);
    nn::Parameter<float, Cpu> host(Shape{6, 10});
    host.value = test::random_tensor<float>(Shape{6, 10}, 1);
    host.set_trainable(true);
    nn::Parameter<float, Cuda> device(Shape{6, 10});
    device.value = to_device(host.value);
    device.set_trainable(true);
    train::OptimizerOptions opt;
    opt.type = type;
    opt.lr = 1e-2;
    opt.momentum = type == "sgd" ? 0.9 : 0.0;
    auto cpu_opt = train::make_optimizer<float, Cpu>(opt, {{"w", &host}});
    auto gpu_opt = train::make_optimizer<float, Cuda>(opt, {{"w", &device}});
    for (int step = 0; step < 5; ++step) {
      host.grad = test::random_tensor<float>(Shape{6, 10}, 100 + std::uint32_t(step));
      device.grad = to_device(host.grad);
      cpu_opt->step();
      gpu_opt->step();
    }
    auto const got = to_host(device.value);
    if (type == "adafactor") {
      for (Index i = 0; i < got.numel(); ++i) REQUIRE(got(i) == host.value(i));
    } else {
      CHECK(test::rel_l2(got, host.value) < 1e-6);
    }
    auto const state = gpu_opt->state_dict();  // host tensors, loadable into a CPU optimizer
    auto const cpu_state = cpu_opt->state_dict();
    for (auto const& [key, t] : cpu_state.tensors) {
      INFO(key);
      REQUIRE(state.tensors.count(key) == 1);
      CHECK(test::rel_l2(state.tensors.at(key), t) < 1e-6);
    }
  }
}
