"""LoRA references from peft on the tiny UNet: the adapted forward pass, and two AdamW
training steps (gradient clipping included) on one fixed batch.

Writes ref/lora.safetensors: the inputs, the initial and updated lora_A / lora_B of every
adapted layer (named `<module>.lora_A` / `<module>.lora_B`), the forward output and the
losses.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from safetensors.torch import save_file

LR = 1e-3
WEIGHT_DECAY = 1e-2
MAX_GRAD_NORM = 1.0


def make(fx: Path):
    unet = UNet2DConditionModel.from_pretrained(fx / "tiny-sdxl-saved" / "unet")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(1)
    params = {}
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            # B starts at zero; give it values so that A gets a gradient in the first step.
            p.data = torch.randn(p.shape, generator=g) * 0.05
        if p.requires_grad:
            params[name] = p
    out = {}
    for name, p in params.items():
        module, part = name.split(".lora_")
        out[f"{module}.lora_{part[0]}.initial"] = p.detach().clone()

    b = 2
    noisy = torch.randn((b, 4, 8, 8), generator=g)
    target = torch.randn((b, 4, 8, 8), generator=g)
    timesteps = torch.tensor([10, 700], dtype=torch.long)
    hidden = torch.randn((b, 77, 64), generator=g)
    pooled = torch.randn((b, 32), generator=g)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [80, 96, 8, 16, 64, 64]])
    out.update(noisy=noisy, target=target, timesteps=timesteps, hidden=hidden, pooled=pooled,
               time_ids=time_ids)
    cond = {"text_embeds": pooled, "time_ids": time_ids}

    with torch.no_grad():
        out["forward"] = unet(noisy, timesteps, hidden, added_cond_kwargs=cond).sample

    opt = torch.optim.AdamW(list(params.values()), lr=LR, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=WEIGHT_DECAY)
    losses, norms = [], []
    for _ in range(2):
        pred = unet(noisy, timesteps, hidden, added_cond_kwargs=cond).sample
        loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_GRAD_NORM))
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach())
    out["losses"] = torch.stack(losses)
    out["grad_norms"] = torch.stack(norms)
    for name, p in params.items():
        module, part = name.split(".lora_")
        out[f"{module}.lora_{part[0]}.updated"] = p.detach().clone()
    save_file({k: v.contiguous() for k, v in out.items()}, fx / "ref" / "lora.safetensors")
