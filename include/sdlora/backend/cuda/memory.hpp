/// @file memory.hpp
/// @brief Device memory for Tensor<T, Cuda>: a caching allocator (size-class free lists, so steady-state training
/// and sampling never call cudaMalloc), BackendMemory<Cuda>, and the explicit host <-> device copies to_device /
/// to_host. Host C++ (compiles with g++). Include <sdlora/cuda.hpp> instead.
///
/// Ordering: BackendMemory<Cuda> has no Context, so copy/zero run on the legacy default stream, and a freed block
/// goes back to the cache at once. Context<Cuda> creates a *blocking* stream, which the legacy default stream
/// orders against, so Tensor copies, zero-fills and block reuse are ordered with the ops of one context. With
/// several contexts (streams) working on the same tensors, synchronize before a tensor dies.
#pragma once

#include <array>          // std::array
#include <cstddef>        // std::size_t, std::ptrdiff_t
#include <mutex>          // std::mutex, std::lock_guard
#include <unordered_map>  // std::unordered_map
#include <utility>        // std::pair
#include <vector>         // std::vector

#include <cuda_runtime_api.h>  // cudaMalloc, cudaFree, cudaMemcpy, cudaMemset, cudaGetDevice

#include <sdlora/backend/cuda/check.hpp>  // SDLORA_CUDA_CHECK, CudaError
#include <sdlora/core/backend.hpp>        // Cuda, BackendMemory
#include <sdlora/core/shape.hpp>          // Shape, Index, kMaxRank
#include <sdlora/core/tensor.hpp>         // Tensor, TensorView

namespace sdlora {

/// Counters of the caching allocator (for tests and memory reports).
struct CudaMemoryStats {
  std::size_t device_allocations = 0;  // cudaMalloc calls so far
  std::size_t cache_hits = 0;          // allocations served from a free list
  std::size_t bytes_reserved = 0;      // held from cudaMalloc: in use + cached
  std::size_t bytes_in_use = 0;        // handed out to tensors (rounded to size classes)
};

/// A process-wide cache of device blocks. Requests are rounded up to a size class (512 B minimum, then four classes
/// per power of two, so at most 25% is wasted); a freed block goes to its class's free list and the next request of
/// that class on the same device reuses it. Thread-safe. Blocks are returned to CUDA only by empty_cache() or when a
/// cudaMalloc fails (then the cache is emptied and the allocation retried once).
class CudaCachingAllocator {
 public:
  static constexpr std::size_t kMinBlock = 512;  // also the alignment of every block (cudaMalloc gives 256)

  /// The one allocator of the process. Never destroyed: freeing device memory after the CUDA runtime has shut down at
  /// exit is an error, and the driver reclaims everything anyway.
  static CudaCachingAllocator& instance() {
    static CudaCachingAllocator* const allocator = new CudaCachingAllocator();
    return *allocator;
  }

  /// The size class of a request: the smallest m * 2^e >= bytes with m in {4, 5, 6, 7}, and at least kMinBlock.
  static std::size_t size_class(std::size_t bytes) {
    if (bytes <= kMinBlock) return kMinBlock;
    std::size_t step = kMinBlock / 4;  // the class spacing: a quarter of the power of two below `bytes`
    while (step * 8 < bytes) step *= 2;
    return (bytes + step - 1) / step * step;
  }

  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    std::size_t const rounded = size_class(bytes);
    int device = 0;
    SDLORA_CUDA_CHECK(cudaGetDevice(&device), "cuda alloc");
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<void*>& list = free_[Key{device, rounded}];
    void* p = nullptr;
    if (!list.empty()) {
      p = list.back();
      list.pop_back();
      ++stats_.cache_hits;
    } else {
      p = device_malloc(rounded);
    }
    live_[p] = Key{device, rounded};
    stats_.bytes_in_use += rounded;
    return p;
  }

