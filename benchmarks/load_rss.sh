#!/usr/bin/env bash
# Peak RSS of `sdlora-generate` on a random-weight SD 1.5 (fp32 files, 4.3 GB), per --weights-dtype: the load
# dominates the peak (one 64 x 64 px step after it). Development only; results go into benchmarks/RESULTS.md.
#
#   benchmarks/load_rss.sh GENERATE_BINARY [f32 f16 bf16 ...]
# Environment: MODEL (default /tmp/sd15-random: the weights `run_peers.py write_model` writes, made here when absent),
# RUN (default /tmp/sd15-random-diffusers: the same files as a diffusers folder with config.json files, written here
# from run_peers.py's models on torch's meta device), PYTHON (default $SDLORA_VENV/bin/python, else ~/.venvs/sdlora/bin/python: the environment of tools/fixtures/make_all.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
generate="$1"
shift
dtypes=("${@:-f32 f16}")  # one word list
MODEL="${MODEL:-/tmp/sd15-random}"
RUN="${RUN:-/tmp/sd15-random-diffusers}"
PYTHON="${PYTHON:-${SDLORA_VENV:-$HOME/.venvs/sdlora}/bin/python}"

[[ -d "$MODEL/unet" ]] || "$PYTHON" "$here/run_peers.py" write_model "$MODEL"
if [[ ! -f "$RUN/model_index.json" ]]; then
  mkdir -p "$RUN"
  for sub in unet vae text_encoder; do
    mkdir -p "$RUN/$sub"
    for f in "$MODEL/$sub"/*.safetensors; do ln -sf "$f" "$RUN/$sub/"; done
  done
  (cd "$here" && "$PYTHON" - "$RUN" <<'EOF'
import json, os, sys
import torch
import run_peers
out = sys.argv[1]
with torch.device("meta"):
    run_peers.sd15_unet().save_config(os.path.join(out, "unet"))
    run_peers.sd15_vae().save_config(os.path.join(out, "vae"))
    run_peers.sd15_text().config.save_pretrained(os.path.join(out, "text_encoder"))
run_peers.sd15_scheduler().save_config(os.path.join(out, "scheduler"))
json.dump({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
           "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]},
          open(os.path.join(out, "model_index.json"), "w"))
EOF
  )
  mkdir -p "$RUN/tokenizer" && cp "$root/tests/fixtures/eval/clip/"{vocab.json,merges.txt} "$RUN/tokenizer/"
fi

for d in ${dtypes[@]}; do
  log="$(mktemp)"
  /usr/bin/time -v "$generate" --model "$RUN" --prompt "a photo of a cat" --width 64 --height 64 --steps 1 \
    --threads 2 --seed 1 --weights-dtype "$d" --out /tmp/load_rss.png >"$log" 2>&1 || { cat "$log"; exit 1; }
  peak_kb="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$log")"
  wall="$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$log")"
  printf '{"bench": "generate_peak_rss", "weights": "%s", "peak_rss_mb": %d, "wall": "%s", "commit": "%s", "load": "%s"}\n' \
    "$d" "$((peak_kb / 1024))" "$wall" "$(git -C "$root" rev-parse --short HEAD)" "$(cut -d' ' -f1-3 /proc/loadavg)"
  rm -f "$log"
done
