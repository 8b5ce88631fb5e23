//! Masked training (`train.masked_loss`), sd-scripts' `--masked_loss`: each photo may come
//! with a mask, white where the subject is, and the diffusion loss is weighted by it in latent
//! space, so that the sofa the dog sits on is not learned with the dog.
//!
//! A photo's mask is the file beside it with the same stem and `.mask.png`
//! (`photo.jpg` -> `photo.mask.png`, read as grey), else the photo's own alpha channel (one that
//! is opaque everywhere is no mask). It must have the photo's size (upright). It goes through
//! the same resize, flip and crop as the photo, and is averaged over each latent pixel's
//! patch (`interpolate(mode="area")`, as sd-scripts' `apply_masked_loss` does); the background
//! then weighs `train.mask_background_weight` (0: ignored, 1: as much as the subject). Class
//! images (prior preservation) are never masked. A photo without a mask trains unmasked.

use std::path::{Path, PathBuf};

use image::{imageops, GrayImage, RgbImage};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use super::dataset::{is_photo, Photo};
use crate::error::{Error, Result};

/// The mask file of the photo at `photo`: same folder, same stem, `.mask.png`.
pub fn mask_path(photo: &Path) -> PathBuf {
    photo.with_extension("mask.png")
}

/// Is this a mask file (`*.mask.png`), not a photo?
pub fn is_mask_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.to_lowercase().ends_with(".mask.png"))
}

/// Where a photo's mask comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `photo.mask.png` beside it.
    File,
    /// The photo's alpha channel.
    Alpha,
}

/// The mask of the photo at `path` whose upright size is `(width, height)`: its mask file,
/// else its alpha channel when that is not opaque everywhere, else none. A mask file of
/// another size than the photo is refused, naming both files and both sizes.
pub fn read_mask(path: &Path, (width, height): (u32, u32)) -> Result<Option<(Source, GrayImage)>> {
    let file = mask_path(path);
    if file.is_file() {
        let mask = crate::image_file::open(&file)?.to_luma8();
        if mask.dimensions() != (width, height) {
            let (mw, mh) = mask.dimensions();
            return Err(Error::BadFile {
                path: file.clone(),
                what: format!(
                    "the mask is {mw} x {mh} pixels but its photo {} is {width} x {height}: \
                     a mask must have its photo's size (white = subject, black = background)",
                    path.display()
                ),
            });
        }
        return Ok(Some((Source::File, mask)));
    }
    let img = crate::image_file::open(path)?;
    if !img.color().has_alpha() {
        return Ok(None);
    }
    let rgba = img.to_rgba8();
    let alpha = GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        image::Luma([rgba.get_pixel(x, y)[3]])
    });
    if alpha.pixels().all(|p| p[0] == 255) {
        return Ok(None);
    }
    Ok(Some((Source::Alpha, alpha)))
}

/// The masks of `photos` (None: that photo has none). When some photos have none, one line
/// through `note` says how many.
pub fn load_masks(photos: &[Photo], note: &mut dyn FnMut(&str)) -> Result<Vec<Option<GrayImage>>> {
    let mut out = Vec::with_capacity(photos.len());
    for p in photos {
        out.push(read_mask(&p.path, p.image.dimensions())?.map(|(_, m)| m));
    }
    let missing = out.iter().filter(|m| m.is_none()).count();
    if missing > 0 {
        note(&format!(
            "masked loss: {missing} of {} {} no mask (no .mask.png beside {}, no alpha \
             channel): {} unmasked",
            crate::words::count(photos.len(), "photo"),
            crate::words::verb(missing, "has", "have"),
            crate::words::verb(missing, "it", "them"),
            crate::words::verb(missing, "it trains", "they train"),
        ));
    }
    Ok(out)
}

/// A grey mask as an RGB picture (the grey in every channel), to be resized by the very
/// function that resizes its photo.
pub fn as_rgb(mask: &GrayImage) -> RgbImage {
    image::DynamicImage::ImageLuma8(mask.clone()).to_rgb8()
}

