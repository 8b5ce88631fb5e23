"""Reference outputs of the tiny SDXL VAE (diffusers `AutoencoderKL`), for tests/vae_parity.rs.

Two cases, each an encode (posterior mean, log-variance, std, a draw with saved noise) and a
decode:
  a  batch 2, 64 x 64 images, 8 x 8 latents;
  b  batch 1, 40 x 56 images (not square, so a transposed height and width shows), 5 x 7 latents.
Case a also goes through the training script's and the pipeline's scaling:
  latents = posterior.sample() * scaling_factor;  image = decode(latents / scaling_factor).
"""

from pathlib import Path

import torch


def make(fx: Path):
    from diffusers import AutoencoderKL
    from diffusers.utils.torch_utils import randn_tensor
    from safetensors.torch import save_file

    vae = AutoencoderKL.from_pretrained(
        fx / "tiny-sdxl-saved" / "vae", torch_dtype=torch.float32
    ).eval()
    sf = vae.config.scaling_factor
    latent_ch = vae.config.latent_channels
    down = 2 ** (len(vae.config.block_out_channels) - 1)

    g = torch.Generator("cpu").manual_seed(4321)
    out = {}

    def case(name, batch, height, width):
        x = torch.rand((batch, 3, height, width), generator=g) * 2 - 1
        z = torch.randn((batch, latent_ch, height // down, width // down), generator=g)
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            # The draw diffusers makes from a seeded generator, and the noise it used.
            noise = randn_tensor(post.mean.shape, generator=torch.Generator("cpu").manual_seed(99),
                                 dtype=post.mean.dtype)
            drawn = post.sample(generator=torch.Generator("cpu").manual_seed(99))
            assert torch.equal(drawn, post.mean + post.std * noise)
            decoded = vae.decode(z).sample
        out.update({
            f"{name}.x": x,
            f"{name}.mean": post.mean,
            f"{name}.logvar": post.logvar,
            f"{name}.std": post.std,
            f"{name}.noise": noise,
            f"{name}.sample": drawn,
            f"{name}.z": z,
            f"{name}.decoded": decoded,
        })
        return drawn

    drawn = case("a", 2, 64, 64)
    case("b", 1, 40, 56)

    # As diffusers' DreamBooth SDXL script encodes, and as the SDXL pipeline decodes. The draw
    # is made contiguous first: diffusers' posterior mean is a channel slice of the moments, so
    # its draw has channels-last strides, and decoding that layout picks other convolution
    # kernels (about 1e-5 apart). The reference is the plain layout.
    latents = drawn.contiguous() * sf
    with torch.no_grad():
        image = vae.decode(latents / sf, return_dict=False)[0]
    out["a.latents"] = latents
    out["a.latents_decoded"] = image

    (fx / "ref").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, fx / "ref" / "vae.safetensors")
