/// @file convert_test.cpp
/// @brief sdlora-convert's library parts and the program: LoRA layout conversion, the single-file and diffusers-folder
/// writers (round trips through our loaders), a merged checkpoint against the adapter path and against diffusers'
/// fuse_lora (tools/fixtures/make_convert.py), SVD extraction and rank reduction, dtype conversion.
#include <catch2/catch.hpp>

#include <algorithm>   // std::count
#include <cmath>       // std::sqrt
#include <filesystem>  // std::filesystem
#include <map>         // std::map
#include <string>      // std::string
#include <vector>      // std::vector

#include <Eigen/Dense>  // Eigen::MatrixXd, Eigen::JacobiSVD

#include <sdlora/lora/convert.hpp>       // lora::convert_lora, lora::resize_lora
#include <sdlora/lora/extract.hpp>       // lora::extract_lora
#include <sdlora/models/checkpoint.hpp>  // models::load_stable_diffusion
#include <sdlora/models/save.hpp>        // models::save_single_file, save_diffusers_folder, convert_file_dtype
#include <sdlora/pipeline/lora.hpp>      // pipeline::apply_loras
#include <sdlora/pipeline/txt2img.hpp>   // pipeline::txt2img
#include <sdlora/instances.hpp>  // compiled once: the sdlora::instances library every test links

#include "examples/program.hpp"          // test::scratch_dir, test::run_program
#include "pipeline/fixture_options.hpp"  // test::pipeline_fixture_options
#include "support.hpp"                   // test::fixture, test::rel_l2, test::random_tensor

using namespace sdlora;
namespace fs = std::filesystem;

namespace {

fs::path scratch() { return test::scratch_dir("sdlora_convert_test"); }

models::StableDiffusion<float> load(std::string const& path, std::string const& config = "") {
  models::LoadOptions o;
  o.config_dir = config;
  return models::load_stable_diffusion<float>(path, o);
}

/// Every parameter of two checkpoints, compared exactly (names and values).
void check_same_parameters(models::StableDiffusion<float>& a, models::StableDiffusion<float>& b) {
  auto collect = [](auto& module) {
    std::map<std::string, Tensor<float>> m;
    nn::for_each_parameter(module, [&](std::string const& name, auto& p) { m[name] = p.widened(); });
    return m;
  };
  auto compare = [&](auto& x, auto& y, char const* what) {
    auto const mx = collect(x), my = collect(y);
    REQUIRE(mx.size() == my.size());
    std::size_t differ = 0;
    for (auto const& [name, t] : mx) {
      auto it = my.find(name);
      REQUIRE(it != my.end());
      REQUIRE(it->second.shape() == t.shape());
      for (Index i = 0; i < t.numel(); ++i) differ += t(i) != it->second(i);
    }
    INFO(what);
    CHECK(differ == 0);
  };
  compare(a.unet, b.unet, "unet");
  compare(a.vae, b.vae, "vae");
  compare(a.text_encoder, b.text_encoder, "text_encoder");
  REQUIRE(a.is_sdxl() == b.is_sdxl());
  if (a.is_sdxl()) compare(a.text_encoder_2, b.text_encoder_2, "text_encoder_2");
}

/// scale * up @ down of an entry as an (out, fan) double matrix.
Eigen::MatrixXd delta(lora::LoraEntry const& e) {
  Index const r = e.rank(), out = e.up.dim(0), fan = e.down.numel() / r;
  Eigen::MatrixXd B(out, r), A(r, fan);
  for (Index i = 0; i < out; ++i)
    for (Index k = 0; k < r; ++k) B(i, k) = e.up(i * r + k);
  for (Index k = 0; k < r; ++k)
    for (Index j = 0; j < fan; ++j) A(k, j) = e.down(k * fan + j);
  return e.scale() * B * A;
}

double rel(Eigen::MatrixXd const& a, Eigen::MatrixXd const& ref) { return (a - ref).norm() / ref.norm(); }


}  // namespace

