//! Aspect-ratio buckets: instead of one square crop, each photo goes to the bucket (a training
//! size of about `resolution`² pixels) whose aspect ratio is closest to its own, is resized to
//! cover the bucket and cropped to it, and `time_ids` record the photo's size, the crop's
//! top-left corner and the bucket. A batch holds one bucket's pictures ([`super::batch`]).
//!
//! The bucket lists and the choice follow kohya's scripts: [`kohya_buckets`] is
//! `make_bucket_resolutions` (sides in steps of `step` from `min` to `max`, area at most
//! `resolution`², plus the square), [`sdxl_buckets`] is the list of SDXL's paper, and
//! [`select`] is `BucketManager.select_bucket` (the bucket of the closest aspect ratio; the
//! photo scaled so that it covers the bucket, sides rounded half up). The crop is centred
//! (`trim // 2`, kohya's) or drawn uniformly like the square crops. Pixels are resampled with
//! PIL's Lanczos filter, bit for bit; kohya also shrinks with OpenCV's area filter, which is
//! not reproduced. tests/buckets.rs checks all of it against tests/reference/ref_buckets.py.

use std::collections::BTreeMap;

use image::RgbImage;
use tch::{Device, Tensor};

use super::dataset::{self, Example, Photo, Variants};
use crate::config::{Buckets, Train};
use crate::error::{Error, Result};
use crate::sdxl::image_processing::{pil_resize_with, Resample};
use crate::sdxl::vae::AutoencoderKL;

/// A training size, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket {
    pub width: u32,
    pub height: u32,
}

