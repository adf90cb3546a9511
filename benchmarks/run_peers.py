"""Peer measurements for benchmarks/RESULTS.md: Hugging Face diffusers (+PEFT) on PyTorch CPU, eager, at Stable
Diffusion 1.5's architecture with random weights (configs written out here, nothing downloaded). Development only
(needs a virtual environment with torch, diffusers, transformers, peft: $SDLORA_VENV, as tools/fixtures/make_all.sh);
CI never runs it. Prints one JSON line per measurement in the same fields as build-*/benchmarks/sd15_bench.

  run_peers.py unet [latent=32] [batch=2] [repeats=3]
  run_peers.py vae [latent=32] [repeats=3]
  run_peers.py train [latent=32] [checkpointing=0] [repeats=3]   diffusers' train_text_to_image_lora recipe (as
                                                                tools/fixtures/make_pipeline.py's lora_step)
  run_peers.py lora_size [out_dir=/tmp]
  run_peers.py txt2img [size=512] [steps=20]                   StableDiffusionPipeline end to end (BENCH_TOKENIZER:
                                                                a CLIP tokenizer folder, e.g. tests/fixtures/...)
  run_peers.py sdxl_unet [latent=128] [batch=2] [repeats=1]     SDXL 1.0 base's UNet with micro-conditioning
  run_peers.py sdxl_train [latent=128] [checkpointing=1] [repeats=1]  train_dreambooth_lora_sdxl.py's UNet step
  run_peers.py write_model DIR                                  a random-weight SD 1.5 diffusers folder (fp32) for
                                                                stable-diffusion.cpp; DIR must be outside the repo
"""
import json
import os
import sys
import time

import torch

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
torch.set_num_threads(THREADS)


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    return 0.0


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def time_it(repeats, fn):
    fn()  # warm-up
    s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        s.append(time.perf_counter() - t0)
    s.sort()
    return s[0], s[len(s) // 2]


def report(bench, shape, best, median, repeats, peak, base, **extra):
    d = {"bench": bench, "impl": "diffusers", "shape": shape, "seconds": round(best, 4),
         "median_seconds": round(median, 4), "repeats": repeats, "peak_rss_mb": round(peak),
         "model_rss_mb": round(base), "threads": torch.get_num_threads(),
         "dtype": "bfloat16" if os.environ.get("BENCH_MIXED") == "bf16" else "float32",
         "torch": torch.__version__}
    d.update(extra)
    print(json.dumps(d), flush=True)


def sd15_unet():
    from diffusers import UNet2DConditionModel
    # diffusers' defaults are SD 1.5's UNet except the cross-attention width (1280 -> CLIP ViT-L's 768).
    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768)


def sd15_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                         block_out_channels=(128, 256, 512, 512), sample_size=512,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def sd15_text():
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu", projection_dim=768))


def sd15_scheduler():
    from diffusers import DDPMScheduler
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         prediction_type="epsilon", clip_sample=False)


def bench_unet(latent=32, batch=2, repeats=3, sdxl=False):
    """The UNet forward at a CFG batch: SD 1.5's, or SDXL 1.0 base's with its micro-conditioning."""
    torch.manual_seed(0)
    unet = (sdxl_unet() if sdxl else sd15_unet()).eval()
    width = unet.config.cross_attention_dim
    x = torch.randn(batch, 4, latent, latent)
    ctx = torch.randn(batch, 77, width)
    t = torch.full((batch,), 981.0)
    kwargs = {"added_cond_kwargs": sdxl_added(batch, latent)} if sdxl else {}
    base = rss_mb()
    reset_peak_rss()
    mixed = mixed_dtype()  # BENCH_MIXED=bf16: every matmul and convolution under autocast, as sdlora's bf16 compute
    with torch.no_grad(), torch.autocast("cpu", dtype=mixed or torch.float32, enabled=mixed is not None):
        best, med = time_it(repeats, lambda: unet(x, t, ctx, **kwargs).sample)
    report("sdxl_unet_forward" if sdxl else "unet_forward", f"{batch}x4x{latent}x{latent} ctx {batch}x77x{width}",
           best, med, repeats, peak_rss_mb(), base)


