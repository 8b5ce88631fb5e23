"""Reference outputs of the two SDXL text encoders, for tests/clip_parity.rs.

Loads `tiny-sdxl-saved/text_encoder` (CLIPTextModel, quick_gelu) and `text_encoder_2`
(CLIPTextModelWithProjection, gelu) with transformers in float32, tokenizes a few prompts with
the tiny pipeline's tokenizers, and writes `ref/clip.safetensors`:

  te{1,2}.input_ids            (B, 77) int64, as SDXL's pipeline tokenizes (max_length, truncation)
  te{1,2}.hidden_states        (layers + 1, B, 77, D): embeddings, then every layer's output
  te{1,2}.penultimate          hidden_states[-2], what SDXL feeds the UNet
  te{1,2}.last_hidden_state    after final_layer_norm
  te{1,2}.pooled               pooler_output (legacy eos_token_id == 2: argmax of the ids)
  te2.text_embeds              text_projection(pooled)
  te{1,2}.pooled_eos320        pooler_output with eos_token_id set to 320 (the token "a</w>"):
                               the non-legacy branch, first position equal to eos_token_id
"""

from pathlib import Path

import torch

PROMPTS = [
    "a photo of sks dog",
    "",
    "A Photo of a GREY sloth plushie, in the snow!!",
    "a <|endoftext|> in the middle",
    " ".join(["dog"] * 90),
]


def run(model, ids, with_projection):
    with torch.no_grad():
        if with_projection:
            out = model(input_ids=ids, output_hidden_states=True)
            text = model.text_model(input_ids=ids, output_hidden_states=True)
            assert torch.equal(text.last_hidden_state, out.last_hidden_state)
            return text, out.text_embeds
        return model(input_ids=ids, output_hidden_states=True), None


def make(fx: Path):
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    saved = fx / "tiny-sdxl-saved"
    tensors = {}
    specs = [
        ("te1", "text_encoder", "tokenizer", CLIPTextModel, False),
        ("te2", "text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection, True),
    ]
    for key, enc_dir, tok_dir, cls, with_projection in specs:
        tok = CLIPTokenizer.from_pretrained(fx / "tiny-sdxl" / tok_dir)
        ids = tok(
            PROMPTS,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        model = cls.from_pretrained(saved / enc_dir, dtype=torch.float32).eval()
        out, text_embeds = run(model, ids, with_projection)
        layers = model.config.num_hidden_layers
        assert len(out.hidden_states) == layers + 1
        # hidden_states[-1] is the last layer's output before final_layer_norm.
        assert not torch.allclose(out.hidden_states[-1], out.last_hidden_state)

        # The SDPA causal flag and an explicit additive causal mask must agree: the Rust side
        # uses the flag.
        eager = cls.from_pretrained(
            saved / enc_dir, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        eager_out, _ = run(eager, ids, with_projection)
        diff = (eager_out.last_hidden_state - out.last_hidden_state).abs().max().item()
        assert diff < 1e-5, f"{key}: eager vs sdpa differ by {diff}"

        tensors[f"{key}.input_ids"] = ids.to(torch.int64)
        tensors[f"{key}.hidden_states"] = torch.stack(out.hidden_states)
        tensors[f"{key}.penultimate"] = out.hidden_states[-2]
        tensors[f"{key}.last_hidden_state"] = out.last_hidden_state
        tensors[f"{key}.pooled"] = out.pooler_output
        if text_embeds is not None:
            tensors[f"{key}.text_embeds"] = text_embeds

        # The non-legacy pooling branch: first position whose id equals eos_token_id.
        text_model = model.text_model if with_projection else model
        text_model.eos_token_id = 320
        assert (ids == 320).any(dim=-1).sum() >= 2
        with torch.no_grad():
            tensors[f"{key}.pooled_eos320"] = text_model(input_ids=ids).pooler_output

    (fx / "ref").mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, fx / "ref" / "clip.safetensors")
