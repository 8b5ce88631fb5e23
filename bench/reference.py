"""The reference side of the benchmarks: diffusers + peft doing what moslora-bench does.

    python bench/reference.py make-model --config bench/configs/small --out target/bench/small-sdxl
    python bench/reference.py train-step --model DIR --adapter moslora --resolution 512 ...
    python bench/reference.py sample --model DIR --lora FILE --steps 50 --size 256 ...
    python bench/reference.py recipe --model DIR --images assets/subject --out DIR ...
    python bench/reference.py make-score-case --out target/bench/score
    python bench/reference.py score --renders DIR --clip DIR --dino DIR ...

Each command prints one line `RESULT {json}` (seconds and the peak resident memory of this
process), like `moslora-bench`.

What it mirrors:
* training: diffusers' examples/dreambooth/train_dreambooth_lora_sdxl.py: the UNet frozen
  (`requires_grad_(False)`, weights in the run's dtype, LoRA parameters upcast to f32),
  `unet.add_adapter(LoraConfig(r, lora_alpha=r, init_lora_weights="gaussian",
  target_modules=["to_k", "to_q", "to_v", "to_out.0"]))`, cached latents sampled from their
  posterior each step, precomputed prompt embeddings, DDPM noise, MSE on the noise in f32,
  backward, `clip_grad_norm_(params, 1.0)`, `torch.optim.AdamW(lr 1e-4, weight decay 1e-4)`,
  `zero_grad()`; autocast in bf16/f16 as accelerate's mixed precision does;
  `unet.enable_gradient_checkpointing()` for `--gradient-checkpointing`;
* MoSLoRA (absent from peft): each LoRA layer's `lora_A` becomes A followed by a trainable
  r x r `lora_AB` mixer, as in the MoSLoRA authors' code, initialised orthogonally;
* sampling: `StableDiffusionXLPipeline` with the adapter loaded by `load_lora_weights`, then
  `fuse_lora()` and `unload_lora_weights()` (diffusers' fastest documented path), Euler,
  classifier-free guidance, VAE decode to a PIL image;
* scoring (DINO, CLIP-I, CLIP-T), as the published DreamBooth-metric scripts do it: every
  picture opened with PIL, `CLIPProcessor` + `CLIPModel.get_image_features` /
  `get_text_features`, DINO as `ViTModel` with torchvision's Resize(256)/CenterCrop(224)
  protocol (written out with PIL and torch), batches of 32 under `no_grad`, mean cosines,
  the scores written as CSV.
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def peak_rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median(xs):
    v = sorted(xs)
    n = len(v)
    if n == 0:
        return float("nan")
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def setup(args):
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "f32")]
    return device, dtype


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_peak(device):
    if device.type != "cuda":
        return {}
    return {
        "peak_cuda_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
        "peak_cuda_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20,
    }


class MoSLoRADown(nn.Linear):
    """`lora_A` followed by the trainable r x r mixer `lora_AB` (MoSLoRA). Keeps A's
    `weight` attribute, which peft's forward reads for the input dtype."""

    def __init__(self, a: nn.Linear):
        r = a.out_features
        super().__init__(a.in_features, r, bias=False, device=a.weight.device,
                         dtype=a.weight.dtype)
        self.weight = a.weight
        self.lora_AB = nn.Linear(r, r, bias=False, device=a.weight.device, dtype=a.weight.dtype)
        nn.init.orthogonal_(self.lora_AB.weight)

    def forward(self, x):
        return self.lora_AB(F.linear(x, self.weight))


def add_adapter(unet, kind, rank):
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=TARGETS))
    if kind == "moslora":
        from peft.tuners.lora import LoraLayer

        for module in unet.modules():
            if isinstance(module, LoraLayer):
                for name in list(module.lora_A.keys()):
                    module.lora_A[name] = MoSLoRADown(module.lora_A[name])
    # As the script's `cast_training_params`: trained tensors in f32 whatever the base dtype.
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return [p for p in unet.parameters() if p.requires_grad]


def autocast(device, dtype):
    if dtype == torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def load_unet(model, device, dtype):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(model) / "unet", torch_dtype=dtype)
    unet.requires_grad_(False)
    return unet.to(device)


