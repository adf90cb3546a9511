// Inputs the fuzz targets found (tests/fixtures/fuzz/findings/), each now a one-line error instead of undefined
// behaviour: a float .npy read as uint8 with a value out of range, and a VAE config with norm_num_groups 0 (a
// division by zero), plus the same guard on the UNet and CLIP configs. Also the limits written with the fuzz targets:
// JSON nesting depth in every JSON read from users, and an embedding of (n, 0) vectors.
#include <catch2/catch.hpp>

#include <filesystem>  // std::filesystem
#include <fstream>     // std::ofstream, std::ifstream
#include <iterator>    // std::istreambuf_iterator
#include <string>      // std::string

#include <nlohmann/json.hpp>

#include <sdlora/core/json.hpp>
#include <sdlora/pipeline.hpp>
#include <sdlora/schedulers/factory.hpp>
#include <sdlora/train/dataset.hpp>
#include <sdlora/train/state.hpp>

#include "support.hpp"

using namespace sdlora;

TEST_CASE("Fuzz findings give one-line errors", "[io][fuzz]") {
  CHECK_THROWS_AS(io::load_npy<std::uint8_t>(test::fixture("fuzz/findings/npy-f4-as-u8-out-of-range.npy")),
                  FormatError);
  CHECK_THROWS_WITH(models::VaeConfig::from_json(
                        models::read_json(test::fixture("fuzz/findings/config-division-by-zero.json"))),
                    Catch::Contains("norm_num_groups must be positive"));
  nlohmann::json unet = {{"norm_num_groups", 0}};
  CHECK_THROWS_WITH(models::UNetConfig::from_json(unet), Catch::Contains("norm_num_groups must be positive"));
  nlohmann::json clip = {{"num_attention_heads", 0}};
  CHECK_THROWS_AS(models::ClipTextConfig::from_json(clip), ConfigError);
  // config_fuzz, second campaign: 71707170 training timesteps made the Euler scheduler allocate 2 GB of tables.
  nlohmann::json const huge = models::read_json(test::fixture("fuzz/findings/config-huge-num-train-timesteps.json"));
  for (char const* name : {"ddim", "euler", "dpmpp_2m", "pndm", "ddpm"})
    CHECK_THROWS_WITH(schedulers::make_scheduler(name, huge),
                      Catch::Contains("'num_train_timesteps' must lie in [2, 100000], got 71707170"));
  // config_fuzz, third campaign: "sample_size": 6.5e23 read as int (undefined behaviour in nlohmann's get<int>).
  CHECK_THROWS_WITH(models::UNetConfig::from_json(
                        models::read_json(test::fixture("fuzz/findings/config-float-out-of-int-range.json"))),
                    Catch::Contains("field 'sample_size' is not an integer in range"));
  CHECK_THROWS_AS(models::UNetConfig::from_json(nlohmann::json{{"block_out_channels", {8, 1e30}}}), ConfigError);
  CHECK_THROWS_AS(models::UNetConfig::from_json(nlohmann::json{{"layers_per_block", 2.5}}), ConfigError);
  CHECK(models::UNetConfig::from_json(nlohmann::json{{"sample_size", 32.0}}).sample_size == 32);
  // lora_fuzz, last campaign: a kohya layer whose lora_up (4, 2) does not chain with its lora_down (4, 2) was read
  // (and would only have failed inside a GEMM when applied).
  std::string const lora = test::fixture("fuzz/findings/lora-up-rank-mismatch.safetensors");
  CHECK_THROWS_WITH(lora::read_lora(lora), Catch::Contains("lora-up-rank-mismatch.safetensors") &&
                                               Catch::Contains("are not a down (r, in) / up (out, r) pair"));
  nlohmann::json ok = huge;
  ok["num_train_timesteps"] = 4000;  // the largest in use (improved DDPM)
  CHECK(schedulers::make_scheduler("euler", ok) != nullptr);
}

namespace {
std::string nested(int depth) { return std::string(std::size_t(depth), '[') + std::string(std::size_t(depth), ']'); }
void write(std::filesystem::path const& p, std::string const& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}
std::string one_line_error(auto&& f) {
  try {
    f();
  } catch (FormatError const& e) {
    return e.what();
  }
  return "no FormatError";
}
}  // namespace

