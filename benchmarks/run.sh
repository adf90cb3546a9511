#!/usr/bin/env bash
# Runs sdlora's SD 1.5 benchmarks and the peers' in the same session and prints one JSON line per measurement
# (also appended to $OUT, default /tmp/sdlora-bench.jsonl). Development only: the peers need the Python venv
# (diffusers + PEFT on PyTorch CPU) and an sd.cpp build; each is skipped when absent. Every measurement is a separate
# process so that its peak RSS is its own. Results and the analysis go into benchmarks/RESULTS.md.
#
#   benchmarks/run.sh [BUILD_DIR=build-bench] [quick|full]
#     quick (default): UNet 32x32 at batch 2, VAE decode 32x32, LoRA step with and without checkpointing,
#                      LoRA file sizes, sd.cpp 256 px (about 10 minutes on 2 busy cores)
#     full:            also the UNet at 64x64 latents
# Environment: PYTHON (default /work/venv/bin/python), SDCPP (sd-cli binary), SDCPP_MODEL (a diffusers folder
# written by `run_peers.py write_model DIR`, outside the repository), THREADS (default 2), REPEATS (default 2).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
build="${1:-build-bench}"
mode="${2:-quick}"
[[ "$build" = /* ]] || build="$root/$build"
bench="$build/benchmarks/sd15_bench"
PYTHON="${PYTHON:-/work/venv/bin/python}"
SDCPP="${SDCPP:-/tmp/bench-sdcpp/build/bin/sd-cli}"
SDCPP_MODEL="${SDCPP_MODEL:-/tmp/sd15-random}"
THREADS="${THREADS:-2}"
REPEATS="${REPEATS:-2}"
OUT="${OUT:-/tmp/sdlora-bench.jsonl}"
export OMP_NUM_THREADS="$THREADS" BENCH_THREADS="$THREADS"

emit() { tee -a "$OUT"; }
meta() {
  local commit load
  commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  load="$(cut -d' ' -f1-3 /proc/loadavg)"
  printf '{"bench": "meta", "phase": "%s", "commit": "%s", "cpu": "%s", "cores": %s, "loadavg": "%s", "date": "%s"}\n' \
    "$1" "$commit" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" "$(nproc)" "$load" "$(date -u +%FT%TZ)" | emit
}
peer() { [[ -x "$PYTHON" ]] && "$PYTHON" "$here/run_peers.py" "$@" 2>/dev/null | grep '^{' | emit || true; }
ours() { "$bench" "$@" | emit; }

[[ -x "$bench" ]] || { echo "build $bench first (cmake -DSDLORA_BUILD_BENCHMARKS=ON, target sd15_bench)" >&2; exit 1; }
meta start

# 1. UNet forward, CFG batch 2. Ours and the peer alternate so that the machine's load affects both alike.
ours unet 32 2 "$REPEATS"
peer unet 32 2 "$REPEATS"
if [[ "$mode" = full ]]; then
  ours unet 64 2 1
  peer unet 64 2 1
fi
# 2. VAE decode of one 32x32 latent (256 px).
ours vae 32 "$REPEATS"
peer vae 32 "$REPEATS"
# 3. One LoRA training step (rank 4, attention, batch 1, cached 32x32 latents), without and with checkpointing.
ours train 32 0 "$REPEATS"
peer train 32 0 "$REPEATS"
ours train 32 1 "$REPEATS"
peer train 32 1 "$REPEATS"
# 4. LoRA file size at rank 4 on the attention projections.
ours lora_size /tmp
peer lora_size /tmp

# 5. stable-diffusion.cpp (ggml, fp32 weights): 256 px txt2img with CFG; its log gives the sampling time per step
#    (one step = the UNet on the conditional and the unconditional input) and the VAE decode time.
if [[ -x "$SDCPP" && -d "$SDCPP_MODEL" ]]; then
  steps=2
  log="$(mktemp)"
  /usr/bin/time -v "$SDCPP" -m "$SDCPP_MODEL" -p "a photo of a cat" -H 256 -W 256 --steps "$steps" --cfg-scale 7 \
    -t "$THREADS" -s 42 --type f32 -o /tmp/sdcpp-bench.png >"$log" 2>&1 || true
  "$PYTHON" - "$log" "$steps" "$THREADS" <<'EOF' | emit
import json, re, sys
text = open(sys.argv[1], errors="replace").read()
steps, threads = int(sys.argv[2]), int(sys.argv[3])
def grab(pat):
    m = re.search(pat, text)
    return float(m.group(1)) if m else None
sampling = grab(r"sampling completed, taking ([0-9.]+)s")
decode = grab(r"(?:decode_first_stage|latent \d+ decoded|decoding \d+ latents?) completed, taking ([0-9.]+)s")
peak_kb = grab(r"Maximum resident set size \(kbytes\): (\d+)")
per_step = sampling / steps if sampling else None
# The progress bar's seconds per iteration of each step; the first includes building the graph (a warm-up).
its = [float(x) for x in re.findall(r"\d+/\d+ - ([0-9.]+)s/it", text)]
print(json.dumps({"bench": "unet_forward", "impl": "sd.cpp", "shape": "2x4x32x32 (cond + uncond, 2 UNet calls)",
                  "seconds": min(its) if its else per_step, "mean_seconds_per_step": per_step, "steps": steps,
                  "note": "best step's s/it (a step also does the sampler's elementwise work)", "threads": threads,
                  "process_peak_rss_mb": round(peak_kb / 1024) if peak_kb else None, "dtype": "float32"}))
print(json.dumps({"bench": "vae_decode", "impl": "sd.cpp", "shape": "1x4x32x32 -> 1x3x256x256",
                  "seconds": decode, "threads": threads, "dtype": "float32"}))
EOF
  rm -f "$log"
else
  echo "{\"bench\": \"skip\", \"impl\": \"sd.cpp\", \"why\": \"no $SDCPP or no model folder $SDCPP_MODEL\"}" | emit
fi
meta end