def bench_vae(latent=32, repeats=3):
    torch.manual_seed(0)
    vae = sd15_vae().eval()
    z = torch.randn(1, 4, latent, latent)
    base = rss_mb()
    reset_peak_rss()
    mixed = mixed_dtype()
    with torch.no_grad(), torch.autocast("cpu", dtype=mixed or torch.float32, enabled=mixed is not None):
        best, med = time_it(repeats, lambda: vae.decode(z).sample)
    report("vae_decode", f"1x4x{latent}x{latent} -> 1x3x{latent * 8}x{latent * 8}", best, med, repeats,
           peak_rss_mb(), base)


def lora_unet(unet, checkpointing):
    """diffusers' LoRA recipe on a UNet: base frozen, rank 4 (alpha 4, gaussian init) on the attention projections,
    AdamW 1e-4; returns the trainable parameters and the optimizer."""
    from peft import LoraConfig
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    return params, torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)


def time_lora_step(bench, unet, sched, latent, checkpointing, repeats, condition):
    """Times LoRA steps (noise, UNet, MSE, backward, clipping at 1, AdamW) on random latents (1, 4, latent, latent);
    condition() gives the encoder hidden states and the UNet's extra keyword arguments."""
    import torch.nn.functional as F
    params, opt = lora_unet(unet, checkpointing)
    mixed = mixed_dtype()
    if mixed is not None:  # train_text_to_image_lora.py --mixed_precision: LoRA parameters back in float32
        for p in params:
            p.data = p.data.float()
    latents = torch.randn(1, 4, latent, latent)

    def step():
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (1,))
        noisy = sched.add_noise(latents, noise, timesteps)
        with torch.autocast("cpu", dtype=mixed or torch.float32, enabled=mixed is not None):
            ehs, kwargs = condition()
            pred = unet(noisy, timesteps, ehs, **kwargs).sample
        loss = F.mse_loss(pred.float(), noise, reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()

    base = rss_mb()
    reset_peak_rss()
    best, med = time_it(repeats, step)
    report(bench + ("_checkpointing" if checkpointing else ""), f"1x4x{latent}x{latent} rank 4 attn", best, med,
           repeats, peak_rss_mb(), base, trainable_params=sum(p.numel() for p in params),
           peft=__import__("peft").__version__, mixed_precision=os.environ.get("BENCH_MIXED") or "no")


def mixed_dtype():
    """BENCH_MIXED=bf16|fp16: diffusers' --mixed_precision (frozen networks cast, autocast); unset: float32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(os.environ.get("BENCH_MIXED", ""))


def bench_train(latent=32, checkpointing=0, repeats=3):
    """train_text_to_image_lora.py's step: the text encoder runs every step."""
    torch.manual_seed(0)
    unet, text, sched = sd15_unet(), sd15_text(), sd15_scheduler()
    text.requires_grad_(False)
    if mixed_dtype() is not None:  # weight_dtype for the frozen networks
        unet.to(mixed_dtype())
        text.to(mixed_dtype())
    ids = torch.tensor([[49406] + [320 + 7 * i for i in range(1, 10)] + [49407] * 67])
    time_lora_step("lora_train_step", unet, sched, latent, checkpointing, repeats, lambda: (text(ids)[0], {}))


def sdxl_unet():
    from diffusers import UNet2DConditionModel
    # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the fields that differ from diffusers' defaults)
    return UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)


def sdxl_added(batch, latent):
    size = float(latent * 8)
    return {"text_embeds": torch.randn(batch, 1280),
            "time_ids": torch.tensor([[size, size, 0.0, 0.0, size, size]] * batch)}


def bench_sdxl_train(latent=128, checkpointing=1, repeats=1):
    """train_dreambooth_lora_sdxl.py's step with the text encoders frozen: it precomputes the prompt embeddings and
    frees the encoders, so a step is the UNet's (random embeddings of the same shapes stand in for them)."""
    torch.manual_seed(0)
    unet, sched = sdxl_unet(), sd15_scheduler()
    ehs = torch.randn(1, 77, 2048)
    added = sdxl_added(1, latent)
    time_lora_step("sdxl_lora_train_step", unet, sched, latent, checkpointing, repeats,
                   lambda: (ehs, {"added_cond_kwargs": added}))


