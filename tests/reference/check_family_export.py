"""Check DoRA, LoHa and LoKr exports against the merged model moslora wrote, by the loaders'
own math, not moslora's.

    python tests/reference/check_family_export.py JOBS.json

JOBS.json lists, per family: `family`, `base` (the model folder), `merged` (the folder `moslora
merge` wrote), `kohya` (the LyCORIS-keyed export), `names` ({kohya layer key: diffusers module})
and, for DoRA, `diffusers` (the PEFT-keyed export).

- kohya files are merged as LyCORIS and ComfyUI's `lora.py` merge them: LoHa
  `(w1a w1b) * (w2a w2b) * alpha / dim`, LoKr `kron(w1, w2) * alpha / dim` with dim the rank of
  a low-rank factor (scale 1 when every factor is whole), DoRA `W = (W0 + up down * alpha /
  dim) * dora_scale / ||W0 + up down * alpha / dim||` by output row (dora_scale out x 1);
- the DoRA diffusers file is loaded by diffusers (`load_lora_adapter`, through peft's DoRA
  layers) into the base UNet and fused (`fuse_lora`).

Each merged weight must equal the one moslora merged within 1e-5 of the layer's largest weight
(one product and sum in f32 per element), and every layer moslora changed must be in the file.
Prints the worst error per family and check; exits non-zero on any failure.
"""

import json
import sys

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

TOL = 1e-5


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def kohya_delta(family, t, w0):
    """The merged weight of one layer from its kohya tensors, as LyCORIS / ComfyUI compute it."""
    alpha = t["alpha"].item() if "alpha" in t else None
    if family == "loha":
        dim = t["hada_w1_b"].shape[0]
        scale = alpha / dim if alpha is not None else 1.0
        d = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * scale
        return w0 + d
    if family == "lokr":
        dim = None
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        if "lokr_w1_b" in t:
            dim = t["lokr_w1_b"].shape[0]
        if "lokr_w2" in t:
            w2 = t["lokr_w2"]
        else:
            w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
            dim = t["lokr_w2_b"].shape[0]
        scale = alpha / dim if (alpha is not None and dim is not None) else 1.0
        return w0 + torch.kron(w1, w2) * scale
    if family == "dora":
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        scale = alpha / down.shape[0]
        calc = w0 + (up @ down) * scale
        ds = t["dora_scale"]
        assert ds.shape == (w0.shape[0], 1), f"dora_scale {tuple(ds.shape)}"
        norm = calc.norm(dim=1, keepdim=True) + torch.finfo(w0.dtype).eps
        return calc * (ds / norm)
    raise ValueError(family)


def main():
    jobs = json.load(open(sys.argv[1]))
    failed = []
    for job in jobs:
        fam = job["family"]
        base = UNet2DConditionModel.from_pretrained(job["base"], subfolder="unet").state_dict()
        merged = UNet2DConditionModel.from_pretrained(job["merged"], subfolder="unet").state_dict()
        changed = {k[: -len(".weight")] for k in base
                   if k.endswith(".weight") and not torch.equal(base[k], merged[k])}
        sd = load_file(job["kohya"])
        layers = {}
        for k, v in sd.items():
            for layer in job["names"]:
                if k.startswith(layer + "."):
                    layers.setdefault(layer, {})[k[len(layer) + 1:]] = v
        covered = {job["names"][k] for k in layers}
        missing = changed - covered
        if len(changed) != len(layers):
            # Every adapted layer must have moved, or matching the merge would prove little.
            failed.append(f"{fam}: moslora merge changed {len(changed)} layers, the file has "
                          f"{len(layers)}")
        if missing:
            failed.append(f"{fam}: kohya file lacks {sorted(missing)[:3]}")
        worst = 0.0
        for layer, t in layers.items():
            module = job["names"][layer]
            w0 = base[module + ".weight"]
            e = rel(kohya_delta(fam, t, w0), merged[module + ".weight"])
            worst = max(worst, e)
            if e > TOL:
                failed.append(f"{fam}: kohya {layer}: {e:.2e}")
        print(f"{fam}: kohya export ({len(layers)} layers) vs moslora merge: {worst:.1e} "
              f"(tolerance {TOL:.0e})")
        if job.get("diffusers"):
            unet = UNet2DConditionModel.from_pretrained(job["base"], subfolder="unet")
            unet.load_lora_adapter(job["diffusers"], prefix="unet", adapter_name="x")
            n_dora = sum(1 for _, m in unet.named_modules()
                         if getattr(m, "use_dora", {}).get("x", False))
            if n_dora != len(layers):
                failed.append(f"{fam}: diffusers made {n_dora} DoRA layers, not {len(layers)}")
            unet.fuse_lora(lora_scale=1.0)
            fused = unet.state_dict()
            worst = 0.0
            for module in covered:
                key = module + ".base_layer.weight"
                key = key if key in fused else module + ".weight"
                e = rel(fused[key], merged[module + ".weight"])
                worst = max(worst, e)
                if e > TOL:
                    failed.append(f"{fam}: diffusers {module}: {e:.2e}")
            print(f"{fam}: diffusers export ({n_dora} DoRA layers) fused by peft vs moslora "
                  f"merge: {worst:.1e} (tolerance {TOL:.0e})")
    if failed:
        print("\n".join(failed[:20]))
        sys.exit(1)


if __name__ == "__main__":
    main()