TEST_CASE("kohya -> PEFT -> kohya round-trips tensor-identical, metadata carried", "[convert][lora]") {
  for (std::string const name : {"lora/kohya_diffusers", "pipeline/lora_kohya"}) {
    INFO(name);
    std::string const in = test::fixture(name + ".safetensors");
    std::string const peft = (scratch() / "rt_peft.safetensors").string(), back = (scratch() / "rt_kohya.safetensors").string();
    lora::convert_lora(in, lora::LoraFormat::Peft, peft);
    lora::convert_lora(peft, lora::LoraFormat::Kohya, back);
    // The PEFT file is a real PEFT file: dotted module names, alphas in lora_adapter_metadata.
    auto const mid = lora::read_lora(peft);
    auto const orig = lora::read_lora(in);
    CHECK(mid.format == lora::LoraFormat::Peft);
    REQUIRE(mid.entries.size() == orig.entries.size());
    for (auto const& e : mid.entries) CHECK(e.module.find('.') != std::string::npos);
    CHECK(mid.metadata.count("lora_adapter_metadata") == 1);
    io::SafetensorsFile const a(in), b(back);
    for (auto const& key : a.keys()) {
      INFO(key);
      REQUIRE(b.contains(key));
      CHECK(b.info(key).dtype == a.info(key).dtype);
      CHECK(b.info(key).shape == a.info(key).shape);
      CHECK(b.bytes(key) == a.bytes(key));  // byte for byte
    }
    for (auto const& key : b.keys())  // the only additions: alphas the original left implicit (alpha = rank)
      if (!a.contains(key)) CHECK((key.size() > 6 && key.substr(key.size() - 6) == ".alpha"));
    for (auto const& [k, v] : a.metadata()) {
      INFO(k);
      REQUIRE(b.metadata().count(k) == 1);
      CHECK(b.metadata().at(k) == v);
    }
  }
  // LDM-named kohya files come back with diffusers names and the same factors.
  std::string const peft = (scratch() / "ldm_peft.safetensors").string(), back = (scratch() / "ldm_kohya.safetensors").string();
  lora::convert_lora(test::fixture("lora/kohya_ldm.safetensors"), lora::LoraFormat::Peft, peft);
  lora::convert_lora(peft, lora::LoraFormat::Kohya, back);
  auto const orig = lora::read_lora(test::fixture("lora/kohya_ldm.safetensors")), rt = lora::read_lora(back);
  REQUIRE(orig.entries.size() == rt.entries.size());
  std::map<std::string, lora::LoraEntry const*> by_flat;
  for (auto const& e : rt.entries) by_flat[e.component + "/" + e.flat] = &e;
  for (auto const& e : orig.entries) {
    INFO(e.key);
    auto it = by_flat.find(e.component + "/" + e.flat);
    REQUIRE(it != by_flat.end());
    CHECK(test::rel_l2(it->second->down, e.down) == 0.0);
    CHECK(test::rel_l2(it->second->up, e.up) == 0.0);
    CHECK(it->second->alpha == e.alpha);
  }
  // LyCORIS layers stay kohya (kohya -> kohya keeps them byte for byte); they have no PEFT form and no rank to cut.
  std::string const loha = test::fixture("lycoris/loha.safetensors"), loha_back = (scratch() / "loha.safetensors").string();
  lora::convert_lora(loha, lora::LoraFormat::Kohya, loha_back);
  io::SafetensorsFile const la(loha), lb(loha_back);
  for (auto const& key : la.keys()) {
    INFO(key);
    REQUIRE(lb.contains(key));
    CHECK(lb.bytes(key) == la.bytes(key));
  }
  CHECK_THROWS_WITH(lora::convert_lora(loha, lora::LoraFormat::Peft, peft), Catch::Contains("LoHa"));
  CHECK_THROWS_WITH(lora::resize_lora(lora::read_lora(loha), 2), Catch::Contains("LyCORIS LoHa"));
  // Keys of no LoRA layout are not silently dropped.
  CHECK_THROWS_WITH(lora::convert_lora(test::fixture("models/tiny-sd1.safetensors"), lora::LoraFormat::Peft, peft),
                    Catch::Contains("tiny-sd1.safetensors"));
}

