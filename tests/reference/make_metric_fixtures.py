"""Fixtures of the automatic metrics (DINO, CLIP-I, CLIP-T), made with transformers and PIL.

    python tests/reference/make_metric_fixtures.py target/fixtures

Needs `clip-vocab/` from make_fixtures.py. Writes:
  tiny-clip/             a random tiny CLIPModel as `save_pretrained` writes it, with the real
                         CLIP tokenizer and a CLIP image processor config
  tiny-clip-legacy/      the same weights in the transformers-4 layout of the openai downloads:
                         `position_ids` buffers stored, `eos_token_id: 2`, vocab.json + merges.txt
  tiny-dino/             a random tiny ViTModel (no pooler), layer_norm_eps 1e-12 as in the
                         facebook/dino-vit* configs
  metric-photos/         test pictures (PNG): non-square, up-scaled, down-scaled, odd sizes,
                         one with alpha
  ref/metrics.safetensors
                         the processors' pixel values (CLIPImageProcessorPil; the DINO protocol as
                         torchvision runs it on PIL images), embeddings, and the scores
  ref/metrics.json       the scoring case: which pictures are renders and photos, the prompts
"""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SEED = 0

CLIP_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                 num_hidden_layers=2, max_position_embeddings=77, hidden_act="quick_gelu",
                 eos_token_id=49407, bos_token_id=49406, pad_token_id=1)
CLIP_VISION = dict(hidden_size=48, intermediate_size=96, num_attention_heads=4,
                   num_hidden_layers=2, image_size=224, patch_size=32, hidden_act="quick_gelu")
DINO = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
            image_size=224, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True)

# Photos: (name, width, height, mode). 640x480 and 1000x750 are down-scaled, 150x100 and
# 90x120 up-scaled; 257x391 and 391x259 put the DINO crop on a half pixel.
PHOTOS = [("wide", 640, 480, "RGB"), ("tall", 333, 500, "RGB"), ("small", 150, 100, "RGB"),
          ("tiny_tall", 90, 120, "RGB"), ("odd", 257, 391, "RGB"), ("odd_wide", 391, 259, "RGB"),
          ("big", 1000, 750, "RGB"), ("alpha", 200, 160, "RGBA")]

PROMPTS = ["a dog on the beach", "a red dog", "a photo of a dog in the snow at night"]


