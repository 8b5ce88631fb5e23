"""The full-size SDXL base 1.0 layout, read off diffusers and transformers: every tensor name
and shape of the UNet, the VAE and both text encoders, built from configs/sdxl-base-1.0/ on the
meta device (no memory for weights).

Writes ref/sdxl_base_tensor_shapes.json: {component: {name: shape}}. Text-encoder names are
spelled as in the real download (written by transformers 4): with the `text_model.` prefix,
`text_projection.weight` without it; non-persistent buffers (position_ids) are not tensors of
the files.
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs" / "sdxl-base-1.0"


def table(model: torch.nn.Module, prefix_text_model: bool) -> dict:
    out = {}
    for name, t in model.state_dict().items():
        if prefix_text_model and not name.startswith(("text_model.", "text_projection")):
            name = "text_model." + name
        out[name] = list(t.shape)
    return out


def make(fx: Path):
    def config(component):
        return json.loads((CONFIGS / component / "config.json").read_text())

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config("unet"))
        vae = AutoencoderKL.from_config(config("vae"))
        te = CLIPTextModel(CLIPTextConfig.from_json_file(CONFIGS / "text_encoder" / "config.json"))
        te2 = CLIPTextModelWithProjection(
            CLIPTextConfig.from_json_file(CONFIGS / "text_encoder_2" / "config.json"))
    shapes = {
        "unet": table(unet, False),
        "vae": table(vae, False),
        "text_encoder": table(te, True),
        "text_encoder_2": table(te2, True),
    }
    for k, v in shapes.items():
        n = sum(int(torch.tensor(s).prod()) if s else 1 for s in v.values())
        print(f"  {k}: {len(v)} tensors, {n:,} parameters", flush=True)
    (fx / "ref" / "sdxl_base_tensor_shapes.json").write_text(json.dumps(shapes, indent=1, sort_keys=True))
