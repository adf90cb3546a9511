/// @file rng.hpp
/// @brief Random numbers: Philox4x32-10 (counter-based, the same numbers on CPU and CUDA for a seed) and
/// TorchGenerator (bit-exact `torch.Generator("cpu").manual_seed(s)`: randn, rand, randint). Include
/// <sdlora/sdlora.hpp> instead.
///
/// ## Philox4x32 stream layout (what a CUDA kernel must reproduce)
/// A stream is (seed, subsequence, offset). The Philox key is (lo32(seed), hi32(seed)). A fill of n elements at
/// offset `o` uses 128-bit counter blocks b = o + i / 4 for element i, counter = (lo32(b), hi32(b),
/// lo32(subsequence), hi32(subsequence)), and word w = i % 4 of philox4x32_10(counter, key). After the fill the offset
/// advances by ceil(n / 4) blocks, so consecutive fills never share a block (whatever n is).
/// - uniform: u = (w >> 8) * 2^-24, in [0, 1), exact in float.
/// - normal: elements come in pairs (2k, 2k + 1) that share the words (w_a, w_b) = (word 2(k%2), word 2(k%2)+1) of
///   their block: u1 = ((w_a >> 8) + 1) * 2^-24 in (0, 1], u2 = (w_b >> 8) * 2^-24, r = sqrt(-2 ln u1),
///   theta = 2 pi u2; element 2k = r cos(theta), element 2k + 1 = r sin(theta), computed in double and rounded to
///   float once (philox_box_muller). The words and uniforms are bit-identical everywhere; the normals are identical
///   wherever double log/sin/cos are correctly rounded to within the float rounding (CUDA and glibc differ by at most
///   1 double ulp, which changes the float result with probability ~2^-28 per element).
///
/// ## TorchGenerator
/// The state is torch's mt19937 (seeded with the low 32 bits of the seed, as at::mt19937 does) plus the cached second
/// Box-Muller value of the scalar normal path. References: aten/src/ATen/core/MT19937RNGEngine.h,
/// aten/src/ATen/CPUGeneratorImpl.cpp, aten/src/ATen/core/DistributionsHelper.h, TransformationHelper.h,
/// aten/src/ATen/native/cpu/DistributionTemplates.h (normal_fill, NormalFill16) and native/cpu/avx_mathfun.h.
/// torch's float randn has two CPU kernels for numel >= 16: the AVX2 one (used by every x86-64 CPU with AVX2, AVX512
/// included) approximates log/sin/cos with Cephes polynomials (avx_mathfun.h); the scalar one (ATEN_CPU_CAPABILITY=
/// default, and CPUs without AVX2) calls logf/sinf/cosf. TorchNormalKernel picks which one to reproduce.
/// Do not compile this header with -ffast-math: the emulation depends on IEEE rounding of each operation.
#pragma once

#include <array>        // std::array
#include <bit>          // std::bit_cast
#include <cmath>        // std::log, std::sqrt, std::sin, std::cos, std::fma, std::log1p
#include <cstdint>      // std::uint32_t, std::uint64_t
#include <cstring>      // std::memcpy
#include <optional>     // std::optional
#include <span>         // std::span
#include <type_traits>  // std::is_same_v
#include <utility>      // std::swap
#include <vector>       // std::vector

#include <sdlora/backend/cpu/parallel.hpp>  // cpu::parallel_for
#include <sdlora/core/config.hpp>  // SDLORA_HOST_DEVICE
#include <sdlora/core/error.hpp>   // SDLORA_EXPECTS, FormatError
#include <sdlora/core/shape.hpp>   // Shape, Index
#include <sdlora/core/tensor.hpp>  // Tensor

// The torch emulation below must round every float operation separately, exactly where torch's build does. Forbid
// the compiler from fusing a * b + c on its own (GCC fuses by default in GNU mode when FMA instructions are enabled,
// e.g. with -march=native); the fused operations torch's build performs are written with std::fma explicitly.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define SDLORA_RNG_POP_OPTIONS 1
#endif

