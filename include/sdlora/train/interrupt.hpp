/// @file interrupt.hpp
/// @brief Ctrl-C and SIGTERM for long jobs: while a StopSignals object lives, the first SIGINT / SIGTERM only sets a
/// flag that the training loop polls after each step (RunOptions::stop_requested) and generation polls between
/// denoising steps; a second one terminates the process as usual. SIGXFSZ is ignored, so that a write past
/// RLIMIT_FSIZE fails with EFBIG (an IoError naming the file) instead of killing the process.
/// Include <sdlora/train.hpp> instead.
#pragma once

#include <signal.h>  // sigaction, SIGINT, SIGTERM, SIGXFSZ

#include <csignal>  // std::sig_atomic_t

namespace sdlora::train {

namespace detail {
inline volatile std::sig_atomic_t stop_signal = 0;  // 0, or the first SIGINT / SIGTERM received
inline void record_stop_signal(int sig) { stop_signal = sig; }
}  // namespace detail

/// Installs the handlers for its lifetime (one object per process; the program's main owns it).
class StopSignals {
 public:
  StopSignals() {
    detail::stop_signal = 0;
    struct sigaction sa = {};
    sa.sa_handler = detail::record_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_RESETHAND;  // a second signal gets the default action: the process ends
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
    struct sigaction ignore = {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGXFSZ, &ignore, &old_xfsz_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGXFSZ, &old_xfsz_, nullptr);
  }
  StopSignals(StopSignals const&) = delete;
  StopSignals& operator=(StopSignals const&) = delete;

  /// 0, or the number of the first SIGINT / SIGTERM received.
  static int received() { return int(detail::stop_signal); }
  /// The conventional exit status after a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM).
  static int exit_status(int sig) { return 128 + sig; }

 private:
  struct sigaction old_int_ = {};
  struct sigaction old_term_ = {};
  struct sigaction old_xfsz_ = {};
};

}  // namespace sdlora::train
