/// @file temp_dir.hpp
/// @brief A scratch folder for one test, removed when it goes out of scope.
#pragma once

#include <unistd.h>  // getpid

#include <filesystem>  // std::filesystem
#include <string>      // std::string

namespace sdlora::test {

/// `<tmp>/sdlora-data-<name>-<pid>`, emptied at construction and removed at destruction.
class TempDir {
 public:
  explicit TempDir(std::string const& name)
      : path_(std::filesystem::temp_directory_path() / ("sdlora-data-" + name + "-" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(TempDir const&) = delete;
  TempDir& operator=(TempDir const&) = delete;

  std::filesystem::path const& path() const { return path_; }
  std::string str() const { return path_.string(); }
  std::filesystem::path operator/(std::string const& child) const { return path_ / child; }

 private:
  std::filesystem::path path_;
};

}  // namespace sdlora::test