impl Bucket {
    /// width / height.
    pub fn aspect(self) -> f64 {
        f64::from(self.width) / f64::from(self.height)
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// SDXL's buckets as its paper lists them (height, width): about 1024² pixels each, sides in
/// steps of 64 from 512 to 2048.
const SDXL_HW: [(u32, u32); 40] = [
    (512, 2048),
    (512, 1984),
    (512, 1920),
    (512, 1856),
    (576, 1792),
    (576, 1728),
    (576, 1664),
    (640, 1600),
    (640, 1536),
    (704, 1472),
    (704, 1408),
    (704, 1344),
    (768, 1344),
    (768, 1280),
    (832, 1216),
    (832, 1152),
    (896, 1152),
    (896, 1088),
    (960, 1088),
    (960, 1024),
    (1024, 1024),
    (1024, 960),
    (1088, 960),
    (1088, 896),
    (1152, 896),
    (1152, 832),
    (1216, 832),
    (1280, 768),
    (1344, 768),
    (1408, 704),
    (1472, 704),
    (1536, 640),
    (1600, 640),
    (1664, 576),
    (1728, 576),
    (1792, 576),
    (1856, 512),
    (1920, 512),
    (1984, 512),
    (2048, 512),
];

/// SDXL's 40 buckets, sorted by (width, height) as kohya sorts its own.
pub fn sdxl_buckets() -> Vec<Bucket> {
    let mut v: Vec<Bucket> = SDXL_HW
        .iter()
        .map(|&(height, width)| Bucket { width, height })
        .collect();
    v.sort();
    v
}

/// kohya's `make_bucket_resolutions`: the square of side `sqrt(resolution²)` rounded down to
/// `step`, and for every width from `min` to `max` in steps of `step` the tallest height (a
/// multiple of `step`, at most `max`) whose area stays within `resolution²`, with its
/// transpose, when that height is at least `min`. Sorted by (width, height).
pub fn kohya_buckets(resolution: u32, min: u32, max: u32, step: u32) -> Vec<Bucket> {
    let area = u64::from(resolution) * u64::from(resolution);
    let side = (resolution / step) * step;
    let mut set = std::collections::BTreeSet::new();
    set.insert(Bucket {
        width: side,
        height: side,
    });
    let mut width = min;
    while width <= max {
        let height = ((area / u64::from(width)) / u64::from(step) * u64::from(step))
            .min(u64::from(max)) as u32;
        if height >= min {
            set.insert(Bucket { width, height });
            set.insert(Bucket {
                width: height,
                height: width,
            });
        }
        width += step;
    }
    set.into_iter().collect()
}

/// The buckets a run's settings ask for (none for square crops), for a model whose sides
/// must be multiples of `factor` pixels (kohya's defaults are fitted to it).
pub fn for_settings(t: &Train, factor: i64) -> Vec<Bucket> {
    match t.buckets {
        Buckets::None => Vec::new(),
        Buckets::Sdxl => sdxl_buckets(),
        Buckets::Kohya => {
            let (step, min, max) = t.kohya_bucket_sides(factor);
            kohya_buckets(t.resolution as u32, min as u32, max as u32, step as u32)
        }
    }
}

/// Refuse buckets the model cannot take: every side must be a multiple of `factor` pixels
/// (the VAE's downscaling times the UNet's), or the UNet's skip connections would not line up.
pub fn check_fit(buckets: &[Bucket], factor: i64) -> Result<()> {
    let factor = factor as u32;
    if let Some(b) = buckets
        .iter()
        .find(|b| b.width % factor != 0 || b.height % factor != 0)
    {
        return Err(Error::setting(
            "train.buckets",
            format!(
                "train.buckets: bucket {b} does not fit the model: its sides must be \
                 multiples of {factor} \
                 pixels (the VAE's and the UNet's downscaling); set train.bucket_step, \
                 bucket_min and bucket_max to multiples of {factor}"
            ),
        ));
    }
    Ok(())
}

/// Where one photo goes: its bucket and the size it is resized to before the crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub bucket: Bucket,
    /// (width, height) after resizing: at least the bucket's on both sides.
    pub resized: (u32, u32),
}

/// kohya's `select_bucket`: the first bucket (in list order) of the smallest
/// `|bucket aspect - photo aspect|`, and the photo scaled by the bucket's height over its
/// own when it is the wider of the two, else by the widths, each side rounded half up
/// (`int(x * scale + 0.5)`), so that the photo covers the bucket.
pub fn select(buckets: &[Bucket], width: u32, height: u32) -> Placement {
    let aspect = f64::from(width) / f64::from(height);
    let mut best = buckets[0];
    let mut best_err = f64::INFINITY;
    for &b in buckets {
        let err = (b.aspect() - aspect).abs();
        if err < best_err {
            best = b;
            best_err = err;
        }
    }
    let scale = if aspect > best.aspect() {
        f64::from(best.height) / f64::from(height)
    } else {
        f64::from(best.width) / f64::from(width)
    };
    let side = |x: u32| (f64::from(x) * scale + 0.5) as u32;
    Placement {
        bucket: best,
        resized: (side(width), side(height)),
    }
}

/// Crop offsets (top, left) of a `bh` x `bw` crop of an `h` x `w` picture: kohya's centre
/// (`trim // 2`), or `count` uniform offsets drawn from libtorch's global generator (top,
/// then left, as the square crops draw them).
pub fn crop_offsets(
    (h, w): (u32, u32),
    (bh, bw): (u32, u32),
    center: bool,
    count: usize,
) -> Vec<(u32, u32)> {
    if center {
        return vec![((h - bh) / 2, (w - bw) / 2)];
    }
    dataset::random_offsets((h, w), (bh, bw), count)
}

/// A photo resized for `placement` (PIL's Lanczos).
pub fn resize_for(photo: &Photo, placement: &Placement) -> RgbImage {
    let (w, h) = placement.resized;
    pil_resize_with(Resample::Lanczos, &photo.image, w, h)
}

/// The crops of one resized photo in its bucket for one flip: flipped first when `flip` (the
/// offset is measured on the flipped picture, as the square crops do), then cropped. Each
/// comes as (pixels (1, 3, bh, bw) in [-1, 1], `[original_h, original_w, crop_top, crop_left,
/// bh, bw]`).
pub fn crops(
    photo: &Photo,
    resized: &RgbImage,
    bucket: Bucket,
    center: bool,
    flip: bool,
    count: usize,
) -> Vec<(Tensor, [f32; 6])> {
    let (bw, bh) = (bucket.width, bucket.height);
    dataset::crops_at(photo, resized, (bh, bw), flip, |img| {
        crop_offsets((img.height(), img.width()), (bh, bw), center, count)
    })
}

/// The smallest side of any bucket: a photo whose short side is below it cannot fill even the
/// smallest bucket without being blown up.
pub fn smallest_side(buckets: &[Bucket]) -> u32 {
    buckets
        .iter()
        .map(|b| b.width.min(b.height))
        .min()
        .unwrap_or(0)
}

/// Place every photo: refuse one too small for the smallest bucket, warn (through `note`)
/// about one that is enlarged into its bucket.
pub fn place_all(
    photos: &[Photo],
    buckets: &[Bucket],
    note: &mut dyn FnMut(&str),
) -> Result<Vec<Placement>> {
    let smallest = smallest_side(buckets);
    let mut out = Vec::new();
    for p in photos {
        let (w, h) = p.image.dimensions();
        if w.min(h) < smallest {
            return Err(Error::msg(format!(
                "{}: the photo is {w}x{h}, too small for the smallest bucket (sides of at \
                 least {smallest} px): use a larger photo, or train.buckets: none",
                p.path.display()
            )));
        }
        let placed = select(buckets, w, h);
        if placed.resized.0 > w {
            note(&format!(
                "warning (photo enlarged): {} is {w}x{h} and is enlarged {:.2}x to fill its \
                 bucket {}: it may train soft detail",
                p.path.display(),
                f64::from(placed.resized.0) / f64::from(w),
                placed.bucket
            ));
        }
        out.push(placed);
    }
    Ok(out)
}

/// Encode every crop/flip variant of every photo in its bucket once (`variants.crops` random
/// crops per flip unless centred). Draws crop offsets from libtorch's global generator (seed
/// it first), photo by photo, as the square crops do. `captions[i]` goes with photo `i`, and
/// `masks[i]` (empty: none).
#[allow(clippy::too_many_arguments)]
pub fn encode_examples(
    photos: &[Photo],
    placements: &[Placement],
    captions: &[Option<usize>],
    masks: &[Option<image::GrayImage>],
    vae: &AutoencoderKL,
    variants: Variants,
    device: Device,
    tick: &mut dyn FnMut(),
) -> Result<Vec<Example>> {
    let _guard = tch::no_grad_guard();
    let mut out = Vec::new();
    for (i, ((photo, placed), caption)) in photos.iter().zip(placements).zip(captions).enumerate() {
        let resized = resize_for(photo, placed);
        // The mask resized exactly as its photo is.
        let mask = masks.get(i).and_then(Option::as_ref).map(|m| {
            let as_photo = Photo {
                path: photo.path.clone(),
                image: super::masks::as_rgb(m),
            };
            resize_for(&as_photo, placed)
        });
        let flips: &[bool] = if variants.random_flip {
            &[false, true]
        } else {
            &[false]
        };
        for &flip in flips {
            let cs = crops(
                photo,
                &resized,
                placed.bucket,
                variants.center_crop,
                flip,
                variants.crops,
            );
            for (x, time_ids) in cs {
                let dist = vae.encode(&x.to_device(device));
                let mean = dist.mean.to_device(Device::Cpu);
                let (h, w) = (mean.size()[2], mean.size()[3]);
                out.push(Example {
                    mask: mask
                        .as_ref()
                        .map(|m| super::masks::crop_mask(m, flip, &time_ids, (h, w))),
                    mean,
                    std: dist.std().to_device(Device::Cpu),
                    time_ids,
                    caption: *caption,
                });
                tick();
            }
        }
    }
    Ok(out)
}

/// Class images (prior preservation) fitted into each of `buckets` (resized to cover it, then
/// cropped as the photos are), so that every batch finds class pictures of its own bucket.
pub fn encode_into_each(
    photos: &[Photo],
    buckets: &[Bucket],
    vae: &AutoencoderKL,
    variants: Variants,
    device: Device,
    tick: &mut dyn FnMut(),
) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for &bucket in buckets {
        let placements: Vec<Placement> = photos
            .iter()
            .map(|p| {
                let (w, h) = p.image.dimensions();
                select(&[bucket], w, h)
            })
            .collect();
        let none = vec![None; photos.len()];
        out.extend(encode_examples(
            photos,
            &placements,
            &none,
            &[],
            vae,
            variants,
            device,
            tick,
        )?);
    }
    Ok(out)
}

