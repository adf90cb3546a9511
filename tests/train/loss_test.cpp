/// @file loss_test.cpp
/// @brief MSE, min-SNR-γ and prior-preservation losses against diffusers' training scripts, and their gradients
/// against central finite differences in double.
#include <cmath>    // std::abs
#include <cstdint>  // std::int64_t
#include <vector>   // std::vector

#include <catch2/catch.hpp>

#include <sdlora/train.hpp>

#include "support.hpp"

using namespace sdlora;
using namespace sdlora::train;

namespace {
std::vector<float> to_vector(Tensor<float> const& t) { return {t.data(), t.data() + t.numel()}; }
Tensor<float> to_tensor(std::vector<float> const& v) {
  Tensor<float> t(Shape{Index(v.size())});
  for (Index i = 0; i < t.numel(); ++i) t(i) = v[i];
  return t;
}
}  // namespace

TEST_CASE("compute_snr and min-SNR weights match diffusers", "[train][loss]") {
  io::SafetensorsFile const f(test::fixture("train/losses.safetensors"));
  auto const ac = f.load<float>("alphas_cumprod");
  auto const ts = f.load<std::int64_t>("timesteps");
  std::vector<std::int64_t> const steps(ts.data(), ts.data() + ts.numel());
  auto const snr = compute_snr(ac, steps);
  // Tolerance 1e-6 relative: the same float32 sqrt/div/square as torch (exact up to rounding order).
  CHECK(test::rel_l2(to_tensor(snr), f.load<float>("snr")) < 1e-6);
  double const gamma = std::stod(f.metadata().at("snr_gamma"));
  auto const eps = min_snr_weights(snr, gamma, PredictionType::Epsilon);
  auto const v = min_snr_weights(snr, gamma, PredictionType::VPrediction);
  CHECK(test::rel_l2(to_tensor(eps), f.load<float>("weights.epsilon")) < 1e-6);
  CHECK(test::rel_l2(to_tensor(v), f.load<float>("weights.v_prediction")) < 1e-6);
  CHECK(eps.front() < 1.0f);  // t = 0 has a huge SNR: its weight is clipped (the test can fail)
  CHECK(eps.back() == 1.0f);  // t = 999 has SNR < γ: weight 1 for epsilon
}

TEST_CASE("Weighted (min-SNR) MSE matches train_text_to_image_lora.py", "[train][loss]") {
  io::SafetensorsFile const f(test::fixture("train/losses.safetensors"));
  for (std::string const type : {"epsilon", "v_prediction"}) {
    INFO(type);
    std::string const k = "snr_loss." + type;
    auto const pred = f.load<float>(k + ".pred");
    auto const target = f.load<float>(k + ".target");
    auto const w = to_vector(f.load<float>("weights." + type));
    auto const out = weighted_mse_loss<float>(pred, target, w);
    // Tolerance 1e-6 relative: float32 elementwise terms, sums in double (torch sums in float).
    CHECK(out.value == Approx(f.load<float>(k + ".loss")(0)).epsilon(1e-6));
    CHECK(test::rel_l2(out.grad, f.load<float>(k + ".grad")) < 1e-6);
  }
}

TEST_CASE("MSE and prior preservation match torch and diffusers' DreamBooth script", "[train][loss]") {
  io::SafetensorsFile const f(test::fixture("train/losses.safetensors"));
  auto const mse = mse_loss<float>(f.load<float>("mse.pred"), f.load<float>("mse.target"));
  CHECK(mse.value == Approx(f.load<float>("mse.loss")(0)).epsilon(1e-6));
  CHECK(test::rel_l2(mse.grad, f.load<float>("mse.grad")) < 1e-6);
  auto const prior = prior_preservation_loss<float>(f.load<float>("prior.pred"), f.load<float>("prior.target"),
                                                    f.load<double>("prior.weight")(0));
  CHECK(prior.value == Approx(f.load<float>("prior.loss")(0)).epsilon(1e-6));
  CHECK(test::rel_l2(prior.grad, f.load<float>("prior.grad")) < 1e-6);
  Tensor<float> odd(Shape{3, 2});
  CHECK_THROWS_WITH(prior_preservation_loss<float>(odd, odd, 1.0), Catch::Contains("(3, 2)"));
  Tensor<float> other(Shape{2, 3});
  CHECK_THROWS_WITH(mse_loss<float>(odd, other), Catch::Contains("(3, 2)") && Catch::Contains("(2, 3)"));
}

TEST_CASE("Loss gradients match central finite differences in double", "[train][loss]") {
  // Tolerance 1e-6 relative L2: the losses are quadratic, so central differences are exact up to rounding (~1e-10).
  auto pred = test::random_tensor<double>(Shape{4, 2, 3}, 1);
  auto const target = test::random_tensor<double>(Shape{4, 2, 3}, 2);
  std::vector<float> const w = {0.25f, 1.0f, 0.5f, 2.0f};
  auto const weighted = weighted_mse_loss<double>(pred, target, w);
  CHECK(test::rel_l2(weighted.grad, test::numeric_gradient(pred, [&] {
                       return weighted_mse_loss<double>(pred, target, w).value;
                     })) < 1e-6);
  auto const prior = prior_preservation_loss<double>(pred, target, 0.7);
  CHECK(test::rel_l2(prior.grad, test::numeric_gradient(pred, [&] {
                       return prior_preservation_loss<double>(pred, target, 0.7).value;
                     })) < 1e-6);
  auto const mse = mse_loss<double>(pred, target);
  CHECK(test::rel_l2(mse.grad, test::numeric_gradient(pred, [&] { return mse_loss<double>(pred, target).value; })) <
        1e-6);
}

TEST_CASE("The losses' backend-ops kernel gives the host loop's gradient bits", "[train][loss]") {
  // Every backend but Cpu computes the squared error from ops (difference, double sum of squares, scale): run that
  // kernel on Cpu against the host loop. Gradients: bit-identical (the same two roundings in T). Sum: 1e-12
  // relative (the same double squares summed in another order).
  Context<Cpu> ctx;
  for (Index n : {Index(1), Index(7), Index(4096 + 3)}) {
    INFO(n);
    auto const pred = test::random_tensor<float>(Shape{n}, 3);
    auto const target = test::random_tensor<float>(Shape{n}, 4);
    Tensor<float> loop(Shape{n}), via_ops(Shape{n});
    double const coef = 2.0 / double(n) * 0.3;
    double const a = train::detail::squared_error_loop<float>(loop.view(), pred.view(), target.view(), coef);
    double const b = train::detail::squared_error_ops<float, Cpu>(ctx, via_ops.view(), pred.view(), target.view(), coef);
    CHECK(std::abs(a - b) <= 1e-12 * a);
    CHECK(a > 0);
    for (Index i = 0; i < n; ++i) REQUIRE(loop(i) == via_ops(i));
  }
}
