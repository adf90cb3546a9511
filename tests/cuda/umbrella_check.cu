/// @file umbrella_check.cu
/// @brief Compile check: the CPU umbrella header and the CUDA umbrella header together in one nvcc translation unit
/// (with EIGEN_NO_CUDA from sdlora::cuda), using a CPU op and a CUDA op side by side.
#include <sdlora/cuda.hpp>
#include <sdlora/sdlora.hpp>

namespace sdlora::test {
// Never called; it only has to compile and instantiate both backends' gemm in an nvcc TU.
void umbrella_check(Context<Cpu>& cpu, Context<Cuda>& cuda) {
  Tensor<float, Cpu> a(Shape{2, 2});
  Tensor<float, Cpu> c(Shape{2, 2});
  ops::gemm<float, Cpu>(cpu, c, a, a);
  Tensor<float, Cuda> d = to_device(a);
  Tensor<float, Cuda> e(Shape{2, 2});
  ops::gemm<float, Cuda>(cuda, e, d, d);
}
}  // namespace sdlora::test
