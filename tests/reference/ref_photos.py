"""Photo preprocessing references: diffusers' DreamBooth SDXL script (`DreamBoothDataset` of
`examples/dreambooth/train_dreambooth_lora_sdxl.py`) on photos of every kind a user may have.

The script's steps, with PIL and torchvision as it uses them: `exif_transpose`, `convert("RGB")`
when the mode is another, `original_size = (height, width)`, `transforms.Resize(resolution,
BILINEAR)`, an optional horizontal flip, then the crop (centre: offsets
`int(round((size - resolution) / 2))`, cropped by `CenterCrop`; random:
`RandomCrop.get_params` after `torch.manual_seed(seed)`), `ToTensor`, `Normalize([0.5], [0.5])`.
`crop_top_left = (y1, x1)`, and `add_time_ids = original_size + crop_top_left + (res, res)`.

Writes photos/ (the test photos, made from assets/subject) and ref/photos.safetensors:
  <file>.<center|random>.<flip 0|1>.pixels    (3, R, R) in [-1, 1]
  <file>.<center|random>.<flip 0|1>.time_ids  (6,)
  <file>.decoded                              (H, W, 3) uint8 after exif_transpose + RGB
  <file>.samples16                            the 16-bit samples of the 16-bit PNGs
and ref/photos.json: the list of files, the resolution and the seeds of the random crops.
"""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.ImageOps import exif_transpose
from safetensors.torch import save_file
from torchvision import transforms
from torchvision.transforms.functional import crop

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent.parent / "assets" / "subject"
RESOLUTION = 64


def png16(path: Path, a: np.ndarray):
    """A 16-bit PNG (grey (H, W) or RGB (H, W, 3)) written by hand: PIL cannot write RGB 16."""
    h, w = a.shape[:2]
    color = 0 if a.ndim == 2 else 2
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def with_orientation(img: Image.Image, o: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = o
    return exif


def make_photos(d: Path) -> list:
    d.mkdir(parents=True, exist_ok=True)
    sky = Image.open(ASSETS / "01_sky.jpg").convert("RGB")
    sand = Image.open(ASSETS / "02_sand.jpg").convert("RGB")
    room = Image.open(ASSETS / "03_room.png")
    files = []

    def save(name, img, **kw):
        img.save(d / name, **kw)
        files.append(name)

    # Centre offsets of x.5: Python's round() goes to even (10.5 -> 10, 68.5 -> 68).
    save("odd_130x97.png", sky.resize((130, 97), Image.LANCZOS))
    save("tall_64x201.png", sand.resize((64, 201), Image.LANCZOS))
    save("wide_85x64.png", sky.resize((85, 64), Image.LANCZOS))  # no resize, offset 10.5
    save("small_50x40.png", sand.resize((50, 40), Image.LANCZOS))  # upscaled
    save("square.png", sky.resize((64, 64), Image.LANCZOS))  # no resize, no crop
    # Every EXIF orientation on a JPEG, and one on a PNG (eXIf chunk).
    base = sky.resize((96, 72), Image.LANCZOS)
    for o in range(1, 9):
        save(f"exif_{o}.jpg", base, quality=95, exif=with_orientation(base, o))
    save("exif_6.png", base, exif=with_orientation(base, 6))
    # Modes other than RGB.
    save("grey.png", sand.convert("L").resize((80, 100)))
    save("grey_alpha.png", sand.convert("LA").resize((100, 80)))
    rgba = room.convert("RGBA").resize((90, 70))
    alpha = Image.linear_gradient("L").resize(rgba.size)
    rgba.putalpha(alpha)
    save("rgba.png", rgba)
    save("palette.png", sky.resize((70, 90)).quantize(64))
    save("cmyk.jpg", sky.resize((100, 75)).convert("CMYK"), quality=95)
    save("grey.jpg", sand.convert("L").resize((72, 96)), quality=95)
    save("lossless.webp", sand.resize((80, 96)), lossless=True)
    # 16-bit: values spread over the whole 0..65535 range.
    g = np.asarray(sand.convert("L").resize((96, 80)), dtype=np.uint32)
    g16 = (g * 257 + (np.arange(g.size).reshape(g.shape) % 251)).astype(np.uint16)
    png16(d / "grey16.png", g16)
    files.append("grey16.png")
    c = np.asarray(sky.resize((80, 96)), dtype=np.uint32)
    c16 = (c * 257 + (np.arange(c.size).reshape(c.shape) % 199)).astype(np.uint16)
    png16(d / "rgb16.png", c16)
    files.append("rgb16.png")
    return files, {"grey16.png": g16, "rgb16.png": c16}


def diffusers_preprocess(path: Path, center: bool, flip: bool, seed: int):
    """DreamBoothDataset's per-image steps (train_dreambooth_lora_sdxl.py), one variant."""
    size = RESOLUTION
    train_resize = transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR)
    train_crop = transforms.CenterCrop(size) if center else transforms.RandomCrop(size)
    train_flip = transforms.RandomHorizontalFlip(p=1.0)
    train_transforms = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    image = Image.open(path)
    image = exif_transpose(image)
    if not image.mode == "RGB":
        image = image.convert("RGB")
    decoded = torch.from_numpy(np.asarray(image).copy())
    original_size = (image.height, image.width)
    image = train_resize(image)
    if flip:
        image = train_flip(image)
    if center:
        y1 = max(0, int(round((image.height - size) / 2.0)))
        x1 = max(0, int(round((image.width - size) / 2.0)))
        image = train_crop(image)
    else:
        torch.manual_seed(seed)
        y1, x1, h, w = train_crop.get_params(image, (size, size))
        image = crop(image, y1, x1, h, w)
    time_ids = torch.tensor(list(original_size + (y1, x1) + (size, size)), dtype=torch.float32)
    return decoded, train_transforms(image), time_ids


def make(fx: Path):
    d = fx / "photos"
    files, sixteen = make_photos(d)
    out = {}
    for name, a in sixteen.items():
        # The 16-bit samples themselves: PIL opens 16-bit grey as mode I;16, whose
        # convert("RGB") clips every value above 255 to white, so the script's pixels are no
        # reference for it; the samples are.
        out[f"{name}.samples16"] = torch.from_numpy(a.astype(np.int32))
    seeds = {}
    for i, name in enumerate(files):
        seeds[name] = 1000 + i
        for center in (True, False):
            for flip in (False, True):
                decoded, pixels, ids = diffusers_preprocess(d / name, center, flip, seeds[name])
                tag = f"{name}.{'center' if center else 'random'}.{int(flip)}"
                out[f"{tag}.pixels"] = pixels
                out[f"{tag}.time_ids"] = ids
                out[f"{name}.decoded"] = decoded
    save_file({k: v.contiguous() for k, v in out.items()}, fx / "ref" / "photos.safetensors")
    (fx / "ref" / "photos.json").write_text(json.dumps(
        {"resolution": RESOLUTION, "files": files, "seeds": seeds}, indent=1))
