/// @file clip_tokenizer_test.cpp
/// @brief ClipTokenizer units: known ids, padding/truncation, added tokens, decode, vocab.json/merges.txt folders.
/// Exact comparisons: token ids are integers.
#include <catch2/catch.hpp>

#include <cstdint>     // std::uint8_t, std::uint64_t
#include <filesystem>  // std::filesystem::temp_directory_path
#include <fstream>     // std::ofstream
#include <optional>    // std::optional
#include <string>      // std::string
#include <vector>      // std::vector

#include <sdlora/tokenizer/clip_tokenizer.hpp>  // ClipTokenizer

using sdlora::tokenizer::ClipTokenizer;
namespace fs = std::filesystem;

namespace {
ClipTokenizer const& bundled() {
  static ClipTokenizer const t = ClipTokenizer::bundled();
  return t;
}
fs::path scratch(std::string const& name) {
  fs::path const p = fs::temp_directory_path() / ("sdlora_tokenizer_test_" + name);
  fs::create_directories(p);
  return p;
}
}  // namespace

TEST_CASE("The bundled vocabulary gives CLIP's ids", "[tokenizer]") {
  ClipTokenizer const& t = bundled();
  CHECK(t.size() == 49408);
  CHECK(t.bos_id() == 49406);
  CHECK(t.eos_id() == 49407);
  CHECK(t.pad_id() == 49407);
  // transformers.CLIPTokenizer: tok("a photo of a cat").input_ids
  CHECK(t.encode("a photo of a cat") == std::vector<int>{49406, 320, 1125, 539, 320, 2368, 49407});
  CHECK(t.encode("A  PHOTO\tof\n a cat!!") == std::vector<int>{49406, 320, 1125, 539, 320, 2368, 748, 49407});
  CHECK(t.encode("it's 1234.5") == std::vector<int>{49406, 585, 568, 272, 273, 274, 275, 269, 276, 49407});
  CHECK(t.encode("a <|endoftext|> b") == std::vector<int>{49406, 320, 49407, 321, 49407});
  CHECK(t.encode("a <|ENDOFTEXT|> b") ==
        std::vector<int>{49406, 320, 27, 347, 40786, 4160, 91, 285, 321, 49407});
  CHECK(t.encode("") == std::vector<int>{49406, 49407});
  CHECK(t.tokenize("İstanbul") == std::vector<std::string>{"i</w>", "\xC3\x8C\xC4\xA9</w>", "stanbul</w>"});
}

TEST_CASE("encode_padded truncates keeping EOS last and pads with the pad token", "[tokenizer]") {
  ClipTokenizer t = bundled();
  std::vector<int> const p = t.encode_padded("a cat", 10);
  CHECK(p == std::vector<int>{49406, 320, 2368, 49407, 49407, 49407, 49407, 49407, 49407, 49407});
  std::string lng;
  for (int i = 0; i < 50; ++i) lng += "a cat ";
  std::vector<int> const q = t.encode_padded(lng);
  REQUIRE(q.size() == 77);
  CHECK(q[0] == 49406);
  CHECK(q[75] == (75 % 2 == 1 ? 320 : 2368));
  CHECK(q[76] == 49407);
  t.set_pad_token("!");  // SD 2.x
  CHECK(t.pad_id() == 0);
  CHECK(t.encode_padded("a cat", 6) == std::vector<int>{49406, 320, 2368, 49407, 0, 0});
  CHECK_THROWS_AS(t.set_pad_token("<nope>"), sdlora::Error);
}

TEST_CASE("Added tokens are whole units matched after normalisation and decode back", "[tokenizer]") {
  ClipTokenizer t = bundled();
  CHECK(t.encode("<erica>") == std::vector<int>{49406, 283, 13208, 285, 49407});
  CHECK(t.add_tokens({"<erica>", "<erica>"}) == 1);
  CHECK(t.add_tokens({"a"}) == 0);  // already in the vocabulary (a byte token)
  CHECK(t.size() == 49409);
  CHECK(*t.token_to_id("<erica>") == 49408);
  CHECK(t.encode("x<ERICA>y") == std::vector<int>{49406, 343, 49408, 344, 49407});
  CHECK(t.encode("a<erica>'s") == std::vector<int>{49406, 320, 49408, 568, 49407});
  CHECK(t.decode(t.encode("x<ERICA>y")) == "x <erica>y");
  CHECK(t.decode(t.encode("x<ERICA>y"), false) == "<|startoftext|>x <erica>y <|endoftext|>");
  CHECK(t.decode(t.encode("Café crème, 東京!")) == "café crème , 東京 !");
}