def bench_lora_size(out_dir="/tmp"):
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    torch.manual_seed(0)
    unet = sd15_unet()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    sd = get_peft_model_state_dict(unet)
    n = sum(v.numel() for v in sd.values())
    peft_sd = {"unet." + k: v for k, v in sd.items()}  # the keys diffusers' save_lora_weights writes
    kohya_sd = convert_state_dict_to_kohya(peft_sd)
    for name, layout in [("peft", peft_sd), ("kohya", kohya_sd)]:
        for dtype, tag in [(torch.float16, "fp16"), (torch.float32, "fp32")]:
            path = os.path.join(out_dir, f"diffusers_bench_{name}_{tag}.safetensors")
            save_file({k: v.detach().to(dtype).contiguous() for k, v in layout.items()}, path)
            size = os.path.getsize(path)
            os.remove(path)
            print(json.dumps({"bench": "lora_file_size", "impl": "diffusers", "layout": f"{name}_{tag}",
                              "bytes": size, "mb": round(size / 1e6, 3), "lora_params": n, "rank": 4}), flush=True)


def bench_txt2img(size=512, steps=20):
    """StableDiffusionPipeline end to end (text encoder, `steps` UNet steps with CFG 7.5, VAE decode), random
    weights, Euler ancestral, one timed run (as sd15_bench txt2img)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer
    torch.manual_seed(0)
    vocab = os.environ.get("BENCH_TOKENIZER")  # a CLIP tokenizer folder (vocab.json + merges.txt)
    tok = CLIPTokenizer.from_pretrained(vocab, model_max_length=77) if vocab else None
    if tok is None:
        raise SystemExit("txt2img: set BENCH_TOKENIZER to a CLIP tokenizer folder (vocab.json, merges.txt)")
    sched = EulerAncestralDiscreteScheduler.from_config(sd15_scheduler().config)
    pipe = StableDiffusionPipeline(vae=sd15_vae().eval(), text_encoder=sd15_text().eval(), tokenizer=tok,
                                   unet=sd15_unet().eval(), scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    base = rss_mb()
    reset_peak_rss()
    t0 = time.perf_counter()
    with torch.no_grad():
        pipe("a photo of a cat", height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
             generator=torch.Generator().manual_seed(42), output_type="np")
    s = time.perf_counter() - t0
    report("txt2img", f"{size}px {steps} steps euler_a cfg 7.5", s, s, 1, peak_rss_mb(), base)


def write_model(out):
    """A random-weight SD 1.5 in diffusers' folder layout (unet, vae, text_encoder) for stable-diffusion.cpp."""
    from safetensors.torch import save_file
    if os.path.abspath(out).startswith(os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))):
        raise SystemExit("write_model: write outside the repository (e.g. /tmp/sd15-random)")
    torch.manual_seed(0)
    for sub, model, fname in [("unet", sd15_unet(), "diffusion_pytorch_model.safetensors"),
                              ("vae", sd15_vae(), "diffusion_pytorch_model.safetensors"),
                              ("text_encoder", sd15_text(), "model.safetensors")]:
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        if sub == "text_encoder":  # transformers 5 names drop the "text_model." prefix the LDM converters expect
            sd = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}
        save_file(sd, os.path.join(out, sub, fname))
        del model
    print(json.dumps({"wrote": out}), flush=True)


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "write_model":
        write_model(args[0])
    elif what == "lora_size":
        bench_lora_size(*args)
    else:
        {"unet": bench_unet, "vae": bench_vae, "train": bench_train, "txt2img": bench_txt2img,
         "sdxl_unet": lambda latent=128, batch=2, repeats=1: bench_unet(latent, batch, repeats, sdxl=True),
         "sdxl_train": bench_sdxl_train}[what](
            *[int(a) for a in args])
