//! Opening pictures that users hand us (photos, renders to score or to blind): the size the
//! header claims is checked before a pixel is decoded, so a file that claims 60,000 x 60,000
//! pixels is refused without allocating for it, and a still picture is all we accept.

use std::fs::File;
use std::io::BufReader;
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

fn unreadable(path: &Path, e: impl std::fmt::Display) -> Error {
    bad(
        path,
        format!("not a readable image (expected PNG, JPEG or WebP: {e})"),
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

/// Decode one picture with its EXIF orientation applied, in the colour type of the file
/// (callers convert: training wants RGB8, each scorer its reference's way). 16-bit and grey
/// pictures decode as such; an animated WebP is refused (which frame is the subject?), as is
/// any format but PNG, JPEG and WebP.
pub fn open(path: &Path) -> Result<DynamicImage> {
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
