/// @file instances.cpp
/// @brief The `sdlora::instances` library: the float / CPU entry points that <sdlora/instances.hpp> declares, compiled
/// once, so the programs that include that header skip them (benchmarks/RESULTS.md, "Compile time").
#define SDLORA_DEFINE_INSTANCES
#include <sdlora/instances.hpp>
