"""DoRA, LoHa and LoKr references on the tiny UNet, made by peft itself (the version the
Makefile pins): `LoraConfig(use_dora=True)`, `LoHaConfig` and `LoKrConfig`, injected into every
`to_q`, `to_k`, `to_v` and `to_out.0` of diffusers' tiny SDXL UNet with
`peft.inject_adapter_in_model`, then trained two AdamW steps with gradient clipping, as
ref_moslora.py does for MoSLoRA.

The factors peft starts at zero (DoRA's lora_B, LoHa's hada_w2_b, LoKr's lokr_w1) are set to
small random values first, so that every factor gets a gradient in the first step; the others
keep peft's own initialisation, and DoRA's magnitude stays the norms peft computed.

Writes ref/families.safetensors:
  <family>.<module>.<part>.initial / .grad0 / .grad1 / .updated
                      the factors as peft names them without the adapter name
                      (`lora_A`, `lora_B`, `lora_magnitude_vector`, `hada_w1_a`, `lokr_w2_a`, ...)
  <family>.forward, <family>.losses, <family>.grad_norms
  <family>.merged.<module>  peft's merged weight of each adapted layer (merge_and_unload)
  noisy, target, timesteps, hidden, pooled, time_ids   the batch
  rank, alpha, lr, weight_decay, max_grad_norm
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model
from safetensors.torch import save_file

RANK = 4
ALPHA = 8.0
LR = 1e-3
WEIGHT_DECAY = 1e-2
# Small enough that clipping scales every step's gradients (the Rust test checks it), large
# enough that few clipped gradients come near AdamW's eps.
MAX_GRAD_NORM = 2e-2
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# The factor each family starts at zero, made random here.
ZERO_AT_START = {"dora": "lora_B", "loha": "hada_w2_b", "lokr": "lokr_w1"}


def config(family: str):
    if family == "dora":
        return LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, use_dora=True,
                          lora_dropout=0.0)
    if family == "loha":
        return LoHaConfig(r=RANK, alpha=ALPHA, target_modules=TARGETS)
    return LoKrConfig(r=RANK, alpha=ALPHA, target_modules=TARGETS)


def part_of(name: str):
    """`down_blocks.1...to_q.lora_A.default.weight` -> (module, `lora_A`)."""
    name = name.replace(".default.weight", "").replace(".default", "")
    module, part = name.rsplit(".", 1)
    return module, part


def make(fx: Path):
    out = {}
    g = torch.Generator().manual_seed(7)
    b = 2
    noisy = torch.randn((b, 4, 8, 8), generator=g)
    target = torch.randn((b, 4, 8, 8), generator=g)
    timesteps = torch.tensor([30, 600], dtype=torch.long)
    hidden = torch.randn((b, 77, 64), generator=g)
    pooled = torch.randn((b, 32), generator=g)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [72, 96, 4, 12, 64, 64]])
    out.update(noisy=noisy, target=target, timesteps=timesteps, hidden=hidden, pooled=pooled,
               time_ids=time_ids)
    cond = {"text_embeds": pooled, "time_ids": time_ids}

    for family in ("dora", "loha", "lokr"):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_pretrained(fx / "tiny-sdxl-saved" / "unet")
        unet.requires_grad_(False)
        torch.manual_seed(21)
        unet = inject_adapter_in_model(config(family), unet)
        zg = torch.Generator().manual_seed(31)
        named = []
        for name, p in unet.named_parameters():
            if not p.requires_grad:
                continue
            module, part = part_of(name)
            if part == ZERO_AT_START[family]:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=zg) * 0.3)
            out[f"{family}.{module}.{part}.initial"] = p.detach().clone()
            named.append((module, part, p))
        assert len({m for m, _, _ in named}) == 136, family
        params = [p for _, _, p in named]
        unet.eval()  # no dropout anywhere; DoRA's cache is cleared in eval too
        with torch.no_grad():
            out[f"{family}.forward"] = unet(noisy, timesteps, hidden,
                                            added_cond_kwargs=cond).sample
        unet.train()
        opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=WEIGHT_DECAY)
        losses, norms = [], []
        for step in range(2):
            pred = unet(noisy, timesteps, hidden, added_cond_kwargs=cond).sample
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            loss.backward()
            for module, part, p in named:
                out[f"{family}.{module}.{part}.grad{step}"] = p.grad.detach().clone()
            norms.append(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM))
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach())
        out[f"{family}.losses"] = torch.stack(losses)
        out[f"{family}.grad_norms"] = torch.stack(norms)
        for module, part, p in named:
            out[f"{family}.{module}.{part}.updated"] = p.detach().clone()
        # peft's own merge of the trained adapter into each layer's weight.
        unet.eval()
        for name, m in unet.named_modules():
            if hasattr(m, "merge") and hasattr(m, "base_layer") and name.endswith(tuple(TARGETS)):
                m.merge()
                out[f"{family}.merged.{name}"] = m.get_base_layer().weight.detach().clone()
        print(f"  {family}: losses {[f'{x:.6f}' for x in losses]}, "
              f"grad norms {[f'{x:.4f}' for x in norms]}", flush=True)
    out["rank"] = torch.tensor(RANK, dtype=torch.float64)
    out["alpha"] = torch.tensor(ALPHA, dtype=torch.float64)
    out["max_grad_norm"] = torch.tensor(MAX_GRAD_NORM, dtype=torch.float64)
    out["lr"] = torch.tensor(LR, dtype=torch.float64)
    out["weight_decay"] = torch.tensor(WEIGHT_DECAY, dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in out.items()}, fx / "ref" / "families.safetensors")


if __name__ == "__main__":
    import sys
    make(Path(sys.argv[1]))