/// The bucket of a cached example: its latent's (height, width).
pub fn latent_size(e: &Example) -> (i64, i64) {
    let s = e.mean.size();
    (s[2], s[3])
}

/// Example indices by bucket (latent size), buckets in a fixed order (smallest height first)
/// so that the draws of a step do not depend on how the examples were gathered.
pub fn groups(examples: &[Example]) -> Vec<Vec<usize>> {
    let mut by: BTreeMap<(i64, i64), Vec<usize>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        by.entry(latent_size(e)).or_default().push(i);
    }
    by.into_values().collect()
}

/// How many photos went to each bucket, for the run's notes ("832x1216: 3, 1024x1024: 2").
pub fn summary(placements: &[Placement]) -> String {
    let mut counts: BTreeMap<Bucket, usize> = BTreeMap::new();
    for p in placements {
        *counts.entry(p.bucket).or_default() += 1;
    }
    counts
        .iter()
        .map(|(b, n)| format!("{b}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kohya_rule_at_1024() {
        let b = kohya_buckets(1024, 256, 2048, 64);
        assert!(b
            .iter()
            .all(|b| u64::from(b.width) * u64::from(b.height) <= 1024 * 1024));
        assert!(b.contains(&Bucket {
            width: 1024,
            height: 1024
        }));
        // 832 wide: 1048576 / 832 = 1260.3 -> 1216.
        assert!(b.contains(&Bucket {
            width: 832,
            height: 1216
        }));
        assert!(b.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
    }

    #[test]
    fn sdxl_list_has_forty_buckets_of_about_a_megapixel() {
        let b = sdxl_buckets();
        assert_eq!(b.len(), 40);
        for x in &b {
            let area = f64::from(x.width * x.height) / (1024.0 * 1024.0);
            assert!((0.9..=1.07).contains(&area), "{x}: {area}");
            assert_eq!((x.width % 64, x.height % 64), (0, 0), "{x}");
        }
    }

    #[test]
    fn a_phone_photo_keeps_its_shape() {
        // 9:16 portrait (0.5625): the 768x1344 bucket (0.571), covered exactly in width.
        let p = select(&sdxl_buckets(), 2160, 3840);
        assert_eq!(
            p.bucket,
            Bucket {
                width: 768,
                height: 1344
            }
        );
        assert_eq!(p.resized, (768, 1365));
    }
}