namespace sdlora {

// ===================================================== Philox =====================================================

/// 128-bit Philox counter / output block, word 0 first.
struct PhiloxBlock {
  std::uint32_t v[4];
  friend bool operator==(PhiloxBlock const& a, PhiloxBlock const& b) {
    return a.v[0] == b.v[0] && a.v[1] == b.v[1] && a.v[2] == b.v[2] && a.v[3] == b.v[3];
  }
};

namespace philox {
inline constexpr std::uint32_t kM0 = 0xD2511F53u;  // multipliers (Salmon et al., SC'11, Random123)
inline constexpr std::uint32_t kM1 = 0xCD9E8D57u;
inline constexpr std::uint32_t kW0 = 0x9E3779B9u;  // key schedule increments (golden ratio, sqrt(3) - 1)
inline constexpr std::uint32_t kW1 = 0xBB67AE85u;
inline constexpr int kRounds = 10;
}  // namespace philox

/// Philox4x32-10 of one counter block under a 64-bit key (k0, k1). Reference: Random123 philox.h; known answers in
/// tests/rng/rng_test.cpp.
SDLORA_HOST_DEVICE PhiloxBlock philox4x32_10(PhiloxBlock counter, std::uint32_t k0, std::uint32_t k1) {
  for (int round = 0; round < philox::kRounds; ++round) {
    if (round > 0) {
      k0 += philox::kW0;
      k1 += philox::kW1;
    }
    std::uint64_t const p0 = std::uint64_t(philox::kM0) * counter.v[0];
    std::uint64_t const p1 = std::uint64_t(philox::kM1) * counter.v[2];
    counter = PhiloxBlock{{std::uint32_t(p1 >> 32) ^ counter.v[1] ^ k0, std::uint32_t(p1),
                           std::uint32_t(p0 >> 32) ^ counter.v[3] ^ k1, std::uint32_t(p0)}};
  }
  return counter;
}

/// The output block `block` of the stream (seed, subsequence): see the layout in the file comment.
SDLORA_HOST_DEVICE PhiloxBlock philox_block(std::uint64_t seed, std::uint64_t subsequence, std::uint64_t block) {
  PhiloxBlock const counter{{std::uint32_t(block), std::uint32_t(block >> 32), std::uint32_t(subsequence),
                             std::uint32_t(subsequence >> 32)}};
  return philox4x32_10(counter, std::uint32_t(seed), std::uint32_t(seed >> 32));
}

/// A 32-bit word as a float in [0, 1): the top 24 bits times 2^-24 (exact).
SDLORA_HOST_DEVICE float philox_uniform(std::uint32_t word) { return float(word >> 8) * 0x1.0p-24f; }

/// Box-Muller of two words: (r cos theta, r sin theta) with u1 in (0, 1] (so log never sees 0), in double.
SDLORA_HOST_DEVICE void philox_box_muller(std::uint32_t wa, std::uint32_t wb, float& n0, float& n1) {
  double const u1 = double((wa >> 8) + 1u) * 0x1.0p-24;
  double const u2 = double(wb >> 8) * 0x1.0p-24;
  double const r = std::sqrt(-2.0 * std::log(u1));
  double const theta = 6.283185307179586476925286766559 * u2;
  n0 = float(r * std::cos(theta));
  n1 = float(r * std::sin(theta));
}

/// Element i of a normal fill at block offset `offset` of (seed, subsequence): what a CUDA thread computes.
SDLORA_HOST_DEVICE float philox_normal_at(std::uint64_t seed, std::uint64_t subsequence, std::uint64_t offset,
                                          std::uint64_t i) {
  PhiloxBlock const b = philox_block(seed, subsequence, offset + i / 4);
  int const w = int(i % 4) & ~1;
  float n0, n1;
  philox_box_muller(b.v[w], b.v[w + 1], n0, n1);
  return (i % 2) ? n1 : n0;
}

/// Element i of a uniform fill at block offset `offset` of (seed, subsequence).
SDLORA_HOST_DEVICE float philox_uniform_at(std::uint64_t seed, std::uint64_t subsequence, std::uint64_t offset,
                                           std::uint64_t i) {
  return philox_uniform(philox_block(seed, subsequence, offset + i / 4).v[i % 4]);
}

/// A Philox4x32-10 stream with an explicit, saveable position (seed, subsequence, offset in 128-bit blocks).
/// Fills are independent of thread count and identical to a CUDA kernel that evaluates philox_*_at per element.
class Philox4x32 {
 public:
  struct State {
    std::uint64_t seed = 0;
    std::uint64_t subsequence = 0;
    std::uint64_t offset = 0;  // in 128-bit blocks
    friend bool operator==(State const&, State const&) = default;
  };

