"""Name and shape tables of the full-size metric encoders, read off transformers on the meta
device (nothing allocated), for the "loads name by name" test (tests/metrics_parity.rs).

    python tests/reference/make_encoder_tables.py configs/encoders

Writes <name>/config.json and <name>/tensor_shapes.json for openai's clip-vit-base-patch32 and
clip-vit-large-patch14 (CLIPModel) and facebook's dino-vits16 and dino-vitb16 (ViTModel without
pooler), with the published hyperparameters. Run once; the output is committed.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

CLIPS = {
    "clip-vit-base-patch32": dict(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                         num_hidden_layers=12, projection_dim=512),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                           num_hidden_layers=12, patch_size=32, image_size=224,
                           projection_dim=512),
        projection_dim=512),
    "clip-vit-large-patch14": dict(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                         num_hidden_layers=12, projection_dim=768),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                           num_hidden_layers=24, patch_size=14, image_size=224,
                           projection_dim=768),
        projection_dim=768),
}
DINOS = {
    "dino-vits16": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                        intermediate_size=1536, patch_size=16, image_size=224,
                        layer_norm_eps=1e-12, qkv_bias=True),
    "dino-vitb16": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, patch_size=16, image_size=224,
                        layer_norm_eps=1e-12, qkv_bias=True),
}


def write(out: Path, cfg, model):
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    # transformers 5 renames some models' modules in memory (ViT: `layers.N.attention.q_proj`)
    # and writes the checkpoint names back on save: the table holds the names on disk.
    from transformers.modeling_utils import revert_weight_conversion
    state = revert_weight_conversion(model, model.state_dict())
    shapes = {k: list(v.shape) for k, v in state.items()}
    total = sum(int(torch.Size(s).numel()) for s in shapes.values())
    (out / "tensor_shapes.json").write_text(json.dumps(
        {"tensors": shapes, "count": len(shapes), "parameters": total}, indent=1) + "\n")
    print(f"{out.name}: {len(shapes)} tensors, {total:,} parameters")


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "configs/encoders")
    for name, kw in CLIPS.items():
        cfg = CLIPConfig(**kw)
        with torch.device("meta"):
            model = CLIPModel(cfg)
        write(root / name, cfg, model)
    for name, kw in DINOS.items():
        cfg = ViTConfig(**kw)
        with torch.device("meta"):
            model = ViTModel(cfg, add_pooling_layer=False)
        write(root / name, cfg, model)


if __name__ == "__main__":
    main()
