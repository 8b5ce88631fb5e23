//! The subject's photos as the UNet trains on them: decoded (EXIF orientation applied, grey,
//! alpha and 16-bit converted to RGB8), resized so the short side is the resolution, flipped
//! and cropped with SDXL's micro-conditioning computed as diffusers' DreamBooth script does,
//! and encoded by the VAE once per crop/flip variant, not once per step. Aspect-ratio buckets
//! are [`super::buckets`]; caption files [`super::captions`].

use std::path::{Path, PathBuf};

use image::{imageops, RgbImage};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::sdxl::vae::AutoencoderKL;

pub const PHOTO_EXTENSIONS: &[&str] =
    &["jpg", "jpeg", "png", "webp", "heic", "heif", "tif", "tiff"];

/// The fewest usable photos a subject trains on (the README asks for 3 to 20).
pub const MIN_PHOTOS: usize = 3;

/// One decoded photo.
#[derive(Debug)]
pub struct Photo {
    pub path: PathBuf,
    pub image: RgbImage,
}

impl Photo {
    /// (height, width) before any resizing: SDXL's `original_size`.
    pub fn original_size(&self) -> (i64, i64) {
        (self.image.height() as i64, self.image.width() as i64)
    }
}

/// Decode one photo with its EXIF orientation applied; its claimed size is checked before
/// decoding (`image_file::open`).
pub fn load_photo(path: &Path) -> Result<Photo> {
    Ok(Photo {
        path: path.to_path_buf(),
        image: crate::image_file::open(path)?.to_rgb8(),
    })
}

/// Does the file's extension name a photo format we read? A photo's mask (`photo.mask.png`,
/// [`super::masks`]) is not a photo.
pub fn is_photo(path: &Path) -> bool {
    !super::masks::is_mask_file(path)
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| PHOTO_EXTENSIONS.contains(&e.to_lowercase().as_str()))
}

/// All photos of a folder, sorted by file name. An empty folder, a folder of non-images or an
/// unreadable photo is an error that names it.
pub fn load_photos(dir: &Path) -> Result<Vec<Photo>> {
    if !dir.is_dir() {
        return Err(Error::msg(format!(
            "subject.images: {} is not a folder: put 3-20 photos of your subject there",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    let mut others = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        // The folder is read one level deep, so a link back to it cannot make this loop; a
        // photo-named link that loops or points nowhere is named rather than dropped unseen.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if is_photo(&path) => {
                return Err(Error::BadFile {
                    path,
                    what: format!(
                        "cannot open this photo ({e}): a symbolic link that loops or points \
                         nowhere? Replace it with the photo itself"
                    ),
                })
            }
            Err(_) => continue,
        };
        if !meta.is_file() {
            continue;
        }
        if is_photo(&path) {
            files.push(path);
        } else if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            others += 1;
        }
    }
    if files.is_empty() {
        let what = if others > 0 {
            format!("holds {others} file(s) but no photo")
        } else {
            "is empty".to_string()
        };
        return Err(Error::msg(format!(
            "subject.images: {} {what}: expected {} photos of the subject",
            dir.display(),
            crate::image_file::FORMATS
        )));
    }
    files.sort();
    files.iter().map(|p| load_photo(p)).collect()
}

/// A file of the photo folder that is not used, and why (one line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file name within the folder (a sub-folder's ends in `/`).
    pub name: String,
    pub why: String,
}

/// A subject's photo folder as read: the photos that train, sorted by file name, and every
/// other entry with why it is not used. Caption files of photos and hidden files (`.DS_Store`)
/// are neither.
#[derive(Debug)]
pub struct PhotoFolder {
    pub photos: Vec<Photo>,
    pub skipped: Vec<Skipped>,
}

/// Why a file whose extension is not a photo format's is not used; None for what is no photo
/// at all (a photo's caption file).
fn not_a_photo(path: &Path, names: &[String]) -> Option<String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_lowercase);
    let use_ = format!("use {}", crate::image_file::FORMATS);
    if super::masks::is_mask_file(path) {
        let name = path.file_name()?.to_string_lossy();
        let stem = &name[..name.len() - ".mask.png".len()];
        let has_photo = names.iter().any(|n| {
            let n = Path::new(n);
            is_photo(n) && n.file_stem().is_some_and(|s| s.to_string_lossy() == stem)
        });
        return (!has_photo).then(|| {
            format!("a mask with no photo named {stem}.jpg, .png, .webp, .heic or .tif beside it")
        });
    }
    match ext.as_deref() {
        Some("txt") => {
            let stem = path.file_stem()?.to_string_lossy().into_owned();
            let has_photo = names.iter().any(|n| {
                let n = Path::new(n);
                is_photo(n) && n.file_stem().is_some_and(|s| s.to_string_lossy() == stem)
            });
            (!has_photo).then(|| {
                format!(
                    "a caption file with no photo named {stem}.jpg, .png, .webp, .heic or .tif \
                     beside it"
                )
            })
        }
        None | Some("") => Some(format!(
            "no file extension, so not read as a photo ({use_})"
        )),
        Some(e) => Some(format!(
            "{} is not a photo format moslora reads ({use_})",
            e.to_uppercase()
        )),
    }
}