  explicit Philox4x32(std::uint64_t seed = 0, std::uint64_t subsequence = 0) : state_{seed, subsequence, 0} {}

  State const& state() const { return state_; }
  void set_state(State const& s) { state_ = s; }
  std::uint64_t seed() const { return state_.seed; }
  std::uint64_t offset() const { return state_.offset; }
  /// Skips `blocks` counter blocks (4 words each).
  void advance(std::uint64_t blocks) { state_.offset += blocks; }

  /// The next raw block; advances by one.
  PhiloxBlock next_block() { return philox_block(state_.seed, state_.subsequence, state_.offset++); }

  /// Fills `out` with uniforms in [0, 1); advances by ceil(numel / 4) blocks.
  template <class T>
  void uniform(Tensor<T, Cpu>& out) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "Philox4x32::uniform fills float/double");
    Index const n = out.numel();
    T* p = out.data();
    State const s = state_;
    sdlora::cpu::parallel_for(Context<Cpu>{}, (n + 3) / 4, n > (Index(1) << 16), [&](Index b) {
      PhiloxBlock const w = philox_block(s.seed, s.subsequence, s.offset + std::uint64_t(b));
      for (int k = 0; k < 4 && 4 * b + k < n; ++k) p[4 * b + k] = T(philox_uniform(w.v[k]));
    });
    state_.offset += std::uint64_t((n + 3) / 4);
  }
  /// Fills `out` with mean + std * N(0, 1); advances by ceil(numel / 4) blocks.
  template <class T>
  void normal(Tensor<T, Cpu>& out, T mean = T(0), T std = T(1)) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "Philox4x32::normal fills float/double");
    Index const n = out.numel();
    T* p = out.data();
    State const s = state_;
    sdlora::cpu::parallel_for(Context<Cpu>{}, (n + 3) / 4, n > (Index(1) << 14), [&](Index b) {
      PhiloxBlock const w = philox_block(s.seed, s.subsequence, s.offset + std::uint64_t(b));
      float z[4];
      philox_box_muller(w.v[0], w.v[1], z[0], z[1]);
      philox_box_muller(w.v[2], w.v[3], z[2], z[3]);
      for (int k = 0; k < 4 && 4 * b + k < n; ++k) p[4 * b + k] = mean + std * T(z[k]);
    });
    state_.offset += std::uint64_t((n + 3) / 4);
  }
  Tensor<float, Cpu> uniform(Shape shape) {
    auto t = Tensor<float, Cpu>::uninitialized(shape);
    uniform(t);
    return t;
  }
  Tensor<float, Cpu> normal(Shape shape) {
    auto t = Tensor<float, Cpu>::uninitialized(shape);
    normal(t);
    return t;
  }

 private:
  State state_;
};

// ================================================= Torch's mt19937 =================================================

/// Which of torch's CPU float normal kernels (numel >= 16) TorchGenerator reproduces.
enum class TorchNormalKernel {
  Avx2,    ///< x86-64 with AVX2 or AVX512 (torch's default there): Cephes log/sincos polynomials of avx_mathfun.h
  Scalar,  ///< ATEN_CPU_CAPABILITY=default / no AVX2: logf, cosf, sinf of the C library (glibc on Linux)
};

namespace detail {

/// at::mt19937 (MT19937RNGEngine.h): 624 words, seeded by Knuth's multiplier from the low 32 bits of the seed.
struct TorchMt19937 {
  static constexpr int kN = 624;
  static constexpr int kM = 397;
  std::uint64_t seed = 0;
  int left = 1;
  std::uint32_t next = 0;
  std::array<std::uint32_t, kN> state{};

