#!/usr/bin/env bash
# ctest package_conan_create: `conan create` of conanfile.py with the offline Debian profile (conan/profiles/debian),
# in a fresh Conan home under the build tree, with no remote: the recipe's version ranges must accept Debian's
# packages, CMake must configure and install the package, and test_package/ must build against it with
# find_package(sdlora) and run (PNG round trip through stb, the CLIP vocabulary installed in the package). Then
# `conan graph info` checks that Boost comes in with -o examples=True only. Skips (exit 77) when conan is not on PATH:
# CI has no Python (pip install conan to run it).
#   usage: conan_create.sh SOURCE_DIR SCRATCH_DIR
set -euo pipefail
src=$1
scratch=$2
conan=${CONAN:-$(command -v conan || true)}
if [ -z "$conan" ]; then
  echo "SKIPPED: conan is not on PATH (pip install conan, or set CONAN=/path/to/conan)"
  exit 77
fi
profile=$src/conan/profiles/debian
rm -rf "$scratch"
mkdir -p "$scratch"
export CONAN_HOME=$scratch/conan-home
log=$scratch/create.log

"$conan" --version
# -nr: never look at a remote (ConanCenter is not reachable here, and nothing has to come from it).
# test_package is built under the scratch folder, and no CMakeUserPresets.json is written into the source tree.
if ! "$conan" create "$src" -pr:h "$profile" -pr:b "$profile" -nr -c tools.build:jobs=1 \
     -c "tools.cmake.cmake_layout:test_folder=$scratch/test_package" -c tools.cmake.cmaketoolchain:user_presets= \
     >"$log" 2>&1; then
  cat "$log"
  echo "FAILED: conan create"
  exit 1
fi
tail -n 25 "$log"
grep -q "sdlora test_package: ok" "$log" || { echo "FAILED: test_package did not report ok"; exit 1; }
# The consumer read the vocabulary from the package in the Conan cache, not from the source tree.
grep -q "vocabulary: $CONAN_HOME/p/" "$log" || { echo "FAILED: the vocabulary was not read from the package"; exit 1; }
for dep in eigen/3.4.0 nlohmann_json/3.11.2 stb/cci.20220908 zlib/1.2.13; do
  grep -q "$dep#platform - Platform" "$log" || { echo "FAILED: $dep was not taken from the platform"; exit 1; }
done

# Boost.Program_Options: a requirement with the examples option only.
"$conan" graph info "$src" -pr:h "$profile" -pr:b "$profile" -nr --format=json >"$scratch/graph.json" 2>/dev/null
"$conan" graph info "$src" -pr:h "$profile" -pr:b "$profile" -nr -o "&:examples=True" --format=json \
  >"$scratch/graph-examples.json" 2>/dev/null
if grep -q '"boost/1.74.0' "$scratch/graph.json"; then echo "FAILED: boost required without examples"; exit 1; fi
grep -q '"boost/1.74.0' "$scratch/graph-examples.json" || { echo "FAILED: examples=True does not require boost"; exit 1; }
echo "conan create: ok"
