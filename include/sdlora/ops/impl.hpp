/// @file impl.hpp
/// @brief The dispatch point of every op: `ops::Impl<Op, B>`, specialised once per op and backend under
/// backend/<name>/. Op front ends in ops/*.hpp check shapes and call `Impl<Op, B>::run`. Class-template
/// specialisation (not overloads) keeps dispatch independent of include order. Include <sdlora/sdlora.hpp> instead.
#pragma once

#include <concepts>     // std::floating_point
#include <type_traits>  // std::is_same_v

namespace sdlora::ops {

/// Specialised by each backend for each op tag; the primary template is never defined, so a missing kernel is a
/// compile error naming the op and the backend.
template <class Op, class B>
struct Impl;

/// Scalar types the CPU kernels compute in (frozen half/bfloat16 weights are widened at load).
template <class T>
concept HostCompute = std::is_same_v<T, float> || std::is_same_v<T, double>;

}  // namespace sdlora::ops
