"""LoRA references from peft on the tiny SDXL text encoders: both encoders with LoRA on every
self-attention projection (q_proj, k_proj, v_proj, out_proj, as diffusers' DreamBooth script
adapts them), run on two prompts.

Writes ref/te_lora.safetensors:
  ids, ids_2                              the prompts' token ids for each encoder, (2, 77)
  text_encoder.<module>.lora_A / .lora_B  the adapters (module paths with `text_model.` as in a
  text_encoder_2.<module>.lora_A / ...    real SDXL download, whatever transformers calls them)
  penultimate, penultimate_2              hidden_states[-2] of each encoder
  text_embeds_2                           text_encoder_2's projected pooled output
"""

from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

PROMPTS = ["a photo of sks toy", "a red sks toy in the snow, very detailed"]
RANK, ALPHA = 4, 8  # alpha != rank, so the scale alpha / r is checked too


def with_lora(model, g):
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                                 target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    tensors = {}
    for name, p in model.named_parameters():
        if "lora_" not in name:
            continue
        if "lora_B" in name:
            # B starts at zero; random values make the adapter change the output.
            p.data = torch.randn(p.shape, generator=g) * 0.1
        module, part = name.split(".lora_")
        if not module.startswith("text_model."):
            # transformers 5 flattens CLIPTextModel; the real download's names keep the prefix.
            module = "text_model." + module
        tensors[f"{module}.lora_{part[0]}"] = p.detach().clone()
    return tensors


def make(fx: Path):
    saved = fx / "tiny-sdxl-saved"
    te = CLIPTextModel.from_pretrained(saved / "text_encoder")
    te2 = CLIPTextModelWithProjection.from_pretrained(saved / "text_encoder_2")
    tok = CLIPTokenizer.from_pretrained(saved / "tokenizer")
    tok2 = CLIPTokenizer.from_pretrained(saved / "tokenizer_2")
    g = torch.Generator().manual_seed(2)
    out = {}
    for prefix, model in [("text_encoder", te), ("text_encoder_2", te2)]:
        for k, v in with_lora(model, g).items():
            out[f"{prefix}.{k}"] = v
    ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True,
              return_tensors="pt").input_ids
    ids2 = tok2(PROMPTS, padding="max_length", max_length=77, truncation=True,
                return_tensors="pt").input_ids
    with torch.no_grad():
        o1 = te(ids, output_hidden_states=True)
        o2 = te2(ids2, output_hidden_states=True)
    out.update(ids=ids, ids_2=ids2, penultimate=o1.hidden_states[-2],
               penultimate_2=o2.hidden_states[-2], text_embeds_2=o2.text_embeds)
    (fx / "ref").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, fx / "ref" / "te_lora.safetensors")
