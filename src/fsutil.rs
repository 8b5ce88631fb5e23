//! File-system helpers: nothing half-written is ever left where a good file was.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{Error, Result};

/// A sibling temporary path: same folder, so the final rename is atomic; the extension is
/// kept last, for writers that choose the format by it.
pub fn temp_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pid = std::process::id();
    match path.extension() {
        Some(ext) => path.with_file_name(format!(".{stem}.tmp-{pid}.{}", ext.to_string_lossy())),
        None => path.with_file_name(format!(".{stem}.tmp-{pid}")),
    }
}

/// Let `write` fill a temporary file, then rename it over `path`. On failure the temporary
/// file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = temp_path(path);
    let result =
        write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write bytes atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e))
    })
}

pub fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Encode RGB8 as PNG with `tEXt` chunks; deterministic (no timestamps), so re-rendering
/// the same pixels gives the same bytes.
pub fn png_bytes(img: &RgbImage, text: &[(&str, String)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_text_chunk(k.to_string(), v.clone())
                .map_err(|e| Error::msg(format!("PNG text chunk {k}: {e}")))?;
        }
        let mut w = enc
            .write_header()
            .map_err(|e| Error::msg(format!("PNG: {e}")))?;
        w.write_image_data(img.as_raw())
            .map_err(|e| Error::msg(format!("PNG: {e}")))?;
    }
    Ok(out)
}

/// Write a PNG atomically.
pub fn write_png(path: &Path, img: &RgbImage, text: &[(&str, String)]) -> Result<()> {
    write_bytes(path, &png_bytes(img, text)?)
}
