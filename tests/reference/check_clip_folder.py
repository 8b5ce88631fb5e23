"""Load a CLIP folder written by moslora (`write_clip_folder`) with transformers and compare its
embeddings with the ones moslora computed.

    python check_clip_folder.py FOLDER EXPECTED.safetensors
"""

import sys

import torch
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor

folder, expected = sys.argv[1], sys.argv[2]
ref = load_file(expected)
model = CLIPModel.from_pretrained(folder).eval()
# The processor (tokenizer + image processor) must load from the folder too.
proc = CLIPProcessor.from_pretrained(folder)
ids = proc.tokenizer(["a photo of a dog"], return_tensors="pt")["input_ids"]
assert ids[0, 0].item() == 49406 and ids[0, -1].item() == 49407, ids
with torch.no_grad():
    img = model.get_image_features(pixel_values=ref["pixel_values"])
    img = getattr(img, "pooler_output", img)
    txt = model.get_text_features(input_ids=ref["input_ids"])
    txt = getattr(txt, "pooler_output", txt)
for name, ours, theirs in [("image_embeds", ref["image_embeds"], img),
                           ("text_embeds", ref["text_embeds"], txt)]:
    err = (ours - theirs).abs().max().item()
    print(f"{name}: max abs error {err:.3e}")
    assert err <= 1e-4, name
print("logit_scale", model.logit_scale.item())
