"""Phone-like photos of one scene for tests/photos.rs, and pillow-heif's reading of them.

    python make_phone_photos.py OUT_DIR

A phone stores the sensor's pixels as they came (sideways for a portrait shot) and says how to
turn them: a JPEG in its EXIF orientation, a HEIC in its `irot` / `imir` boxes (and in EXIF
too, which readers must then not apply again). This writes, from one upright 96 x 64 scene:

- upright.png      the scene itself
- phone.heic       the scene stored turned 90 degrees counter-clockwise, with EXIF
                   orientation 6 (pillow-heif writes that turn as `irot` as a phone does), 4:4:4
- phone.jpg        the same stored pixels and EXIF orientation 6 (quality 95, 4:4:4)
- phone.tiff       the same stored pixels, uncompressed, orientation tag 6
- ref_heic.png     phone.heic as pillow-heif decodes it (transforms applied): the reference
- phone10.heic     the scene upright at 10 bits (an iPhone's HDR photo), lossless 4:4:4
"""

import sys
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image


def scene() -> Image.Image:
    """A landscape picture whose every turn and mirror image differ: a red block top left,
    a blue bar along the bottom, a smooth gradient elsewhere (gentle on lossy codecs)."""
    h, w = 64, 96
    y, x = np.mgrid[0:h, 0:w]
    px = np.zeros((h, w, 3), np.uint8)
    px[..., 0] = (x * 255 // (w - 1)).astype(np.uint8)
    px[..., 1] = (y * 255 // (h - 1)).astype(np.uint8)
    px[..., 2] = 96
    px[4:24, 4:32] = (230, 20, 20)
    px[52:60, 8:88] = (20, 40, 230)
    return Image.fromarray(px, "RGB")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    up = scene()
    up.save(out / "upright.png")
    # Orientation 6: turn the stored picture 90 degrees clockwise to show it. So the stored
    # picture is the scene turned counter-clockwise.
    stored = up.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    heif = pillow_heif.from_pillow(stored)
    heif.save(out / "phone.heic", quality=-1, chroma=444, exif=exif.tobytes())
    stored.save(out / "phone.jpg", quality=95, subsampling=0, exif=exif.tobytes())
    stored.save(out / "phone.tiff", tiffinfo={0x0112: 6})

    read = pillow_heif.open_heif(out / "phone.heic", convert_hdr_to_8bit=True)
    Image.frombytes(read.mode, read.size, bytes(read.data), "raw", read.mode, read.stride).convert(
        "RGB"
    ).save(out / "ref_heic.png")
    # 10 bits: the 8-bit scene scaled to 16 bits (v * 257); the encoder keeps the top 10.
    deep = np.asarray(up).astype(np.uint16) * 257
    pillow_heif.from_bytes("RGB;16", up.size, deep.tobytes()).save(
        out / "phone10.heic", quality=-1, chroma=444
    )
    print(f"phone.heic: {read.size[0]} x {read.size[1]} as decoded, stored {stored.size}")
    print("libheif", pillow_heif.libheif_version())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