/// Read every entry of the photo folder `dir`: each photo is decoded (upright) and kept when
/// its short side is at least `min_side` pixels; everything else is listed with its reason
/// (not a photo format, an empty or unreadable file with the decoder's reason, too small, a
/// sub-folder, a link pointing nowhere).
pub fn scan_photos(dir: &Path, min_side: u32, resolution: i64) -> Result<PhotoFolder> {
    if !dir.is_dir() {
        return Err(Error::setting(
            "subject.images",
            format!(
                "subject.images: {} is not a folder: put {MIN_PHOTOS}-20 photos of your subject \
                 there",
                dir.display()
            ),
        ));
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let name = entry.map_err(|e| Error::io(dir, e))?.file_name();
        let name = name.to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    let mut photos = Vec::new();
    let mut skipped = Vec::new();
    for name in &names {
        let path = dir.join(name);
        let mut skip = |why: String| {
            skipped.push(Skipped {
                name: name.clone(),
                why,
            })
        };
        // The folder is read one level deep, so a link back to it cannot make this loop.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                skip(format!(
                    "cannot open it ({e}): a symbolic link that loops or points nowhere? \
                     Replace it with the photo itself"
                ));
                continue;
            }
        };
        if meta.is_dir() {
            skipped.push(Skipped {
                name: format!("{name}/"),
                why: "a folder: photos in sub-folders are not read".into(),
            });
            continue;
        }
        if !is_photo(&path) {
            if let Some(why) = not_a_photo(&path, &names) {
                skip(why);
            }
            continue;
        }
        let photo = match load_photo(&path) {
            Ok(p) => p,
            // The message without the path: the line starts with the file's name.
            Err(Error::BadFile { what, .. }) => {
                skip(
                    what.trim_start_matches("cannot read this image: ")
                        .to_string(),
                );
                continue;
            }
            Err(e) => {
                skip(e.to_string());
                continue;
            }
        };
        let (w, h) = photo.image.dimensions();
        if w.min(h) < min_side {
            skip(format!(
                "{w} x {h} pixels is too small to train at train.resolution {resolution}: the \
                 short side must be at least {min_side} pixels"
            ));
            continue;
        }
        photos.push(photo);
    }
    Ok(PhotoFolder { photos, skipped })
}

/// The subject's photos (`subject.images`) for training at `resolution`: every usable photo.
/// Each file not used is named with its reason through `note`, one line each. Fewer than
/// [`MIN_PHOTOS`] usable photos is a setting to change (exit 2), naming the files used and
/// those not.
pub fn load_subject_photos(
    dir: &Path,
    resolution: i64,
    note: &mut dyn FnMut(&str),
) -> Result<Vec<Photo>> {
    let folder = scan_photos(dir, min_photo_side(resolution), resolution)?;
    if !folder.skipped.is_empty() {
        let lines: String = folder
            .skipped
            .iter()
            .map(|s| format!("\n  {}: {}", s.name, s.why))
            .collect();
        note(&format!(
            "{} file(s) in {} not used:{lines}",
            folder.skipped.len(),
            dir.display()
        ));
    }
    if folder.photos.is_empty() && folder.skipped.is_empty() {
        return Err(Error::setting(
            "subject.images",
            format!(
                "subject.images: {} is empty: put 3 to 20 photos of one subject there, as {}",
                dir.display(),
                crate::image_file::FORMATS
            ),
        ));
    }
    if folder.photos.len() < MIN_PHOTOS {
        let names = |v: Vec<String>| match v.len() {
            0 => String::new(),
            _ => format!(" ({})", v.join(", ")),
        };
        let used = names(
            folder
                .photos
                .iter()
                .map(|p| {
                    p.path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into()
                })
                .collect(),
        );
        let others = match folder.skipped.len() {
            0 => String::new(),
            n => format!(
                "; {n} other file(s) are not used, as listed above{}",
                names(folder.skipped.iter().map(|s| s.name.clone()).collect())
            ),
        };
        return Err(Error::setting(
            "subject.images",
            format!(
                "subject.images: {} holds {}{used}; at least {MIN_PHOTOS} are needed (3 to 20 \
                 photos of one subject, as {}){others}",
                dir.display(),
                match folder.photos.len() {
                    0 => "no photo moslora can use".to_string(),
                    n => format!("{n} usable photo(s)"),
                },
                crate::image_file::FORMATS
            ),
        ));
    }
    Ok(folder.photos)
}

