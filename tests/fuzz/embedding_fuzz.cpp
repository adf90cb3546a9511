/// @file embedding_fuzz.cpp
/// @brief libFuzzer target for Textual Inversion embeddings (pipeline::read_embedding: emb_params, string_to_param.*
/// or diffusers' single {token: (n, dim)} safetensors files): any bytes are rejected with a sdlora::Error or read
/// into n >= 1 vectors with a token, without reading outside the input.
#include <cstddef>  // std::size_t
#include <cstdint>  // std::uint8_t
#include <string>   // std::string

#include <sdlora/pipeline/embeddings.hpp>  // pipeline::read_embedding, pipeline::embedding_tokens

#include "fuzz_file.hpp"  // fuzz::as_file

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  std::string const path = sdlora::fuzz::as_file(data, size);
  try {
    auto const ti = sdlora::pipeline::read_embedding(path);
    if (ti.vectors.rank() != 2 || ti.vectors.dim(0) < 1 || ti.token.empty()) __builtin_trap();
    if (std::size_t(ti.vectors.dim(0)) > size) __builtin_trap();  // every vector comes from input bytes
    auto const tokens = sdlora::pipeline::embedding_tokens(ti.token, ti.vectors.dim(0));
    if (sdlora::Index(tokens.size()) != ti.vectors.dim(0)) __builtin_trap();
  } catch (sdlora::Error const&) {
  }
  return 0;
}
