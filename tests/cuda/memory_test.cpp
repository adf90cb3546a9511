/// @file memory_test.cpp
/// @brief CUDA backend basics: host <-> device round trips, device tensor copies, the caching allocator's reuse, and
/// error messages that name the op; strided device copies, fill, to_backend / to_cpu.
#include <catch2/catch.hpp>

#include <array>        // std::array
#include <type_traits>  // std::is_copy_constructible_v

#include <sdlora/cuda.hpp>

#include "support.hpp"  // random_tensor

using namespace sdlora;

TEST_CASE("size classes waste at most a quarter and are monotone", "[cuda][memory]") {
  std::size_t previous = 0;
  for (std::size_t bytes = 1; bytes < (std::size_t(1) << 24); bytes = bytes * 9 / 8 + 1) {
    std::size_t const cls = CudaCachingAllocator::size_class(bytes);
    CHECK(cls >= bytes);
    CHECK(cls >= CudaCachingAllocator::kMinBlock);
    CHECK(cls % CudaCachingAllocator::kMinBlock == 0);
    if (bytes > CudaCachingAllocator::kMinBlock) CHECK(double(cls) <= 1.25 * double(bytes));
    CHECK(cls >= previous);
    previous = cls;
  }
}

TEST_CASE("tensors round-trip between host and device, and device copies are deep", "[cuda][memory]") {
  auto const host = test::random_tensor<float>(Shape{3, 5, 7}, 1);
  Tensor<float, Cuda> device = to_device(host);
  CHECK(device.shape() == host.shape());
  Tensor<float, Cuda> copy = device;  // device-to-device copy
  device.fill_zero();
  Tensor<float, Cpu> const back = to_host(copy);
  for (Index i = 0; i < host.numel(); ++i) REQUIRE(back(i) == host(i));
  Tensor<float, Cpu> const zeros = to_host(device);
  for (Index i = 0; i < host.numel(); ++i) REQUIRE(zeros(i) == 0.0f);

  // A strided host view is made contiguous on the way.
  auto const column = TensorView<float const, Cpu>(host.data(), Shape{3, 5}, {35, 7, 1});
  Tensor<float, Cpu> const column_back = to_host(to_device(column));
  CHECK(column_back.at({2, 4}) == host.at({2, 4, 0}));
}

TEST_CASE("the caching allocator serves a steady-state loop without cudaMalloc", "[cuda][memory]") {
  Context<Cuda> ctx;
  auto& allocator = CudaCachingAllocator::instance();
  auto const x = to_device(test::random_tensor<float>(Shape{2, 77, 768}, 2));
  auto step = [&] {
    Tensor<float, Cuda> y(x.shape());          // (2, 77, 768)
    Tensor<float, Cuda> z(Shape{4096});        // (4096)
    ops::add<float, Cuda>(ctx, y, x, x);
    Tensor<float, Cuda> w = y;                 // (2, 77, 768)
    ops::scale<float, Cuda>(ctx, w, 0.5);
    (void)ops::sum<float, Cuda>(ctx, w);       // allocates its (blocks) partials
  };
  step();  // warm-up fills the cache
  CudaMemoryStats const before = allocator.stats();
  for (int i = 0; i < 50; ++i) step();
  CudaMemoryStats const after = allocator.stats();
  CHECK(after.device_allocations == before.device_allocations);
  CHECK(after.cache_hits >= before.cache_hits + 50 * 4);
  CHECK(after.bytes_in_use == before.bytes_in_use);
  CHECK(after.bytes_reserved == before.bytes_reserved);

  allocator.empty_cache();
  CHECK(allocator.stats().bytes_reserved == allocator.stats().bytes_in_use);
}

TEST_CASE("CUDA and cuBLAS failures throw CudaError naming the op", "[cuda][errors]") {
  static_assert(!std::is_copy_constructible_v<Context<Cuda>> && !std::is_copy_assignable_v<Context<Cuda>>);
  Context<Cuda> ctx;
  auto fail_cuda = [] { SDLORA_CUDA_CHECK(cudaSetDevice(-1), "my op"); };
  CHECK_THROWS_WITH(fail_cuda(),
                    Catch::StartsWith("[my op] cudaErrorInvalidDevice") && Catch::Contains("memory_test.cpp"));
  auto fail_cublas = [&] {
    float const one = 1.0f;
    SDLORA_CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, -1, 1, 1, &one, nullptr, 1, nullptr, 1,
                                    &one, nullptr, 1),
                        "gemm");
  };
  CHECK_THROWS_WITH(fail_cublas(), Catch::StartsWith("[gemm] CUBLAS_STATUS_INVALID_VALUE"));
  // Out of device memory (4 PiB): the cache is emptied, cudaMalloc retried, and the failure reported.
  auto allocate_too_much = [] { (void)Tensor<float, Cuda>::uninitialized(Shape{Index(1) << 50}); };
  CHECK_THROWS_AS(allocate_too_much(), CudaError);
  CHECK_THROWS_WITH(allocate_too_much(), Catch::StartsWith("[cuda alloc] cudaErrorMemoryAllocation"));
  // The device still works afterwards.
  Tensor<float, Cuda> y(Shape{8});
  ops::scale<float, Cuda>(ctx, y, 2.0);
  ctx.synchronize();
  // Shape errors come from the backend-neutral front ends, before any launch.
  Tensor<float, Cuda> wrong(Shape{3});
  CHECK_THROWS_AS((ops::add<float, Cuda>(ctx, wrong, y, y)), ShapeError);
}

TEST_CASE("strided device views copy like host views; fill, to_backend and to_cpu", "[cuda][memory]") {
  // Exact: copies only. Each strided view of a device tensor must give the same elements as the same view of the
  // host tensor (Tensor::from_view on the CPU walks the strides element by element).
  auto const host = test::random_tensor<float>(Shape{4, 6, 10}, 3);  // (4, 6, 10)
  Tensor<float, Cuda> const device = to_device(host);
  auto same_view = [&](Shape shape, std::array<Index, kMaxRank> strides, Index offset) {
    TensorView<float const, Cpu> const h(host.data() + offset, shape, strides);
    TensorView<float const, Cuda> const d(device.data() + offset, shape, strides);
    auto const want = Tensor<float, Cpu>::from_view(h);
    auto const got = to_cpu<float, Cuda>(d);  // strided: from_view on the device, then one download
    REQUIRE(got.shape() == want.shape());
    for (Index i = 0; i < want.numel(); ++i) REQUIRE(got(i) == want(i));
  };
  same_view(Shape{4, 6, 3}, {60, 10, 1}, 2);   // a slice of the last axis: rows of 3, 10 apart
  same_view(Shape{2, 6, 10}, {120, 10, 1}, 0);  // every other sample
  same_view(Shape{4, 10, 6}, {60, 1, 10}, 0);   // the last two axes transposed: the last axis strided
  same_view(Shape{4, 6}, {60, 10}, 7);          // one column of every row: rank 2, last axis strided
  same_view(Shape{6, 1, 10}, {10, 10, 1}, 60);  // a middle axis of 1

  Tensor<float, Cuda> filled(Shape{5, 3});
  filled.fill(2.5f);
  auto const f = to_host(filled);
  for (Index i = 0; i < f.numel(); ++i) REQUIRE(f(i) == 2.5f);
  auto const up = to_backend<Cuda>(host.view());
  auto const back = to_cpu(up);
  for (Index i = 0; i < host.numel(); ++i) REQUIRE(back(i) == host(i));
}
