/// @file optimizer_test.cpp
/// @brief Optimizers, LR schedules and gradient clipping against torch / transformers / diffusers fixtures.
#include <unistd.h>  // getpid

#include <cstring>     // std::memcmp
#include <filesystem>  // std::filesystem::temp_directory_path
#include <functional>  // std::function
#include <memory>      // std::unique_ptr
#include <string>      // std::string

#include <catch2/catch.hpp>

#include <sdlora/train.hpp>

#include "support.hpp"

using namespace sdlora;
using namespace sdlora::train;

namespace {

struct TwoParams {
  nn::Parameter<float> w{Shape{4, 3}};
  nn::Parameter<float> b{Shape{5}};
  std::vector<ParamRef<float>> refs() { return {{"w", &w}, {"b", &b}}; }
};

using Factory = std::function<std::unique_ptr<Optimizer<float>>(std::vector<ParamRef<float>>)>;

/// Runs the fixture's 5 steps and checks the parameters after each against torch.
void check_against_fixture(std::string const& name, Factory const& make) {
  io::SafetensorsFile const f(test::fixture("train/" + name + ".safetensors"));
  TwoParams p;
  p.w.value = f.load<float>("w0");
  p.b.value = f.load<float>("b0");
  p.w.set_trainable(true);
  p.b.set_trainable(true);
  auto opt = make(p.refs());
  int const steps = std::stoi(f.metadata().at("steps"));
  for (int s = 0; s < steps; ++s) {
    p.w.grad = f.load<float>("grad_w." + std::to_string(s));
    p.b.grad = f.load<float>("grad_b." + std::to_string(s));
    opt->step();
    // Tolerance 1e-6 relative L2: float32 elementwise updates in torch's operation order; the remaining
    // differences are torch's FMA in vectorised lerp/add and its float accumulation in reductions (~1 ulp each).
    INFO(name << " step " << s);
    CHECK(test::rel_l2(p.w.value, f.load<float>("w." + std::to_string(s))) < 1e-6);
    CHECK(test::rel_l2(p.b.value, f.load<float>("b." + std::to_string(s))) < 1e-6);
  }
  // The parameters moved: comparing against the start would fail (the test can fail).
  CHECK(test::rel_l2(p.w.value, f.load<float>("w0")) > 1e-4);
  // The final state tensors match torch's state under our "<name>.<key>" naming.
  OptimizerState<float> const st = opt->state_dict();
  int compared = 0;
  for (auto const& key : f.keys()) {
    if (key.rfind("state.", 0) != 0) continue;
    std::string const ours = key.substr(6);  // "state.w.exp_avg" -> "w.exp_avg"
    INFO(name << " state " << ours);
    REQUIRE(st.tensors.count(ours) == 1);
    CHECK(test::rel_l2(st.tensors.at(ours), f.load<float>(key)) < 1e-6);
    ++compared;
  }
  CHECK(compared > 0);
}

}  // namespace

TEST_CASE("AdamW matches torch.optim.AdamW step by step", "[train][optimizer]") {
  check_against_fixture("adamw", [](auto refs) {
    return std::make_unique<AdamW<float>>(std::move(refs), AdamWOptions{1e-2, 0.9, 0.999, 1e-8, 1e-2});
  });
}

TEST_CASE("SGD matches torch.optim.SGD (Nesterov, dampening, weight decay)", "[train][optimizer]") {
  check_against_fixture("sgd_nesterov", [](auto refs) {
    return std::make_unique<Sgd<float>>(std::move(refs), SgdOptions{5e-2, 0.9, 0.0, 1e-2, true});
  });
  check_against_fixture("sgd_dampening", [](auto refs) {
    return std::make_unique<Sgd<float>>(std::move(refs), SgdOptions{5e-2, 0.8, 0.3, 1e-3, false});
  });
}

TEST_CASE("Adafactor matches transformers' Adafactor", "[train][optimizer]") {
  check_against_fixture("adafactor", [](auto refs) {
    AdafactorOptions o = AdafactorOptions::fixed_lr(1e-2);
    o.weight_decay = 1e-2;
    return std::make_unique<Adafactor<float>>(std::move(refs), o);
  });
  check_against_fixture("adafactor_relative", [](auto refs) {
    return std::make_unique<Adafactor<float>>(std::move(refs), AdafactorOptions{});
  });
}