/// One cached training example: the VAE posterior of a crop/flip variant and its
/// micro-conditioning.
#[derive(Debug)]
pub struct Example {
    /// (1, 4, h, w) mean and standard deviation of the latent distribution (unscaled).
    pub mean: Tensor,
    pub std: Tensor,
    /// [original_h, original_w, crop_top, crop_left, target_h, target_w]
    pub time_ids: [f32; 6],
    /// The photo's own prompt (its caption file), an index into `TrainData::captions`; None:
    /// the run's prompt.
    pub caption: Option<usize>,
    /// (1, 1, h, w) in [0, 1]: the photo's mask over this crop in latent pixels
    /// ([`super::masks`]); None: unmasked.
    pub mask: Option<Tensor>,
}

/// Resize so the short side equals `size` (torchvision `Resize(int)`: the long side becomes
/// `int(size * long / short)`), bilinear.
pub fn resize_short_side(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (size, (size as u64 * h as u64 / w as u64) as u32)
    } else {
        ((size as u64 * w as u64 / h as u64) as u32, size)
    };
    if (nw, nh) == (w, h) {
        return img.clone();
    }
    imageops::resize(img, nw, nh, imageops::FilterType::Triangle)
}

/// Crop offsets (top, left) of each variant: the centre, or `count` uniform random offsets
/// drawn from the given generator state. The centre is rounded as diffusers' script and
/// torchvision's `CenterCrop` round it, with Python's `round`: halves go to the even integer
/// (an excess of 21 pixels gives 10, not 11).
pub fn crop_offsets(h: u32, w: u32, size: u32, center: bool, count: usize) -> Vec<(u32, u32)> {
    if center {
        let top = ((h - size) as f64 / 2.0).round_ties_even() as u32;
        let left = ((w - size) as f64 / 2.0).round_ties_even() as u32;
        return vec![(top, left)];
    }
    random_offsets((h, w), (size, size), count)
}

/// `count` random (top, left) offsets of a (ch, cw) crop in an (h, w) picture, drawn from
/// libtorch's global generator as torchvision's `RandomCrop` draws them (top, then left).
pub fn random_offsets((h, w): (u32, u32), (ch, cw): (u32, u32), count: usize) -> Vec<(u32, u32)> {
    (0..count)
        .map(|_| {
            let top = Tensor::randint((h - ch + 1) as i64, [1], (Kind::Int64, Device::Cpu));
            let left = Tensor::randint((w - cw + 1) as i64, [1], (Kind::Int64, Device::Cpu));
            (top.int64_value(&[0]) as u32, left.int64_value(&[0]) as u32)
        })
        .collect()
}

/// (1, 3, H, W) in [-1, 1], as `ToTensor` then `Normalize([0.5], [0.5])`.
pub fn to_tensor(img: &RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    let t = Tensor::from_slice(img.as_raw())
        .reshape([h as i64, w as i64, 3])
        .permute([2, 0, 1]);
    ((t.to_kind(Kind::Float) / 255.0 - 0.5) / 0.5).unsqueeze(0)
}

/// The training crops of one photo for one flip, as diffusers' DreamBooth script makes them:
/// resized so the short side is `resolution`, flipped when `flip` (before cropping, so the crop
/// offset is measured on the flipped image), cropped at the centre or at `count` random
/// offsets drawn from libtorch's global generator. Each crop comes as (pixels (1, 3, R, R) in
/// [-1, 1], `[original_h, original_w, crop_top, crop_left, R, R]`).
pub fn crops(
    photo: &Photo,
    resolution: i64,
    center_crop: bool,
    flip: bool,
    count: usize,
) -> Vec<(Tensor, [f32; 6])> {
    let resized = resize_short_side(&photo.image, resolution as u32);
    crops_of_resized(photo, &resized, resolution, center_crop, flip, count)
}