TEST_CASE("resize_lora: the same rank reproduces each delta, a lower rank is the best rank-R approximation",
          "[convert][lora]") {
  // Tolerance: the deltas are products of float factors recomputed in double, so the same-rank refactoring agrees
  // to float rounding (<= 1e-5 relative). Eckart-Young: the rank-R error equals sqrt(sum of the cut sigma^2).
  auto const file = lora::read_lora(test::fixture("lora/kohya_diffusers.safetensors"));
  auto const same = lora::resize_lora(file, 4);
  std::vector<lora::ResizedLayer> report;
  auto const low = lora::resize_lora(file, 2, &report);
  REQUIRE(same.entries.size() == file.entries.size());
  REQUIRE(report.size() == file.entries.size());
  for (std::size_t i = 0; i < file.entries.size(); ++i) {
    auto const& e = file.entries[i];
    INFO(e.key);
    Eigen::MatrixXd const d = delta(e);
    CHECK(same.entries[i].rank() == e.rank());
    CHECK(rel(delta(same.entries[i]), d) <= 1e-5);
    CHECK(low.entries[i].rank() == 2);
    CHECK(low.entries[i].down.shape().rank() == e.down.shape().rank());
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(d, Eigen::ComputeThinU | Eigen::ComputeThinV);
    Eigen::VectorXd const s = svd.singularValues();
    Eigen::MatrixXd const best = svd.matrixU().leftCols(2) * s.head(2).asDiagonal() * svd.matrixV().leftCols(2).transpose();
    CHECK(rel(delta(low.entries[i]), best) <= 1e-5);
    double const cut = std::sqrt(s.tail(s.size() - 2).squaredNorm());
    CHECK((delta(low.entries[i]) - d).norm() == Approx(cut).epsilon(1e-4).margin(1e-7));
    CHECK(report[i].kept_energy == Approx(s.head(2).squaredNorm() / s.squaredNorm()).epsilon(1e-9));
  }
  // Through a file: the written alphas give the same deltas.
  std::string const path = (scratch() / "resized.safetensors").string();
  lora::save_lora(path, low, lora::LoraFormat::Kohya);
  auto const read = lora::read_lora(path);
  REQUIRE(read.entries.size() == low.entries.size());
  for (std::size_t i = 0; i < read.entries.size(); ++i)
    CHECK(rel(delta(read.entries[i]), delta(low.entries[i])) <= 1e-6);
  CHECK(read.metadata.at("ss_network_dim") == "2");
  CHECK_THROWS_WITH(lora::resize_lora(file, 0), Catch::Contains("at least 1"));
}