TEST_CASE("An optimizer resumed from a saved state continues bit-exactly", "[train][optimizer]") {
  for (std::string const type : {"adamw", "adamw8bit", "sgd", "adafactor"}) {
    INFO(type);
    OptimizerOptions o;
    o.type = type;
    o.lr = 1e-2;
    o.momentum = 0.9;
    auto run = [&](TwoParams& p, Optimizer<float>& opt, int from, int to) {
      for (int s = from; s < to; ++s) {
        p.w.grad = test::random_tensor<float>(Shape{4, 3}, 100 + s);
        p.b.grad = test::random_tensor<float>(Shape{5}, 200 + s);
        opt.step();
      }
    };
    auto init = [](TwoParams& p) {
      p.w.value = test::random_tensor<float>(Shape{4, 3}, 1);
      p.b.value = test::random_tensor<float>(Shape{5}, 2);
      p.w.set_trainable(true);
      p.b.set_trainable(true);
    };
    TwoParams a, b;
    init(a);
    init(b);
    auto oa = make_optimizer<float>(o, a.refs());
    auto ob = make_optimizer<float>(o, b.refs());
    run(a, *oa, 0, 6);
    run(b, *ob, 0, 3);
    std::string const path = std::filesystem::temp_directory_path() / ("sdlora_opt_" + type + ".safetensors");
    save_optimizer_state(ob->state_dict(), path);
    TwoParams c;
    c.w.value = b.w.value;
    c.b.value = b.b.value;
    c.w.set_trainable(true);
    c.b.set_trainable(true);
    auto oc = make_optimizer<float>(o, c.refs());
    oc->load_state_dict(load_optimizer_state<float>(path));
    std::filesystem::remove(path);
    run(c, *oc, 3, 6);
    CHECK(std::memcmp(a.w.value.data(), c.w.value.data(), a.w.value.bytes()) == 0);
    CHECK(std::memcmp(a.b.value.data(), c.b.value.data(), a.b.value.bytes()) == 0);
    // Without the state the continuation differs (so the comparison above can fail).
    TwoParams d;
    d.w.value = b.w.value;
    d.b.value = b.b.value;
    d.w.set_trainable(true);
    d.b.set_trainable(true);
    auto od = make_optimizer<float>(o, d.refs());
    run(d, *od, 3, 6);
    CHECK(std::memcmp(a.w.value.data(), d.w.value.data(), a.w.value.bytes()) != 0);
  }
}

namespace {

/// x += a * g; s1 += g; s2 = a (where present): each slice's own rule and states must land on its own elements.
struct AxpyRule {
  float a;
  void operator()(float& x, float g, float* s1, float* s2) const {
    x += a * g;
    if (s1) *s1 += g;
    if (s2) *s2 = a;
  }
};

/// Whether two tensors are both absent, or of one shape with the same bits (a tensor of 0 values has no data).
bool same_or_absent(Tensor<float> const& a, Tensor<float> const& b) {
  if (a.empty() || b.empty()) return a.empty() == b.empty();
  return a.numel() == 0 ? a.shape() == b.shape() : test::same_bits(a, b);
}

/// Sizes around update_many's chunk (16384 elements) and its parallel threshold (65536): tensors that straddle
/// chunks, one empty tensor, and runs of small ones that only together cross the threshold.
std::vector<Index> fused_sizes() {
  std::vector<Index> sizes = {1, 7, 300, 16383, 16384, 0, 16385, 70001, 5, 4096};
  for (int i = 0; i < 30; ++i) sizes.push_back(Index(1000 + 97 * i));
  return sizes;
}

}  // namespace