  void init(std::uint64_t s) {
    seed = s;
    state[0] = std::uint32_t(s & 0xffffffffu);
    for (int j = 1; j < kN; ++j) state[j] = 1812433253u * (state[j - 1] ^ (state[j - 1] >> 30)) + std::uint32_t(j);
    left = 1;
    next = 0;
  }
  static std::uint32_t twist(std::uint32_t u, std::uint32_t v) {
    std::uint32_t const mixed = (u & 0x80000000u) | (v & 0x7fffffffu);
    return (mixed >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
  }
  void next_state() {
    left = kN;
    next = 0;
    for (int j = 0; j < kN - kM; ++j) state[j] = state[j + kM] ^ twist(state[j], state[j + 1]);
    for (int j = kN - kM; j < kN - 1; ++j) state[j] = state[j + kM - kN] ^ twist(state[j], state[j + 1]);
    state[kN - 1] = state[kM - 1] ^ twist(state[kN - 1], state[0]);
  }
  std::uint32_t operator()() {
    if (--left == 0) next_state();
    std::uint32_t y = state[next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
  }
};

inline float bits_to_float(std::uint32_t u) { return std::bit_cast<float>(u); }
inline std::uint32_t float_to_bits(float f) { return std::bit_cast<std::uint32_t>(f); }

// Cephes constants of avx_mathfun.h, rounded to float as its _PS256_CONST does.
inline constexpr float kSqrtHalf = float(0.707106781186547524);
inline constexpr float kLogP[9] = {float(7.0376836292E-2),  float(-1.1514610310E-1), float(1.1676998740E-1),
                                   float(-1.2420140846E-1), float(+1.4249322787E-1), float(-1.6668057665E-1),
                                   float(+2.0000714765E-1), float(-2.4999993993E-1), float(+3.3333331174E-1)};
inline constexpr float kLogQ1 = float(-2.12194440e-4);
inline constexpr float kLogQ2 = float(0.693359375);
inline constexpr float kMinusDp1 = float(-0.78515625);
inline constexpr float kMinusDp2 = float(-2.4187564849853515625e-4);
inline constexpr float kMinusDp3 = float(-3.77489497744594108e-8);
inline constexpr float kSinP0 = float(-1.9515295891E-4);
inline constexpr float kSinP1 = float(8.3321608736E-3);
inline constexpr float kSinP2 = float(-1.6666654611E-1);
inline constexpr float kCosP0 = float(2.443315711809948E-005);
inline constexpr float kCosP1 = float(-1.388731625493765E-003);
inline constexpr float kCosP2 = float(4.166664568298827E-002);
inline constexpr float kFourOverPi = float(1.27323954473516);

/// One lane of avx_mathfun's log256_ps, with the multiply-adds fused where torch's GCC build fuses them
/// (-mfma, -ffp-contract=fast: a product feeding only an add becomes one vfmadd).
inline float cephes_logf(float x) {
  bool const invalid = !(x > 0.0f);  // _CMP_LE_OS (x is never NaN here)
  float const min_norm = bits_to_float(0x00800000u);
  x = x > min_norm ? x : min_norm;  // _mm256_max_ps(x, min_norm)
  std::int32_t imm0 = std::int32_t(float_to_bits(x) >> 23);
  x = bits_to_float((float_to_bits(x) & ~0x7f800000u) | float_to_bits(0.5f));
  imm0 -= 0x7f;
  float e = float(imm0);
  e = e + 1.0f;
  bool const mask = x < kSqrtHalf;
  float const tmp = mask ? x : 0.0f;
  x = x - 1.0f;
  e = e - (mask ? 1.0f : 0.0f);
  x = x + tmp;
  float const z = x * x;
  float y = kLogP[0];
  for (int k = 1; k < 9; ++k) y = std::fma(y, x, kLogP[k]);
  y = y * x;
  y = std::fma(y, z, e * kLogQ1);
  y = std::fma(-z, 0.5f, y);
  x = x + y;
  x = std::fma(e, kLogQ2, x);
  return invalid ? bits_to_float(float_to_bits(x) | 0xffffffffu) : x;
}

/// One lane of avx_mathfun's sincos256_ps (fused as torch's build fuses it).
inline void cephes_sincosf(float x, float& s, float& c) {
  std::uint32_t sign_bit_sin = float_to_bits(x) & 0x80000000u;
  x = bits_to_float(float_to_bits(x) & 0x7fffffffu);
  float y = x * kFourOverPi;
  std::int32_t imm2 = std::int32_t(y);  // cvttps: truncation
  imm2 = (imm2 + 1) & ~1;
  y = float(imm2);
  std::int32_t imm4 = imm2;
  std::uint32_t const swap_sign_bit_sin = std::uint32_t(imm2 & 4) << 29;
  bool const poly_mask = (imm2 & 2) == 0;
  x = std::fma(y, kMinusDp1, x);
  x = std::fma(y, kMinusDp2, x);
  x = std::fma(y, kMinusDp3, x);
  imm4 = imm4 - 2;
  std::uint32_t const sign_bit_cos = std::uint32_t(~imm4 & 4) << 29;
  sign_bit_sin ^= swap_sign_bit_sin;
  float const z = x * x;
  float yc = std::fma(kCosP0, z, kCosP1);
  yc = std::fma(yc, z, kCosP2);
  yc = yc * z;
  yc = std::fma(yc, z, -(z * 0.5f));
  yc = yc + 1.0f;
  float ys = std::fma(kSinP0, z, kSinP1);
  ys = std::fma(ys, z, kSinP2);
  ys = ys * z;
  ys = std::fma(ys, x, x);
  float const ysin2 = poly_mask ? ys : 0.0f;
  float const ysin1 = poly_mask ? 0.0f : yc;
  ys = ys - ysin2;
  yc = yc - ysin1;
  float const xs = ysin1 + ysin2;
  float const xc = yc + ys;
  s = bits_to_float(float_to_bits(xs) ^ sign_bit_sin);
  c = bits_to_float(float_to_bits(xc) ^ sign_bit_cos);
}

}  // namespace detail

/// Reproduces torch.Generator("cpu") bit for bit: `g.manual_seed(s)`, then any sequence of torch.randn / torch.rand
/// / torch.randint calls on it gives the same float32 / int64 values (diffusers draws initial latents and then
/// per-step noise from one generator).
class TorchGenerator {
 public:
  /// torch's default CPU seed (c10::detail::default_rng_seed_val).
  static constexpr std::uint64_t kDefaultSeed = 67280421310721ull;
  /// Size of torch.Generator.get_state() on x86-64 / aarch64 Linux (CPUGeneratorImplState).
  static constexpr std::size_t kTorchStateBytes = 5056;

