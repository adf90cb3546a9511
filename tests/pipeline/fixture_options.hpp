/// @file fixture_options.hpp
/// @brief The generation settings the pipeline and conversion fixtures were made with (tools/fixtures/make_pipeline.py,
/// make_convert.py).
#pragma once

#include <string>  // std::string

#include <sdlora/pipeline.hpp>  // pipeline::GenerateOptions

namespace sdlora::test {

/// "a photo of a cat", empty negative prompt, 4 steps of `sampler`, guidance 7.5, 16x16 pixels, seed 42.
inline pipeline::GenerateOptions pipeline_fixture_options(std::string const& sampler) {
  pipeline::GenerateOptions o;
  o.prompt = "a photo of a cat";
  o.steps = 4;
  o.guidance_scale = 7.5;
  o.width = o.height = 16;
  o.seed = 42;
  o.sampler = sampler;
  return o;
}

}  // namespace sdlora::test