TEST_CASE("extract_lora recovers a known low-rank difference and keeps the top singular values", "[convert][lora]") {
  // Tolerance: tuned = base + delta in float, so tuned - base carries float rounding of the weights (~1e-7 of |W|,
  // with |delta| ~ |W|): the recovered delta is within 1e-4 relative.
  auto base = load(test::fixture("models/tiny-sd1"));
  auto tuned = load(test::fixture("models/tiny-sd1"));
  lora::ExtractOptions o;
  o.rank = 2;
  o.conv_rank = 2;
  o.clamp_quantile = 1.0;  // no clamp
  std::map<std::string, Eigen::MatrixXd> truth;
  std::uint32_t seed = 1;
  auto plant = [&](auto& module, std::string const& component) {
    module.visit("", [&](std::string const& name, auto& leaf) {
      using L = std::remove_cvref_t<decltype(leaf)>;
      if constexpr (lora::AdaptableLeaf<L>) {
        Shape const w = leaf.weight.shape();
        bool const conv3x3 = w.rank() == 4 && w[2] > 1;
        if (lora::extract_rank(component, name, conv3x3, o) == 0) return;
        Index const out = w[0], fan = w.numel() / out;
        Eigen::MatrixXd U(out, 2), V(fan, 2);
        auto const u = test::random_tensor<double>(Shape{out, 2}, seed++), v = test::random_tensor<double>(Shape{fan, 2}, seed++);
        for (Index i = 0; i < out * 2; ++i) U(i / 2, i % 2) = u(i);
        for (Index i = 0; i < fan * 2; ++i) V(i / 2, i % 2) = v(i);
        Eigen::MatrixXd d = 0.5 * U * V.transpose() / std::sqrt(double(fan));
        for (Index i = 0; i < out; ++i)
          for (Index j = 0; j < fan; ++j) leaf.weight.value(i * fan + j) += float(d(i, j));
        truth[component + "/" + name] = d;
      }
    });
  };
  plant(tuned.unet, "unet");
  plant(tuned.text_encoder, "text_encoder");
  auto file = lora::extract_lora(base.unet, tuned.unet, "unet", o);
  auto te = lora::extract_lora(base.text_encoder, tuned.text_encoder, "text_encoder", o);
  CHECK(te.entries.size() == 12);  // 2 layers x (q, k, v, out, fc1, fc2)
  file.append(std::move(te));
  REQUIRE(file.entries.size() == truth.size());
  bool conv = false;
  for (auto const& e : file.entries) {
    INFO(e.component << " " << e.module);
    CHECK(e.rank() == 2);
    CHECK(e.alpha == 2.0);
    conv = conv || (e.conv() && e.down.dim(2) == 3);
    CHECK(rel(delta(e), truth.at(e.component + "/" + e.module)) <= 1e-4);
  }
  CHECK(conv);  // 3x3 convolutions were extracted (conv_rank)
  // The randomized SVD finds the same rank-2 differences (its range finder spans them exactly).
  o.svd = lora::SvdMethod::Randomized;
  auto const fast = lora::extract_lora(base.unet, tuned.unet, "unet", o);
  REQUIRE(!fast.entries.empty());
  for (auto const& e : fast.entries) {
    INFO(e.module);
    CHECK(rel(delta(e), truth.at("unet/" + e.module)) <= 1e-4);
  }
  o.svd = lora::SvdMethod::Exact;

  // Rank 1 of a rank-2 difference: the top singular pair.
  o.rank = 1;
  o.conv_rank = 0;
  for (auto method : {lora::SvdMethod::Exact, lora::SvdMethod::Randomized}) {
    o.svd = method;
    auto const top = lora::extract_lora(base.unet, tuned.unet, "unet", o);
    REQUIRE(!top.entries.empty());
    for (auto const& e : top.entries) {
      INFO(e.module << (method == lora::SvdMethod::Randomized ? " randomized" : " exact"));
      Eigen::MatrixXd const& d = truth.at("unet/" + e.module);
      Eigen::JacobiSVD<Eigen::MatrixXd> svd(d, Eigen::ComputeThinU | Eigen::ComputeThinV);
      Eigen::MatrixXd const best = svd.singularValues()(0) * svd.matrixU().col(0) * svd.matrixV().col(0).transpose();
      CHECK(rel(delta(e), best) <= 1e-4);
    }
  }
  o.svd = lora::SvdMethod::Exact;

  // Clamping: every factor entry within the q-quantile of the unclamped magnitudes.
  o.rank = 2;
  o.clamp_quantile = 0.9;
  auto const clamped = lora::extract_lora(base.text_encoder, tuned.text_encoder, "text_encoder", o);
  o.clamp_quantile = 1.0;
  auto const unclamped = lora::extract_lora(base.text_encoder, tuned.text_encoder, "text_encoder", o);
  REQUIRE(clamped.entries.size() == unclamped.entries.size());
  for (std::size_t i = 0; i < unclamped.entries.size(); ++i) {
    std::vector<double> mags;
    for (auto const* t : {&unclamped.entries[i].up, &unclamped.entries[i].down})
      for (Index j = 0; j < t->numel(); ++j) mags.push_back(std::abs((*t)(j)));
    double const hi = lora::detail::quantile(mags, 0.9);
    std::size_t over = 0, at = 0;
    for (auto const* t : {&clamped.entries[i].up, &clamped.entries[i].down})
      for (Index j = 0; j < t->numel(); ++j) {
        over += std::abs((*t)(j)) > hi * (1 + 1e-6);
        at += std::abs(std::abs((*t)(j)) - hi) <= 1e-6 * hi;
      }
    CHECK(over == 0);
    CHECK(at >= mags.size() / 20);  // about a tenth of the entries sit on the bound
  }
  // An unchanged component gives nothing above min_diff; mismatched architectures name the layer.
  o.min_diff = 0.01;
  CHECK(lora::extract_lora(base.text_encoder, base.text_encoder, "text_encoder", o).entries.empty());
  auto other = load(test::fixture("models/tiny-sd2.safetensors"), test::fixture("models/tiny-sd2"));
  CHECK_THROWS_WITH(lora::extract_lora(base.text_encoder, other.text_encoder, "text_encoder", o),
                    Catch::Contains("text_encoder layer"));
}