  /// The complete state: restore it to continue a stream exactly (training resume).
  struct State {
    detail::TorchMt19937 engine;
    std::optional<double> next_double_normal;  // the cached sin half of the scalar (numel < 16) Box-Muller
    std::optional<float> next_float_normal;    // kept for torch's state layout; torch's float randn never sets it
  };

  explicit TorchGenerator(std::uint64_t seed = kDefaultSeed, TorchNormalKernel kernel = TorchNormalKernel::Avx2)
      : kernel_(kernel) {
    manual_seed(seed);
  }

  /// g.manual_seed(seed): resets the engine and the cached normal values.
  TorchGenerator& manual_seed(std::uint64_t seed) {
    state_.engine.init(seed);
    state_.next_double_normal.reset();
    state_.next_float_normal.reset();
    return *this;
  }
  std::uint64_t initial_seed() const { return state_.engine.seed; }
  TorchNormalKernel kernel() const { return kernel_; }
  void set_kernel(TorchNormalKernel k) { kernel_ = k; }

  State const& state() const { return state_; }
  void set_state(State const& s) { state_ = s; }

  /// One 32-bit draw (CPUGeneratorImpl::random).
  std::uint32_t random() { return state_.engine(); }
  /// One 64-bit draw: the first 32-bit draw is the high half (CPUGeneratorImpl::random64).
  std::uint64_t random64() {
    std::uint64_t const hi = state_.engine();
    std::uint64_t const lo = state_.engine();
    return (hi << 32) | lo;
  }

