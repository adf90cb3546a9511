/// @file backend.hpp
/// @brief Backend tags (Cpu, Cuda), the Backend concept and Context<B>, the explicit per-backend runtime state.
/// Include <sdlora/sdlora.hpp> (CPU) or <sdlora/cuda.hpp> (CUDA) instead.
#pragma once

#include <concepts>  // std::same_as
#include <cstddef>   // std::size_t
#include <cstdlib>   // std::aligned_alloc, std::free
#include <cstring>   // std::memcpy, std::memset
#include <new>       // std::bad_alloc

#include <sdlora/backend/cpu/isa.hpp>  // cpu::Isa, cpu::default_thread_count

namespace sdlora {

/// The host backend: sdlora's packed GEMM and kernels on its own thread pool (backend/cpu/parallel.hpp).
struct Cpu {};
/// The NVIDIA backend: cuBLAS(Lt) and sdlora kernels. Its memory functions live in <sdlora/cuda.hpp>.
/// CamelCase on purpose: a lowercase `cuda` inside namespace sdlora would hide ::cuda::std under nvcc.
struct Cuda {};

/// Memory primitives of a backend. Specialised per backend; the primary template is never defined.
template <class B>
struct BackendMemory;

template <>
struct BackendMemory<Cpu> {
  static constexpr std::size_t kAlignment = 64;  // a cache line; Eigen's vectorised loads need >= 16
  static void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    std::size_t const rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* p = std::aligned_alloc(kAlignment, rounded);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  static void deallocate(void* p) { std::free(p); }
  static void copy(void* dst, void const* src, std::size_t bytes) {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  static void zero(void* dst, std::size_t bytes) {
    if (bytes) std::memset(dst, 0, bytes);
  }
  static void synchronize() {}
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

  int threads() const { return num_threads > 0 ? num_threads : cpu::default_thread_count(); }
};

}  // namespace sdlora
