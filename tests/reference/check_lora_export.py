"""Render with diffusers and a LoRA file, the way a diffusers user loads one.

    python tests/reference/check_lora_export.py MODEL_DIR LORA_FILE PROMPT SEED STEPS W H OUT.png \
        [LORA_FILE OUT.png ...]

Loads StableDiffusionXLPipeline from MODEL_DIR (fp32, CPU), then for each LoRA file:
`load_lora_weights`, a seeded render (guidance 5.0, diffusers' default Euler scheduler),
the PNG saved as diffusers saves it, and `unload_lora_weights`. Extra LORA_FILE OUT.png pairs
reuse the loaded pipeline (one Python start for several files).

A loader that skips keys it does not understand only warns, and the picture is then silently
wrong; so every LoRA layer in the file must end up as a LoRA layer in its component (the UNet,
text_encoder or text_encoder_2), or the script exits non-zero.
"""

import sys

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors import safe_open


# Key prefixes of each component, in kohya's and in diffusers' (PEFT) format.
PREFIXES = {
    "unet": ("lora_unet_", "unet."),
    "text_encoder": ("lora_te1_", "text_encoder."),
    "text_encoder_2": ("lora_te2_", "text_encoder_2."),
}


def layers_in_file(path):
    """LoRA layers per component."""
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
    down = [k for k in keys if k.endswith(".lora_down.weight") or k.endswith(".lora_A.weight")]
    return {c: sum(k.startswith(p) for k in down for p in ps) for c, ps in PREFIXES.items()}


def lora_layers_in(model):
    n = 0
    for _, module in model.named_modules():
        a = getattr(module, "lora_A", None)
        if isinstance(a, torch.nn.ModuleDict) and len(a) > 0:
            n += 1
    return n


def main(argv):
    model, lora, prompt, seed, steps, w, h, out = argv[:8]
    extra = argv[8:]
    if len(extra) % 2:
        sys.exit("extra arguments must come in LORA_FILE OUT.png pairs")
    jobs = [(lora, out)] + list(zip(extra[::2], extra[1::2]))
    torch.set_num_threads(2)
    pipe = StableDiffusionXLPipeline.from_pretrained(model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    ok = True
    for lora, out in jobs:
        pipe.load_lora_weights(lora, adapter_name="exported")
        want = layers_in_file(lora)
        got = {c: lora_layers_in(getattr(pipe, c)) for c in PREFIXES}
        for c in PREFIXES:
            print(f"{lora}: {got[c]} LoRA layers in {c}, {want[c]} in the file", flush=True)
        ok &= want == got and want["unet"] > 0
        image = pipe(
            prompt,
            num_inference_steps=int(steps),
            guidance_scale=5.0,
            width=int(w),
            height=int(h),
            generator=torch.Generator("cpu").manual_seed(int(seed)),
        ).images[0]
        image.save(out)
        pipe.unload_lora_weights()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
