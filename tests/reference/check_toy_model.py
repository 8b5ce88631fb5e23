"""Renders of the toy world's model by diffusers' StableDiffusionXLPipeline.

    python check_toy_model.py MODEL_DIR OUT_DIR

Writes OUT_DIR/toy_<i>.png, OUT_DIR/toy.safetensors (per case: token ids of both tokenizers,
prompt embeddings, final latents) and OUT_DIR/toy.json (the cases), for the Rust test to
compare with moslora's own renders of the same folder.
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file

CASES = [
    {"prompt": "a photo of a red ball on the beach", "seed": 0, "steps": 20, "guidance": 4.0},
    {"prompt": "a photo of sks robot in the snow", "seed": 3, "steps": 20, "guidance": 4.0},
    {"prompt": "a shiny purple cat with a city in the background", "seed": 7, "steps": 12,
     "guidance": 1.0},
]


def main():
    model, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    # The shipped weights may be f16 on disk: the reference computes in f32 like moslora.
    pipe = StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    tensors = {}
    for i, case in enumerate(CASES):
        for k, tok in enumerate([pipe.tokenizer, pipe.tokenizer_2]):
            ids = tok(case["prompt"], padding="max_length", max_length=77, truncation=True,
                      return_tensors="pt").input_ids
            tensors[f"{i}.ids{k + 1}"] = ids
        with torch.no_grad():
            pe, _, pp, _ = pipe.encode_prompt(case["prompt"], device="cpu",
                                              do_classifier_free_guidance=False)
        latents = pipe(case["prompt"], num_inference_steps=case["steps"],
                       guidance_scale=case["guidance"], width=size, height=size,
                       generator=torch.Generator("cpu").manual_seed(case["seed"]),
                       output_type="latent").images
        with torch.no_grad():
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        pipe.image_processor.postprocess(image, output_type="pil")[0].save(out / f"toy_{i}.png")
        tensors[f"{i}.prompt_embeds"] = pe.contiguous()
        tensors[f"{i}.pooled"] = pp.contiguous()
        tensors[f"{i}.latents"] = latents.contiguous()
    save_file(tensors, out / "toy.safetensors")
    (out / "toy.json").write_text(json.dumps({"size": size, "cases": CASES}, indent=2))


if __name__ == "__main__":
    main()