TEST_CASE("update_many applies each slice's rule to its own elements, as update does tensor by tensor",
          "[train][optimizer]") {
  std::vector<Index> const sizes = fused_sizes();
  auto make = [&](std::vector<Tensor<float>>& xs, std::vector<Tensor<float>>& gs, std::vector<Tensor<float>>& m,
                  std::vector<Tensor<float>>& v) {
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      auto const seed = std::uint32_t(4 * i);
      xs.push_back(test::random_tensor<float>(Shape{sizes[i]}, seed));
      gs.push_back(test::random_tensor<float>(Shape{sizes[i]}, seed + 1));
      m.push_back(i % 3 == 0 ? Tensor<float>() : test::random_tensor<float>(Shape{sizes[i]}, seed + 2));  // absent
      v.push_back(i % 2 == 0 ? Tensor<float>() : test::random_tensor<float>(Shape{sizes[i]}, seed + 3));
    }
  };
  std::vector<Tensor<float>> rx, rg, rm, rv;  // reference: ops::update, one tensor at a time
  make(rx, rg, rm, rv);
  Context<Cpu> one;
  one.num_threads = 1;
  for (std::size_t i = 0; i < sizes.size(); ++i)
    ops::update<float, Cpu>(one, rx[i].view(), rg[i].view(), rm[i].view(), rv[i].view(), AxpyRule{0.5f + float(i)});
  for (int threads : {1, 2, 8}) {
    std::vector<Tensor<float>> x, g, m, v;
    make(x, g, m, v);
    std::vector<ops::UpdateSlice<float, Cpu, AxpyRule>> slices;
    for (std::size_t i = 0; i < sizes.size(); ++i)
      slices.push_back({x[i].view(), g[i].view(), m[i].view(), v[i].view(), AxpyRule{0.5f + float(i)}});
    Context<Cpu> ctx;
    ctx.num_threads = threads;
    ops::update_many<float, Cpu, AxpyRule>(ctx, slices);
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      INFO(threads << " threads, tensor " << i << " of " << sizes[i] << " elements");
      CHECK(same_or_absent(x[i], rx[i]));
      CHECK(same_or_absent(m[i], rm[i]));
      CHECK(same_or_absent(v[i], rv[i]));
    }
  }
  // One parameter tensor in two slices would be updated twice, racing: refused.
  std::vector<Tensor<float>> x, g, m, v;
  make(x, g, m, v);
  std::vector<ops::UpdateSlice<float, Cpu, AxpyRule>> twice = {
      {x[2].view(), g[2].view(), {}, {}, AxpyRule{1}}, {x[2].view(), g[2].view(), {}, {}, AxpyRule{1}}};
  CHECK_THROWS_WITH((ops::update_many<float, Cpu, AxpyRule>(one, twice)), Catch::Contains("same parameter"));
  std::vector<ops::UpdateSlice<float, Cpu, AxpyRule>> mismatched = {{x[2].view(), g[3].view(), {}, {}, AxpyRule{1}}};
  CHECK_THROWS_WITH((ops::update_many<float, Cpu, AxpyRule>(one, mismatched)),
                    Catch::Contains("(300)") && Catch::Contains("(16383)"));
}