  /// torch.randn(shape, generator=g) in float32 (mean 0, std 1), also `normal_(mean, std)` for other values.
  Tensor<float, Cpu> randn(Shape shape, float mean = 0.0f, float std = 1.0f) {
    auto out = Tensor<float, Cpu>::uninitialized(shape);
    normal_fill(out.data(), out.numel(), mean, std);
    return out;
  }
  /// torch.rand(shape, generator=g) in float32: uniform in [0, 1) from 24 random bits per element.
  Tensor<float, Cpu> rand(Shape shape) {
    auto out = Tensor<float, Cpu>::uninitialized(shape);
    for (Index i = 0; i < out.numel(); ++i) out(i) = float(random() & 0xffffffu) * 0x1.0p-24f;
    return out;
  }
  /// torch.randint(low, high, shape, generator=g) (int64): (draw % (high - low)) + low, with a 64-bit draw when the
  /// range is at least 2^28 (uniform_int_from_to_distribution).
  Tensor<std::int64_t, Cpu> randint(std::int64_t low, std::int64_t high, Shape shape) {
    SDLORA_EXPECTS(low < high, "[randint] empty range [" << low << ", " << high << ")");
    std::uint64_t const range = std::uint64_t(high) - std::uint64_t(low);
    auto out = Tensor<std::int64_t, Cpu>::uninitialized(shape);
    for (Index i = 0; i < out.numel(); ++i) {
      std::uint64_t const v = range >= (1ull << 28) ? random64() : std::uint64_t(random());
      out(i) = std::int64_t(v % range + std::uint64_t(low));
    }
    return out;
  }
  /// torch.randperm(n, generator=g) for n < 2^24 on the CPU: Fisher-Yates from the front, z = random() % (n - i).
  std::vector<std::int64_t> randperm(std::int64_t n) {
    std::vector<std::int64_t> p(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) p[std::size_t(i)] = i;
    for (std::int64_t i = 0; i + 1 < n; ++i) {
      std::int64_t const z = std::int64_t(random() % std::uint32_t(n - i));
      std::swap(p[std::size_t(i)], p[std::size_t(z + i)]);
    }
    return p;
  }

  /// The bytes of torch's `g.get_state()` (CPUGeneratorImplState, little-endian x86-64 layout).
  std::vector<std::uint8_t> torch_state_bytes() const {
    std::vector<std::uint8_t> b(kTorchStateBytes, 0);
    auto put = [&](std::size_t at, auto value) { std::memcpy(b.data() + at, &value, sizeof(value)); };
    detail::TorchMt19937 const& e = state_.engine;
    put(0, e.seed);
    put(8, std::int32_t(e.left));
    put(12, std::int32_t(1));  // seeded
    put(16, std::uint64_t(e.next));
    for (int j = 0; j < detail::TorchMt19937::kN; ++j) put(24 + 8 * std::size_t(j), std::uint64_t(e.state[j]));
    put(5024, state_.next_double_normal.value_or(0.0));           // normal_y
    put(5040, std::int32_t(state_.next_double_normal ? 1 : 0));  // normal_is_valid
    put(5048, state_.next_float_normal.value_or(0.0f));
    put(5052, std::uint8_t(state_.next_float_normal ? 1 : 0));
    return b;
  }
  /// Restores from torch's `g.get_state()` bytes (e.g. saved by a Python training run).
  void set_torch_state_bytes(std::span<std::uint8_t const> b) {
    SDLORA_EXPECTS(b.size() == kTorchStateBytes, "[torch_generator] state must be " << kTorchStateBytes
                                                                                    << " bytes, got " << b.size());
    auto get = [&](std::size_t at, auto& value) { std::memcpy(&value, b.data() + at, sizeof(value)); };
    State s;
    std::int32_t left = 0, seeded = 0, valid = 0;
    std::uint64_t next = 0;
    get(0, s.engine.seed);
    get(8, left);
    get(12, seeded);
    get(16, next);
    if (!seeded || left <= 0 || left > detail::TorchMt19937::kN || next > std::uint64_t(detail::TorchMt19937::kN))
      SDLORA_THROW(FormatError, "[torch_generator] invalid mt19937 state (left " << left << ", next " << next << ")");
    s.engine.left = left;
    s.engine.next = std::uint32_t(next);
    for (int j = 0; j < detail::TorchMt19937::kN; ++j) {
      std::uint64_t w = 0;
      get(24 + 8 * std::size_t(j), w);
      s.engine.state[j] = std::uint32_t(w);
    }
    double normal_y = 0;
    get(5024, normal_y);
    get(5040, valid);
    if (valid) s.next_double_normal = normal_y;
    float nf = 0;
    std::uint8_t fvalid = 0;
    get(5048, nf);
    get(5052, fvalid);
    if (fvalid) s.next_float_normal = nf;
    state_ = s;
  }