def train(unet, params, sched, sample, hidden, pooled, steps, device, dtype, after_step=None):
    """The script's training loop, `steps` steps: a batch of latents and their time ids from
    `sample()`, DDPM noise at random timesteps, MSE on the noise in f32 under autocast,
    backward, `clip_grad_norm_(params, 1.0)`, AdamW (lr 1e-4, weight decay 1e-4), `zero_grad()`.
    `after_step(i, t0)` is called after each step, `t0` its `perf_counter()` start. Returns
    the losses."""
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)
    losses = []
    for i in range(steps):
        t0 = time.perf_counter()
        latents, time_ids = sample()
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],),
                                  device=device)
        noisy = sched.add_noise(latents, noise, timesteps).to(dtype)
        cond = {"text_embeds": pooled, "time_ids": time_ids}
        with autocast(device, dtype):
            pred = unet(noisy, timesteps, hidden, added_cond_kwargs=cond, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if after_step is not None:
            after_step(i, t0)
    return losses


def cmd_train_step(args):
    from diffusers import DDPMScheduler

    device, dtype = setup(args)
    unet = load_unet(args.model, device, dtype)
    params = add_adapter(unet, args.adapter, args.rank)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    sched = DDPMScheduler.from_pretrained(Path(args.model) / "scheduler")
    cfg = unet.config
    torch.manual_seed(0)
    side = args.resolution // 8
    # Cached latent posteriors of 5 photos and the prompt's embeddings, as moslora-bench.
    mean = (torch.randn(5, cfg.in_channels, side, side) * 5.0).to(device)
    std = torch.full((5, cfg.in_channels, side, side), 0.05).to(device)
    pooled_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    b = args.batch
    hidden = torch.randn(1, 77, cfg.cross_attention_dim).repeat(b, 1, 1).to(device, dtype)
    pooled = torch.randn(1, pooled_dim).repeat(b, 1).to(device, dtype)
    r = float(args.resolution)
    time_ids = torch.tensor([[r, r, 0, 0, r, r]] * b).to(device, dtype)
    times = []

    def sample():
        idx = torch.randint(0, 5, (b,))
        latents = (mean[idx] + std[idx] * torch.randn(b, cfg.in_channels, side, side,
                                                      device=device)) * 0.13025
        return latents, time_ids

    def timed(i, t0):
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)

    losses = train(unet, params, sched, sample, hidden, pooled, args.warmup + args.steps,
                   device, dtype, after_step=timed)
    return {
        "what": "train-step", "side": "reference", "adapter": args.adapter, "rank": args.rank,
        "batch": b, "resolution": args.resolution,
        "gradient_checkpointing": args.gradient_checkpointing,
        "threads": torch.get_num_threads(), "device": args.device, "dtype": str(dtype),
        "seconds": times, "median_s": median(times), "losses": losses,
        "peak_rss_mib": peak_rss_mib(), **gpu_peak(device),
    }


