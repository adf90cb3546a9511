/// @file clip_corpus_test.cpp
/// @brief Conformance: ClipTokenizer against transformers.CLIPTokenizer on the 200+ prompt corpus of
/// tools/fixtures/make_tokenizer.py (ids unpadded and padded to 77, decoded text). Exact: ids are integers.
#include <catch2/catch.hpp>

#include <fstream>  // std::ifstream
#include <string>   // std::string
#include <vector>   // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include <sdlora/io/safetensors.hpp>            // SafetensorsFile
#include <sdlora/tokenizer/clip_tokenizer.hpp>  // ClipTokenizer

#include "support.hpp"

using sdlora::Index;
using sdlora::tokenizer::ClipTokenizer;

TEST_CASE("ClipTokenizer matches transformers.CLIPTokenizer on the prompt corpus", "[tokenizer][conformance]") {
  std::ifstream in(sdlora::test::fixture("tokenizer/clip_corpus.json"), std::ios::binary);
  REQUIRE(in);
  nlohmann::json const doc = nlohmann::json::parse(in);
  sdlora::io::SafetensorsFile const ids(sdlora::test::fixture("tokenizer/clip_ids.safetensors"));
  auto const padded = ids.load<std::int32_t>("padded");    // (N, 77)
  auto const flat = ids.load<std::int32_t>("ids");         // (total,)
  auto const offsets = ids.load<std::int64_t>("offsets");  // (N + 1,)
  std::vector<std::string> const prompts = doc["prompts"].get<std::vector<std::string>>();
  std::vector<std::string> const decoded = doc["decoded"].get<std::vector<std::string>>();
  std::vector<std::string> const decoded_special = doc["decoded_with_special"].get<std::vector<std::string>>();
  REQUIRE(prompts.size() >= 200);
  REQUIRE(padded.dim(0) == Index(prompts.size()));

  ClipTokenizer tok = ClipTokenizer::bundled();
  REQUIRE(tok.add_tokens(doc["added_tokens"].get<std::vector<std::string>>()) == 1);
  int failures = 0, long_prompts = 0;
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    INFO("prompt " << p << ": '" << prompts[p] << "'");
    std::vector<int> const expect(flat.data() + offsets(Index(p)), flat.data() + offsets(Index(p) + 1));
    std::vector<int> const expect_padded(padded.data() + Index(p) * 77, padded.data() + Index(p + 1) * 77);
    std::vector<int> const got = tok.encode(prompts[p]);
    long_prompts += got.size() > 77;
    CHECK(got == expect);
    CHECK(tok.encode_padded(prompts[p]) == expect_padded);
    CHECK(tok.decode(got) == decoded[p]);
    CHECK(tok.decode(got, false) == decoded_special[p]);
    failures += got != expect;
  }
  CHECK(failures == 0);
  CHECK(long_prompts >= 3);  // the truncation path is exercised
}
