"""Reference outputs of the tiny SDXL UNet (diffusers `UNet2DConditionModel`), for tests/unet_parity.rs.

Two cases:
  a  batch 2, a 16 x 16 latent, one timestep per sample, different micro-conditioning per sample;
  b  batch 2, a 10 x 14 latent (not a multiple of 2^(levels-1) = 4, so diffusers passes explicit
     upsample sizes) and a single timestep broadcast over the batch.
"""

from pathlib import Path

import torch


def make(fx: Path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(
        fx / "tiny-sdxl-saved" / "unet", torch_dtype=torch.float32
    ).eval()
    cfg = unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim

    g = torch.Generator("cpu").manual_seed(1234)
    out = {}

    def case(name, shape, timesteps, time_ids):
        batch = shape[0]
        sample = torch.randn(shape, generator=g)
        hidden = torch.randn((batch, 77, cfg.cross_attention_dim), generator=g)
        text_embeds = torch.randn((batch, pooled), generator=g)
        time_ids = torch.tensor(time_ids, dtype=torch.float32)
        timesteps = torch.tensor(timesteps, dtype=torch.float32)
        with torch.no_grad():
            pred = unet(
                sample,
                timesteps,
                encoder_hidden_states=hidden,
                added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
            ).sample
        out.update({
            f"{name}.sample": sample,
            f"{name}.timesteps": timesteps,
            f"{name}.encoder_hidden_states": hidden,
            f"{name}.text_embeds": text_embeds,
            f"{name}.time_ids": time_ids,
            f"{name}.out": pred,
        })

    case("a", (2, 4, 16, 16), [999.0, 437.0],
         [[128, 128, 0, 0, 128, 128], [96, 160, 8, 4, 128, 128]])
    case("b", (2, 4, 10, 14), [261.0],
         [[80, 112, 0, 0, 80, 112], [80, 112, 0, 0, 80, 112]])

    (fx / "ref").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, fx / "ref" / "unet.safetensors")
