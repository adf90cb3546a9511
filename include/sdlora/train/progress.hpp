/// @file progress.hpp
/// @brief Progress: a progress reporter for training and generation (step/total, named values such as loss and lr,
/// it/s, ETA). On a terminal it redraws one line with a bar (`\r`); otherwise it prints a plain line every N steps.
/// The clock is injectable so the arithmetic can be tested. Include <sdlora/train.hpp> instead.
#pragma once

#include <unistd.h>  // isatty

#include <algorithm>   // std::min, std::max
#include <chrono>      // std::chrono::steady_clock
#include <cmath>       // std::abs, std::floor, std::isfinite
#include <cstdint>     // std::int64_t
#include <cstdio>      // fileno, stderr
#include <functional>  // std::function
#include <iomanip>     // std::setprecision, std::setw, std::setfill
#include <iostream>    // std::cerr
#include <optional>    // std::optional
#include <ostream>     // std::ostream
#include <sstream>     // std::ostringstream
#include <string>      // std::string
#include <utility>     // std::pair, std::move
#include <vector>      // std::vector

namespace sdlora::train {

struct ProgressOptions {
  std::string label;         // "train", "sample", ... (first word of the line)
  std::int64_t total = 0;    // steps in all (0: unknown, no bar or ETA)
  std::int64_t initial = 0;  // the step the run starts from (a resumed run); the rate counts only new steps
  std::int64_t every = 10;   // plain output: one line every `every` steps, and at the last step
  int bar_width = 24;        // terminal output: characters of the bar
  std::optional<bool> tty;   // default: isatty(fileno(stderr))
};

/// A named value shown after the counters, e.g. {"loss", 0.1234}, {"lr", 1e-4}.
using ProgressField = std::pair<std::string, double>;

class Progress {
 public:
  using Clock = std::function<double()>;  // monotonic seconds

  static double steady_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }

  explicit Progress(ProgressOptions o, std::ostream& out = std::cerr, Clock clock = &Progress::steady_seconds)
      : o_(std::move(o)), out_(out), clock_(std::move(clock)) {
    tty_ = o_.tty.value_or(::isatty(fileno(stderr)) != 0);
    start_time_ = clock_();
  }

  /// Reports that `step` steps are done, with the given values.
  void update(std::int64_t step, std::vector<ProgressField> const& fields = {}) {
    now_ = clock_();
    if (tty_) {
      out_ << '\r' << line(step, fields, true) << "\x1b[K" << std::flush;
      open_line_ = true;
    } else if ((o_.every > 0 && step % o_.every == 0) || step == o_.total) {
      out_ << line(step, fields, false) << '\n' << std::flush;
    }
  }
  /// Ends the terminal line (call once at the end, or before printing something else).
  void finish() {
    if (tty_ && open_line_) out_ << '\n' << std::flush;
    open_line_ = false;
  }
  ~Progress() { finish(); }
  Progress(Progress const&) = delete;
  Progress& operator=(Progress const&) = delete;

  /// Steps per second since the start, measured at the last update (0 before any time has passed).
  double rate(std::int64_t step) const {
    double const elapsed = now_ - start_time_;
    if (elapsed <= 0 || step <= o_.initial) return 0;
    return double(step - o_.initial) / elapsed;
  }
  /// Seconds left at the current rate, or nothing when it is unknown.
  std::optional<double> eta_seconds(std::int64_t step) const {
    double const r = rate(step);
    if (r <= 0 || o_.total <= 0) return std::nullopt;
    return double(std::max<std::int64_t>(0, o_.total - step)) / r;
  }

  /// The text of one report: "label 42/1000 [####    ] 4.2% | loss 0.1234 | lr 1.00e-04 | 2.31 it/s | ETA 06:55".
  std::string line(std::int64_t step, std::vector<ProgressField> const& fields, bool bar) const {
    std::ostringstream os;
    if (!o_.label.empty()) os << o_.label << ' ';
    os << step;
    if (o_.total > 0) {
      os << '/' << o_.total;
      double const frac = std::min(1.0, std::max(0.0, double(step) / double(o_.total)));
      if (bar && o_.bar_width > 0) {
        int const filled = int(std::floor(frac * o_.bar_width));
        os << " [" << std::string(filled, '#') << std::string(o_.bar_width - filled, ' ') << ']';
      }
      os << ' ' << std::fixed << std::setprecision(1) << 100.0 * frac << '%' << std::defaultfloat;
    }
    for (auto const& [name, value] : fields) os << " | " << name << ' ' << format_value(value);
    double const r = rate(step);
    if (r > 0) {
      os << " | " << std::fixed << std::setprecision(2);
      if (r >= 1)
        os << r << " it/s";
      else
        os << 1.0 / r << " s/it";
      os << std::defaultfloat;
    }
    if (auto const eta = eta_seconds(step)) os << " | ETA " << format_duration(*eta);
    return os.str();
  }

  /// "MM:SS" below an hour, "H:MM:SS" above (as tqdm).
  static std::string format_duration(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "?";
    auto const s = std::int64_t(seconds + 0.5);
    std::ostringstream os;
    os << std::setfill('0');
    if (s >= 3600)
      os << s / 3600 << ':' << std::setw(2) << (s / 60) % 60 << ':' << std::setw(2) << s % 60;
    else
      os << std::setw(2) << s / 60 << ':' << std::setw(2) << s % 60;
    return os.str();
  }
  /// 4 significant digits; scientific notation for magnitudes below 1e-2 or from 1e5 (learning rates).
  static std::string format_value(double v) {
    std::ostringstream os;
    double const a = std::abs(v);
    if (a != 0 && (a < 1e-2 || a >= 1e5))
      os << std::scientific << std::setprecision(2) << v;
    else
      os << std::setprecision(4) << v;
    return os.str();
  }

  bool is_tty() const { return tty_; }

 private:
  ProgressOptions o_;
  std::ostream& out_;
  Clock clock_;
  bool tty_ = false;
  bool open_line_ = false;
  double start_time_ = 0;
  double now_ = 0;
};

}  // namespace sdlora::train