def cmd_sample(args):
    from diffusers import StableDiffusionXLPipeline

    device, dtype = setup(args)
    pipe = StableDiffusionXLPipeline.from_pretrained(args.model, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    if args.lora:
        pipe.load_lora_weights(args.lora)
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    t0 = time.perf_counter()
    # --images N: one pipeline call per image, seeds 0, 1, ... (the prompt encoded each time,
    # as a loop over seeds does).
    for seed in range(max(1, args.images)):
        gen = torch.Generator("cpu").manual_seed(seed)
        with torch.no_grad():
            image = pipe(args.prompt, num_inference_steps=args.steps,
                         guidance_scale=args.guidance, height=args.size, width=args.size,
                         generator=gen).images[0]
    sync(device)
    seconds = time.perf_counter() - t0
    if args.out:
        image.save(args.out)
    return {
        "what": "sample", "side": "reference", "steps": args.steps, "guidance": args.guidance,
        "size": args.size, "images": max(1, args.images), "adapter": bool(args.lora),
        "threads": torch.get_num_threads(), "device": args.device, "dtype": str(dtype),
        "image_s": seconds,
        "peak_rss_mib": peak_rss_mib(), **gpu_peak(device),
    }


def encode_prompt(tokenizers, encoders, prompt, device):
    """train_dreambooth_lora_sdxl.py's `encode_prompt`: penultimate hidden states of both
    encoders side by side, text_encoder_2's projected pooled output."""
    embeds = []
    pooled = None
    for tok, enc in zip(tokenizers, encoders):
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids.to(device)
        out = enc(ids, output_hidden_states=True, return_dict=False)
        pooled = out[0]
        embeds.append(out[-1][-2])
    return torch.cat(embeds, dim=-1), pooled


def load_photos(folder, resolution):
    """The script's DreamBoothDataset transforms with --center_crop and no flip (as in the
    moslora run it is compared with): EXIF orientation, RGB, the short side resized to the
    resolution (torchvision's `Resize(int)` on a PIL image: PIL bilinear), centre crop,
    [-1, 1]; with `original_size` and the crop's top-left for the micro-conditioning."""
    import numpy as np
    from PIL import Image, ImageOps

    pixels, time_ids = [], []
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() not in {".jpg", ".jpeg", ".png", ".webp"}:
            continue
        image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        original = (image.height, image.width)
        w, h = image.size
        short, long = min(w, h), max(w, h)
        size_long = int(resolution * long / short)
        new = (resolution, size_long) if w <= h else (size_long, resolution)
        image = image.resize(new, Image.BILINEAR)
        top = int(round((image.height - resolution) / 2.0))
        left = int(round((image.width - resolution) / 2.0))
        image = image.crop((left, top, left + resolution, top + resolution))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        pixels.append(x * 2.0 - 1.0)
        time_ids.append(list(original) + [top, left, resolution, resolution])
    return torch.stack(pixels), torch.tensor(time_ids, dtype=torch.float32)


def cmd_recipe(args):
    """Photos to a trained adapter file, as the script with --cache_latents does."""
    from diffusers import (AutoencoderKL, DDPMScheduler, StableDiffusionXLPipeline)
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    device, dtype = setup(args)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = Path(args.model)
    tokenizers = [CLIPTokenizer.from_pretrained(model / n) for n in ["tokenizer", "tokenizer_2"]]
    encoders = [CLIPTextModel.from_pretrained(model / "text_encoder", torch_dtype=dtype),
                CLIPTextModelWithProjection.from_pretrained(model / "text_encoder_2",
                                                            torch_dtype=dtype)]
    vae = AutoencoderKL.from_pretrained(model / "vae", torch_dtype=torch.float32).to(device)
    unet = load_unet(model, device, dtype)
    for m in encoders + [vae]:
        m.requires_grad_(False)
        m.to(device)
    with torch.no_grad():
        hidden, pooled = encode_prompt(tokenizers, encoders, args.prompt, device)
        pixels, time_ids = load_photos(args.images, args.resolution)
        posterior = vae.encode(pixels.to(device)).latent_dist
    del encoders  # the text encoders are not trained: their output is all the loop needs
    mean, std = posterior.mean, posterior.std
    scaling = vae.config.scaling_factor
    params = add_adapter(unet, args.adapter, args.rank)
    unet.train()
    sched = DDPMScheduler.from_pretrained(model / "scheduler")
    b = args.batch
    hidden_b, pooled_b = hidden.repeat(b, 1, 1).to(dtype), pooled.repeat(b, 1).to(dtype)

    def sample():
        idx = torch.randint(0, len(mean), (b,))
        latents = (mean[idx] + std[idx] * torch.randn_like(mean[idx])) * scaling
        return latents, time_ids[idx].to(device, dtype)

    losses = train(unet, params, sched, sample, hidden_b, pooled_b, args.steps, device, dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionXLPipeline.save_lora_weights(out, unet_lora_layers=layers)
    return {
        "what": "recipe", "side": "reference", "adapter": args.adapter, "steps": args.steps,
        "batch": b, "resolution": args.resolution, "threads": torch.get_num_threads(),
        "final_loss": losses[-1], "peak_rss_mib": peak_rss_mib(),
    }


def cmd_make_model(args):
    """A random SDXL-architecture pipeline from the configs in `--config`, seeded, written by
    `save_pretrained`: moslora and this script then load the same weights."""
    import shutil

    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    from transformers import CLIPTokenizer

    cfg = Path(args.config)
    read = lambda p: json.loads((cfg / p).read_text())  # noqa: E731
    torch.manual_seed(args.seed)
    unet = UNet2DConditionModel.from_config(read("unet/config.json"))
    vae = AutoencoderKL.from_config(read("vae/config.json"))
    te = CLIPTextModel(CLIPTextConfig.from_json_file(cfg / "text_encoder/config.json"))
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig.from_json_file(cfg / "text_encoder_2/config.json"))
    sched = EulerDiscreteScheduler.from_config(read("scheduler/scheduler_config.json"))
    vocab = ROOT / "assets" / "clip"
    tok = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"),
                        pad_token="<|endoftext|>", model_max_length=77)
    tok2 = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"), pad_token="!",
                         model_max_length=77)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2,
                                     tokenizer=tok, tokenizer_2=tok2, unet=unet, scheduler=sched)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"what": "make-model", "out": str(out),
            "unet_parameters": sum(p.numel() for p in unet.parameters())}


