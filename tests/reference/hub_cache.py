"""huggingface_hub and diffusers against the stand-in hub of tests/hub.rs (HF_ENDPOINT).

usage: hub_cache.py download REPO_ID CACHE
           snapshot_download of the whole repository into CACHE (huggingface_hub's layout)
       hub_cache.py diffusers REPO_ID CACHE FOLDER
           with HF_HUB_OFFLINE=1: StableDiffusionXLPipeline.from_pretrained(REPO_ID,
           cache_dir=CACHE) and from_pretrained(FOLDER) must hold the same weights and render
           the same latents (2 steps, 64 px, seed 3), exactly
"""

import sys


def download(repo_id, cache):
    from huggingface_hub import snapshot_download

    print(snapshot_download(repo_id, cache_dir=cache))


def diffusers(repo_id, cache, folder):
    import torch
    from diffusers import StableDiffusionXLPipeline

    def render(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("a photo of sks dog", num_inference_steps=2, width=64, height=64,
                    generator=torch.Generator("cpu").manual_seed(3),
                    output_type="latent").images

    by_id = StableDiffusionXLPipeline.from_pretrained(repo_id, cache_dir=cache)
    print("loaded", repo_id, "from", by_id.config._name_or_path)
    by_folder = StableDiffusionXLPipeline.from_pretrained(folder)
    for name in ["unet", "vae", "text_encoder", "text_encoder_2"]:
        a = getattr(by_id, name).state_dict()
        b = getattr(by_folder, name).state_dict()
        assert a.keys() == b.keys(), name
        bad = [k for k in a if not torch.equal(a[k], b[k])]
        assert not bad, f"{name}: {bad[:3]} differ"
    x, y = render(by_id), render(by_folder)
    diff = (x - y).abs().max().item()
    print(f"latents {tuple(x.shape)}: max |by id - by folder| = {diff}")
    assert torch.equal(x, y), "the renders differ"


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"download": download, "diffusers": diffusers}[cmd](*args)
