//! Photos handed to the app: each upload is checked by its content through `image_file` (the
//! one picture reader: its size limits, still PNG, JPEG or WebP only) before anything is kept,
//! named by the app (never by the client), given a thumbnail, and checked as training will
//! see it: too small for the resolution, a duplicate, rotated by EXIF.

use std::path::{Path, PathBuf};

use image::{ImageDecoder, ImageReader};
use sha2::{Digest, Sha256};

use super::store::{subject_dir, Store};
use crate::error::{Error, Result};

/// Most photos one subject may hold (DreamBooth wants 3 to 20).
pub const MAX_PHOTOS: usize = 50;
/// The biggest upload, in bytes (a 200-megapixel JPEG is well under this).
pub const MAX_UPLOAD_BYTES: usize = 40 << 20;
/// The side thumbnails fit in.
pub const THUMB: u32 = 256;
/// The training resolutions a photo is held against: SDXL's and the toy world's.
const SDXL_SIDE: u32 = 1024;

pub fn photos_dir(data: &Path, subject: i64) -> PathBuf {
    subject_dir(data, subject).join("photos")
}
pub fn thumbs_dir(data: &Path, subject: i64) -> PathBuf {
    subject_dir(data, subject).join("thumbs")
}

/// Whether `name` is a file name the app made (`<16 hex>.<png|jpg|webp>`): the only names
/// that are ever joined onto a folder.
pub fn app_made_name(name: &str) -> bool {
    let Some((stem, ext)) = name.split_once('.') else {
        return false;
    };
    stem.len() == 16
        && stem
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && matches!(ext, "png" | "jpg" | "webp")
}

/// What an upload became.
pub struct Added {
    pub id: i64,
    pub checks: Vec<String>,
}

/// Checks `bytes` and keeps them as a photo of `subject`; an error says why nothing was kept.
pub fn add(
    store: &Store,
    data: &Path,
    subject: i64,
    original: &str,
    bytes: &[u8],
) -> Result<Added> {
    let bad = |what: String| Error::setting("photo", format!("{original}: {what}"));
    if bytes.is_empty() {
        return Err(bad("an empty file".into()));
    }
    if bytes.len() > MAX_UPLOAD_BYTES {
        return Err(bad(format!(
            "{} bytes, over the limit of {} MiB a photo",
            bytes.len(),
            MAX_UPLOAD_BYTES >> 20
        )));
    }
    // A mask (`photo.mask.png`, the command line's masked loss) is not a photo of the subject:
    // kept as one, it would be trained on as a black-and-white picture.
    if original.to_ascii_lowercase().ends_with(".mask.png") {
        return Err(bad(
            "a mask for masked loss (`.mask.png`), not a photo: the app trains on whole \
             photos; masks are used from the command line (`train.masked_loss`, a \
             `.mask.png` beside each photo)"
                .into(),
        ));
    }
    let existing = store.photos(subject)?;
    if existing.len() >= MAX_PHOTOS {
        return Err(bad(format!(
            "this subject already has {MAX_PHOTOS} photos, the most it may"
        )));
    }
    let ext = match image::guess_format(bytes) {
        Ok(image::ImageFormat::Png) => "png",
        Ok(image::ImageFormat::Jpeg) => "jpg",
        Ok(image::ImageFormat::WebP) => "webp",
        Ok(f) => {
            return Err(bad(format!(
                "a {f:?} picture whatever its name says; PNG, JPEG or WebP only"
            )))
        }
        Err(_) => return Err(bad("not a picture (expected PNG, JPEG or WebP)".into())),
    };
    let hash: String = Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = format!("{hash}.{ext}");
    if let Some(p) = existing.iter().find(|p| p.file == name) {
        return Err(bad(format!(
            "a duplicate of {} already in this subject",
            p.original
        )));
    }
    let dir = photos_dir(data, subject);
    let thumbs = thumbs_dir(data, subject);
    for d in [&dir, &thumbs] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    // Checked where training will read it, under a hidden name until it passes.
    let hidden = dir.join(format!(".upload-{name}"));
    crate::fsutil::write_bytes(&hidden, bytes)?;
    // Read as training reads it (upright), with the command line's reasons for a photo it
    // cannot use (`train::dataset::scan_photos`).
    let photo = match crate::train::dataset::load_photo(&hidden) {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&hidden);
            let msg = match e {
                Error::BadFile { what, .. } => what
                    .trim_start_matches("cannot read this image: ")
                    .to_string(),
                e => e.to_string().replace(&hidden.display().to_string(), ""),
            };
            return Err(bad(msg.trim_start_matches([':', ' ']).to_string()));
        }
    };
    let mut checks = Vec::new();
    let (w, h) = photo.image.dimensions();
    // As `compare` will say it at SDXL's resolution (the toy world's 64 px takes any photo).
    if let Err(Error::BadFile { what, .. }) =
        crate::train::dataset::check_photo_size(&photo, i64::from(SDXL_SIDE))
    {
        checks.push(format!("{what} (SDXL presets); fine for the Toy world"));
    } else if w.min(h) < SDXL_SIDE {
        checks.push(format!(
            "{w}x{h}: enlarged {:.2}x to train at train.resolution {SDXL_SIDE}: it may train \
             soft detail (SDXL presets); fine for the Toy world",
            f64::from(SDXL_SIDE) / f64::from(w.min(h))
        ));
    }
    if let Ok(Ok(mut d)) = ImageReader::open(&hidden)
        .and_then(|r| r.with_guessed_format())
        .map(|r| r.into_decoder())
    {
        if let Ok(o) = d.orientation() {
            if o != image::metadata::Orientation::NoTransforms {
                checks.push(format!(
                    "rotated by EXIF ({o:?}): trained upright, as shown"
                ));
            }
        }
    }
    let thumb = image::DynamicImage::ImageRgb8(photo.image)
        .thumbnail(THUMB, THUMB)
        .to_rgb8();
    crate::fsutil::write_png(&thumbs.join(format!("{hash}.png")), &thumb, &[])?;
    let path = dir.join(&name);
    std::fs::rename(&hidden, &path).map_err(|e| Error::io(&path, e))?;
    let id = store.add_photo(subject, &name, original, w, h, &checks.join("\n"))?;
    Ok(Added { id, checks })
}

/// The caption file beside photo `file` (`photo.txt` for `photo.jpg`).
pub fn caption_path(data: &Path, subject: i64, file: &str) -> PathBuf {
    let stem = file.split('.').next().unwrap_or(file);
    photos_dir(data, subject).join(format!("{stem}.txt"))
}

/// Writes (or, empty, removes) a photo's caption file.
pub fn set_caption(data: &Path, subject: i64, file: &str, caption: &str) -> Result<()> {
    let p = caption_path(data, subject, file);
    if caption.trim().is_empty() {
        let _ = std::fs::remove_file(&p);
        return Ok(());
    }
    crate::fsutil::write_bytes(&p, caption.trim().as_bytes())
}

/// Removes a photo's files.
pub fn remove(data: &Path, subject: i64, file: &str) {
    let stem = file.split('.').next().unwrap_or(file);
    let _ = std::fs::remove_file(photos_dir(data, subject).join(file));
    let _ = std::fs::remove_file(caption_path(data, subject, file));
    let _ = std::fs::remove_file(thumbs_dir(data, subject).join(format!("{stem}.png")));
}
