#!/usr/bin/env bash
# The one prepared script for a lent GPU (issue 18, part B): on a bare device machine it builds sdlora with the CUDA
# backend, runs `ctest -L cuda` (the CUDA ops, layers, pipeline, optimizers and trainer against the CPU and the
# diffusers training fixtures, a 4-step LoRA run against the CPU's and its resume on the GPU), the GPU-vs-CPU
# check of sdlora-generate on the tiny fixture model, compute-sanitizer on a short run, and the timings that exist,
# writing everything under $OUT and printing a short summary last.
#
#   here, once (no GPU; Debian with scripts/deps installed):
#     bash benchmarks/gpu/run.sh --prepare
#       stages what the build needs and the device image lacks (Eigen, nlohmann_json, stb, Catch2, zlib, Boost's
#       program_options: headers, static libraries and small CMake config files) into .gpu-deps/, which git ignores
#       (.git/info/exclude); about 20 MB, well inside the 64 MiB a device call carries.
#   on the device machine (the `run` tool; one call of about 6-9 minutes):
#     run(command="bash benchmarks/gpu/run.sh", carry=[".gpu-deps"], timeout_s=580)
#
# Stages have their own time limits (SDLORA_GPU_BUILD_S etc. below) so that the script ends inside one call and what
# it wrote under $OUT comes back even when a stage fails. Files under $OUT (at most 8 come back): env.txt, build.log,
# ctest.log, generate.log, sanitizer.log, summary.txt, gen-cpu-64.png, gen-cuda-64.png.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
deps=$root/.gpu-deps

prepare() {
  set -e
  rm -rf "$deps"
  mkdir -p "$deps/include" "$deps/lib" "$deps/cmake"
  cp -r /usr/include/eigen3 /usr/include/nlohmann /usr/include/stb /usr/include/catch2 "$deps/include/"
  cp /usr/include/zlib.h /usr/include/zconf.h "$deps/include/"
  cp /usr/lib/x86_64-linux-gnu/libz.a /usr/lib/x86_64-linux-gnu/libboost_program_options.a "$deps/lib/"
  # Boost: only the headers program_options pulls in (the whole tree is ~150 MB), found by the preprocessor.
  echo '#include <boost/program_options.hpp>' | g++ -std=c++20 -x c++ -M - |
    tr ' \\' '\n\n' | grep '^/usr/include/boost/' | sort -u | while read -r h; do
      mkdir -p "$deps/include/$(dirname "${h#/usr/include/}")"
      cp "$h" "$deps/include/${h#/usr/include/}"
    done
  # Config files naming the staged folder relative to themselves (the Debian ones hold absolute /usr paths).
  local c=$deps/cmake
  version() {  # NAME VERSION: a ConfigVersion file accepting any requested version up to VERSION's major
    cat >"$c/$1ConfigVersion.cmake" <<VER
set(PACKAGE_VERSION "$2")
if(PACKAGE_FIND_VERSION_MAJOR AND NOT PACKAGE_FIND_VERSION_MAJOR STREQUAL "${2%%.*}")
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
endif()
VER
  }
  cat >"$c/Eigen3Config.cmake" <<'CFG'
if(NOT TARGET Eigen3::Eigen)
  add_library(Eigen3::Eigen INTERFACE IMPORTED)
  set_target_properties(Eigen3::Eigen PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CURRENT_LIST_DIR}/../include/eigen3")
endif()
CFG
  version Eigen3 3.4.0
  cat >"$c/nlohmann_jsonConfig.cmake" <<'CFG'
if(NOT TARGET nlohmann_json::nlohmann_json)
  add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED)
  set_target_properties(nlohmann_json::nlohmann_json PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CURRENT_LIST_DIR}/../include")
endif()
CFG
  version nlohmann_json 3.11.2
  cat >"$c/Catch2Config.cmake" <<'CFG'
if(NOT TARGET Catch2::Catch2)
  add_library(Catch2::Catch2 INTERFACE IMPORTED)
  set_target_properties(Catch2::Catch2 PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CURRENT_LIST_DIR}/../include")
endif()
CFG
  version Catch2 2.13.10
  cat >"$c/BoostConfig.cmake" <<'CFG'
if(NOT TARGET Boost::program_options)
  add_library(Boost::program_options STATIC IMPORTED)
  set_target_properties(Boost::program_options PROPERTIES
    IMPORTED_LOCATION "${CMAKE_CURRENT_LIST_DIR}/../lib/libboost_program_options.a"
    INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CURRENT_LIST_DIR}/../include")
endif()
set(Boost_program_options_FOUND TRUE)
set(Boost_FOUND TRUE)
CFG
  version Boost 1.74.0
  grep -qx '/.gpu-deps/' .git/info/exclude 2>/dev/null || echo '/.gpu-deps/' >>.git/info/exclude
  du -sh "$deps"
}

if [ "${1:-}" = "--prepare" ]; then
  prepare
  exit 0
fi

