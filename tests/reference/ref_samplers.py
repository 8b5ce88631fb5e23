"""References for every sampler moslora offers, for tests/sampler_parity.rs.

Each sampler is a diffusers scheduler class built with `from_config` from the tiny pipeline's
scheduler config (SDXL base's), with the arguments A1111's name implies (SAMPLERS).

ref/samplers.safetensors:
  <sampler>.<spacing>.<n>.timesteps / .sigmas / .init_noise_sigma
                        after set_timesteps(n), for the config's spacing and the other two
                        (DDIM keeps no sigmas)
  <sampler>.<case>.final_latents / .first_step_latents
                        StableDiffusionXLPipeline with that scheduler on the tiny model: the
                        final latents and the latents after the first step
  <sampler>.<case>.sensitivity
                        how far the final latents move when the initial noise moves by 1e-6
                        (diffusers against itself): a case where this is not far below the
                        tests' 1e-4 cannot be compared end to end. The random tiny model with
                        guidance under DDIM's clipping is such a case (about 4e-2)
ref/samplers.json       the render cases
ref/samplers_<sampler>_<case>.png
                        the images as diffusers saves them
"""

import json
from pathlib import Path

import torch

STEPS = [1, 7, 12, 20, 25, 50]
SPACINGS = ["leading", "trailing", "linspace"]

# name -> (diffusers class name, from_config overrides)
SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler",
                 {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpmpp_2m_sde_karras": ("DPMSolverMultistepScheduler",
                            {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

# With guidance (the unconditional and conditional passes in one batch) and without; fewer
# than 15 steps (the multistep solvers' lower_order_final rule) and more.
CASES = [
    {"name": "cfg", "prompt": "a photo of sks dog", "seed": 3, "steps": 12, "guidance": 5.0,
     "width": 64, "height": 64},
    {"name": "noguide", "prompt": "a [V] teapot on a wooden table", "seed": 11, "steps": 16,
     "guidance": 1.0, "width": 64, "height": 64},
]


def scheduler(name, config, **overrides):
    import diffusers
    cls, kwargs = SAMPLERS[name]
    return getattr(diffusers, cls).from_config(config, **{**kwargs, **overrides})


def render(pipe, name, config, case, out_png=None, nudge=0.0, first=None):
    """One render with `name`, built from the model's scheduler `config`, as the pipeline's
    scheduler: its final latents (the PNG is saved to `out_png`; `first`, a dict, receives
    the latents after the first step). `nudge` is added to the seeded initial noise; the
    generator then goes on to draw the same step noise."""
    pipe.scheduler = scheduler(name, config)
    generator = torch.Generator("cpu").manual_seed(case["seed"])
    shape = (1, 4, case["height"] // 8, case["width"] // 8)
    latents = None
    if nudge:
        latents = torch.randn(shape, generator=generator) + nudge

    def grab(pipe_, i, t, kw):
        if i == 0 and first is not None:
            first["latents"] = kw["latents"].clone()
        return kw

    latents = pipe(
        case["prompt"], negative_prompt=case.get("negative_prompt"),
        num_inference_steps=case["steps"], guidance_scale=case["guidance"],
        width=case["width"], height=case["height"], generator=generator, latents=latents,
        output_type="latent", callback_on_step_end=grab,
        callback_on_step_end_tensor_inputs=["latents"]).images
    if out_png is not None:
        with torch.no_grad():
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        pipe.image_processor.postprocess(image, output_type="pil")[0].save(out_png)
    return latents.contiguous()


def make(fx: Path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    base = EulerDiscreteScheduler.from_pretrained(fx / "tiny-sdxl-saved" / "scheduler").config
    out = {}
    for name in SAMPLERS:
        for spacing in SPACINGS:
            for n in STEPS:
                s = scheduler(name, base, timestep_spacing=spacing)
                s.set_timesteps(n)
                key = f"{name}.{spacing}.{n}"
                out[f"{key}.timesteps"] = s.timesteps.to(torch.float32)
                if name != "ddim":
                    out[f"{key}.sigmas"] = s.sigmas.to(torch.float32)
                out[f"{key}.init_noise_sigma"] = torch.as_tensor(
                    float(s.init_noise_sigma), dtype=torch.float32).reshape(1)

    pipe = StableDiffusionXLPipeline.from_pretrained(fx / "tiny-sdxl", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.scheduler.config
    for name in SAMPLERS:
        for case in CASES:
            key = f"{name}.{case['name']}"
            first = {}
            final = render(pipe, name, config, case,
                           fx / "ref" / f"samplers_{name}_{case['name']}.png", first=first)
            nudged = render(pipe, name, config, case, nudge=1e-6)
            out[f"{key}.final_latents"] = final
            out[f"{key}.first_step_latents"] = first["latents"].contiguous()
            out[f"{key}.sensitivity"] = (final - nudged).abs().max().reshape(1)
    (fx / "ref").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, fx / "ref" / "samplers.safetensors")
    (fx / "ref" / "samplers.json").write_text(json.dumps(CASES, indent=2))
