"""Reference schedules from diffusers, for tests/schedule_parity.rs.

EulerDiscreteScheduler, from the tiny pipeline's scheduler config (SDXL base's settings):
  euler.train_sigmas                     sigmas before `set_timesteps` (training table + final 0)
  euler.<spacing>.<n>.timesteps/.sigmas/.init_noise_sigma
                                         for leading (the config), trailing and linspace
  euler.scale.<i>, euler.step.<i>        scale_model_input / step at step index i of 50 steps,
                                         on seeded `euler.sample` and `euler.model_output`
  euler.v.step.<i>                       the same step with v-prediction
  euler.loop.<spacing>                   a whole 7-step sampling loop with a stand-in model
                                         eps(x, t) = tanh(x) * t / 1000, from `euler.loop.noise`
DDPMScheduler from the same config (as diffusers' training scripts load it):
  ddpm.alphas_cumprod, ddpm.add_noise (x0, noise, timesteps int64), ddpm.snr (compute_snr),
  ddpm.min_snr_weights (gamma 5, epsilon prediction, as train_dreambooth_lora_sdxl.py)
"""

from pathlib import Path

import torch

STEPS = [50, 20, 30, 1, 7, 61, 1000]
SPACINGS = ["leading", "trailing", "linspace"]
STEP_INDICES = [0, 1, 25, 49]


def make(fx: Path):
    from diffusers import DDPMScheduler, EulerDiscreteScheduler
    from diffusers.training_utils import compute_snr
    from safetensors.torch import save_file

    folder = fx / "tiny-sdxl-saved" / "scheduler"
    base = EulerDiscreteScheduler.from_pretrained(folder)
    assert base.config.timestep_spacing == "leading" and base.config.steps_offset == 1
    out = {"euler.train_sigmas": base.sigmas.clone()}

    def euler(**overrides):
        return EulerDiscreteScheduler.from_config(base.config, **overrides)

    for spacing in SPACINGS:
        for n in STEPS:
            s = euler(timestep_spacing=spacing)
            s.set_timesteps(n)
            key = f"euler.{spacing}.{n}"
            out[f"{key}.timesteps"] = s.timesteps.to(torch.float32)
            out[f"{key}.sigmas"] = s.sigmas.to(torch.float32)
            out[f"{key}.init_noise_sigma"] = torch.as_tensor(
                s.init_noise_sigma, dtype=torch.float32).reshape(1)

    g = torch.Generator("cpu").manual_seed(2024)
    sample = torch.randn((2, 4, 8, 8), generator=g) * 14.6
    model_output = torch.randn((2, 4, 8, 8), generator=g)
    out["euler.sample"] = sample
    out["euler.model_output"] = model_output
    for prefix, sched in [("euler", euler()), ("euler.v", euler(prediction_type="v_prediction"))]:
        sched.set_timesteps(50)
        for i in STEP_INDICES:
            t = sched.timesteps[i]
            sched._step_index = None  # look the index up from t, as a pipeline's first call does
            scaled = sched.scale_model_input(sample, t)
            assert sched.step_index == i
            prev = sched.step(model_output, t, sample).prev_sample
            if prefix == "euler":
                out[f"euler.scale.{i}"] = scaled
            out[f"{prefix}.step.{i}"] = prev

    noise = torch.randn((1, 4, 8, 8), generator=g)
    out["euler.loop.noise"] = noise
    for spacing in SPACINGS:
        sched = euler(timestep_spacing=spacing)
        sched.set_timesteps(7)
        latents = noise * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(latents, t)
            eps = torch.tanh(inp) * (t / 1000)
            latents = sched.step(eps, t, latents).prev_sample
        out[f"euler.loop.{spacing}"] = latents

    ddpm = DDPMScheduler.from_pretrained(folder)
    out["ddpm.alphas_cumprod"] = ddpm.alphas_cumprod.clone()
    x0 = torch.randn((6, 4, 8, 8), generator=g)
    eps = torch.randn((6, 4, 8, 8), generator=g)
    timesteps = torch.tensor([0, 1, 499, 500, 998, 999], dtype=torch.int64)
    out["ddpm.x0"] = x0
    out["ddpm.noise"] = eps
    out["ddpm.timesteps"] = timesteps
    out["ddpm.add_noise"] = ddpm.add_noise(x0, eps, timesteps)
    snr_t = torch.randint(0, 1000, (64,), generator=g, dtype=torch.int64)
    out["ddpm.snr_timesteps"] = snr_t
    snr = compute_snr(ddpm, snr_t)
    out["ddpm.snr"] = snr
    gamma = 5.0
    out["ddpm.min_snr_weights"] = (
        torch.stack([snr, gamma * torch.ones_like(snr_t)], dim=1).min(dim=1)[0] / snr)

    (fx / "ref").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, fx / "ref" / "schedule.safetensors")