# --- scoring --------------------------------------------------------------------------------

SCORE_PROMPTS = ["a [V] {class} in the snow", "a [V] {class} on the beach",
                 "a [V] {class} with a city in the background", "a red [V] {class}",
                 "a watercolor painting of a [V] {class}", "a [V] {class} floating on top of water",
                 "a [V] {class} on top of a wooden table in a cozy kitchen",
                 "a [V] {class} wearing a tiny santa hat"]


def picture(w, h, seed):
    import numpy as np
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / (9 + seed % 7) + y / 37),
                    128 + 100 * np.cos(y / (13 + seed % 5) - x / 41),
                    255 * (x + y) / (w + h)], -1)
    img += g.normal(0, 10, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def cmd_make_score_case(args):
    """A ViT-B/32-shaped CLIP and a ViT-S/16-shaped DINO with random weights, and a render
    folder of `--renders` pictures (8 prompts x seeds x LoRA/MoSLoRA) plus 5 subject photos."""
    import shutil
    from PIL import Image
    from transformers import (CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer,
                              ViTConfig, ViTModel)
    sys.path.insert(0, str(ROOT / "tests" / "reference"))
    from make_fixtures import make_clip_vocab

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(0)
    vocab = out / "vocab"
    make_clip_vocab(vocab)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                         num_hidden_layers=12),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                           num_hidden_layers=12, patch_size=32), projection_dim=512))
    clip.save_pretrained(out / "clip")
    CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"),
                  pad_token="<|endoftext|>", model_max_length=77).save_pretrained(out / "clip")
    CLIPImageProcessorPil().save_pretrained(out / "clip")
    ViTModel(ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                       intermediate_size=1536, patch_size=16, layer_norm_eps=1e-12),
             add_pooling_layer=False).save_pretrained(out / "dino")
    r = out / "renders"
    (r / "images").mkdir(parents=True)
    (r / "photos").mkdir()
    photos = []
    for i in range(5):
        rel = f"photos/photo{i}.png"
        Image.fromarray(picture(640, 480, 100 + i)).save(r / rel)
        photos.append(rel)
    seeds = args.renders // (2 * len(SCORE_PROMPTS))
    prompts = [{"id": f"p{i}", "template": t, "text": t.replace("[V]", "sks").replace("{class}", "toy")}
               for i, t in enumerate(SCORE_PROMPTS)]
    images = []
    for adapter in ["lora", "moslora"]:
        for p in prompts:
            for seed in range(seeds):
                rel = f"images/{p['id']}_s{seed}_{adapter}.png"
                Image.fromarray(picture(args.size, args.size, len(images))).save(r / rel)
                images.append({"file": rel, "prompt_id": p["id"], "prompt": p["text"], "seed": seed,
                               "adapter": adapter, "noise_sha256": f"{p['id']}-{seed}",
                               "width": args.size, "height": args.size, "key": rel})
    manifest = {
        "format_version": 1,
        "subject": {"name": "bench", "identifier": "sks", "class": "toy", "photos": photos},
        "model": {"name": "none", "architecture": "", "weights": ""},
        "settings": {"steps": 50, "guidance": 5.0, "scheduler": "euler", "width": args.size,
                     "height": args.size, "negative_prompt": None, "dtype": "f32"},
        "adapters": [{"name": "lora", "label": "LoRA"}, {"name": "moslora", "label": "MoSLoRA"}],
        "prompts": prompts, "images": images, "grids": [], "contact_sheet": "contact_sheet.png",
        "gallery": "index.html"}
    (r / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return {"what": "make-score-case", "images": len(images), "out": str(out)}


def dino_pixels(img):
    """torchvision's Resize(256, BICUBIC) + CenterCrop(224) + ToTensor + Normalize(ImageNet),
    written out with PIL and torch (torchvision is not installed here)."""
    import numpy as np
    from PIL import Image
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    nl = int(256 * long / short)
    img = img.resize((256, nl) if w <= h else (nl, 256), Image.BICUBIC)
    W, H = img.size
    top, left = int(round((H - 224) / 2.0)), int(round((W - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return (x - mean) / std


def cmd_score(args):
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor, ViTModel
    setup(args)
    t0 = time.perf_counter()
    r = Path(args.renders)
    m = json.loads((r / "manifest.json").read_text())
    clip = CLIPModel.from_pretrained(args.clip).eval()
    proc = CLIPProcessor.from_pretrained(args.clip)
    dino = ViTModel.from_pretrained(args.dino, add_pooling_layer=False).eval()
    photos = [Image.open(r / p).convert("RGB") for p in m["subject"]["photos"]]
    renders = [Image.open(r / i["file"]).convert("RGB") for i in m["images"]]
    templates = {p["id"]: p["template"] for p in m["prompts"]}
    cls = m["subject"]["class"]
    texts = [" ".join(templates[i["prompt_id"]].replace("[V]", " ").replace("{class}", cls).split())
             for i in m["images"]]

    def feats(fn, items):
        return torch.cat([fn(items[k:k + 32]) for k in range(0, len(items), 32)])

    def clip_img(b):
        f = clip.get_image_features(pixel_values=proc(images=b, return_tensors="pt")["pixel_values"])
        return getattr(f, "pooler_output", f)

    def clip_txt(b):
        enc = proc(text=b, padding=True, return_tensors="pt")
        f = clip.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return getattr(f, "pooler_output", f)

    def dino_img(b):
        return dino(pixel_values=torch.stack([dino_pixels(x) for x in b])).last_hidden_state[:, 0]

    def norm(x):
        return x / x.norm(dim=-1, keepdim=True)

    with torch.no_grad():
        cp, cr = norm(feats(clip_img, photos)), norm(feats(clip_img, renders))
        unique = sorted(set(texts))
        ct = norm(feats(clip_txt, unique))
        ct = ct[[unique.index(t) for t in texts]]
        dp, dr = norm(feats(dino_img, photos)), norm(feats(dino_img, renders))
        clip_i = (cr @ cp.T).mean(1)
        clip_t = (cr * ct).sum(1)
        dino_s = (dr @ dp.T).mean(1)
    lines = ["file,dino,clip_i,clip_t"] + [
        f"{i['file']},{d:.6f},{a:.6f},{b:.6f}"
        for i, d, a, b in zip(m["images"], dino_s.tolist(), clip_i.tolist(), clip_t.tolist())]
    (r / "scores-reference.csv").write_text("\n".join(lines) + "\n")
    return {"what": "score", "images": len(renders), "score_s": time.perf_counter() - t0,
            "peak_rss_mib": peak_rss_mib()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--model", required=True)
        p.add_argument("--device", default="cpu")
        p.add_argument("--dtype", default=None, choices=sorted(DTYPES))
        p.add_argument("--threads", type=int, default=None)
        return p

    p = common(sub.add_parser("train-step"))
    p.add_argument("--adapter", default="moslora", choices=["lora", "moslora"])
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--gradient-checkpointing", action="store_true")

    p = common(sub.add_parser("sample"))
    p.add_argument("--lora", default=None, help="a diffusers/kohya LoRA file")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--prompt", default="a photo of sks toy on the beach")
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--out", default=None)

    p = common(sub.add_parser("recipe"))
    p.add_argument("--images", required=True)
    p.add_argument("--prompt", default="a photo of sks toy")
    p.add_argument("--adapter", default="lora", choices=["lora", "moslora"])
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)

    p = sub.add_parser("make-model")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("make-score-case")
    p.add_argument("--out", required=True)
    p.add_argument("--renders", type=int, default=64)
    p.add_argument("--size", type=int, default=1024)

    p = sub.add_parser("score")
    p.add_argument("--renders", required=True)
    p.add_argument("--clip", required=True)
    p.add_argument("--dino", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    p.add_argument("--threads", type=int, default=None)

    args = ap.parse_args()
    run = {"train-step": cmd_train_step, "sample": cmd_sample, "recipe": cmd_recipe,
           "make-model": cmd_make_model, "make-score-case": cmd_make_score_case,
           "score": cmd_score}[args.command]
    print("RESULT " + json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