  void deallocate(void* p) {
    if (p == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto const it = live_.find(p);
    if (it == live_.end()) SDLORA_THROW(CudaError, "[cuda free] pointer " << p << " was not allocated by sdlora");
    Key const key = it->second;
    live_.erase(it);
    stats_.bytes_in_use -= key.bytes;
    free_[key].push_back(p);
  }

  /// Returns every cached (free) block to CUDA; blocks in use stay valid.
  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached();
  }

  CudaMemoryStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

 private:
  struct Key {
    int device;
    std::size_t bytes;
    friend bool operator==(Key const&, Key const&) = default;
  };
  struct KeyHash {
    std::size_t operator()(Key const& k) const { return k.bytes * 31u + std::size_t(k.device); }
  };

  CudaCachingAllocator() = default;

  // Called with mutex_ held.
  void* device_malloc(std::size_t bytes) {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      (void)cudaGetLastError();  // clear the out-of-memory error, free the cache and try once more
      release_cached();
      SDLORA_CUDA_CHECK(cudaMalloc(&p, bytes), "cuda alloc");
    }
    ++stats_.device_allocations;
    stats_.bytes_reserved += bytes;
    return p;
  }
  // Called with mutex_ held. cudaFree needs the block's device to be current: switch, free, switch back.
  void release_cached() {
    int current = 0;
    SDLORA_CUDA_CHECK(cudaGetDevice(&current), "cuda free");
    for (auto& [key, list] : free_) {
      if (list.empty()) continue;
      SDLORA_CUDA_CHECK(cudaSetDevice(key.device), "cuda free");
      for (void* p : list) {
        SDLORA_CUDA_CHECK(cudaFree(p), "cuda free");
        stats_.bytes_reserved -= key.bytes;
      }
      list.clear();
    }
    SDLORA_CUDA_CHECK(cudaSetDevice(current), "cuda free");
  }

  mutable std::mutex mutex_;
  std::unordered_map<Key, std::vector<void*>, KeyHash> free_;  // size class -> cached blocks
  std::unordered_map<void*, Key> live_;                         // block in use -> its size class
  CudaMemoryStats stats_;
};