TEST_CASE("The single-file writer is the inverse of our single-file loader: every key and tensor identical",
          "[convert][models]") {
  for (std::string const v : {"sd1", "sd2", "sdxl"}) {
    INFO(v);
    std::string const in = test::fixture("models/tiny-" + v + ".safetensors");
    auto sd = load(in, test::fixture("models/tiny-" + v));
    std::string const out = (scratch() / ("single-" + v + ".safetensors")).string();
    models::save_single_file(sd, out);
    io::SafetensorsFile const a(in), b(out);
    std::size_t compared = 0;
    for (auto const& key : a.keys()) {
      INFO(key);
      if (key.rfind("model_ema.", 0) == 0) {  // EMA copies are not part of the model
        CHECK(!b.contains(key));
        continue;
      }
      if (v == "sd2" && key.find("position_ids") != std::string::npos) continue;  // OpenCLIP has none
      if (key.find("logit_scale") != std::string::npos) {  // OpenCLIP's contrastive temperature: not a model weight
        CHECK(!b.contains(key));
        continue;
      }
      REQUIRE(b.contains(key));
      CHECK(b.info(key).shape == a.info(key).shape);
      if (key.find("position_ids") != std::string::npos) {
        CHECK(test::rel_l2(b.load<double>(key), a.load<double>(key)) == 0.0);
      } else {
        CHECK(b.info(key).dtype == DType::F32);
        auto const x = a.load<float>(key), y = b.load<float>(key);
        std::size_t differ = 0;
        for (Index i = 0; i < x.numel(); ++i) differ += x(i) != y(i);
        CHECK(differ == 0);
      }
      ++compared;
    }
    CHECK(b.size() == compared);  // nothing else written
    auto back = load(out, test::fixture("models/tiny-" + v));
    check_same_parameters(sd, back);
    CHECK(back.base_model == sd.base_model);
  }
  // fp16: the same keys, every float tensor in F16 (the tiny model's weights are fp16-exact, so values are equal).
  auto sd = load(test::fixture("models/tiny-sd1.safetensors"), test::fixture("models/tiny-sd1"));
  std::string const half_path = (scratch() / "single-f16.safetensors").string();
  models::save_single_file(sd, half_path, {.dtype = DType::F16, .metadata = {{"note", "test"}}});
  io::SafetensorsFile const h(half_path);
  CHECK(h.info("model.diffusion_model.out.2.weight").dtype == DType::F16);
  CHECK(h.metadata().at("note") == "test");
  auto back = load(half_path, test::fixture("models/tiny-sd1"));
  check_same_parameters(sd, back);
}

