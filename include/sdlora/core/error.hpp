/// @file error.hpp
/// @brief The exception hierarchy and the precondition macros. Include <sdlora/sdlora.hpp> instead.
///
/// Every error the library raises derives from sdlora::Error. Messages start with the operation in brackets,
/// e.g. "[linear] x must be (N, 320), got (2, 3, 4)", and name the file, tensor key and shapes involved.
#pragma once

#include <sstream>    // std::ostringstream
#include <stdexcept>  // std::runtime_error
#include <string>     // std::string

namespace sdlora {

/// Base of every exception thrown by sdlora.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
/// A file whose bytes do not follow its format (safetensors header, LoRA keys, npy header, ...).
struct FormatError : Error {
  using Error::Error;
};
/// Tensor shapes or dtypes that do not fit an operation.
struct ShapeError : Error {
  using Error::Error;
};
/// An invalid configuration value (config.json field, CLI flag, option combination).
struct ConfigError : Error {
  using Error::Error;
};
/// A file that cannot be opened, read or written.
struct IoError : Error {
  using Error::Error;
};

namespace detail {
template <class E>
[[noreturn]] inline void throw_error(std::ostringstream const& message) {
  throw E(message.str());
}
}  // namespace detail

}  // namespace sdlora

/// Throws `type` with a message built by streaming `message`: SDLORA_THROW(ShapeError, "[op] bad " << shape).
#define SDLORA_THROW(type, message)                             \
  do {                                                          \
    std::ostringstream sdlora_message_;                         \
    sdlora_message_ << message;                                 \
    ::sdlora::detail::throw_error<::sdlora::type>(sdlora_message_); \
  } while (false)

/// A cheap precondition, always checked: throws ShapeError with the streamed message when `condition` is false.
#define SDLORA_EXPECTS(condition, message)             \
  do {                                                 \
    if (!(condition)) SDLORA_THROW(ShapeError, message); \
  } while (false)

/// An internal invariant, checked in debug builds only.
#ifdef NDEBUG
#define SDLORA_ASSERT(condition) ((void)0)
#else
#define SDLORA_ASSERT(condition)                                                                         \
  do {                                                                                                   \
    if (!(condition)) SDLORA_THROW(Error, "[internal] " __FILE__ ":" << __LINE__ << ": " #condition); \
  } while (false)
#endif
