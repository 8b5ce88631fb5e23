"""MoSLoRA references on the tiny UNet, written from the paper (Wu et al. 2024, "Mixture-of-
Subspaces in Low-Rank Adaptation") and the authors' patched peft, not from moslora's code.

The authors' peft patch adds one `nn.Linear(r, r, bias=False)`, `lora_AB`, between `lora_A`
and `lora_B` of every LoRA layer, so that a targeted linear layer computes

    y = W0 x + (alpha / r) * lora_B(lora_AB(lora_A(x)))

`MoSLoRALinear` below is exactly that module, put in place of every `to_q`, `to_k`, `to_v` and
`to_out.0` of diffusers' tiny SDXL UNet. The mixer starts as the paper's Tab. 3 initialisations,
drawn with `torch.nn.init` (zero, identity, Kaiming-uniform with a = sqrt(5) as in the authors'
code, orthogonal, N(0, 1/r)), or as the fixed two-subspace butterfly [[I, I], [I, I]] of the
paper's section 2.2 (not trained).

Writes ref/moslora.safetensors:
  init.<how>.r<r>.seed<s>          the mixer `torch.nn.init` draws after torch.manual_seed(s)
  init.a_<how>.r<r>.in<n>.seed<s>  A's draws (kaiming: peft's default; gaussian: N(0, 1/r))
  <how>.<module>.lora_{A,AB,B}.initial / .grad0 / .grad1 / .updated
                                   per mixer initialisation: the starting factors, the gradients
                                   of the first and second step (before clipping), and the
                                   factors after two AdamW steps with gradient clipping
  <how>.forward, <how>.losses, <how>.grad_norms
  noisy, target, timesteps, hidden, pooled, time_ids   the batch
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from torch import nn

RANK = 4
ALPHA = 4.0
LR = 1e-3
WEIGHT_DECAY = 1e-2
# Small enough that clipping scales every step's gradients (the norms are recorded and the
# Rust test checks that they exceed it).
MAX_GRAD_NORM = 1e-3
INITS = ["zero", "identity", "kaiming", "orthogonal", "normal", "butterfly"]
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def mixer_init(how: str, r: int) -> torch.Tensor:
    w = torch.empty(r, r)
    if how == "zero":
        nn.init.zeros_(w)
    elif how == "identity":
        w = torch.eye(r)
    elif how == "kaiming":
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    elif how == "orthogonal":
        nn.init.orthogonal_(w)
    elif how == "normal":
        nn.init.normal_(w, std=1.0 / r)
    elif how == "butterfly":
        eye = torch.eye(r // 2)
        w = torch.cat([torch.cat([eye, eye], 1), torch.cat([eye, eye], 1)], 0)
    else:
        raise ValueError(how)
    return w


def a_init(how: str, r: int, n_in: int) -> torch.Tensor:
    w = torch.empty(r, n_in)
    if how == "kaiming":
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    else:
        nn.init.normal_(w, std=1.0 / r)
    return w


class MoSLoRALinear(nn.Module):
    """A frozen linear layer with the authors' MoSLoRA branch."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, mixer: torch.Tensor, train_mixer):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_AB = nn.Linear(r, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        with torch.no_grad():
            self.lora_AB.weight.copy_(mixer)
        self.lora_AB.weight.requires_grad_(train_mixer)
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_AB(self.lora_A(x))) * self.scaling


def attach(unet: nn.Module, how: str, g: torch.Generator) -> dict:
    """Replace every targeted linear layer; return {module name: MoSLoRALinear}."""
    names = [n for n, m in unet.named_modules()
             if isinstance(m, nn.Linear) and n.endswith(TARGETS)]
    layers = {}
    for name in names:
        parent_name, child = name.rsplit(".", 1)
        parent = unet.get_submodule(parent_name)
        base = getattr(parent, child) if not child.isdigit() else parent[int(child)]
        layer = MoSLoRALinear(base, RANK, ALPHA, mixer_init(how, RANK), how != "butterfly")
        with torch.no_grad():
            nn.init.kaiming_uniform_(layer.lora_A.weight, a=math.sqrt(5), generator=g)
            # B starts at zero in training; random here so that A and M get a gradient in the
            # first step (the zero mixer still blocks A's and B's).
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.05)
        if child.isdigit():
            parent[int(child)] = layer
        else:
            setattr(parent, child, layer)
        layers[name] = layer
    return layers


def inits(out: dict):
    for r in (4, 8):
        for s, how in enumerate(["zero", "identity", "kaiming", "orthogonal", "normal", "butterfly"]):
            seed = 100 + 10 * r + s
            torch.manual_seed(seed)
            out[f"init.{how}.r{r}.seed{seed}"] = mixer_init(how, r)
        for s, how in enumerate(["kaiming", "gaussian"]):
            seed = 200 + 10 * r + s
            torch.manual_seed(seed)
            out[f"init.a_{how}.r{r}.in24.seed{seed}"] = a_init(how, r, 24)


def make(fx: Path):
    out = {}
    inits(out)
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

    for how in INITS:
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_pretrained(fx / "tiny-sdxl-saved" / "unet")
        unet.requires_grad_(False)
        layers = attach(unet, how, torch.Generator().manual_seed(11))
        params = []
        named = []
        for name, layer in layers.items():
            for part in ("lora_A", "lora_AB", "lora_B"):
                w = getattr(layer, part).weight
                out[f"{how}.{name}.{part}.initial"] = w.detach().clone()
                if w.requires_grad:
                    params.append(w)
                    named.append((name, part, w))
        with torch.no_grad():
            out[f"{how}.forward"] = unet(noisy, timesteps, hidden, added_cond_kwargs=cond).sample
        opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=WEIGHT_DECAY)
        losses, norms = [], []
        for step in range(2):
            pred = unet(noisy, timesteps, hidden, added_cond_kwargs=cond).sample
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            loss.backward()
            for name, part, w in named:
                out[f"{how}.{name}.{part}.grad{step}"] = w.grad.detach().clone()
            norms.append(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM))
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach())
        out[f"{how}.losses"] = torch.stack(losses)
        out[f"{how}.grad_norms"] = torch.stack(norms)
        for name, part, w in named:
            out[f"{how}.{name}.{part}.updated"] = w.detach().clone()
        print(f"  moslora {how}: losses {[f'{x:.6f}' for x in losses]}, "
              f"grad norms {[f'{x:.4f}' for x in norms]}", flush=True)
    out["max_grad_norm"] = torch.tensor(MAX_GRAD_NORM, dtype=torch.float64)
    out["lr"] = torch.tensor(LR, dtype=torch.float64)
    out["weight_decay"] = torch.tensor(WEIGHT_DECAY, dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in out.items()}, fx / "ref" / "moslora.safetensors")
