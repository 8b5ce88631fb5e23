"""Masked-loss reference (sd-scripts' `--masked_loss`), on the tiny UNet with a peft LoRA.

usage: masked_loss.py FIXTURES OUT.safetensors      (run by tests/training_parity.rs)

The mask arrives as pixels in [0, 1] (white = subject). The background weight w is applied in
pixel space, `w + (1 - w) * mask`, and the result is brought to the latent size with
`F.interpolate(mode="area")`, as `library/custom_train_functions.py::apply_masked_loss` does; the
element-wise squared error of the instance rows is multiplied by it before any mean (no
renormalisation by the mask's area, as there). Min-SNR then weights each row's mean as in
`train_dreambooth_lora_sdxl.py`, and the class rows of prior preservation are never masked.

Writes OUT with:
  masked.lora_{A,B}.<module>        the LoRA weights (B drawn, not zero)
  masked.noisy, .target, .timesteps, .hidden, .pooled, .time_ids
  masked.pixel_mask                 (4, 1, 64, 64) pixel masks, one per row
  masked.background_weight          float64
  masked.latent_weights             (4, 1, 8, 8) the weights each row's loss gets
  masked.<case>, masked.<case>.<module>.lora_{A,B}.grad
      cases `plain`, `snr` (snr_gamma 5), `prior` (prior weight 0.7), `prior_snr` (both):
      rows 0-1 are instance rows, 2-3 class rows with prior preservation, all four instance
      rows without it.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr
from peft import LoraConfig
from safetensors.torch import save_file

SNR_GAMMA = 5.0
PRIOR_WEIGHT = 0.7
BACKGROUND = 0.25


def masked_loss(pred, target, timesteps, weights, sched, snr_gamma, prior_weight):
    if prior_weight is not None:
        pred, pred_prior = torch.chunk(pred, 2, dim=0)
        target, target_prior = torch.chunk(target, 2, dim=0)
        timesteps = torch.chunk(timesteps, 2, dim=0)[0]
        weights = torch.chunk(weights, 2, dim=0)[0]
        prior_loss = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
    loss = F.mse_loss(pred.float(), target.float(), reduction="none") * weights
    loss = loss.mean(dim=[1, 2, 3])
    if snr_gamma is not None:
        snr = compute_snr(sched, timesteps)
        loss = loss * torch.clamp(snr, max=snr_gamma) / snr
    loss = loss.mean()
    if prior_weight is not None:
        loss = loss + prior_weight * prior_loss
    return loss


def main():
    fx, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(2)
    torch.manual_seed(0)  # peft draws lora_A from the global generator
    cfg = json.loads((fx / "tiny-sdxl-saved" / "scheduler" / "scheduler_config.json").read_text())
    sched = DDPMScheduler.from_config(cfg)
    unet = UNet2DConditionModel.from_pretrained(fx / "tiny-sdxl-saved" / "unet")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(11)
    out, params = {}, {}
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
        if p.requires_grad:
            module, part = name.split(".lora_")
            params[f"{module}.lora_{part[0]}"] = p
            out[f"masked.lora_{part[0]}.{module}"] = p.detach().clone()
    n = 4
    noisy = torch.randn((n, 4, 8, 8), generator=g)
    target = torch.randn((n, 4, 8, 8), generator=g)
    timesteps = torch.tensor([20, 650, 120, 900], dtype=torch.long)
    hidden = torch.randn((n, 77, 64), generator=g)
    pooled = torch.randn((n, 32), generator=g)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * n)
    # Row 0: a hard-edged subject off the latent grid; row 1: a grey ramp; row 2: noise;
    # row 3: all white (a photo without a mask).
    mask = torch.zeros((n, 1, 64, 64))
    mask[0, 0, 13:45, 21:50] = 1.0
    mask[1, 0] = torch.linspace(0, 1, 64).expand(64, 64)
    mask[2, 0] = torch.rand((64, 64), generator=g)
    mask[3, 0] = 1.0
    weights = F.interpolate(BACKGROUND + (1 - BACKGROUND) * mask, size=(8, 8), mode="area")
    for k, v in dict(noisy=noisy, target=target, timesteps=timesteps, hidden=hidden,
                     pooled=pooled, time_ids=time_ids, pixel_mask=mask,
                     latent_weights=weights).items():
        out[f"masked.{k}"] = v
    out["masked.background_weight"] = torch.tensor(BACKGROUND, dtype=torch.float64)
    out["masked.snr_gamma"] = torch.tensor(SNR_GAMMA, dtype=torch.float64)
    out["masked.prior_weight"] = torch.tensor(PRIOR_WEIGHT, dtype=torch.float64)
    cond = {"text_embeds": pooled, "time_ids": time_ids}
    cases = {"plain": (None, None), "snr": (SNR_GAMMA, None), "prior": (None, PRIOR_WEIGHT),
             "prior_snr": (SNR_GAMMA, PRIOR_WEIGHT)}
    for case, (gamma, prior) in cases.items():
        unet.zero_grad()
        pred = unet(noisy, timesteps, hidden, added_cond_kwargs=cond).sample
        loss = masked_loss(pred, target, timesteps, weights, sched, gamma, prior)
        loss.backward()
        out[f"masked.{case}"] = loss.detach()
        for key, p in params.items():
            out[f"masked.{case}.{key}.grad"] = p.grad.detach().clone()
        print(f"  masked loss {case}: {loss.item():.6f}", flush=True)
    save_file({k: v.contiguous() for k, v in out.items()}, out_path)


if __name__ == "__main__":
    main()