def picture(w, h, mode, seed):
    """A photo-like test picture: smooth gradients, shapes with hard edges, and noise."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([
        128 + 100 * np.sin(x / (7 + seed) + y / 23),
        128 + 100 * np.cos(y / (11 + seed) - x / 31),
        255 * (x + y) / (w + h),
    ], -1)
    for _ in range(6):
        cx, cy, r = g.uniform(0, w), g.uniform(0, h), g.uniform(5, min(w, h) / 3)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[mask] = g.uniform(0, 255, 3)
    img += g.normal(0, 12, img.shape)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if mode == "RGBA":
        alpha = np.clip(255 * x / max(w - 1, 1) + 40 * np.sin(y / 5), 0, 255).astype(np.uint8)
        img = np.concatenate([img, alpha[..., None]], -1)
    return Image.fromarray(img, mode)


def dino_pixels(img):
    """The published DINO protocol as torchvision runs it on a PIL image: Resize(256, BICUBIC),
    CenterCrop(224), ToTensor, Normalize(ImageNet)."""
    img = img.convert("RGB")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(256 * long / short)
    size = (256, new_long) if w <= h else (new_long, 256)
    img = img.resize(size, Image.BICUBIC)
    W, H = img.size
    top, left = int(round((H - 224) / 2.0)), int(round((W - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return (x - mean) / std


def mean_cos(a, b):
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    return (a @ b.T).mean(dim=1)


def ceiling(x):
    x = x / x.norm(dim=-1, keepdim=True)
    s = x @ x.T
    n = x.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    return s[iu[0], iu[1]].mean()


def make_clip(fx):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    torch.manual_seed(SEED)
    cfg = CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION, projection_dim=16)
    model = CLIPModel(cfg).eval()
    # transformers initialises with std 0.02 at this width: embeddings that barely differ.
    # Wider weights give cosines spread over [-1, 1], a sharper parity test.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embedding" not in name:
                p.normal_(0, 1.0 / p.shape[-1] ** 0.5)
            elif "embedding" in name:
                p.normal_(0, 0.5)
    out = fx / "tiny-clip"
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    vocab = fx / "clip-vocab"
    tok = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"),
                        pad_token="<|endoftext|>", model_max_length=77)
    tok.save_pretrained(out)
    CLIPImageProcessorPil().save_pretrained(out)

    # The openai download layout (transformers 4): buffers stored, legacy eos id, classic
    # tokenizer files.
    legacy = fx / "tiny-clip-legacy"
    shutil.rmtree(legacy, ignore_errors=True)
    shutil.copytree(out, legacy, ignore=shutil.ignore_patterns("tokenizer*", "special*"))
    from safetensors.torch import load_file, save_file
    sd = load_file(legacy / "model.safetensors")
    sd["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    sd["vision_model.embeddings.position_ids"] = torch.arange(50).unsqueeze(0)
    save_file(sd, legacy / "model.safetensors", metadata={"format": "pt"})
    c = json.loads((legacy / "config.json").read_text())
    c["text_config"]["eos_token_id"] = 2
    (legacy / "config.json").write_text(json.dumps(c, indent=2))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_fixtures import write_download_tokenizer
    write_download_tokenizer(vocab, legacy, "<|endoftext|>")
    return model, tok


def make_dino(fx):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(SEED + 1)
    model = ViTModel(ViTConfig(**DINO), add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embeddings.position" not in name and "cls" not in name:
                p.normal_(0, 1.0 / p.shape[-1] ** 0.5)
            elif "layernorm" in name or "norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            else:
                p.normal_(0, 0.5)
    out = fx / "tiny-dino"
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    return model


def main():
    fx = Path(sys.argv[1] if len(sys.argv) > 1 else "target/fixtures").resolve()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    (fx / "ref").mkdir(parents=True, exist_ok=True)
    from transformers import CLIPImageProcessorPil, CLIPModel, ViTConfig, ViTModel

    photos_dir = fx / "metric-photos"
    shutil.rmtree(photos_dir, ignore_errors=True)
    photos_dir.mkdir(parents=True)
    images = {}
    for i, (name, w, h, mode) in enumerate(PHOTOS):
        img = picture(w, h, mode, i)
        img.save(photos_dir / f"{name}.png")
        images[name] = Image.open(photos_dir / f"{name}.png")

    # A JPEG: PIL decodes with libjpeg-turbo, moslora with the `image` crate's decoder; the
    # test measures how far apart they are (the resampling itself is exact).
    images["wide"].convert("RGB").save(photos_dir / "wide.jpg", quality=90)
    jpeg = Image.open(photos_dir / "wide.jpg")

    clip, tok = make_clip(fx)
    dino = make_dino(fx)
    proc = CLIPImageProcessorPil()
    ref = {}
    names = [p[0] for p in PHOTOS]
    clip_px = torch.cat([proc(images[n], return_tensors="pt")["pixel_values"] for n in names])
    dino_px = torch.stack([dino_pixels(images[n]) for n in names])
    for i, n in enumerate(names):
        ref[f"clip.pixel_values.{n}"] = clip_px[i]
        ref[f"dino.pixel_values.{n}"] = dino_px[i]
    ref["clip.pixel_values.jpeg"] = proc(jpeg, return_tensors="pt")["pixel_values"][0]
    ref["jpeg.decoded"] = torch.from_numpy(np.array(jpeg.convert("RGB")))
    with torch.no_grad():
        img_emb = clip.get_image_features(pixel_values=clip_px)
        img_emb = getattr(img_emb, "pooler_output", img_emb)
        enc = tok(PROMPTS, padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt")
        txt_emb = clip.get_text_features(input_ids=enc["input_ids"],
                                         attention_mask=enc["attention_mask"])
        txt_emb = getattr(txt_emb, "pooler_output", txt_emb)
        dino_feat = dino(pixel_values=dino_px).last_hidden_state[:, 0]
        # The same weights with the original DINO code's epsilon.
        d6 = ViTModel.from_pretrained(fx / "tiny-dino", layer_norm_eps=1e-6,
                                      add_pooling_layer=False).eval()
        dino_feat6 = d6(pixel_values=dino_px).last_hidden_state[:, 0]
    ref["clip.image_embeds"] = img_emb
    ref["clip.input_ids"] = enc["input_ids"]
    ref["clip.text_embeds"] = txt_emb
    ref["clip.logit_scale"] = clip.logit_scale.detach().clone()
    ref["dino.features"] = dino_feat
    ref["dino.features_eps1e-6"] = dino_feat6

    # The scoring case: renders are the first three pictures, photos the rest; each render
    # has a prompt.
    renders, photos = names[:3], names[3:]
    ri = [names.index(n) for n in renders]
    pi = [names.index(n) for n in photos]
    ref["scores.clip_t"] = torch.stack(
        [mean_cos(img_emb[ri[k]:ri[k] + 1], txt_emb[k:k + 1])[0] for k in range(3)])
    ref["scores.clip_i"] = mean_cos(img_emb[ri], img_emb[pi])
    ref["scores.dino"] = mean_cos(dino_feat[ri], dino_feat[pi])
    ref["scores.dino_eps1e-6"] = mean_cos(dino_feat6[ri], dino_feat6[pi])
    ref["scores.ceiling_clip_i"] = ceiling(img_emb[pi])
    ref["scores.ceiling_dino"] = ceiling(dino_feat[pi])
    ref = {k: v.detach().contiguous() for k, v in ref.items()}
    from safetensors.torch import save_file
    save_file(ref, fx / "ref" / "metrics.safetensors")
    (fx / "ref" / "metrics.json").write_text(json.dumps(
        {"renders": renders, "photos": photos, "prompts": PROMPTS}, indent=2))
    print("metrics fixtures:", fx)


if __name__ == "__main__":
    main()