TEST_CASE("JSON nested deeper than 64 levels is refused naming the file", "[io][fuzz][json]") {
  using Catch::Contains;
  REQUIRE(kMaxJsonDepth == 64);
  CHECK(json_too_deep_at(nested(64)) == std::string::npos);
  CHECK(json_too_deep_at(nested(65)) == 64);
  CHECK(json_too_deep_at(R"({"a": ")" + std::string(100, '[') + R"(\"["})") == std::string::npos);  // in strings
  CHECK(json_too_deep_at(R"({"a":)" + nested(64) + "}") == 68);
  CHECK_THROWS_WITH(check_json_depth(nested(100000), "[x] f.json"),
                    Contains("[x] f.json: JSON nested deeper than 64 levels (at byte 64)"));

  // Each reader of user JSON: a 200 KB value of 100000 levels (nlohmann would parse it, then recurse 100000 deep
  // when copying or printing it).
  namespace fs = std::filesystem;
  fs::path const dir = fs::temp_directory_path() / "sdlora_json_depth";
  fs::remove_all(dir);
  std::string const deep = nested(100000);
  auto const expect = [](std::string const& message, std::string const& file) {
    INFO(message);
    CHECK(message.find(file) != std::string::npos);
    CHECK(message.find("JSON nested deeper than 64 levels") != std::string::npos);
    CHECK(message.find('\n') == std::string::npos);
  };
  // diffusers configs and model_index.json (models::read_json)
  write(dir / "unet" / "config.json", R"({"in_channels": 4, "x": )" + deep + "}");
  expect(one_line_error([&] { models::read_json((dir / "unet" / "config.json").string()); }), "unet/config.json");
  // metadata.jsonl, naming the line
  write(dir / "data" / "metadata.jsonl",
        "{\"file_name\": \"a.png\", \"text\": \"a\"}\n{\"file_name\": \"b.png\", \"text\": " + deep + "}\n");
  expect(one_line_error([&] { train::detail::read_metadata(dir / "data" / "metadata.jsonl", {}); }),
         "metadata.jsonl line 2");
  // tokenizer files
  write(dir / "tok" / "vocab.json", deep);
  write(dir / "tok" / "merges.txt", "#version: 0.2\n");
  expect(one_line_error([&] {
           tokenizer::ClipTokenizer::from_vocab_merges((dir / "tok" / "vocab.json").string(),
                                                       (dir / "tok" / "merges.txt").string());
         }),
         "vocab.json");
  // a checkpoint's state.json (is_complete reads it without recursing; load_checkpoint refuses it)
  train::TrainingState<float> state;
  state.global_step = 1;
  std::string const ckpt = train::save_checkpoint((dir / "run").string(), state);
  std::string text;
  {
    std::ifstream in(fs::path(ckpt) / "state.json");
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  REQUIRE(text.rfind('}') != std::string::npos);
  text.insert(text.rfind('}'), ", \"deep\": " + deep);
  write(fs::path(ckpt) / "state.json", text);
  expect(one_line_error([&] { train::load_checkpoint<float>(ckpt); }), "state.json");
  // PEFT metadata in a LoRA file
  io::SafetensorsWriter w;
  w.add("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", Tensor<float>(Shape{2, 4}));
  w.add("unet.down_blocks.0.attentions.0.proj_in.lora_B.weight", Tensor<float>(Shape{4, 2}));
  w.set_metadata("lora_adapter_metadata", R"({"r": 2, "x": )" + deep + "}");
  w.write((dir / "peft.safetensors").string());
  expect(one_line_error([&] { lora::read_lora((dir / "peft.safetensors").string()); }), "peft.safetensors");
  fs::remove_all(dir);
}

TEST_CASE("An embedding of (n, 0) vectors is refused (it holds no bytes but n tokens)", "[io][fuzz]") {
  // Found while writing embedding_fuzz: a header may claim (2^40, 0), zero bytes, and read_embedding returned 2^40
  // vectors of width 0 (embedding_tokens would then make 2^40 names).
  std::string const header = R"({"<tok>":{"dtype":"F32","shape":[1099511627776,0],"data_offsets":[0,0]}})";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[std::size_t(i)] = char((header.size() >> (8 * i)) & 0xffu);
  bytes += header;
  auto const path = (std::filesystem::temp_directory_path() / "sdlora_empty_embedding.safetensors").string();
  std::ofstream(path, std::ios::binary) << bytes;
  CHECK_THROWS_WITH(pipeline::read_embedding(path), Catch::Contains("must be (n, dim) or (dim)") &&
                                                        Catch::Contains("sdlora_empty_embedding.safetensors"));
  std::filesystem::remove(path);
}

TEST_CASE("A state.json whose format or version has the wrong JSON type is a FormatError, not a crash",
          "[io][fuzz][checkpoint]") {
  // train_files_fuzz, first in-memory run (337 k executions): "format": 3 made is_complete's j.value("format", "")
  // throw nlohmann's type_error, which escaped as no sdlora::Error (sdlora-train would have died of terminate).
  namespace fs = std::filesystem;
  fs::path const dir = fs::temp_directory_path() / "sdlora_state_types";
  fs::remove_all(dir);
  train::TrainingState<float> state;
  state.global_step = 1;
  std::string const ckpt = train::save_checkpoint(dir.string(), state);
  std::ifstream finding(test::fixture("fuzz/findings/state-format-not-a-string.json"), std::ios::binary);
  write(fs::path(ckpt) / "state.json", std::string((std::istreambuf_iterator<char>(finding)), {}));
  CHECK_THROWS_WITH(train::load_checkpoint<float>(ckpt), Catch::Contains("is not a complete sdlora checkpoint"));
  CHECK_FALSE(train::latest_checkpoint(dir.string()).has_value());
  // The right format with a version of the wrong type: the same kind of error, naming the version.
  write(fs::path(ckpt) / "state.json", R"({"format": "sdlora-training-state", "version": "1"})");
  CHECK_THROWS_AS(train::load_checkpoint<float>(ckpt), FormatError);
  CHECK_THROWS_WITH(train::load_checkpoint<float>(ckpt), Catch::Contains("state version \"1\", this build reads 1"));
  // The second in-memory run (4.34 M executions): 8.9e24 in an rng list was converted to uint64 (undefined).
  std::ifstream second(test::fixture("fuzz/findings/state-float-as-uint64.json"), std::ios::binary);
  write(fs::path(ckpt) / "state.json", std::string((std::istreambuf_iterator<char>(second)), {}));
  CHECK_THROWS_WITH(train::load_checkpoint<float>(ckpt), Catch::Contains("state.json: 'rng' must hold integers"));
  fs::remove_all(dir);
}