TEST_CASE("AdamW and SGD step all tensors in one pass, bit for bit as one optimizer per tensor", "[train][optimizer]") {
  // The reference gives each parameter its own optimizer (one tensor per pass); the fused pass must match it bit for
  // bit on any thread count, with per-tensor step counts (one parameter joins late) and frozen parameters untouched.
  std::vector<Index> const sizes = fused_sizes();
  struct Set {
    std::vector<std::unique_ptr<nn::Parameter<float>>> p;
    std::vector<ParamRef<float>> refs() const {
      std::vector<ParamRef<float>> r;
      for (std::size_t i = 0; i < p.size(); ++i) r.push_back({"p" + std::to_string(i), p[i].get()});
      return r;
    }
  };
  std::size_t const frozen = 4, late = 7;  // frozen: never trainable; late: trainable from the second step
  auto make = [&] {
    Set s;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      s.p.push_back(std::make_unique<nn::Parameter<float>>(Shape{sizes[i]}));
      s.p.back()->value = test::random_tensor<float>(Shape{sizes[i]}, std::uint32_t(i));
      s.p.back()->set_trainable(i != frozen && i != late);
    }
    return s;
  };
  auto grads = [&](Set& s, int step) {
    if (step == 1) s.p[late]->set_trainable(true);
    for (std::size_t i = 0; i < sizes.size(); ++i)
      if (s.p[i]->trainable)
        s.p[i]->grad = test::random_tensor<float>(Shape{sizes[i]}, std::uint32_t(1000 * (step + 1) + i));
  };
  for (std::string type : {"adamw", "sgd"}) {
    OptimizerOptions o;
    o.type = type;
    o.lr = 1e-2;
    o.weight_decay = 1e-2;
    o.momentum = 0.9;
    Set ref = make();
    std::vector<std::unique_ptr<Optimizer<float>>> each;
    for (auto const& r : ref.refs()) each.push_back(make_optimizer<float>(o, {r}));
    for (int step = 0; step < 3; ++step) {
      grads(ref, step);
      for (auto& opt : each) opt->step();
    }
    for (int threads : {1, 2, 8}) {
      cpu::set_default_thread_count(threads);
      Set fused = make();
      auto opt = make_optimizer<float>(o, fused.refs());
      for (int step = 0; step < 3; ++step) {
        grads(fused, step);
        opt->step();
      }
      cpu::set_default_thread_count(0);
      for (std::size_t i = 0; i < sizes.size(); ++i) {
        INFO(type << ", " << threads << " threads, tensor " << i << " of " << sizes[i] << " elements");
        CHECK(same_or_absent(fused.p[i]->value, ref.p[i]->value));
      }
      CHECK(test::same_bits(fused.p[frozen]->value, test::random_tensor<float>(Shape{sizes[frozen]}, frozen)));
      // the late parameter took two steps, not three: its state says so
      if (type == "adamw") CHECK(opt->state_dict().scalars.at("p" + std::to_string(late) + ".step") == 2.0);
    }
  }
}

TEST_CASE("Optimizers refuse mismatched states and skip frozen parameters", "[train][optimizer]") {
  TwoParams p;
  p.w.set_trainable(true);
  p.w.grad.fill(1.0f);
  p.b.value.fill(3.0f);  // frozen: must not move
  AdamW<float> adam(p.refs(), AdamWOptions{});
  adam.step();
  CHECK(p.b.value(0) == 3.0f);
  CHECK(p.w.value(0) != 0.0f);
  Sgd<float> sgd(p.refs(), SgdOptions{});
  CHECK_THROWS_WITH(sgd.load_state_dict(adam.state_dict()), Catch::Contains("adamw"));
  auto st = adam.state_dict();
  st.tensors.emplace("other.exp_avg", Tensor<float>(Shape{2}));
  AdamW<float> adam2(p.refs(), AdamWOptions{});
  CHECK_THROWS_WITH(adam2.load_state_dict(st), Catch::Contains("other.exp_avg"));
  st = adam.state_dict();
  st.tensors.at("w.exp_avg") = Tensor<float>(Shape{3, 4});
  CHECK_THROWS_WITH(adam2.load_state_dict(st), Catch::Contains("(3, 4)") && Catch::Contains("(4, 3)"));
  OptimizerOptions lion;
  lion.type = "lion";
  CHECK_THROWS_AS(make_optimizer<float>(lion, p.refs()), ConfigError);
  std::vector<ParamRef<float>> dup = {{"w", &p.w}, {"w", &p.b}};
  CHECK_THROWS_WITH(AdamW<float>(dup, AdamWOptions{}), Catch::Contains("twice"));
}

namespace {

/// The AdamW8bit fixture's three parameters: (300) keeps float32 moments, (4500) has a partial last block, (64, 72)
/// is 18 whole blocks.
struct ThreeParams {
  nn::Parameter<float> a{Shape{300}};
  nn::Parameter<float> b{Shape{4500}};
  nn::Parameter<float> c{Shape{64, 72}};
  std::vector<ParamRef<float>> refs() { return {{"a", &a}, {"b", &b}, {"c", &c}}; }
  nn::Parameter<float>& operator[](std::string const& name) { return name == "a" ? a : name == "b" ? b : c; }
  void train() {
    for (auto& r : refs()) r.param->set_trainable(true);
  }
};

/// How many codes of `ours` differ from `ref` (which must have the same number).
Index code_mismatches(Tensor<std::uint8_t> const& ours, Tensor<std::uint8_t> const& ref) {
  REQUIRE(ours.numel() == ref.numel());
  Index n = 0;
  for (Index i = 0; i < ours.numel(); ++i) n += ours.data()[i] != ref.data()[i];
  return n;
}

}  // namespace

