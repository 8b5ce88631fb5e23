"""Renders of the toy world's model by diffusers' StableDiffusionXLPipeline with each sampler
(ref_samplers.SAMPLERS), with and without guidance.

    python check_toy_samplers.py MODEL_DIR OUT_DIR

Writes OUT_DIR/toy_<sampler>_<case>.png, OUT_DIR/toy_samplers.safetensors (final latents,
`<sampler>.<case>`) and OUT_DIR/toy_samplers.json (the cases and the image size), for
tests/sampler_parity.rs to compare with moslora's renders of the same folder.
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ref_samplers import SAMPLERS, render  # noqa: E402

CASES = [
    {"name": "cfg", "prompt": "a photo of a red ball on the beach", "seed": 5, "steps": 15,
     "guidance": 4.0},
    {"name": "noguide", "prompt": "a shiny purple cat with a city in the background",
     "seed": 8, "steps": 10, "guidance": 1.0},
]


def main():
    model, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    # The shipped weights may be f16 on disk: the reference computes in f32 like moslora.
    pipe = StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    config = pipe.scheduler.config
    tensors = {}
    for name in SAMPLERS:
        for case in CASES:
            c = {**case, "width": size, "height": size}
            tensors[f"{name}.{case['name']}"] = render(
                pipe, name, config, c, out / f"toy_{name}_{case['name']}.png")
    save_file(tensors, out / "toy_samplers.safetensors")
    (out / "toy_samplers.json").write_text(json.dumps({"size": size, "cases": CASES}, indent=2))


if __name__ == "__main__":
    main()