# ---- on the device machine -----------------------------------------------------------------------------------------
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
build=/tmp/sdlora-gpu
jobs=$(nproc)
summary=$out/summary.txt
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
stage() {  # NAME SECONDS LOG COMMAND...: runs COMMAND under a time limit, logs it, records its status and time
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  note "$(printf '%-22s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")"
  return $rc
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  nvcc --version | tail -2
  cmake --version | head -1
  g++ --version | head -1
  python3 -c 'import torch; print("torch", torch.__version__)' 2>&1
} >"$out/env.txt" 2>&1
git log -1 --format='commit %H' >>"$out/env.txt" 2>/dev/null
[ -d "$deps" ] || { note "no .gpu-deps: run 'bash benchmarks/gpu/run.sh --prepare' here and carry .gpu-deps"; exit 1; }

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
stage configure 120 "$out/build.log" cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DSDLORA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DSDLORA_BUILD_BENCHMARKS=OFF -DSDLORA_MPI=OFF \
  -DSDLORA_WITH_LIBJPEG=OFF -DSDLORA_WITH_LIBPNG=OFF -DCMAKE_PREFIX_PATH="$deps" -DEigen3_DIR="$deps/cmake" \
  -DCatch2_DIR="$deps/cmake" -Dnlohmann_json_DIR="$deps/cmake" -DBoost_DIR="$deps/cmake" \
  -DZLIB_INCLUDE_DIR="$deps/include" -DZLIB_LIBRARY="$deps/lib/libz.a" || { tail -30 "$out/build.log"; exit 1; }
stage build "${SDLORA_GPU_BUILD_S:-330}" "$out/build.log" cmake --build "$build" -j "$jobs" \
  --target cuda_test sdlora-generate || { tail -40 "$out/build.log"; exit 1; }

# 1. The CUDA tests: ops, layers, pipeline, optimizers and training on the GPU against the CPU and the diffusers
# fixtures (tolerances in each test file).
(cd "$build" && stage "ctest -L cuda" "${SDLORA_GPU_CTEST_S:-150}" "$out/ctest.log" ctest -L cuda --output-on-failure)
grep -E "test cases|assertions|passed|failed" "$out/ctest.log" | tail -3 | tee -a "$summary"
stage "cuda_test durations" 120 "$out/ctest.log" "$build/tests/cuda/cuda_test" --durations yes \
  "[pipeline],[optimizer],[train]"

# 2. sdlora-generate on the tiny SD 1.x model, CPU vs GPU, same seed: mean |diff| in [0, 1] pixel units <= 1/255.
gen=$build/examples/sdlora-generate
model=$root/tests/fixtures/models/tiny-sd1
for device in cpu cuda; do
  for size in 16 64; do
    stage "generate $device ${size}px" 60 "$out/generate.log" "$gen" --model "$model" --prompt "a photo of a cat" \
      --steps 8 --width "$size" --height "$size" --sampler euler_a --seed 7 --device "$device" \
      --out "/tmp/gen-$device-$size.png"
  done
done
python3 - "$summary" <<'PY' 2>&1 | tee -a "$out/generate.log"
import sys
import numpy as np
from PIL import Image
for size in (16, 64):
    try:
        a = np.asarray(Image.open(f"/tmp/gen-cpu-{size}.png").convert("RGB"), dtype=np.float64)
        b = np.asarray(Image.open(f"/tmp/gen-cuda-{size}.png").convert("RGB"), dtype=np.float64)
    except OSError as e:
        line = f"generate cpu vs cuda {size}px: missing image ({e})"
    else:
        d = np.abs(a - b).mean() / 255.0
        line = f"generate cpu vs cuda {size}px: mean |diff| {d:.6f} (bound {1 / 255:.6f}) {'PASS' if d <= 1 / 255 else 'FAIL'}"
    print(line)
    open(sys.argv[1], "a").write(line + "\n")
PY
cp /tmp/gen-cpu-64.png /tmp/gen-cuda-64.png "$out/" 2>/dev/null

# 3. compute-sanitizer (memcheck) on a short run: the pipeline, optimizer and training cases.
if command -v compute-sanitizer >/dev/null; then
  stage "compute-sanitizer" "${SDLORA_GPU_SANITIZER_S:-120}" "$out/sanitizer.log" compute-sanitizer --tool memcheck \
    --error-exitcode 3 "$build/tests/cuda/cuda_test" "[pipeline],[optimizer],[train]"
  grep -E "ERROR SUMMARY" "$out/sanitizer.log" | tail -1 | tee -a "$summary"
else
  note "compute-sanitizer: not on PATH"
fi

# 4. Timings that exist so far: whole sdlora-generate runs (model load included) from the logs above. The SD 1.5-size
# benchmarks against diffusers + PEFT (issue 18, item 7) have no CUDA program yet.
note "timings: see the 'generate' lines (seconds, load included); no CUDA benchmark program exists yet"
echo "---- summary ($out/summary.txt)"
cat "$summary"
