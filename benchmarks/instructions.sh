#!/usr/bin/env bash
# A noise-free regression figure: the instructions (callgrind's Ir) that a fixed small workload executes, which do
# not change with the machine's load the way wall time does. Record the figure per commit in benchmarks/RESULTS.md.
#
#   benchmarks/instructions.sh [BUILD_DIR=build]
#
# Workload: sdlora-generate on the bundled tiny test model, 32x32 px, 3 Euler steps, CFG, one thread. valgrind
# reports no AVX-512 to the program, so the kernels take their AVX2 path under it (the same path on every machine
# with AVX2). Prints one JSON line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
build="${1:-build}"
[[ "$build" = /* ]] || build="$root/$build"
exe="$build/examples/sdlora-generate"
[[ -x "$exe" ]] || { echo "build $exe first" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$exe" --model "$root/tests/fixtures/models/tiny-sd1" \
  --prompt "a photo of a cat" --steps 3 --width 32 --height 32 --sampler euler --seed 1 --threads 1 \
  --out "$work/out.png" >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
ir="$(sed -n 's/^summary: *//p' "$work/cg.out" | head -1)"
printf '{"bench": "instructions", "workload": "sdlora-generate tiny-sd1 32px 3 euler steps, 1 thread", "ir": %s, "commit": "%s"}\n' \
  "$ir" "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
