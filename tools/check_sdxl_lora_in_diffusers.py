"""Checks that an SDXL LoRA trained by sdlora-train loads in diffusers and draws the image sdlora-generate draws.

Development check (not run by the tests or CI; needs the fixture venv and a build of the programs):
  SDLORA_BUILD=build ~/.venvs/sdlora/bin/python tools/check_sdxl_lora_in_diffusers.py

Steps: sdlora-make-samples writes a few captioned images; sdlora-train trains a DreamBooth-LoRA with both text
encoders on the tiny SDXL fixture model (tests/fixtures/models/tiny-sdxl), saved in the kohya and PEFT layouts;
sdlora-generate draws one image with each file; diffusers' StableDiffusionXLPipeline.load_lora_weights loads each file
and draws with the same seed, sampler, steps and guidance. Passes when the mean absolute pixel difference is at most
1/255 for both files; prints the differences.
"""
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "fixtures"))
from make_sdxl import tokenizers  # noqa: E402  (the tiny model's tokenizers, as the fixtures use them)

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "models" / "tiny-sdxl"
PROMPT = "a photo of sks dog"


def run(*args):
    print("$", " ".join(str(a) for a in args))
    subprocess.run([str(a) for a in args], check=True)


def main():
    build = pathlib.Path(os.environ.get("SDLORA_BUILD", ROOT / "build")).resolve()
    exe = build / "examples"
    work = pathlib.Path(tempfile.mkdtemp(prefix="sdxl_lora_check_"))
    run(exe / "sdlora-make-samples", "--out", work / "samples", "--count", "6", "--size", "24")
    images = work / "samples" / "images"
    run(exe / "sdlora-train", "--pretrained-model", MODEL, "--method", "dreambooth", "--instance-data-dir", images,
        "--instance-prompt", PROMPT, "--train-text-encoder", "--resolution", "16", "--max-train-steps", "4",
        "--learning-rate", "5e-3", "--seed", "7", "--save-format", "both", "--checkpointing-steps", "0",
        "--output-dir", work / "out", "--threads", "2")
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    worst = 0.0
    failures = []
    for name in ("sdlora_lora.safetensors", "pytorch_lora_weights.safetensors"):
        lora = work / "out" / name
        ours = work / f"ours_{name}.png"
        run(exe / "sdlora-generate", "--model", MODEL, "--prompt", PROMPT, "--steps", "4", "--cfg", "5",
            "--sampler", "euler", "--seed", "11", "--lora", lora, "--out", ours, "--threads", "2")
        one, two = tokenizers()
        pipe = StableDiffusionXLPipeline.from_pretrained(str(MODEL), tokenizer=one, tokenizer_2=two,
                                                         torch_dtype=torch.float32)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        try:
            pipe.load_lora_weights(str(lora))
        except Exception as e:  # noqa: BLE001
            # Our PEFT files name text_encoder's modules as transformers 4 (and every SD / SDXL checkpoint) does:
            # "text_encoder.text_model.encoder...". transformers 5's CLIPTextModel has no text_model level, and
            # diffusers on transformers 5 then finds no target module (with diffusers' own transformers-4 files too).
            print(f"{name}: NOT LOADED by this diffusers / transformers ({type(e).__name__}: {str(e)[:120]}...)")
            failures.append(name)
            continue
        image = pipe(PROMPT, num_inference_steps=4, guidance_scale=5.0,
                     generator=torch.Generator("cpu").manual_seed(11)).images[0]
        a = np.asarray(image, dtype=np.float64)
        b = np.asarray(Image.open(ours).convert("RGB"), dtype=np.float64)
        diff = np.abs(a - b).mean() / 255.0
        base = StableDiffusionXLPipeline.from_pretrained(str(MODEL), tokenizer=one, tokenizer_2=two,
                                                         torch_dtype=torch.float32)
        base.scheduler = EulerDiscreteScheduler.from_config(base.scheduler.config)
        base.set_progress_bar_config(disable=True)
        plain = np.asarray(base(PROMPT, num_inference_steps=4, guidance_scale=5.0,
                                generator=torch.Generator("cpu").manual_seed(11)).images[0], dtype=np.float64)
        effect = np.abs(a - plain).mean() / 255.0
        print(f"{name}: mean |diffusers - sdlora| = {diff * 255:.3f}/255; the LoRA moves diffusers' image by "
              f"{effect * 255:.2f}/255")
        worst = max(worst, diff)
        assert effect > diff, "the LoRA changes the image less than the two implementations differ"
    ok = worst <= 1 / 255 and not failures
    print("PASS" if ok else "FAIL", f"(worst {worst * 255:.3f}/255, bound 1/255; not loaded: {failures or 'none'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