 private:
  /// at::uniform_real_distribution<float>(0, 1): 24 bits of one 32-bit draw.
  float uniform_float() { return float(random() & 0xffffffu) * 0x1.0p-24f; }
  /// at::uniform_real_distribution<double>(0, 1): 53 bits of one 64-bit draw.
  double uniform_double() { return double(random64() & ((1ull << 53) - 1)) * 0x1.0p-53; }

  /// at::normal_distribution<double> (numel < 16): Box-Muller on two doubles, the sin half cached for the next call.
  double normal_double(double mean, double std) {
    if (state_.next_double_normal) {
      double const v = *state_.next_double_normal;
      state_.next_double_normal.reset();
      return v * std + mean;
    }
    double const u1 = uniform_double();
    double const u2 = uniform_double();
    double const r = std::sqrt(-2.0 * std::log1p(-u2));
    double const theta = 2.0 * 3.14159265358979323846 * u1;
    state_.next_double_normal = r * std::sin(theta);
    return r * std::cos(theta) * std + mean;
  }

  /// NormalFill16: 8 Box-Muller pairs, u1 = 1 - data[j], u2 = data[j + 8].
  void normal_fill_16(float* data, float mean, float std) const {
    for (int j = 0; j < 8; ++j) {
      float const u1 = 1.0f - data[j];
      float const u2 = data[j + 8];
      float radius, theta, sn, cs;
      if (kernel_ == TorchNormalKernel::Avx2) {
        radius = std::sqrt(-2.0f * detail::cephes_logf(u1));
        theta = float(2.0 * 3.14159265358979323846) * u2;
        detail::cephes_sincosf(theta, sn, cs);
      } else {
        radius = std::sqrt(-2.0f * std::log(u1));
        theta = float(2.0 * 3.14159265358979323846 * double(u2));
        sn = std::sin(theta);
        cs = std::cos(theta);
      }
      data[j] = std::fma(radius * cs, std, mean);
      data[j + 8] = std::fma(radius * sn, std, mean);
    }
  }

  /// normal_kernel on a contiguous float tensor (DistributionTemplates.h).
  void normal_fill(float* data, Index n, float mean, float std) {
    if (n < 16) {
      for (Index i = 0; i < n; ++i) data[i] = float(normal_double(double(mean), double(std)));
      return;
    }
    for (Index i = 0; i < n; ++i) data[i] = uniform_float();
    for (Index i = 0; i < n - 15; i += 16) normal_fill_16(data + i, mean, std);
    if (n % 16 != 0) {  // torch redraws the last 16 values
      float* tail = data + n - 16;
      for (int i = 0; i < 16; ++i) tail[i] = uniform_float();
      normal_fill_16(tail, mean, std);
    }
  }

  State state_;
  TorchNormalKernel kernel_ = TorchNormalKernel::Avx2;
};

}  // namespace sdlora

#if defined(SDLORA_RNG_POP_OPTIONS)
#pragma GCC pop_options
#undef SDLORA_RNG_POP_OPTIONS
#endif
