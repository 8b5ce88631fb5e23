"""Aspect-ratio buckets as kohya's sd-scripts make them, written from its published algorithm
(`library/model_util.py make_bucket_resolutions`, `library/train_util.py BucketManager`), with
SDXL's list from its paper (appendix "multi-aspect training"), for tests/buckets.rs.

Run by make_fixtures.py (`make(fixtures)`: fixtures/bucket-photos/, fixtures/ref/buckets.*),
or by hand: python tests/reference/ref_buckets.py MODEL_DIR OUT_DIR

* The bucket lists: kohya's rule at 1024 (min 256, max 2048, step 64) and at the test size 128
  (min 64, max 256, step 32: sides that the tiny model's factor of 32 divides), and SDXL's 40.
* For photo sizes from phones and cameras: the bucket chosen (smallest |aspect difference|,
  the first in (width, height) order on a tie), the size the photo is resized to (scaled to
  cover the bucket, sides `int(x * scale + 0.5)`), the centre crop (`trim // 2`).
* For test photos written to OUT_DIR/photos (PNG, so both sides decode the same pixels): the
  pixels in their kohya bucket at 128, resized with PIL's LANCZOS, flipped or not (before the
  crop), cropped at the centre or at offsets drawn with torch.randint after
  torch.manual_seed(seed); SDXL's time_ids [orig_h, orig_w, crop_top, crop_left, bucket_h,
  bucket_w]; and the VAE posterior (mean, std) of diffusers' AutoencoderKL from MODEL_DIR.

Writes buckets.json and buckets.safetensors (and the photos).
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageOps
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent.parent / "assets" / "subject"

# Phone and camera photo sizes (width, height), and a few awkward ones.
SIZES = [
    (3024, 4032), (4032, 3024), (2160, 3840), (3840, 2160), (1080, 1920), (1920, 1080),
    (3000, 2000), (2000, 3000), (4000, 4000), (1200, 1600), (1600, 1200), (6000, 4000),
    (800, 3000), (3000, 800), (1023, 1025), (640, 480), (333, 500), (4096, 1024),
]

# Test photos for pixels (width, height), and the source asset each is made from.
PHOTOS = [
    ("portrait_3x4.png", (300, 400), "01_sky.jpg"),
    ("landscape_4x3.png", (400, 300), "02_sand.jpg"),
    ("phone_9x16.png", (360, 640), "05_grass.jpg"),
    ("wide_16x9.png", (640, 360), "01_sky.jpg"),
    ("square.png", (256, 256), "02_sand.jpg"),
    ("odd_333x500.png", (333, 500), "05_grass.jpg"),
    ("small_90x120.png", (90, 120), "01_sky.jpg"),
    ("panorama_500x140.png", (500, 140), "02_sand.jpg"),
]

TEST_RULE = {"resolution": 128, "min": 64, "max": 256, "step": 32}
KOHYA_1024 = {"resolution": 1024, "min": 256, "max": 2048, "step": 64}

# SDXL's paper lists (height, width).
SDXL_HW = [
    (512, 2048), (512, 1984), (512, 1920), (512, 1856), (576, 1792), (576, 1728), (576, 1664),
    (640, 1600), (640, 1536), (704, 1472), (704, 1408), (704, 1344), (768, 1344), (768, 1280),
    (832, 1216), (832, 1152), (896, 1152), (896, 1088), (960, 1088), (960, 1024),
    (1024, 1024), (1024, 960), (1088, 960), (1088, 896), (1152, 896), (1152, 832), (1216, 832),
    (1280, 768), (1344, 768), (1408, 704), (1472, 704), (1536, 640), (1600, 640), (1664, 576),
    (1728, 576), (1792, 576), (1856, 512), (1920, 512), (1984, 512), (2048, 512),
]


def kohya_buckets(resolution, min_size, max_size, step):
    """make_bucket_resolutions: (width, height) pairs, sorted."""
    max_area = resolution * resolution
    out = set()
    side = int((max_area ** 0.5) // step) * step
    out.add((side, side))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // step) * step)
        if height >= min_size:
            out.add((width, height))
            out.add((height, width))
        width += step
    return sorted(out)


def sdxl_buckets():
    return sorted((w, h) for h, w in SDXL_HW)


def select(buckets, width, height):
    """BucketManager.select_bucket: the bucket and the resized (width, height)."""
    aspect = width / height
    errors = [abs(w / h - aspect) for w, h in buckets]
    best = buckets[errors.index(min(errors))]
    if aspect > best[0] / best[1]:
        scale = best[1] / height
    else:
        scale = best[0] / width
    resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    assert resized[0] >= best[0] and resized[1] >= best[1], (width, height, best, resized)
    return best, resized


def placements(buckets, sizes):
    out = []
    for w, h in sizes:
        (bw, bh), (rw, rh) = select(buckets, w, h)
        out.append({"size": [w, h], "bucket": [bw, bh], "resized": [rw, rh],
                    "crop": [(rh - bh) // 2, (rw - bw) // 2]})
    return out


def to_tensor(img):
    """ToTensor then Normalize([0.5], [0.5]): (3, H, W) float32 in [-1, 1]."""
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    t = t.reshape(img.height, img.width, 3).permute(2, 0, 1).float() / 255
    return (t - 0.5) / 0.5


def make(fx: Path):
    build(fx / "tiny-sdxl", fx / "bucket-photos", fx / "ref")


def build(model, photos, out):
    out.mkdir(parents=True, exist_ok=True)
    photos.mkdir(parents=True, exist_ok=True)
    rule = TEST_RULE
    test_buckets = kohya_buckets(rule["resolution"], rule["min"], rule["max"], rule["step"])
    vae = AutoencoderKL.from_pretrained(model / "vae").eval()
    tensors = {}
    cases = []
    seed = 1000
    for name, (w, h), source in PHOTOS:
        Image.open(ASSETS / source).convert("RGB").resize((w, h), Image.LANCZOS).save(
            photos / name)
        img = Image.open(photos / name).convert("RGB")
        (bw, bh), (rw, rh) = select(test_buckets, img.width, img.height)
        resized = img.resize((rw, rh), Image.LANCZOS)
        for center in (True, False):
            for flip in (False, True):
                seed += 1
                pic = ImageOps.mirror(resized) if flip else resized
                if center:
                    top, left = (rh - bh) // 2, (rw - bw) // 2
                else:
                    torch.manual_seed(seed)
                    top = int(torch.randint(rh - bh + 1, (1,)))
                    left = int(torch.randint(rw - bw + 1, (1,)))
                crop = pic.crop((left, top, left + bw, top + bh))
                x = to_tensor(crop)
                tag = f"{name}.{'center' if center else 'random'}.{int(flip)}"
                with torch.no_grad():
                    dist = vae.encode(x.unsqueeze(0)).latent_dist
                tensors[f"{tag}.pixels"] = x
                tensors[f"{tag}.time_ids"] = torch.tensor(
                    [img.height, img.width, top, left, bh, bw], dtype=torch.float32)
                tensors[f"{tag}.mean"] = dist.mean[0]
                tensors[f"{tag}.std"] = dist.std[0]
                cases.append({"tag": tag, "file": name, "center": center, "flip": flip,
                              "seed": seed, "bucket": [bw, bh], "resized": [rw, rh]})
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "buckets.safetensors")
    kohya_1024 = kohya_buckets(KOHYA_1024["resolution"], KOHYA_1024["min"],
                               KOHYA_1024["max"], KOHYA_1024["step"])
    (out / "buckets.json").write_text(json.dumps({
        "test_rule": TEST_RULE,
        "test_buckets": test_buckets,
        "kohya_1024_rule": KOHYA_1024,
        "kohya_1024": kohya_1024,
        "sdxl": sdxl_buckets(),
        "sizes_sdxl": placements(sdxl_buckets(), SIZES),
        "sizes_kohya_1024": placements(kohya_1024, SIZES),
        "cases": cases,
    }, indent=1))
    print(f"{len(test_buckets)} test buckets, {len(kohya_1024)} kohya buckets at 1024, "
          f"{len(cases)} crops of {len(PHOTOS)} photos")


if __name__ == "__main__":
    torch.set_num_threads(2)
    build(Path(sys.argv[1]), Path(sys.argv[2]) / "photos", Path(sys.argv[2]))