TEST_CASE("A diffusers folder written by save_diffusers_folder loads back identical", "[convert][models]") {
  auto sd = load(test::fixture("models/tiny-sd1.safetensors"), test::fixture("models/tiny-sd1"));
  fs::path const dir = scratch() / "folder";
  fs::remove_all(dir);
  models::save_diffusers_folder(sd, dir.string());
  for (char const* f : {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                        "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                        "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
                        "tokenizer/special_tokens_map.json", "scheduler/scheduler_config.json"})
    CHECK(fs::exists(dir / f));
  auto back = load(dir.string());
  check_same_parameters(sd, back);
  CHECK(back.tokenizer.encode_padded("a photo of a cat") == sd.tokenizer.encode_padded("a photo of a cat"));
  CHECK(back.tokenizer.pad_id() == sd.tokenizer.pad_id());
  CHECK(back.scheduler_config == sd.scheduler_config);
  CHECK(back.unet.config().num_attention_heads == sd.unet.config().num_attention_heads);
  // SDXL: text_encoder_2 (with its projection) and tokenizer_2 ("!" padding) too, and the XL model_index.
  auto xl = load(test::fixture("models/tiny-sdxl"));
  fs::path const xl_dir = scratch() / "folder-xl";
  fs::remove_all(xl_dir);
  models::save_diffusers_folder(xl, xl_dir.string());
  auto xl_back = load(xl_dir.string());
  check_same_parameters(xl, xl_back);
  CHECK(xl_back.tokenizer_2.pad_id() == xl.tokenizer_2.pad_id());
  CHECK(xl_back.force_zeros_for_empty_prompt);
  CHECK(xl_back.text_encoder_2.config().projection_dim == xl.text_encoder_2.config().projection_dim);
  // A model that still carries adapters is refused: a checkpoint holds plain weights.
  pipeline::apply_loras(sd, {{test::fixture("pipeline/lora_kohya.safetensors"), 1.0}});
  CHECK_THROWS_WITH(models::save_single_file(sd, (scratch() / "x.safetensors").string()), Catch::Contains("merge them"));
}

TEST_CASE("convert_file_dtype stores every float tensor in the new dtype and drops EMA keys", "[convert][models]") {
  std::string const in = test::fixture("models/tiny-sd1.safetensors");
  std::string const out = (scratch() / "bf16.safetensors").string();
  auto const r = models::convert_file_dtype(in, out, DType::BF16);
  io::SafetensorsFile const a(in), b(out);
  CHECK(r.dropped == 1);  // model_ema.decay
  CHECK(r.kept == 1);     // position_ids
  CHECK(b.size() == a.size() - 1);
  CHECK(!b.contains("model_ema.decay"));
  CHECK(b.info("cond_stage_model.transformer.text_model.embeddings.position_ids").dtype == DType::I64);
  std::string const key = "model.diffusion_model.input_blocks.1.1.proj_in.weight";
  CHECK(b.info(key).dtype == DType::BF16);
  auto const x = a.load<float>(key), y = b.load<float>(key);
  for (Index i = 0; i < x.numel(); ++i) CHECK(y(i) == float(bfloat16(x(i))));
  CHECK(b.metadata() == a.metadata());
}

TEST_CASE("A checkpoint with a merged LoRA gives the adapter path's images and diffusers' fuse_lora images",
          "[convert][merge]") {
  // Tolerances: merged vs adapter is the same model with W + s B A rounded once per weight: <= 1e-5 relative.
  // Against diffusers (fuse_lora, tools/fixtures/make_convert.py) the whole fp32 pipeline: <= 1e-4 as the other
  // pipeline conformance tests.
  Context<Cpu> ctx;
  std::string const lora_path = test::fixture("pipeline/lora_kohya.safetensors");
  io::SafetensorsFile const ref(test::fixture("convert/merged.safetensors"));
  auto adapter = load(test::fixture("models/tiny-sd1"));
  pipeline::apply_loras(adapter, {{lora_path, 0.5}}, lora::ApplyMode::Adapter);
  auto const want = pipeline::txt2img(ctx, adapter, test::pipeline_fixture_options("euler"));
  CHECK(test::rel_l2(want.latents, ref.load<float>("latents")) < 1e-4);

  auto merged = load(test::fixture("models/tiny-sd1"));
  pipeline::apply_loras(merged, {{lora_path, 0.5}}, lora::ApplyMode::Merge);
  std::string const single = (scratch() / "merged.safetensors").string();
  models::save_stable_diffusion(merged, single);
  fs::path const folder = scratch() / "merged-folder";
  fs::remove_all(folder);
  models::save_stable_diffusion(merged, folder.string());
  for (auto const& [path, config] : {std::pair<std::string, std::string>{single, test::fixture("models/tiny-sd1")},
                                     std::pair<std::string, std::string>{folder.string(), ""}}) {
    INFO(path);
    auto sd = load(path, config);
    auto const got = pipeline::txt2img(ctx, sd, test::pipeline_fixture_options("euler"));
    CHECK(test::rel_l2(got.latents, want.latents) <= 1e-5);
    CHECK(test::rel_l2(got.images, want.images) <= 1e-5);
    CHECK(test::rel_l2(got.latents, ref.load<float>("latents")) < 1e-4);
    CHECK(test::rel_l2(got.images, ref.load<float>("image")) < 1e-4);
  }
  // The LoRA matters: the plain model is far from it.
  auto plain = load(test::fixture("models/tiny-sd1"));
  CHECK(test::rel_l2(pipeline::txt2img(ctx, plain, test::pipeline_fixture_options("euler")).latents, want.latents) > 1e-2);
}