fn crops_of_resized(
    photo: &Photo,
    resized: &RgbImage,
    resolution: i64,
    center_crop: bool,
    flip: bool,
    count: usize,
) -> Vec<(Tensor, [f32; 6])> {
    let size = resolution as u32;
    crops_at(photo, resized, (size, size), flip, |img| {
        crop_offsets(img.height(), img.width(), size, center_crop, count)
    })
}

/// The (ch, cw) crops of a resized photo at the offsets `offsets` picks on it, flipped first
/// when `flip` (so the offsets are measured on the flipped picture). Each comes as (pixels
/// (1, 3, ch, cw) in [-1, 1], `[original_h, original_w, crop_top, crop_left, ch, cw]`): the
/// crop's SDXL `time_ids`.
pub fn crops_at(
    photo: &Photo,
    resized: &RgbImage,
    (ch, cw): (u32, u32),
    flip: bool,
    offsets: impl FnOnce(&RgbImage) -> Vec<(u32, u32)>,
) -> Vec<(Tensor, [f32; 6])> {
    let (oh, ow) = photo.original_size();
    let flipped;
    let img = if flip {
        flipped = imageops::flip_horizontal(resized);
        &flipped
    } else {
        resized
    };
    offsets(img)
        .into_iter()
        .map(|(top, left)| {
            let crop = imageops::crop_imm(img, left, top, cw, ch).to_image();
            let ids = [
                oh as f32,
                ow as f32,
                top as f32,
                left as f32,
                ch as f32,
                cw as f32,
            ];
            (to_tensor(&crop), ids)
        })
        .collect()
}

/// The shortest short side a photo may have to train at `resolution`: a quarter of it. A
/// smaller photo would be upscaled more than four times, and the model would learn the blur
/// (a 1 x 1 picture is a single colour).
pub fn min_photo_side(resolution: i64) -> u32 {
    (resolution.max(4) / 4) as u32
}

/// Refuse a photo too small for `resolution`, naming it and the minimum.
pub fn check_photo_size(photo: &Photo, resolution: i64) -> Result<()> {
    let (w, h) = photo.image.dimensions();
    let min = min_photo_side(resolution);
    if w.min(h) < min {
        return Err(Error::BadFile {
            path: photo.path.clone(),
            what: format!(
                "{w} x {h} pixels is too small to train at train.resolution {resolution}: the \
                 short side must be at least {min} pixels"
            ),
        });
    }
    Ok(())
}

/// Which variants of each photo are cached: square crops of side `resolution` (centred, or
/// `crops` random ones), each also mirrored when `random_flip`.
#[derive(Debug, Clone, Copy)]
pub struct Variants {
    pub resolution: i64,
    pub center_crop: bool,
    pub random_flip: bool,
    pub crops: usize,
}

impl Variants {
    /// How many variants of each photo are cached.
    pub fn per_photo(&self) -> usize {
        let crops = if self.center_crop { 1 } else { self.crops };
        crops * if self.random_flip { 2 } else { 1 }
    }
}

/// Encode every crop/flip variant of every photo once, calling `tick` after each. Draws crop
/// offsets from libtorch's global generator (seed it first). `captions[i]` and `masks[i]` go
/// with photo `i` (empty: none).
pub fn encode_examples(
    photos: &[Photo],
    captions: &[Option<usize>],
    masks: &[Option<image::GrayImage>],
    vae: &AutoencoderKL,
    variants: Variants,
    device: Device,
    tick: &mut dyn FnMut(),
) -> Result<Vec<Example>> {
    let Variants {
        resolution,
        center_crop,
        random_flip,
        crops,
    } = variants;
    for photo in photos {
        check_photo_size(photo, resolution)?;
    }
    let _guard = tch::no_grad_guard();
    let mut out = Vec::new();
    for (i, photo) in photos.iter().enumerate() {
        let caption = captions.get(i).copied().flatten();
        let resized = resize_short_side(&photo.image, resolution as u32);
        // The mask resized exactly as its photo is.
        let mask = masks
            .get(i)
            .and_then(Option::as_ref)
            .map(|m| resize_short_side(&super::masks::as_rgb(m), resolution as u32));
        let flips: &[bool] = if random_flip {
            &[false, true]
        } else {
            &[false]
        };
        for &flip in flips {
            for (x, time_ids) in
                crops_of_resized(photo, &resized, resolution, center_crop, flip, crops)
            {
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
                    caption,
                });
                tick();
            }
        }
    }
    Ok(out)
}
