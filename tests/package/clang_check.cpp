// Consumers on Clang: the float / CPU entry points of generation and training instantiated (src/instances.cpp's
// list) and every umbrella header, through clang++ -fsyntax-only (tests/package/tests.cmake, test headers_clang).
// Clang before 16 rejects some C++20 that GCC 12 accepts, e.g. a lambda capturing a structured binding.
#define SDLORA_DEFINE_INSTANCES
#include <sdlora/instances.hpp>

#include <sdlora/all.hpp>
#include <sdlora/eval.hpp>
#include <sdlora/pipeline.hpp>
#include <sdlora/sdlora.hpp>
#include <sdlora/train.hpp>
