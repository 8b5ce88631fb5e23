//! Opening pictures that users hand us (photos, renders to score or to blind): the size the
//! header claims is checked before a pixel is decoded, so a file that claims 60,000 x 60,000
//! pixels is refused without allocating for it, and a still picture is all we accept.
//!
//! PNG, JPEG, WebP and TIFF are read by `image`; HEIC/HEIF (a phone's default) by libheif.
//! The content decides the format, not the name. A JPEG, WebP or TIFF is turned upright by
//! its EXIF orientation. A HEIC is turned upright by libheif, which applies the file's own
//! `irot` / `imir` / `clap` transforms while decoding, as the HEIF standard asks; its EXIF
//! orientation (a phone writes the same turn there too) is then not applied again, as
//! pillow-heif and Apple's readers do. A phone's HEIC and JPEG of one scene come out alike.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use image::codecs::webp::WebPDecoder;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::error::{Error, Result};

/// The longest side we decode. A 200-megapixel phone photo (16,320 x 12,240) fits; SDXL trains
/// at 1024, so nothing larger is of use.
pub const MAX_SIDE: u32 = 16_384;

/// The most bytes a decoded picture may take (a 200-megapixel RGB photo is about 600 MB).
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        what: format!("cannot read this image: {why}"),
    }
}

/// The formats we read, as messages name them.
pub const FORMATS: &str = "JPEG, PNG, WebP, HEIC or TIFF";

fn unreadable(path: &Path, e: impl std::fmt::Display) -> Error {
    bad(
        path,
        format!("not a readable image (expected {FORMATS}: {e})"),
    )
}

/// Refuse a picture whose header claims more than we decode, stating the limits.
fn check_size(path: &Path, (w, h): (u32, u32), bytes: u64) -> Result<()> {
    if w > MAX_SIDE || h > MAX_SIDE || bytes > MAX_DECODED_BYTES {
        return Err(bad(
            path,
            format!(
                "its header claims {w} x {h} pixels ({} MiB decoded), over the limit of \
                 {MAX_SIDE} pixels a side and {} MiB: scale it down first",
                bytes >> 20,
                MAX_DECODED_BYTES >> 20
            ),
        ));
    }
    Ok(())
}

/// Is this the start of an ISO base media file (HEIC, HEIF, AVIF, MP4: an `ftyp` box first)?
fn is_isobmff(head: &[u8]) -> bool {
    head.len() >= 12 && &head[4..8] == b"ftyp"
}

/// Decode one picture upright (EXIF orientation, or HEIF's own transforms), in the colour
/// type of the file (callers convert: training wants RGB8, each scorer its reference's way).
/// 16-bit and grey pictures decode as such; an empty file, an animated WebP (which frame is
/// the subject?) and any format but PNG, JPEG, WebP, HEIC and TIFF are refused by name.
pub fn open(path: &Path) -> Result<DynamicImage> {
    let mut head = Vec::with_capacity(16);
    File::open(path)
        .map_err(|e| Error::io(path, e))?
        .take(16)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    if head.is_empty() {
        return Err(bad(path, "empty file"));
    }
    if is_isobmff(&head) {
        return open_heif(path);
    }
    let mut reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    // The header is read with no limits so that its claimed size can be reported; the limits
    // that bound the decode are set once the size is known to be acceptable.
    reader.no_limits();
    let mut decoder: Box<dyn ImageDecoder> = if reader.format() == Some(ImageFormat::WebP) {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let webp = WebPDecoder::new(BufReader::new(file)).map_err(|e| unreadable(path, e))?;
        if webp.has_animation() {
            return Err(bad(
                path,
                "an animated WebP: save the frame you want as a still PNG, JPEG or WebP",
            ));
        }
        Box::new(webp)
    } else {
        Box::new(reader.into_decoder().map_err(|e| unreadable(path, e))?)
    };
    check_size(path, decoder.dimensions(), decoder.total_bytes())?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    decoder
        .set_limits(limits)
        .map_err(|e| unreadable(path, e))?;
    let orientation = decoder.orientation().map_err(|e| unreadable(path, e))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| unreadable(path, e))?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// A HEIC/HEIF picture, decoded by libheif with the file's transforms (rotation, mirroring,
/// crop) applied; its size (after those transforms) is checked before decoding. A 10-bit
/// picture is brought down to 8 bits, as every photo trains in RGB8.
fn open_heif(path: &Path) -> Result<DynamicImage> {
    use image::{ImageBuffer, Rgb, Rgba};
    use libheif_rs::{ColorSpace, HeifContext, LibHeif, RgbChroma};
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let heif = LibHeif::new();
    let ctx = HeifContext::read_from_bytes(&bytes).map_err(|e| unreadable(path, e.message))?;
    let handle = ctx
        .primary_image_handle()
        .map_err(|e| unreadable(path, e.message))?;
    let (w, h) = (handle.width(), handle.height());
    let alpha = handle.has_alpha_channel();
    let channels: u64 = if alpha { 4 } else { 3 };
    check_size(path, (w, h), w as u64 * h as u64 * channels)?;
    let chroma = if alpha {
        RgbChroma::Rgba
    } else {
        RgbChroma::Rgb
    };
    // libheif's default options (transforms applied). Options are not passed: libheif-rs 0.20
    // frees them before the decode reads them. Asking for 8-bit interleaved RGB brings a
    // 10-bit picture down to 8 bits all the same.
    let img = heif
        .decode(&handle, ColorSpace::Rgb(chroma), None)
        .map_err(|e| unreadable(path, e.message))?;
    let planes = img.planes();
    let plane = planes
        .interleaved
        .ok_or_else(|| unreadable(path, "libheif returned no interleaved RGB plane"))?;
    let (pw, ph) = (plane.width as usize, plane.height as usize);
    let row = pw * channels as usize;
    let mut pixels = Vec::with_capacity(row * ph);
    for y in 0..ph {
        pixels.extend_from_slice(&plane.data[y * plane.stride..y * plane.stride + row]);
    }
    let wrong_size = || unreadable(path, "libheif returned a plane of another size");
    Ok(if alpha {
        DynamicImage::ImageRgba8(
            ImageBuffer::<Rgba<u8>, _>::from_raw(pw as u32, ph as u32, pixels)
                .ok_or_else(wrong_size)?,
        )
    } else {
        DynamicImage::ImageRgb8(
            ImageBuffer::<Rgb<u8>, _>::from_raw(pw as u32, ph as u32, pixels)
                .ok_or_else(wrong_size)?,
        )
    })
}
