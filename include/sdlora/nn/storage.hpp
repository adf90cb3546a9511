/// @file storage.hpp
/// @brief Frozen weights in 16 bits: set_weight_storage keeps every frozen Linear and Conv2d weight of a module tree
/// as F16 or BF16 (Parameter::set_storage), halving their memory; the CPU GEMM widens them while it packs its panels,
/// so compute stays float. Norms, biases, embeddings and trainable parameters (LoRA factors) stay float.
/// Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <cstddef>  // std::size_t
#include <string>   // std::string
#include <type_traits>  // std::remove_cvref_t

#include <sdlora/core/backend.hpp>  // BackendMemory<Cpu>
#include <sdlora/core/dtype.hpp>    // DType, dtype_name
#include <sdlora/core/error.hpp>  // SDLORA_EXPECTS

namespace sdlora::nn {

/// A leaf whose weight a GEMM reads (Linear, Conv2d): it has adapters and a weight Parameter.
template <class L>
concept WeightLeaf = requires(L& l) {
  l.adapters;
  l.weight.value16;
};

/// What set_weight_storage changed.
struct StorageReport {
  std::size_t weights = 0;      ///< weights now in the requested storage
  std::size_t bytes_saved = 0;  ///< bytes freed (negative changes, widening back, count as 0)
};

/// Keeps the frozen weights of every Linear and Conv2d under `module` in `dtype`: DType::F16 or DType::BF16
/// (rounded to nearest even), or the module's own float type to widen them back. Trainable weights are left as they
/// are. reference: diffusers' `torch_dtype=torch.float16` / sd.cpp's `--type f16` for the frozen base model.
template <class Module>
StorageReport set_weight_storage(Module& module, DType dtype) {
  SDLORA_EXPECTS(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16,
                 "[set_weight_storage] storage must be F32, F16 or BF16, got " << dtype_name(dtype));
  StorageReport report;
  module.visit("", [&](std::string const&, auto& leaf) {
    using L = std::remove_cvref_t<decltype(leaf)>;
    if constexpr (WeightLeaf<L>) {
      auto& w = leaf.weight;
      if (w.trainable || w.shape().numel() == 0) return;
      std::size_t const before = w.is_16bit() ? 2 : sizeof(typename decltype(w.value)::value_type);
      w.set_storage(dtype);
      std::size_t const after = w.is_16bit() ? 2 : sizeof(typename decltype(w.value)::value_type);
      if (after < before) report.bytes_saved += (before - after) * std::size_t(w.shape().numel());
      report.weights += 1;
    }
  });
  // The freed float tensors would otherwise sit in the host block cache (up to its limit) instead of leaving RSS.
  if (report.bytes_saved > 0) BackendMemory<Cpu>::release_cached();
  return report;
}

/// "f32" / "f16" / "bf16" (also "fp32", "fp16", "float32", "float16", "bfloat16") as a DType, for the programs'
/// --weights-dtype flags.
inline DType parse_weight_dtype(std::string const& s) {
  if (s == "f32" || s == "fp32" || s == "float32") return DType::F32;
  if (s == "f16" || s == "fp16" || s == "float16") return DType::F16;
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  SDLORA_THROW(ConfigError, "--weights-dtype must be f32, f16 or bf16, got '" << s << "'");
}

}  // namespace sdlora::nn