/// Device memory primitives for Tensor<T, Cuda>; see the ordering note at the top of this file.
template <>
struct BackendMemory<Cuda> {
  static void* allocate(std::size_t bytes) { return CudaCachingAllocator::instance().allocate(bytes); }
  static void deallocate(void* p) { CudaCachingAllocator::instance().deallocate(p); }
  /// Device-to-device copy (asynchronous to the host, ordered on the legacy default stream).
  static void copy(void* dst, void const* src, std::size_t bytes) {
    if (bytes) SDLORA_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cuda copy");
  }
  static void zero(void* dst, std::size_t bytes) {
    if (bytes) SDLORA_CUDA_CHECK(cudaMemset(dst, 0, bytes), "cuda zero");
  }
  static void synchronize() { SDLORA_CUDA_CHECK(cudaDeviceSynchronize(), "cuda synchronize"); }
  /// Host-to-device copy of `bytes` from host memory; returns after the copy (Tensor::fill, to_backend).
  static void upload(void* dst, void const* host, std::size_t bytes) {
    if (bytes) SDLORA_CUDA_CHECK(cudaMemcpy(dst, host, bytes, cudaMemcpyHostToDevice), "cuda upload");
  }
  /// Device-to-host copy into host memory; waits for the work queued before it (to_cpu).
  static void download(void* host, void const* src, std::size_t bytes) {
    if (bytes) SDLORA_CUDA_CHECK(cudaMemcpy(host, src, bytes, cudaMemcpyDeviceToHost), "cuda download");
  }
  /// Gathers a strided device view (`shape`, `strides` in elements of `element_bytes`) into contiguous `dst`
  /// (Tensor::from_view). No kernel: one cudaMemcpy2D per index of the axes before the last two (the last axis may
  /// be strided too: a pitch of one element per row).
  static void copy_strided(void* dst, void const* src, Shape const& shape, std::array<Index, kMaxRank> const& strides,
                           std::size_t element_bytes) {
    int const rank = shape.rank();
    if (shape.numel() == 0) return;
    if (rank == 0) return copy(dst, src, element_bytes);
    Index const cols = shape[rank - 1], col_stride = strides[std::size_t(rank - 1)];
    Index const rows = rank >= 2 ? shape[rank - 2] : 1, row_stride = rank >= 2 ? strides[std::size_t(rank - 2)] : 0;
    Index outer = 1;
    for (int a = 0; a + 2 < rank; ++a) outer *= shape[a];
    auto* out = static_cast<char*>(dst);
    auto const* in = static_cast<char const*>(src);
    for (Index o = 0; o < outer; ++o) {
      Index offset = 0, rest = o;  // the element offset of outer index o (row-major over the leading axes)
      for (int a = rank - 3; a >= 0; --a) {
        offset += (rest % shape[a]) * strides[std::size_t(a)];
        rest /= shape[a];
      }
      char* d = out + std::size_t(o * rows * cols) * element_bytes;
      char const* s = in + std::ptrdiff_t(offset) * std::ptrdiff_t(element_bytes);
      if (col_stride == 1 && (rows == 1 || row_stride >= cols)) {  // rows of `cols` elements, `row_stride` apart
        SDLORA_CUDA_CHECK(cudaMemcpy2D(d, std::size_t(cols) * element_bytes, s,
                                       std::size_t(rows > 1 ? row_stride : cols) * element_bytes,
                                       std::size_t(cols) * element_bytes, std::size_t(rows), cudaMemcpyDeviceToDevice),
                          "cuda copy_strided");
      } else {  // one element per "row", col_stride apart, for each of the rows
        for (Index r = 0; r < rows; ++r)
          SDLORA_CUDA_CHECK(cudaMemcpy2D(d + std::size_t(r * cols) * element_bytes, element_bytes,
                                         s + std::ptrdiff_t(r * row_stride) * std::ptrdiff_t(element_bytes),
                                         std::size_t(col_stride) * element_bytes, element_bytes, std::size_t(cols),
                                         cudaMemcpyDeviceToDevice),
                            "cuda copy_strided");
      }
    }
  }
};

/// A device copy of a host view (made contiguous first when it is strided). Returns after the copy is done.
template <class T>
Tensor<T, Cuda> to_device(TensorView<T const, Cpu> host) {
  Tensor<T, Cpu> const contiguous = host.is_contiguous() ? Tensor<T, Cpu>() : Tensor<T, Cpu>::from_view(host);
  T const* src = host.is_contiguous() ? host.data() : contiguous.data();
  auto device = Tensor<T, Cuda>::uninitialized(host.shape());
  if (device.bytes())
    SDLORA_CUDA_CHECK(cudaMemcpy(device.data(), src, device.bytes(), cudaMemcpyHostToDevice), "to_device");
  return device;
}
template <class T>
Tensor<T, Cuda> to_device(Tensor<T, Cpu> const& host) {
  return to_device<T>(host.view());
}

/// A host copy of a contiguous device view. Waits for the work queued before it on the legacy default stream and
/// on every blocking stream (so for every op of a Context<Cuda>).
template <class T>
Tensor<T, Cpu> to_host(TensorView<T const, Cuda> device) {
  SDLORA_EXPECTS(device.is_contiguous(), "[to_host] view is not contiguous: " << device.shape());
  auto host = Tensor<T, Cpu>::uninitialized(device.shape());
  if (host.bytes())
    SDLORA_CUDA_CHECK(cudaMemcpy(host.data(), device.data(), host.bytes(), cudaMemcpyDeviceToHost), "to_host");
  return host;
}
template <class T>
Tensor<T, Cpu> to_host(Tensor<T, Cuda> const& device) {
  return to_host<T>(device.view());
}

}  // namespace sdlora
