"""Check that diffusers/transformers read a pipeline folder written by moslora.

    python tests/reference/check_pipeline_dir.py DIR

Every component's tensor names must be exactly the ones the reference model class has (no
missing, no unexpected), and StableDiffusionXLPipeline must load the folder and render.
Prints one line per component; exits non-zero on any mismatch.
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection


def keys(path):
    with safe_open(path, "pt") as f:
        return set(f.keys())


def main(root: Path):
    ok = True
    checks = [
        ("unet", "diffusion_pytorch_model.safetensors",
         lambda c: UNet2DConditionModel.from_config(c)),
        ("vae", "diffusion_pytorch_model.safetensors", lambda c: AutoencoderKL.from_config(c)),
        ("text_encoder", "model.safetensors",
         lambda c: CLIPTextModel(CLIPTextConfig.from_dict(c))),
        ("text_encoder_2", "model.safetensors",
         lambda c: CLIPTextModelWithProjection(CLIPTextConfig.from_dict(c))),
    ]
    for name, file, build in checks:
        cfg = json.loads((root / name / "config.json").read_text())
        with torch.device("meta"):
            model = build(cfg)
        want = set(model.state_dict().keys())
        have = keys(root / name / file)
        if name.startswith("text_encoder"):
            # transformers 5 names the CLIP text model without `text_model.`; files from
            # transformers 4 (and SDXL downloads) have it. Compare without it.
            strip = lambda k: k[len("text_model."):] if k.startswith("text_model.") else k
            want = {strip(k) for k in want}
            have = {strip(k) for k in have if not k.endswith("position_ids")}
        missing, extra = sorted(want - have), sorted(have - want)
        print(f"{name}: {len(have)} tensors, missing {missing[:5]}, unexpected {extra[:5]}")
        ok &= not missing and not extra
    pipe = StableDiffusionXLPipeline.from_pretrained(root, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of sks dog", num_inference_steps=2, width=64, height=64,
                 generator=torch.Generator("cpu").manual_seed(0), output_type="np").images
    finite = bool(torch.isfinite(torch.from_numpy(image)).all())
    print(f"pipeline: rendered {image.shape}, finite {finite}")
    ok &= finite
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
