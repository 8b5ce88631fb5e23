"""End-to-end references from diffusers' StableDiffusionXLPipeline on the tiny model.

Writes ref/pipeline.json (the cases) and, per case, ref/pipeline_<name>.png (the image as
diffusers saves it) and ref/pipeline_<name>.safetensors (prompt embeddings, initial and
final latents), so a mismatch can be traced to the stage where it starts.
"""

import json
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file

CASES = [
    {"name": "cfg", "prompt": "a photo of sks dog", "negative_prompt": None, "seed": 0,
     "steps": 25, "guidance": 5.0, "width": 128, "height": 128},
    {"name": "negative", "prompt": "a [V] teapot on a wooden table, 4k", "seed": 42,
     "negative_prompt": "blurry, low quality", "steps": 20, "guidance": 7.5,
     "width": 96, "height": 128},
]


def make(fx: Path):
    # The download layout (text_model. prefix, vocab.json + merges.txt tokenizers): diffusers
    # must read it as it reads a real SDXL folder.
    pipe = StableDiffusionXLPipeline.from_pretrained(fx / "tiny-sdxl", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for case in CASES:
        with torch.no_grad():
            pe, npe, pp, npp = pipe.encode_prompt(
                case["prompt"], negative_prompt=case["negative_prompt"],
                do_classifier_free_guidance=True, device="cpu")
        captured = {}

        def grab(pipe_, i, t, kw):
            if i == 0:
                captured["first_latents_after_step"] = kw["latents"].clone()
            return kw

        out = pipe(
            case["prompt"], negative_prompt=case["negative_prompt"],
            num_inference_steps=case["steps"], guidance_scale=case["guidance"],
            width=case["width"], height=case["height"],
            generator=torch.Generator("cpu").manual_seed(case["seed"]),
            output_type="latent", callback_on_step_end=grab,
            callback_on_step_end_tensor_inputs=["latents"])
        latents = out.images
        with torch.no_grad():
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        pil = pipe.image_processor.postprocess(image, output_type="pil")[0]
        pil.save(fx / "ref" / f"pipeline_{case['name']}.png")
        init = torch.randn((1, 4, case["height"] // 8, case["width"] // 8),
                           generator=torch.Generator("cpu").manual_seed(case["seed"]))
        save_file({
            "prompt_embeds": pe.contiguous(), "negative_prompt_embeds": npe.contiguous(),
            "pooled": pp.contiguous(), "negative_pooled": npp.contiguous(),
            "initial_noise": init, "final_latents": latents.contiguous(),
            "first_latents_after_step": captured["first_latents_after_step"].contiguous(),
        }, fx / "ref" / f"pipeline_{case['name']}.safetensors")
    (fx / "ref" / "pipeline.json").write_text(json.dumps(CASES, indent=2))