TEST_CASE("AdamW8bit matches bitsandbytes' AdamW8bit step by step", "[train][optimizer][adamw8bit]") {
  // Reference: bnb.optim.AdamW8bit itself (bitsandbytes 0.50, its CPU backend), tools/fixtures/make_adamw8bit.py.
  io::SafetensorsFile const f(test::fixture("train/adamw8bit.safetensors"));
  // The quantization maps are bitsandbytes' create_dynamic_map(signed=True / False), bit for bit.
  for (bool const is_signed : {true, false}) {
    Tensor<float> const ref = f.load<float>(is_signed ? "qmap1" : "qmap2");
    QuantMap const ours = dynamic_map(is_signed);
    REQUIRE(ref.numel() == 256);
    CHECK(std::memcmp(ours.data(), ref.data(), sizeof(float) * 256) == 0);
  }
  ThreeParams p;
  for (std::string const k : {"a", "b", "c"}) p[k].value = f.load<float>(k + "0");
  p.train();
  AdamW8bitOptions o;  // bnb's defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2, min_8bit_size 4096
  o.lr = std::stod(f.metadata().at("lr"));
  AdamW8bit<float> opt(p.refs(), o);
  int const steps = std::stoi(f.metadata().at("steps"));
  for (int s = 0; s < steps; ++s) {
    std::string const t = std::to_string(s);
    for (std::string const k : {"a", "b", "c"}) p[k].grad = f.load<float>("grad_" + k + "." + t);
    opt.step();
    OptimizerState<float> const st = opt.state_dict();
    for (std::string const k : {"a", "b", "c"}) {
      INFO("step " << s << " parameter " << k);
      // Parameters: 1e-6 relative L2 (measured <= 5e-9). The moments below are bit-exact; the parameter update
      // differs from torch's by one ulp on ~1% of the elements (where the decayed parameter and the step cancel).
      CHECK(test::rel_l2(p[k].value, f.load<float>(k + "." + t)) < 1e-6);
      if (k == "a") {  // below min_8bit_size: float32 moments, bitsandbytes' 32-bit update
        REQUIRE(st.codes.count("a.state1") == 0);
        CHECK(test::rel_l2(st.tensors.at("a.state1"), f.load<float>("state.a.state1." + t)) < 1e-6);
        CHECK(test::rel_l2(st.tensors.at("a.state2"), f.load<float>("state.a.state2." + t)) < 1e-6);
        continue;
      }
      // 8-bit state: every code and every block absmax exactly as bitsandbytes stores them.
      CHECK(code_mismatches(st.codes.at(k + ".state1"), f.load<std::uint8_t>("state." + k + ".state1." + t)) == 0);
      CHECK(code_mismatches(st.codes.at(k + ".state2"), f.load<std::uint8_t>("state." + k + ".state2." + t)) == 0);
      CHECK(test::same_bits(st.tensors.at(k + ".absmax1"), f.load<float>("state." + k + ".absmax1." + t)));
      CHECK(test::same_bits(st.tensors.at(k + ".absmax2"), f.load<float>("state." + k + ".absmax2." + t)));
    }
  }
  // The comparison can fail: the parameters moved, and the codes are not all alike.
  CHECK(test::rel_l2(p.b.value, f.load<float>("b0")) > 1e-4);
  Tensor<std::uint8_t> const codes = opt.state_dict().codes.at("b.state1");
  CHECK(code_mismatches(codes, Tensor<std::uint8_t>(codes.shape())) > codes.numel() / 2);
  // c's block 3 had an all-zero gradient at step 0: absmax 0 and code 0 there, as bitsandbytes.
  CHECK(f.load<float>("state.c.absmax1.0")(3) == 0.0f);
  CHECK(AdamW8bit<float>::state_bytes(4500, 4096) == 2 * 4500 + 2 * 4 * 18);
  CHECK(AdamW8bit<float>::state_bytes(300, 4096) == 8 * 300);
}

