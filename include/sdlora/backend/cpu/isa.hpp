/// @file isa.hpp
/// @brief What the machine offers the CPU kernels: the cores this process may use, and the x86-64 vector instruction
/// sets the kernels have paths for, detected once per process at run time
/// (cpuid through __builtin_cpu_supports, which also checks that the OS saves the wide registers), so a binary built
/// for the x86-64 baseline still runs AVX2+FMA or AVX-512 kernels. Include <sdlora/sdlora.hpp> instead.
///
/// The environment variable SDLORA_ISA=portable|avx2|avx512 caps the choice for a whole process (the test suite runs
/// its conformance tests once per path this way); Context<Cpu>::isa caps it per context. A cap above what the CPU
/// has falls back to the best path the CPU supports.
#pragma once

#include <atomic>       // std::atomic
#include <cstdlib>      // std::getenv, std::atoi
#include <string_view>  // std::string_view
#include <thread>       // std::thread::hardware_concurrency

#if defined(__linux__)
#include <sched.h>  // sched_getaffinity, CPU_COUNT
#endif

namespace sdlora::cpu {

inline std::atomic<int>& default_thread_count_override() {
  static std::atomic<int> count{0};
  return count;
}

/// Sets what default_thread_count() returns from now on (0: back to the environment's); the process-wide
/// counterpart of Context<Cpu>::num_threads, for programs' --threads flags.
inline void set_default_thread_count(int threads) { default_thread_count_override().store(threads > 0 ? threads : 0); }

/// Threads to use when a Context<Cpu> does not say: set_default_thread_count's value, else SDLORA_NUM_THREADS, else
/// OMP_NUM_THREADS, else the cores in this process's affinity mask (what `taskset` or a container allows).
inline int default_thread_count() {
  if (int const set = default_thread_count_override().load(); set > 0) return set;
  static int const count = [] {
    for (char const* name : {"SDLORA_NUM_THREADS", "OMP_NUM_THREADS"})
      if (char const* v = std::getenv(name); v && std::atoi(v) > 0) return std::atoi(v);
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
    unsigned const hw = std::thread::hardware_concurrency();
    return hw > 0 ? int(hw) : 1;
  }();
  return count;
}

/// Kernel paths, ordered: a higher value needs every feature of a lower one.
enum class Isa {
  kAuto = -1,     ///< the best the CPU supports (Context<Cpu>'s default)
  kPortable = 0,  ///< plain C++ the compiler vectorises for the build's baseline (SSE2 on x86-64)
  kAvx2 = 1,      ///< AVX2 + FMA (Haswell, Zen 1 and later)
  kAvx512 = 2,    ///< AVX-512 F/BW/VL/DQ (Skylake-SP, Ice Lake, Zen 4 and later)
};

inline char const* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return "portable";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAuto: break;
  }
  return "auto";
}

/// The best path this CPU and OS support.
inline Isa detected_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static Isa const detected = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kPortable;
  }();
  return detected;
#else
  return Isa::kPortable;
#endif
}

/// SDLORA_ISA from the environment, read once; kAuto when unset or unknown.
inline Isa environment_isa() {
  static Isa const from_env = [] {
    char const* v = std::getenv("SDLORA_ISA");
    std::string_view const s = v ? v : "";
    if (s == "portable") return Isa::kPortable;
    if (s == "avx2") return Isa::kAvx2;
    if (s == "avx512") return Isa::kAvx512;
    return Isa::kAuto;
  }();
  return from_env;
}

/// The path to run: the requested one (kAuto: the environment's, else the best), never above what the CPU has.
inline Isa resolve_isa(Isa requested) {
  Isa const cap = requested != Isa::kAuto ? requested : environment_isa();
  Isa const best = detected_isa();
  return cap == Isa::kAuto || static_cast<int>(cap) > static_cast<int>(best) ? best : cap;
}

}  // namespace sdlora::cpu
