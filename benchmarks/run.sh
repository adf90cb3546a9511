#!/usr/bin/env bash
# Runs sdlora's SD 1.5 benchmarks and the peers' in one session and prints one JSON line per measurement (also
# appended to $OUT, default /tmp/sdlora-bench.jsonl). Development only: the peers need a Python venv (diffusers + PEFT
# on PyTorch CPU) and an sd.cpp build; each is skipped when absent. Every measurement is a separate process so that
# its peak RSS is its own, and ours and the peer's alternate so that the machine's load affects both alike.
# Results and the analysis go into benchmarks/RESULTS.md.
#
#   benchmarks/run.sh [BUILD_DIR=build-bench] [quick|full]
#     quick (default): UNet 32x32 batch 2, VAE decode 32x32, LoRA step +/- checkpointing at 32x32 latents, LoRA file
#                      sizes, sd.cpp at 256 px (f32 and f16)
#     full:            also UNet 64x64, VAE 64x64 (512 px), txt2img 512 px 20 steps end to end, the LoRA step at
#                      64x64 latents (512 px), 1 thread against 2, 16-bit weights, sd.cpp at 512 px
# Environment: PYTHON (default $SDLORA_VENV/bin/python, else ~/.venvs/sdlora/bin/python: the environment of tools/fixtures/make_all.sh), SDCPP (sd-cli binary), SDCPP_MODEL (a diffusers
# folder written by `run_peers.py write_model DIR`, outside the repository), THREADS (default 2), REPEATS (default 2),
# SDCPP_STEPS (default 2; sd.cpp's step time is read from its progress bar).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
build="${1:-build-bench}"
mode="${2:-quick}"
[[ "$build" = /* ]] || build="$root/$build"
bench="$build/benchmarks/sd15_bench"
PYTHON="${PYTHON:-${SDLORA_VENV:-$HOME/.venvs/sdlora}/bin/python}"
SDCPP="${SDCPP:-/tmp/bench-sdcpp/build/bin/sd-cli}"
SDCPP_MODEL="${SDCPP_MODEL:-/tmp/sd15-random}"
SDCPP_STEPS="${SDCPP_STEPS:-2}"
THREADS="${THREADS:-2}"
REPEATS="${REPEATS:-2}"
OUT="${OUT:-/tmp/sdlora-bench.jsonl}"
export BENCH_TOKENIZER="${BENCH_TOKENIZER:-$root/tests/fixtures/eval/clip}"

emit() { tee -a "$OUT"; }
meta() {
  local commit load
  commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  load="$(cut -d' ' -f1-3 /proc/loadavg)"
  printf '{"bench": "meta", "phase": "%s", "commit": "%s", "cpu": "%s", "cores": %s, "loadavg": "%s", "date": "%s"}\n' \
    "$1" "$commit" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" "$(nproc)" "$load" "$(date -u +%FT%TZ)" | emit
}
# ours / peer [THREADS=n] [BENCH_WEIGHTS=f16] -- args: one measurement each.
peer() { [[ -x "$PYTHON" ]] && OMP_NUM_THREADS="$threads" BENCH_THREADS="$threads" "$PYTHON" "$here/run_peers.py" "$@" 2>/dev/null | grep '^{' | emit || true; }
ours() { OMP_NUM_THREADS="$threads" BENCH_THREADS="$threads" "$bench" "$@" | emit; }
pair() { ours "$@"; peer "$@"; }

# sd.cpp txt2img: SIZE TYPE(f32|f16). Emits its UNet step (cond + uncond = our batch-2 forward), VAE decode and
# whole-process peak RSS, read from its log.
sdcpp() {
  local size="$1" type="$2" log
  [[ -x "$SDCPP" && -d "$SDCPP_MODEL" ]] || {
    echo "{\"bench\": \"skip\", \"impl\": \"sd.cpp\", \"why\": \"no $SDCPP or no model folder $SDCPP_MODEL\"}" | emit
    return
  }
  log="$(mktemp)"
  /usr/bin/time -v "$SDCPP" -m "$SDCPP_MODEL" -p "a photo of a cat" -H "$size" -W "$size" --steps "$SDCPP_STEPS" \
    --cfg-scale 7 -t "$threads" -s 42 --type "$type" -o /tmp/sdcpp-bench.png >"$log" 2>&1 || true
  "$PYTHON" - "$log" "$SDCPP_STEPS" "$threads" "$size" "$type" <<'EOF' | emit
import json, re, sys
text = open(sys.argv[1], errors="replace").read()
steps, threads, size, dtype = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def grab(pat):
    m = re.search(pat, text)
    return float(m.group(1)) if m else None
decode = grab(r"decode_first_stage completed, taking ([0-9.]+) ?s")
peak_kb = grab(r"Maximum resident set size \(kbytes\): (\d+)")
# The progress bar's seconds per iteration of each step; the first also loads the weights (a warm-up).
its = [float(x) for x in re.findall(r"\d+/\d+ - ([0-9.]+)s/it", text)]
lat = size // 8
common = {"impl": "sd.cpp", "threads": threads, "weights": dtype, "dtype": "float32",
          "process_peak_rss_mb": round(peak_kb / 1024) if peak_kb else None}
print(json.dumps({"bench": "unet_forward", "shape": f"2x4x{lat}x{lat} (cond + uncond, 2 UNet calls)",
                  "seconds": min(its[1:] or its) if its else None, "steps": steps,
                  "note": "best step after the first (a step also does the sampler's elementwise work)", **common}))
print(json.dumps({"bench": "vae_decode", "shape": f"1x4x{lat}x{lat} -> 1x3x{size}x{size}", "seconds": decode,
                  **common}))
EOF
  rm -f "$log"
}

[[ -x "$bench" ]] || { echo "build $bench first (cmake -DSDLORA_BUILD_BENCHMARKS=ON, target sd15_bench)" >&2; exit 1; }
meta start
threads="$THREADS"

# 1. UNet forward at CFG batch 2; VAE decode; LoRA training step (rank 4, attention, batch 1, cached latents).
pair unet 32 2 "$REPEATS"
pair vae 32 "$REPEATS"
pair train 32 0 "$REPEATS"
pair train 32 1 "$REPEATS"
sdcpp 256 f32
if [[ "$mode" = full ]]; then
  pair unet 64 2 "$REPEATS"
  pair vae 64 "$REPEATS"
  pair train 64 0 1
  pair train 64 1 1
  pair txt2img 512 20
  sdcpp 512 f32
  # 16-bit frozen weights (ours; diffusers' CPU path is float32) against sd.cpp's f16 run.
  BENCH_WEIGHTS=f16 ours unet 32 2 "$REPEATS"
  BENCH_WEIGHTS=f16 ours unet 64 2 1
  BENCH_WEIGHTS=f16 ours vae 64 1
  BENCH_WEIGHTS=f16 ours train 64 0 1
  BENCH_WEIGHTS=f16 ours txt2img 512 20
  sdcpp 512 f16
  # Scaling: one thread.
  threads=1
  pair unet 32 2 1
  sdcpp 256 f32
  threads="$THREADS"
fi
sdcpp 256 f16
# LoRA file size at rank 4 on the attention projections.
ours lora_size /tmp
peer lora_size /tmp
meta end
