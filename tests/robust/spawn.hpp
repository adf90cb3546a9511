/// @file spawn.hpp
/// @brief Running an example program as a child process the test can signal: fork + exec with stdout / stderr to
/// files and an optional RLIMIT_FSIZE, waiting with a deadline, and the exit code or the signal that ended it.
#pragma once

#include <fcntl.h>         // open, O_WRONLY, O_CREAT, O_TRUNC
#include <signal.h>        // kill, SIGKILL
#include <sys/resource.h>  // setrlimit, RLIMIT_FSIZE
#include <sys/wait.h>      // waitpid, WIFEXITED, WEXITSTATUS, WIFSIGNALED, WTERMSIG, WNOHANG
#include <unistd.h>        // fork, execv, dup2, _exit

#include <algorithm>   // std::max
#include <chrono>      // std::chrono
#include <filesystem>  // std::filesystem
#include <fstream>     // std::ifstream
#include <optional>    // std::optional
#include <stdexcept>   // std::runtime_error
#include <string>      // std::string
#include <thread>      // std::this_thread::sleep_for
#include <vector>      // std::vector

namespace sdlora::test {

/// How a child ended: exit code, or the signal that killed it.
struct ChildStatus {
  bool running = false;
  int code = -1;    // exit code when it exited
  int signal = 0;   // the terminating signal, or 0
};

/// A started program; the destructor kills it if the test forgot to wait.
class Child {
 public:
  /// Starts `argv[0]` with `argv`, stdout / stderr appended to `out` / `err`, and an optional RLIMIT_FSIZE.
  Child(std::vector<std::string> const& argv, std::filesystem::path const& out, std::filesystem::path const& err,
        std::optional<rlim_t> file_size_limit = std::nullopt) {
    std::vector<char*> args;
    for (auto const& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {  // the child: only async-signal-safe calls until exec
      int const o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      int const e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (o < 0 || e < 0) ::_exit(126);
      ::dup2(o, 1);
      ::dup2(e, 2);
      if (file_size_limit) {
        struct rlimit rl{*file_size_limit, *file_size_limit};
        if (::setrlimit(RLIMIT_FSIZE, &rl) != 0) ::_exit(125);
      }
      ::execv(args[0], args.data());
      ::_exit(127);
    }
  }
  ~Child() {
    if (pid_ > 0 && !done_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Child(Child const&) = delete;
  Child& operator=(Child const&) = delete;

  pid_t pid() const { return pid_; }
  void signal(int sig) const { ::kill(pid_, sig); }

  /// Waits until the child ends or `timeout` passes (then running = true).
  ChildStatus wait(std::chrono::milliseconds timeout = std::chrono::minutes(10)) {
    auto const end = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (auto s = poll()) return *s;
      if (std::chrono::steady_clock::now() >= end) return {true};
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  /// The status if the child has ended, else nothing.
  std::optional<ChildStatus> poll() {
    if (done_) return status_;
    int st = 0;
    pid_t const r = ::waitpid(pid_, &st, WNOHANG);
    if (r == 0) return std::nullopt;
    done_ = true;
    if (WIFEXITED(st)) status_.code = WEXITSTATUS(st);
    if (WIFSIGNALED(st)) status_.signal = WTERMSIG(st);
    return status_;
  }

 private:
  pid_t pid_ = -1;
  bool done_ = false;
  ChildStatus status_;
};

/// Whether process `pid` runs `exe` and has a handler installed for `sig` (the SigCgt mask of /proc/PID/status): a
/// signal sent earlier, while the program is still starting, would kill it instead. (Between fork and exec the
/// child still has the test's own handlers, hence the check of /proc/PID/exe.)
inline bool catches(pid_t pid, std::string const& exe, int sig) {
  std::error_code ec;
  auto const running = std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/exe", ec);
  if (ec || running != std::filesystem::canonical(exe, ec)) return false;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("SigCgt:", 0) == 0) return (std::stoull(line.substr(7), nullptr, 16) >> (sig - 1)) & 1u;
  return false;
}

/// Polls `ready` every few milliseconds for up to `timeout`; returns whether it became true.
template <class F>
bool wait_for(F&& ready, std::chrono::milliseconds timeout) {
  auto const end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return ready();
}

/// Rows of a training run's loss.csv (the steps it finished), 0 when the file does not exist yet.
inline int loss_rows(std::filesystem::path const& dir) {
  std::ifstream in(dir / "loss.csv");
  std::string line;
  int n = -1;
  while (std::getline(in, line)) ++n;
  return std::max(n, 0);
}

}  // namespace sdlora::test
