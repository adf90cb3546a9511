/// @file backend.hpp
/// @brief Backend tags (Cpu, Cuda), the Backend concept and Context<B>, the explicit per-backend runtime state.
/// Include <sdlora/sdlora.hpp> (CPU) or <sdlora/cuda.hpp> (CUDA) instead.
#pragma once

#include <concepts>  // std::same_as
#include <cstddef>   // std::size_t
#include <cstdint>   // std::uintptr_t
#include <cstdlib>   // std::aligned_alloc, std::calloc, std::free
#include <cstring>   // std::memcpy, std::memset
#include <mutex>          // std::mutex, std::lock_guard
#include <new>            // std::bad_alloc
#include <unordered_map>  // std::unordered_map
#include <vector>         // std::vector

#include <sdlora/backend/cpu/isa.hpp>  // cpu::Isa, cpu::default_thread_count
#include <sdlora/core/dtype.hpp>       // DType

namespace sdlora {

/// The host backend: sdlora's packed GEMM and kernels on its own thread pool (backend/cpu/parallel.hpp).
struct Cpu {};
/// The NVIDIA backend: cuBLAS(Lt) and sdlora kernels. Its memory functions live in <sdlora/cuda.hpp>.
/// CamelCase on purpose: a lowercase `cuda` inside namespace sdlora would hide ::cuda::std under nvcc.
struct Cuda {};

/// Memory primitives of a backend. Specialised per backend; the primary template is never defined.
template <class B>
struct BackendMemory;

namespace detail {

/// Freed host blocks of kMinBytes or more, kept by size and handed out again, so that the tensors a training or
/// denoising step allocates in the same sizes every step do not fault in fresh pages from the OS each time (page
/// faults and page clearing were ~12% of a LoRA step's samples). At most kMaxBytes are kept idle; beyond that a
/// block goes back to the OS. Off under AddressSanitizer, so that use-after-free stays detectable.
class HostBlockCache {
 public:
  static constexpr std::size_t kMinBytes = std::size_t(1) << 18;   // 256 KiB
  static constexpr std::size_t kGranule = std::size_t(1) << 16;    // sizes rounded up to 64 KiB
  static constexpr std::size_t kMaxBytes = std::size_t(1) << 30;   // 1 GiB idle at most

  static HostBlockCache& instance() {
    static HostBlockCache* cache = new HostBlockCache;  // never destroyed: static tensors may be freed after it
    return *cache;
  }
  static bool enabled() {
#if defined(__SANITIZE_ADDRESS__)
    return false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    return false;
#else
    return true;
#endif
#else
    return true;
#endif
  }
  /// A cached block of exactly `bytes`, or null.
  void* take(std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(bytes);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    idle_ -= bytes;
    return p;
  }
  /// Keeps a block for reuse; false when the cache is full (the caller frees it).
  bool keep(void* block, std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (idle_ + bytes > kMaxBytes) return false;
    free_[bytes].push_back(block);
    idle_ += bytes;
    return true;
  }
  /// Returns every idle block to the OS.
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [bytes, blocks] : free_)
      for (void* p : blocks) std::free(static_cast<void**>(p)[1]);  // the block's own malloc pointer (header word 1)
    free_.clear();
    idle_ = 0;
  }
  std::size_t idle_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return idle_;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::size_t, std::vector<void*>> free_;  // block size -> idle blocks
  std::size_t idle_ = 0;
};

}  // namespace detail

