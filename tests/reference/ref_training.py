"""Training references from diffusers' DreamBooth scripts, on the tiny UNet with a peft LoRA.

Formulas are those of `examples/dreambooth/train_dreambooth_lora_sdxl.py` (prior preservation,
min-SNR weighting with `diffusers.training_utils.compute_snr`) and of
`examples/advanced_diffusion_training/train_dreambooth_lora_sdxl_advanced.py` (`noise_offset`:
the plain SDXL script has none), with `DDPMScheduler.add_noise` for the forward process and
`diffusers.optimization.get_scheduler` for the learning-rate schedules.

Writes ref/training.safetensors:
  loss.<case>, loss.<case>.<module>.lora_{A,B}.grad
      the loss and its gradients for the same batch and LoRA weights, cases `plain`, `snr`
      (snr_gamma 5), `prior` (prior_loss_weight 0.7) and `prior_snr` (both). The rows of the
      batch are 2 instance rows then 2 class rows, as the script's collate_fn stacks them.
  loss.lora_{A,B}.<module>                 the LoRA weights; loss.noisy, loss.target, ...
  batch.<offset>.*                         one training batch made from cached latents
  lr.<schedule>.<steps>.<warmup>           float64, the learning rate of every optimizer step
  noise.seed<s>                            torch.randn((1, 4, 8, 8)) from a seeded CPU generator
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from peft import LoraConfig
from safetensors.torch import save_file

SNR_GAMMA = 5.0
PRIOR_WEIGHT = 0.7
LR = 1e-4
LR_SCHEDULES = ["constant", "constant_with_warmup", "linear", "cosine"]
LR_RUNS = [(20, 0), (20, 5), (9, 4), (6, 6), (5, 8), (1, 0)]
# make_batch's inputs: run seed, step, batch size, scaling factor.
BATCH_SEED, BATCH_STEP, BATCH_SIZE, SCALING = 42, 3, 2, 0.13025


def scheduler(fx: Path) -> DDPMScheduler:
    cfg = json.loads((fx / "tiny-sdxl-saved" / "scheduler" / "scheduler_config.json").read_text())
    return DDPMScheduler.from_config(cfg)


def dreambooth_loss(model_pred, target, timesteps, noise_scheduler, snr_gamma, prior_weight):
    """The loss of train_dreambooth_lora_sdxl.py (epsilon prediction, no EDM).

    With both prior preservation and min-SNR the script computes the SNR of all 2b timesteps
    and multiplies the b instance losses by them, which fails to broadcast for b > 1 (and mixes
    in the class rows' weights for b = 1). The weights here are those of the instance rows, the
    rows whose loss they weight: the formula as the min-SNR paper and the script's comment mean it.
    """
    if prior_weight is not None:
        model_pred, model_pred_prior = torch.chunk(model_pred, 2, dim=0)
        target, target_prior = torch.chunk(target, 2, dim=0)
        prior_loss = F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
        timesteps = torch.chunk(timesteps, 2, dim=0)[0]
    if snr_gamma is None:
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    else:
        snr = compute_snr(noise_scheduler, timesteps)
        base_weight = (
            torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
        )
        mse_loss_weights = base_weight  # epsilon prediction
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
        loss = loss.mean(dim=list(range(1, len(loss.shape)))) * mse_loss_weights
        loss = loss.mean()
    if prior_weight is not None:
        loss = loss + prior_weight * prior_loss
    return loss


def losses(fx: Path, out: dict):
    sched = scheduler(fx)
    unet = UNet2DConditionModel.from_pretrained(fx / "tiny-sdxl-saved" / "unet")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(3)
    params = {}
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
        if p.requires_grad:
            module, part = name.split(".lora_")
            params[f"{module}.lora_{part[0]}"] = p
            out[f"loss.lora_{part[0]}.{module}"] = p.detach().clone()
    n = 4
    noisy = torch.randn((n, 4, 8, 8), generator=g)
    target = torch.randn((n, 4, 8, 8), generator=g)
    # SNR above and below gamma = 5 in both halves (SNR(t) > 5 for t below about 200).
    timesteps = torch.tensor([20, 650, 120, 900], dtype=torch.long)
    hidden = torch.randn((n, 77, 64), generator=g)
    pooled = torch.randn((n, 32), generator=g)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [80, 96, 8, 16, 64, 64],
                             [64, 64, 0, 0, 64, 64], [70, 64, 3, 0, 64, 64]])
    for k, v in dict(noisy=noisy, target=target, timesteps=timesteps, hidden=hidden,
                     pooled=pooled, time_ids=time_ids).items():
        out[f"loss.{k}"] = v
    cond = {"text_embeds": pooled, "time_ids": time_ids}
    cases = {"plain": (None, None), "snr": (SNR_GAMMA, None), "prior": (None, PRIOR_WEIGHT),
             "prior_snr": (SNR_GAMMA, PRIOR_WEIGHT)}
    for case, (gamma, prior) in cases.items():
        unet.zero_grad()
        pred = unet(noisy, timesteps, hidden, added_cond_kwargs=cond).sample
        loss = dreambooth_loss(pred, target, timesteps, sched, gamma, prior)
        loss.backward()
        out[f"loss.{case}"] = loss.detach()
        for key, p in params.items():
            out[f"loss.{case}.{key}.grad"] = p.grad.detach().clone()
        print(f"  loss {case}: {loss.item():.6f}", flush=True)
    out["loss.snr_gamma"] = torch.tensor(SNR_GAMMA, dtype=torch.float64)
    out["loss.prior_weight"] = torch.tensor(PRIOR_WEIGHT, dtype=torch.float64)


def step_seed(seed: int, step: int) -> int:
    """The seed of a run's step `step` (moslora seeds every step afresh; only the seed value is
    taken from it, recorded so that the Rust test can check it)."""
    m = (1 << 64) - 1
    s = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9) & m
    return s >> 1


def batches(fx: Path, out: dict):
    """One batch from cached VAE posteriors, with and without noise offset.

    The random draws come in this order from one generator: the example of each row (standing
    in for the data loader's shuffling), the posterior sample of each row
    (`latent_dist.sample()`, one draw per row), then, as in the advanced SDXL DreamBooth script,
    `noise = randn_like(model_input)`, the offset noise `randn((b, c, 1, 1))`, and the
    timesteps `randint(0, T, (b,))`; the noisy input is `DDPMScheduler.add_noise`.
    """
    sched = scheduler(fx)
    g = torch.Generator().manual_seed(5)
    inst_mean = torch.randn((3, 1, 4, 8, 8), generator=g)
    inst_std = torch.rand((3, 1, 4, 8, 8), generator=g) * 0.2 + 0.05
    inst_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [96, 72, 16, 0, 64, 64],
                             [64, 80, 0, 9, 64, 64]])
    cls_mean = torch.randn((2, 1, 4, 8, 8), generator=g)
    cls_std = torch.rand((2, 1, 4, 8, 8), generator=g) * 0.2 + 0.05
    cls_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [128, 64, 32, 0, 64, 64]])
    for k, v in dict(inst_mean=inst_mean, inst_std=inst_std, inst_ids=inst_ids,
                     cls_mean=cls_mean, cls_std=cls_std, cls_ids=cls_ids).items():
        out[f"batch.{k}"] = v
    seed = step_seed(BATCH_SEED, BATCH_STEP)
    out["batch.step_seed"] = torch.tensor(seed, dtype=torch.int64)

    def pick(mean, std, ids, n):
        idx = torch.randint(mean.shape[0], (n,))
        lat = [mean[i] + std[i] * torch.randn_like(mean[i]) for i in idx.tolist()]
        return torch.cat(lat, 0) * SCALING, ids[idx]

    for offset in (0.0, 0.1):
        torch.manual_seed(seed)
        x0, ids = pick(inst_mean, inst_std, inst_ids, BATCH_SIZE)
        cx, cids = pick(cls_mean, cls_std, cls_ids, BATCH_SIZE)
        model_input = torch.cat([x0, cx], 0)
        noise = torch.randn_like(model_input)
        if offset:
            noise += offset * torch.randn((model_input.shape[0], model_input.shape[1], 1, 1))
        bsz = model_input.shape[0]
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (bsz,)).long()
        noisy = sched.add_noise(model_input, noise, timesteps)
        tag = f"batch.{offset}"
        out[f"{tag}.noisy"] = noisy
        out[f"{tag}.target"] = noise
        out[f"{tag}.timesteps"] = timesteps
        out[f"{tag}.time_ids"] = torch.cat([ids, cids], 0)


def lr_schedules(out: dict):
    for name in LR_SCHEDULES:
        for steps, warmup in LR_RUNS:
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.AdamW([p], lr=LR)
            sch = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=steps)
            lrs = []
            for _ in range(steps):
                lrs.append(opt.param_groups[0]["lr"])  # the rate this optimizer step uses
                opt.step()
                sch.step()
            out[f"lr.{name}.{steps}.{warmup}"] = torch.tensor(lrs, dtype=torch.float64)
    out["lr.base"] = torch.tensor(LR, dtype=torch.float64)


def noise(out: dict):
    for seed in (0, 1, 3, 1234):
        out[f"noise.seed{seed}"] = torch.randn(
            (1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(seed))


def make(fx: Path):
    out = {}
    losses(fx, out)
    batches(fx, out)
    lr_schedules(out)
    noise(out)
    save_file({k: v.contiguous() for k, v in out.items()}, fx / "ref" / "training.safetensors")
