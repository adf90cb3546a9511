// A downstream program: multiplies two matrices through the installed headers and checks the result.
#include <sdlora/sdlora.hpp>

#include <cstdio>

int main() {
  sdlora::Context<sdlora::Cpu> ctx;
  sdlora::Tensor<float> a(sdlora::Shape{2, 2}), b(sdlora::Shape{2, 2}), c(sdlora::Shape{2, 2});
  a.at({0, 0}) = 1; a.at({0, 1}) = 2; a.at({1, 0}) = 3; a.at({1, 1}) = 4;
  b.at({0, 0}) = 1; b.at({1, 1}) = 1;
  sdlora::ops::gemm<float, sdlora::Cpu>(ctx, c, a, b);
  bool const ok = c.at({1, 0}) == 3.0f && c.at({0, 1}) == 2.0f;
  std::printf("consumer: %s\n", ok ? "ok" : "wrong product");
  return ok ? 0 : 1;
}