/// The latent-space mask of one training crop: `resized` is the mask resized as its photo was
/// (an RGB picture from [`as_rgb`]), flipped when `flip`, cropped where `time_ids` say the
/// photo's crop is (`[.., crop_top, crop_left, crop_h, crop_w]`), scaled to [0, 1] and
/// averaged down to `(h, w)` latent pixels (area interpolation). Shape (1, 1, h, w), f32.
pub fn crop_mask(
    resized: &RgbImage,
    flip: bool,
    time_ids: &[f32; 6],
    (h, w): (i64, i64),
) -> Tensor {
    let flipped;
    let img = if flip {
        flipped = imageops::flip_horizontal(resized);
        &flipped
    } else {
        resized
    };
    let [_, _, top, left, ch, cw] = time_ids.map(|v| v as u32);
    let crop = imageops::crop_imm(img, left, top, cw, ch).to_image();
    let grey: Vec<u8> = crop.pixels().map(|p| p[0]).collect();
    let pixels = Tensor::from_slice(&grey)
        .reshape([1, 1, ch as i64, cw as i64])
        .to_kind(Kind::Float)
        / 255.0;
    latent_mask(&pixels, (h, w))
}

/// A pixel mask (N, 1, H, W) in [0, 1] averaged down to (N, 1, h, w): each latent pixel gets
/// the mean of its patch (`torch.nn.functional.interpolate(mode="area")`).
pub fn latent_mask(pixels: &Tensor, (h, w): (i64, i64)) -> Tensor {
    pixels.adaptive_avg_pool2d([h, w])
}

/// The loss weights of a mask: the subject (1) weighs 1, the background (0)
/// `background_weight`, grey in between.
pub fn weights(mask: &Tensor, background_weight: f64) -> Tensor {
    mask * (1.0 - background_weight) + background_weight
}

/// What the run's masks are, for the run's fingerprint: each photo of `dir` (by file name)
/// with where its mask comes from and a digest of its pixels, or `none`. A resumed run whose
/// masks changed is refused naming the photo (`masks.<photo>`).
pub fn fingerprint(dir: &Path) -> serde_json::Value {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| is_photo(p) && !is_mask_file(p) && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut map = serde_json::Map::new();
    for path in names {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let size = crate::image_file::open(&path).map(|i| (i.width(), i.height()));
        let value = match size.and_then(|s| read_mask(&path, s)) {
            Ok(None) => "none".to_string(),
            Ok(Some((source, m))) => {
                let mut h = Sha256::new();
                h.update(m.width().to_le_bytes());
                h.update(m.height().to_le_bytes());
                h.update(m.as_raw());
                let digest: String = h.finalize()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let from = match source {
                    Source::File => "mask file",
                    Source::Alpha => "alpha",
                };
                format!("{from} {digest}")
            }
            // The run itself names the file and why.
            Err(_) => "unreadable".to_string(),
        };
        map.insert(name, value.into());
    }
    map.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_downsampling_averages_each_patch() {
        // A 16 x 16 mask, white on its left 4 columns: latent pixels of 8 x 8 patches.
        let m = Tensor::zeros([1, 1, 16, 16], (Kind::Float, tch::Device::Cpu));
        let _ = m.narrow(3, 0, 4).fill_(1.0);
        let l = latent_mask(&m, (2, 2));
        let v: Vec<f32> = Vec::try_from(l.flatten(0, -1)).unwrap();
        assert_eq!(v, [0.5, 0.0, 0.5, 0.0]);
        let w: Vec<f32> = Vec::try_from(weights(&l, 0.2).flatten(0, -1)).unwrap();
        assert!(
            (w[0] - 0.6).abs() < 1e-6 && (w[1] - 0.2).abs() < 1e-6,
            "{w:?}"
        );
    }

    #[test]
    fn mask_follows_the_flip_and_crop() {
        // A mask white on its left quarter; flipped, the white is on the right.
        let mut m = GrayImage::new(32, 16);
        for y in 0..16 {
            for x in 0..8 {
                m.put_pixel(x, y, image::Luma([255]));
            }
        }
        let rgb = as_rgb(&m);
        // Crop 16 x 16 at left 16 of the flipped mask: its left half is black, right half white.
        let ids = [16.0, 32.0, 0.0, 16.0, 16.0, 16.0];
        let l = crop_mask(&rgb, true, &ids, (2, 2));
        let v: Vec<f32> = Vec::try_from(l.flatten(0, -1)).unwrap();
        assert_eq!(v, [0.0, 1.0, 0.0, 1.0]);
        let l = crop_mask(&rgb, false, &[16.0, 32.0, 0.0, 0.0, 16.0, 16.0], (2, 2));
        let v: Vec<f32> = Vec::try_from(l.flatten(0, -1)).unwrap();
        assert_eq!(v, [1.0, 0.0, 1.0, 0.0]);
    }
}
