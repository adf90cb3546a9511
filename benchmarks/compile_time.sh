#!/bin/bash
# Compile time of a consumer translation unit that runs txt2img (issue 16 item 3; benchmarks/RESULTS.md, "Compile
# time"): g++ -O2 on three include variants, one after the other; prints CPU seconds (user + sys), wall seconds, peak
# RSS and the 1-minute load average before each. Usage: benchmarks/compile_time.sh [CXX]   (from the repository root)
set -euo pipefail
cxx=${1:-g++}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
body='using namespace sdlora;
int main(int argc, char** argv) {
  Context<Cpu> ctx;
  auto sd = models::load_stable_diffusion<float>(argv[1]);
  pipeline::GenerateOptions o;
  o.prompt = argc > 3 ? argv[3] : "a cat";
  o.steps = 4; o.width = o.height = 64;
  auto out = pipeline::txt2img(ctx, sd, o);
  io::save_png(argv[2], out.images.view().reshaped(Shape{3, 64, 64}));
}'
printf '#include <sdlora/pipeline.hpp>\n#include <sdlora/io/image.hpp>\n%s\n' "$body" > "$dir/umbrella.cpp"
printf '#include <sdlora/backend/cpu.hpp>\n#include <sdlora/models/checkpoint.hpp>\n#include <sdlora/pipeline/txt2img.hpp>\n#include <sdlora/io/image.hpp>\n%s\n' "$body" > "$dir/lean.cpp"
printf '#include <sdlora/instances.hpp>\n#include <sdlora/io/image.hpp>\n%s\n' "$body" > "$dir/instances.cpp"
stb=$(dirname "$(find /usr/include /usr/local/include -name stb_image.h 2>/dev/null | head -1)")
flags=(-std=c++20 -O2 -Iinclude -I/usr/include/eigen3 -isystem "$stb" -DSDLORA_BUNDLED_DATA_DIR=\"data\")
for v in umbrella lean instances; do
  load=$(cut -d' ' -f1 /proc/loadavg)
  /usr/bin/time -f "%U %S %e %M" -o "$dir/time" "$cxx" "${flags[@]}" -c "$dir/$v.cpp" -o "$dir/$v.o"
  read -r user sys wall rss < "$dir/time"
  echo "$v: cpu $(awk "BEGIN { print $user + $sys }") s, wall $wall s, peak ${rss} KB, load $load"
done