TEST_CASE("AdamW8bit resumed from a saved state continues bit-exactly", "[train][optimizer][adamw8bit]") {
  auto init = [](ThreeParams& p) {
    p.a.value = test::random_tensor<float>(Shape{300}, 1);
    p.b.value = test::random_tensor<float>(Shape{4500}, 2);
    p.c.value = test::random_tensor<float>(Shape{64, 72}, 3);
    p.train();
  };
  auto run = [](ThreeParams& p, Optimizer<float>& opt, int from, int to) {
    for (int s = from; s < to; ++s) {
      p.a.grad = test::random_tensor<float>(Shape{300}, 100 + s);
      p.b.grad = test::random_tensor<float>(Shape{4500}, 200 + s);
      p.c.grad = test::random_tensor<float>(Shape{64, 72}, 300 + s);
      opt.step();
    }
  };
  OptimizerOptions o;
  o.type = "adamw8bit";  // through make_optimizer, as sdlora-train builds it
  o.lr = 1e-2;
  ThreeParams a, b, c;
  init(a);
  init(b);
  auto oa = make_optimizer<float>(o, a.refs());
  auto ob = make_optimizer<float>(o, b.refs());
  run(a, *oa, 0, 6);
  run(b, *ob, 0, 3);
  // Through a training checkpoint, as sdlora-train saves and resumes (checkpoint-3/optimizer.safetensors).
  std::filesystem::path const dir =
      std::filesystem::temp_directory_path() / ("sdlora_adamw8bit_" + std::to_string(::getpid()));
  TrainingState<float> ts;
  ts.global_step = 3;
  ts.parameters = capture_parameters(b.refs());
  ts.optimizer = ob->state_dict();
  std::string const checkpoint = save_checkpoint(dir.string(), ts);
  {  // The codes are stored as one byte each.
    io::SafetensorsFile const file((std::filesystem::path(checkpoint) / "optimizer.safetensors").string());
    CHECK(file.info("b.state1").dtype == DType::U8);
    CHECK(file.info("c.state2").dtype == DType::U8);
    CHECK(file.info("b.absmax1").shape == Shape{18});
    CHECK(file.info("a.state1").dtype == DType::F32);
  }
  TrainingState<float> const loaded = load_checkpoint<float>(checkpoint);
  std::filesystem::remove_all(dir);
  OptimizerState<float> const& saved = loaded.optimizer;
  restore_parameters(c.refs(), loaded.parameters);
  c.train();
  auto oc = make_optimizer<float>(o, c.refs());
  oc->load_state_dict(saved);
  run(c, *oc, 3, 6);
  for (std::string const k : {"a", "b", "c"}) {
    INFO(k);
    CHECK(test::same_bits(a[k].value, c[k].value));
  }
  OptimizerState<float> const sa = oa->state_dict(), sc = oc->state_dict();
  REQUIRE(sa.codes.size() == 4);
  REQUIRE(sc.codes.size() == 4);
  for (auto const& [key, t] : sa.codes) CHECK(code_mismatches(sc.codes.at(key), t) == 0);
  for (auto const& [key, t] : sa.tensors) CHECK(test::same_bits(sc.tensors.at(key), t));
  CHECK(sa.scalars == sc.scalars);
  // Without the state the continuation differs (so the comparison above can fail).
  ThreeParams d;
  d.a.value = b.a.value;
  d.b.value = b.b.value;
  d.c.value = b.c.value;
  d.train();
  auto od = make_optimizer<float>(o, d.refs());
  run(d, *od, 3, 6);
  CHECK(!test::same_bits(a.b.value, d.b.value));

  // Refused states name the tensor.
  OptimizerState<float> bad = saved;
  bad.codes.at("b.state1") = Tensor<std::uint8_t>(Shape{4096});
  CHECK_THROWS_WITH(make_optimizer<float>(o, d.refs())->load_state_dict(bad),
                    Catch::Contains("b.state1") && Catch::Contains("(4096)"));
  bad = saved;
  bad.codes.emplace("z.state1", Tensor<std::uint8_t>(Shape{4}));
  CHECK_THROWS_WITH(make_optimizer<float>(o, d.refs())->load_state_dict(bad), Catch::Contains("z.state1"));
  bad = saved;
  bad.tensors.erase("c.absmax2");
  CHECK_THROWS_WITH(make_optimizer<float>(o, d.refs())->load_state_dict(bad), Catch::Contains("c.absmax2"));
}

