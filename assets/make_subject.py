"""Draw the bundled demo subject: a toy robot ("a [V] toy") on five backgrounds.

    python assets/make_subject.py assets/subject [assets/subject-masks]

A distinctive object (orange body, teal visor, yellow antenna ball, three purple buttons)
on varied scenes, photographed from slightly different positions and sizes, with varied
aspect ratios and formats (JPEG, PNG with alpha, WebP) so the photo loader's conversions are
exercised. Deterministic: the same files every run.

The second folder gets each photo's mask, `<photo stem>.mask.png` (white where the robot is,
smoothed as the photo is), for masked training (`train.masked_loss`, `moslora demo --masked`).
They are kept apart from the photos so that the plain subject folder stays five photos.
"""

import math
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SCENES = [
    ("sky", (135, 190, 235), (120, 170, 90), "jpg", (320, 256)),
    ("sand", (250, 215, 160), (230, 190, 130), "jpg", (256, 320)),
    ("room", (200, 190, 220), (140, 100, 70), "png", (288, 288)),
    ("night", (25, 30, 70), (50, 50, 60), "webp", (320, 240)),
    ("grass", (170, 220, 240), (60, 150, 60), "jpg", (256, 256)),
]


def robot(draw, cx, cy, s, tilt, ink=None):
    """The robot; with `ink`, every part in that one colour (its mask)."""
    def rot(x, y):
        a = math.radians(tilt)
        return (cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a))

    def poly(points, fill):
        draw.polygon([rot(x * s, y * s) for x, y in points], fill=ink or fill,
                     outline=ink or (40, 25, 10))

    poly([(-0.5, -0.1), (0.5, -0.1), (0.5, 0.8), (-0.5, 0.8)], (240, 120, 30))  # body
    poly([(-0.35, -0.75), (0.35, -0.75), (0.35, -0.15), (-0.35, -0.15)], (240, 120, 30))  # head
    poly([(-0.27, -0.6), (0.27, -0.6), (0.27, -0.35), (-0.27, -0.35)], (20, 170, 160))  # visor
    poly([(-0.03, -1.0), (0.03, -1.0), (0.03, -0.75), (-0.03, -0.75)], (90, 90, 90))  # antenna
    bx, by = rot(0, -1.05 * s)
    r = 0.09 * s
    draw.ellipse([bx - r, by - r, bx + r, by + r], fill=ink or (250, 220, 40),
                 outline=ink or (40, 25, 10))
    for i in range(3):
        px, py = rot(0, (0.1 + 0.2 * i) * s)
        r = 0.07 * s
        draw.ellipse([px - r, py - r, px + r, py + r], fill=ink or (140, 60, 190))


def scene(name, top, bottom, size, rng):
    w, h = size
    img = Image.new("RGB", size, top)
    d = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.55, 0.7))
    d.rectangle([0, horizon, w, h], fill=bottom)
    for _ in range(40):  # texture so crops differ
        x, y = rng.randrange(w), rng.randrange(h)
        c = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in (top if y < horizon else bottom))
        d.ellipse([x, y, x + rng.randint(3, 12), y + rng.randint(2, 6)], fill=c)
    s = min(w, h) * rng.uniform(0.28, 0.36)
    cx = w * rng.uniform(0.4, 0.6)
    tilt = rng.uniform(-12, 12)
    robot(d, cx, horizon - 0.6 * s, s, tilt)
    mask = Image.new("L", size, 0)
    robot(ImageDraw.Draw(mask), cx, horizon - 0.6 * s, s, tilt, ink=255)
    return img.filter(ImageFilter.SMOOTH), mask.filter(ImageFilter.SMOOTH)


def main(out: Path, masks: Path):
    out.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for i, (name, top, bottom, ext, size) in enumerate(SCENES):
        img, mask = scene(name, top, bottom, size, rng)
        mask.save(masks / f"{i + 1:02d}_{name}.mask.png", optimize=True)
        path = out / f"{i + 1:02d}_{name}.{ext}"
        if ext == "png":
            img = img.convert("RGBA")
            img.putalpha(255)
            img.save(path, optimize=True)
        elif ext == "webp":
            img.save(path, quality=85)
        else:
            img.save(path, quality=88)


if __name__ == "__main__":
    here = Path(__file__).parent
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else here / "subject",
         Path(sys.argv[2]) if len(sys.argv) > 2 else here / "subject-masks")
