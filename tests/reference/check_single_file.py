"""Render a single-file SDXL checkpoint with diffusers' `from_single_file`; or check a name
table against diffusers' converters.

    python tests/reference/check_single_file.py FILE CONFIG_DIR PROMPT SEED STEPS W H OUT.png
    python tests/reference/check_single_file.py --names TABLE.json

`StableDiffusionXLPipeline.from_single_file(FILE, config=CONFIG_DIR)` (fp32, CPU) converts the
original (SGM) layout with diffusers' own converters, taking the component configs and
tokenizers from the diffusers folder CONFIG_DIR; then a seeded render (guidance 5.0) is saved
as diffusers saves it.

One heuristic of diffusers needs help with the tiny test model: it tells the two text encoders
apart by the width of their position embedding, and when both are equally wide (32 in the
tiny model, 768 and 1280 in SDXL) it fills text_encoder_2 from `conditioner.embedders.0`. In
that case only, text_encoder_2 is built with diffusers' own OpenCLIP converter
(`convert_open_clip_checkpoint`) on the right prefix, which is what diffusers does for SDXL.
"""

import json
import sys

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint,
                                                 convert_ldm_unet_checkpoint,
                                                 convert_ldm_vae_checkpoint,
                                                 convert_open_clip_checkpoint)
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

L_POS = "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
G_POS = "conditioner.embedders.1.model.positional_embedding"


def main(path, config, prompt, seed, steps, w, h, out):
    torch.set_num_threads(2)
    kwargs = {}
    checkpoint = load_file(path)
    if checkpoint[L_POS].shape[-1] == checkpoint[G_POS].shape[-1]:
        cfg = CLIPTextConfig.from_pretrained(config, subfolder="text_encoder_2")
        te2 = CLIPTextModelWithProjection(cfg)
        sd = convert_open_clip_checkpoint(te2, checkpoint, prefix="conditioner.embedders.1.model.")
        missing, unexpected = te2.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            sys.exit(f"text_encoder_2: missing {missing[:5]}, unexpected {unexpected[:5]}")
        kwargs["text_encoder_2"] = te2.eval()
        print("text_encoder_2 converted from conditioner.embedders.1 (equal widths)")
    pipe = StableDiffusionXLPipeline.from_single_file(
        path, config=config, torch_dtype=torch.float32, local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt,
        num_inference_steps=int(steps),
        guidance_scale=5.0,
        width=int(w),
        height=int(h),
        generator=torch.Generator("cpu").manual_seed(int(seed)),
    ).images[0]
    image.save(out)
    print(f"rendered {out}")


def check_names(table_path):
    """TABLE.json: {"configs": {component: config}, "tensors": {component: [[diffusers name,
    shape, single-file name, single-file shape], ...]}}, as moslora maps a model's tensors. A
    checkpoint of empty (meta) tensors under the single-file names goes through diffusers'
    converters, which must give back exactly the diffusers names with their shapes."""
    table = json.loads(open(table_path).read())
    checkpoint, want = {}, {}
    for component, rows in table["tensors"].items():
        for name, shape, stored, stored_shape in rows:
            checkpoint[stored] = torch.empty(stored_shape, device="meta")
        want[component] = {name: tuple(shape) for name, shape, _, _ in rows}
    cfg = table["configs"]
    with torch.device("meta"):
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(cfg["text_encoder_2"]))
    got = {
        "unet": convert_ldm_unet_checkpoint(checkpoint, cfg["unet"]),
        "vae": convert_ldm_vae_checkpoint(checkpoint, cfg["vae"]),
        "text_encoder": convert_ldm_clip_checkpoint(
            {k: v for k, v in checkpoint.items() if k.startswith("conditioner.embedders.0.")}),
        "text_encoder_2": convert_open_clip_checkpoint(
            te2, checkpoint, prefix="conditioner.embedders.1.model."),
    }
    ok = True
    for component, converted in got.items():
        names, expected = set(converted), set(want[component])
        missing, extra = sorted(expected - names), sorted(names - expected)
        shapes = sorted(n for n in names & expected
                        if tuple(converted[n].shape) != want[component][n])
        print(f"{component}: {len(names)} tensors from diffusers' converter, "
              f"missing {missing[:5]}, unexpected {extra[:5]}, other shapes {shapes[:5]}")
        ok &= not missing and not extra and not shapes
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    if sys.argv[1] == "--names":
        check_names(sys.argv[2])
    else:
        main(*sys.argv[1:9])
