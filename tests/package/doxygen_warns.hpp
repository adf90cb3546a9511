/// @file doxygen_warns.hpp
/// @brief Input of the test docs_api_reference, not a library header: its comment names a parameter that does not
/// exist, so Doxygen warns and the run with the `docs` configuration must fail.
#pragma once

/// Returns `x`.
/// @param missing is no parameter of this function.
inline int doxygen_warns_identity(int x) { return x; }
