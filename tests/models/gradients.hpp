/// @file gradients.hpp
/// @brief The UNet tests' bit-for-bit comparison of gradient checkpointing: every gradient of one backward side by
/// side, and the check that two such lists are equal.
#pragma once

#include <cstddef>  // std::size_t
#include <string>   // std::string
#include <vector>   // std::vector

#include <catch2/catch.hpp>

#include <sdlora/nn/module.hpp>  // nn::for_each_parameter

namespace sdlora::test {

/// The input gradients of a UNet backward (sample, context, and SDXL's text embeddings when not empty), then every
/// trainable parameter's gradient in visiting order (a frozen one has none).
template <class Grads, class Module>
std::vector<float> all_gradients(Grads const& g, Module& unet) {
  std::vector<float> all;
  for (auto const* t : {&g.dsample, &g.dencoder_hidden_states, &g.dtext_embeds})
    if (!t->empty()) all.insert(all.end(), t->span().begin(), t->span().end());
  nn::for_each_parameter(unet, [&](std::string const&, auto& p) {
    if (p.trainable) all.insert(all.end(), p.grad.span().begin(), p.grad.span().end());
  });
  return all;
}

/// Equal bit for bit, and more than half of them non-zero (so that the comparison means something).
inline void check_bit_identical(std::vector<float> const& plain, std::vector<float> const& checkpointed) {
  REQUIRE(plain.size() == checkpointed.size());
  std::size_t nonzero = 0;
  for (std::size_t i = 0; i < plain.size(); ++i) {
    REQUIRE(plain[i] == checkpointed[i]);
    nonzero += plain[i] != 0.0f;
  }
  CHECK(nonzero > plain.size() / 2);
}

}  // namespace sdlora::test