TEST_CASE("trainable_parameters collects trainable parameters by name", "[train][optimizer]") {
  nn::Linear<float> layer(4, 2);
  nn::set_trainable(layer, false);
  layer.weight.set_trainable(true);
  auto refs = trainable_parameters<float>(layer, "to_q");
  REQUIRE(refs.size() == 1);
  CHECK(refs[0].name == "to_q.weight");
  CHECK(refs[0].param == &layer.weight);
}

TEST_CASE("LR schedules match diffusers' get_scheduler", "[train][lr_schedule]") {
  io::SafetensorsFile const f(test::fixture("train/schedules.safetensors"));
  std::int64_t const total = std::stoll(f.metadata().at("total"));
  std::int64_t const warmup = std::stoll(f.metadata().at("warmup"));
  double const base_lr = std::stod(f.metadata().at("base_lr"));
  for (std::string const name :
       {"constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"}) {
    INFO(name);
    LrScheduleOptions o;
    o.type = schedule_type(name);
    o.base_lr = base_lr;
    o.warmup_steps = warmup;
    o.training_steps = total;
    o.num_cycles = 3;
    o.power = 2.0;
    LrSchedule sched(o);
    auto const mult = f.load<double>(name + ".multiplier");
    auto const lr = f.load<double>(name + ".lr");
    double worst = 0;
    for (Index s = 0; s < mult.numel(); ++s) {
      // Tolerance 1e-12 absolute: the same double arithmetic as Python in the same order.
      worst = std::max(worst, std::abs(sched.multiplier(s) - mult(s)));
      CHECK(std::abs(sched.lr() - lr(s)) <= 1e-12 * base_lr);
      sched.advance();
    }
    CHECK(worst <= 1e-12);
  }
  LrScheduleOptions pw;
  pw.type = ScheduleType::PiecewiseConstant;
  pw.step_rules = "1:10,0.1:20,0.01:30,0.005";
  LrSchedule piecewise(pw);
  CHECK(piecewise.multiplier(9) == 1.0);
  CHECK(piecewise.multiplier(10) == 0.1);
  CHECK(piecewise.multiplier(29) == 0.01);
  CHECK(piecewise.multiplier(30) == 0.005);
  CHECK_THROWS_WITH(schedule_type("cosine_annealing"), Catch::Contains("cosine_with_restarts"));
  LrScheduleOptions no_total;
  no_total.type = ScheduleType::Linear;
  CHECK_THROWS_AS(LrSchedule(no_total), ConfigError);
}

TEST_CASE("clip_grad_norm matches torch.nn.utils.clip_grad_norm_", "[train][grad_clip]") {
  io::SafetensorsFile const f(test::fixture("train/clip_grad_norm.safetensors"));
  for (std::string const c : {"clipped", "unclipped"}) {
    INFO(c);
    std::vector<nn::Parameter<float>> ps(3);
    std::vector<ParamRef<float>> refs;
    for (int i = 0; i < 3; ++i) {
      auto g = f.load<float>(c + ".grad_in." + std::to_string(i));
      ps[i] = nn::Parameter<float>(g.shape());
      ps[i].set_trainable(true);
      ps[i].grad = g;
    }
    for (int i = 0; i < 3; ++i) refs.push_back({"p" + std::to_string(i), &ps[i]});
    double const total = clip_grad_norm(refs, f.load<double>(c + ".max_norm")(0));
    // Tolerance 1e-6 relative: float32 norms; ours accumulate in double and round once.
    CHECK(total == Approx(f.load<float>(c + ".total_norm")(0)).epsilon(1e-6));
    for (int i = 0; i < 3; ++i) {
      CHECK(test::rel_l2(ps[i].grad, f.load<float>(c + ".grad_out." + std::to_string(i))) < 1e-6);
      if (c == std::string("unclipped"))  // multiplied by exactly 1
        CHECK(std::memcmp(ps[i].grad.data(), f.load<float>(c + ".grad_in." + std::to_string(i)).data(),
                          ps[i].grad.bytes()) == 0);
    }
  }
}