#ifdef SDLORA_CONVERT_EXE
TEST_CASE("sdlora-convert: every command on the tiny model, one-line errors", "[convert][program]") {
  fs::path const d = scratch() / "program";
  fs::remove_all(d);
  fs::create_directories(d);
  auto run = [&](std::string const& args) { return test::run_program(SDLORA_CONVERT_EXE, args, d); };
  auto q = [](std::string const& s) { return "'" + s + "'"; };
  std::string const model = test::fixture("models/tiny-sd1"), lora = test::fixture("pipeline/lora_kohya.safetensors");

  auto r = run("lora --in " + q(lora) + " --to peft --out " + q((d / "peft.safetensors").string()));
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(lora::read_lora((d / "peft.safetensors").string()).format == lora::LoraFormat::Peft);

  r = run("merge --model " + q(model) + " --lora " + q(lora + ":0.5") + " --out " + q((d / "merged.safetensors").string()));
  REQUIRE(r.code == 0);
  CHECK(r.out.find("48 UNet") != std::string::npos);
  auto merged = load((d / "merged.safetensors").string(), model);

  r = run("extract --base " + q(model) + " --tuned " + q((d / "merged.safetensors").string()) + " --config " + q(model) +
          " --rank 4 --out " + q((d / "extracted.safetensors").string()));
  REQUIRE(r.code == 0);
  CHECK(r.out.find("[extract]") != std::string::npos);  // progress lines
  CHECK(r.out.find("text encoder unchanged") != std::string::npos);
  auto const extracted = lora::read_lora((d / "extracted.safetensors").string());
  CHECK(extracted.entries.size() == 72);  // 6 transformers x (proj_in, proj_out, 2 x 4 attention projections, 2 ff)

  r = run("resize --in " + q((d / "extracted.safetensors").string()) + " --rank 2 --out " +
          q((d / "small.safetensors").string()));
  REQUIRE(r.code == 0);
  CHECK(lora::read_lora((d / "small.safetensors").string()).entries.front().rank() == 2);

  r = run("dtype --model " + q(test::fixture("models/tiny-sd1.safetensors")) + " --to fp16 --out " +
          q((d / "f16.safetensors").string()));
  REQUIRE(r.code == 0);
  CHECK(!io::SafetensorsFile((d / "f16.safetensors").string()).contains("model_ema.decay"));
  r = run("dtype --model " + q(model) + " --to bf16 --out " + q((d / "bf16-folder").string()));
  REQUIRE(r.code == 0);
  CHECK(io::SafetensorsFile((d / "bf16-folder" / "unet" / "diffusion_pytorch_model.safetensors").string())
            .info("conv_in.weight").dtype == DType::BF16);

  // Errors: one line naming the file; usage errors exit 2.
  r = run("lora --in /nonexistent/x.safetensors --to peft --out " + q((d / "y.safetensors").string()));
  CHECK(r.code == 1);
  CHECK(r.err.find("/nonexistent/x.safetensors") != std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  r = run("lora --in " + q(lora) + " --to onnx --out x");
  CHECK(r.code == 2);
  r = run("frobnicate");
  CHECK(r.code == 2);
}
#endif
