/// @file config.hpp
/// @brief Compiler and host/device macros shared by every sdlora header. Include <sdlora/sdlora.hpp> instead.
#pragma once

#if defined(__CUDACC__)
#define SDLORA_HOST_DEVICE __forceinline__ __host__ __device__
#define SDLORA_DEVICE __forceinline__ __device__
#else
#define SDLORA_HOST_DEVICE inline
#define SDLORA_DEVICE inline
#endif