TEST_CASE("vocab.json + merges.txt exported from the gz load back to the same tokenizer", "[tokenizer]") {
  fs::path const dir = scratch("folder");
  bundled().save_vocab_merges((dir / "vocab.json").string(), (dir / "merges.txt").string());
  ClipTokenizer const t = ClipTokenizer::from_vocab_merges((dir / "vocab.json").string(), (dir / "merges.txt").string());
  CHECK(t.size() == bundled().size());
  for (int id : {0, 255, 256, 511, 512, 1000, 30000, 49405, 49406, 49407}) CHECK(t.id_to_token(id) == bundled().id_to_token(id));
  for (char const* s : {"a photograph of an astronaut riding a horse", "東京の夜景 ünïcödé 😀 1234.5 it's",
                        "supercalifragilisticexpialidocious"})
    CHECK(t.encode(s) == bundled().encode(s));

  // A diffusers SD 2.x-style folder: pad "!" and a Textual Inversion token.
  std::ofstream(dir / "special_tokens_map.json") << R"({"bos_token": "<|startoftext|>", "pad_token": "!"})";
  std::ofstream(dir / "tokenizer_config.json") << R"({"pad_token": {"content": "!", "special": true}})";
  std::ofstream(dir / "added_tokens.json") << R"({"<erica>": 49408})";
  ClipTokenizer const f = ClipTokenizer::from_folder(dir.string());
  CHECK(f.pad_id() == 0);
  CHECK(f.size() == 49409);
  CHECK(f.encode_padded("<erica> cat", 6) == std::vector<int>{49406, 49408, 2368, 49407, 0, 0});
  fs::remove_all(dir);
}

TEST_CASE("Loading errors name the file", "[tokenizer]") {
  CHECK_THROWS_AS(ClipTokenizer::from_bpe_gz("/nonexistent/bpe.txt.gz"), sdlora::IoError);
  CHECK_THROWS_AS(sdlora::tokenizer::find_bundled_vocab("/nonexistent"), sdlora::IoError);  // an explicit folder is the only one tried
  fs::path const dir = scratch("bad");
  std::ofstream(dir / "vocab.json") << R"({"a": 0, "b": 5})";
  std::ofstream(dir / "merges.txt") << "#version: 0.2\na b\n";
  CHECK_THROWS_AS(ClipTokenizer::from_vocab_merges((dir / "vocab.json").string(), (dir / "merges.txt").string()),
                  sdlora::FormatError);
  fs::remove_all(dir);
}

TEST_CASE("The heap BPE merges exactly as the rescanning loop", "[tokenizer]") {
  // bpe_merge (a heap of candidate pairs) against bpe_merge_rescan (lowest rank first, leftmost of equal ranks, one
  // pair per step) on random words over a 3-letter alphabet with a pseudo-random rank table: about a third of the
  // pairs never merge and ranks repeat across pairs, so ties and chains of merges are common. Exact: symbol lists.
  auto rank = [](std::string const& a, std::string const& b) -> std::optional<int> {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a of "a|b"
    for (char c : a + "|" + b) h = (h ^ std::uint8_t(c)) * 1099511628211ull;
    if (h % 3 == 0) return std::nullopt;
    return int((h >> 8) % 40);
  };
  std::uint64_t state = 42;
  auto next = [&] { return (state = state * 6364136223846793005ull + 1442695040888963407ull) >> 33; };
  int merged_somewhere = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<std::string> word(std::size_t(next() % (trial < 2900 ? 24 : 400)));
    for (auto& s : word) s = std::string(1, char('a' + next() % 3));
    auto const fast = sdlora::tokenizer::detail::bpe_merge(word, rank);
    auto const reference = sdlora::tokenizer::detail::bpe_merge_rescan(word, rank);
    INFO("trial " << trial << ", " << word.size() << " symbols");
    REQUIRE(fast == reference);
    merged_somewhere += fast.size() < word.size();
  }
  CHECK(merged_somewhere > 2000);  // the table merges: the comparison is not between two unchanged words
}