template <>
struct BackendMemory<Cpu> {
  static constexpr std::size_t kAlignment = 64;  // a cache line; vector loads of every ISA path
  /// Each block starts with a kAlignment-byte header: word 0 its size class (0: not cacheable), word 1 the pointer
  /// malloc returned (to free), then the data.
  static void* allocate(std::size_t bytes) { return allocate_block(bytes, false); }
  /// Zero-filled memory. A fresh block comes from calloc, whose large blocks are pages the OS has not handed out
  /// yet: they cost no resident memory until written, so a model constructed with zero weights and then loaded
  /// tensor by tensor never holds its whole float size (a reused cached block is cleared with memset).
  static void* allocate_zeroed(std::size_t bytes) { return allocate_block(bytes, true); }
  static void deallocate(void* p) {
    if (p == nullptr) return;
    void* base = static_cast<char*>(p) - kAlignment;
    std::size_t const block = *static_cast<std::size_t*>(base);
    if (block != 0 && detail::HostBlockCache::instance().keep(base, block)) return;
    std::free(static_cast<void**>(base)[1]);
  }
  /// Returns the idle blocks kept for reuse to the OS (for example between generation and training).
  static void release_cached() { detail::HostBlockCache::instance().release(); }
  static void copy(void* dst, void const* src, std::size_t bytes) {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  static void zero(void* dst, std::size_t bytes) {
    if (bytes) std::memset(dst, 0, bytes);
  }
  static void synchronize() {}

 private:
  static void* allocate_block(std::size_t bytes, bool zeroed) {
    if (bytes == 0) return nullptr;
    std::size_t const rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    bool const cacheable = rounded >= detail::HostBlockCache::kMinBytes && detail::HostBlockCache::enabled();
    std::size_t const block =
        cacheable ? (rounded + kAlignment + detail::HostBlockCache::kGranule - 1) / detail::HostBlockCache::kGranule *
                        detail::HostBlockCache::kGranule
                  : rounded + kAlignment;
    void* base = cacheable ? detail::HostBlockCache::instance().take(block) : nullptr;
    if (base != nullptr) {
      if (zeroed) std::memset(static_cast<char*>(base) + kAlignment, 0, rounded);
    } else if (zeroed) {  // calloc aligns to 16 bytes: over-allocate and align the header up
      void* raw = std::calloc(1, block + kAlignment);
      if (raw == nullptr) throw std::bad_alloc();
      std::uintptr_t const at = (reinterpret_cast<std::uintptr_t>(raw) + kAlignment - 1) / kAlignment * kAlignment;
      base = reinterpret_cast<void*>(at);
      static_cast<void**>(base)[1] = raw;
    } else {
      base = std::aligned_alloc(kAlignment, block);
      if (base == nullptr) throw std::bad_alloc();
      static_cast<void**>(base)[1] = base;
    }
    *static_cast<std::size_t*>(base) = cacheable ? block : 0;
    return static_cast<char*>(base) + kAlignment;
  }
};

/// A backend tag with allocate / deallocate / copy / zero / synchronize.
template <class B>
concept Backend = requires(void* p, void const* q, std::size_t n) {
  { BackendMemory<B>::allocate(n) } -> std::same_as<void*>;
  BackendMemory<B>::deallocate(p);
  BackendMemory<B>::copy(p, q, n);
  BackendMemory<B>::zero(p, n);
  BackendMemory<B>::synchronize();
};

/// Per-backend runtime state, passed explicitly to every op (no globals).
template <class B>
struct Context;

template <>
struct Context<Cpu> {
  /// Threads of the pool that runs every op; 0: cpu::default_thread_count() (the cores the process may use).
  int num_threads = 0;
  /// The highest vector instruction set the kernels may use; kAuto: the best the CPU has (or SDLORA_ISA's cap).
  cpu::Isa isa = cpu::Isa::kAuto;
  /// What training layers keep for backward (nn/saved.hpp): F32, the tensor's own type; F16 or BF16, rounded to 16
  /// bits (float models), which halves the activation memory of a training step — the activation half of mixed
  /// precision (torch.autocast's saved tensors; compute stays in the model's type).
  DType saved_activations = DType::F32;
  /// 3x3 stride-1 float convolutions of large images (at least 32x32 outputs, 64 channels in and out) by Winograd's
  /// F(2x2, 3x3) (backend/cpu/winograd.hpp): 2.25x fewer multiplications, results within rounding of the direct
  /// path but not its bits. false keeps every convolution on the direct (implicit-GEMM) path; so does the
  /// environment variable SDLORA_WINOGRAD=0 for a whole process.
  bool winograd = true;
  /// What the GEMMs (Linear, convolution, the training step's gradients) multiply: F32, or BF16 — operands rounded
  /// to bfloat16, products summed in float, as torch.autocast(device_type="cpu", dtype=torch.bfloat16) does. BF16
  /// runs on AMX-BF16 tiles or AVX512-BF16 where the CPU has them (backend/cpu/bf16.hpp), else on the float kernels
  /// with rounded operands; convolutions then skip Winograd. Attention's products run on AMX tiles too where the CPU
  /// has AMX, and stay float elsewhere. Results are within bf16 rounding of F32's (its own tolerance in the tests),
  /// not its bits.
  DType compute = DType::F32;

  int threads() const { return num_threads > 0 ? num_threads : cpu::default_thread_count(); }
};

}  // namespace sdlora
