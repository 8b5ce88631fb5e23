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
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        // Say where, so the one stray Latin-1 or UTF-16 byte can be found.
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
        Error::BadFile {
            path: path.to_path_buf(),
            what: format!(
                "not UTF-8 text: byte 0x{:02X} at line {line} (byte {at}) is not UTF-8; save \
                 the file as UTF-8",
                bytes[at]
            ),
        }
    })
}

/// Encode RGB8 as PNG with `tEXt` (or `iTXt`) chunks; deterministic (no timestamps), so re-rendering
/// the same pixels gives the same bytes.
pub fn png_bytes(img: &RgbImage, text: &[(&str, String)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            // tEXt holds Latin-1 only: a prompt in another script (or with an emoji) goes in
            // an iTXt chunk, UTF-8, rather than failing the render.
            let added = if v.chars().all(|c| u32::from(c) < 256) {
                enc.add_text_chunk(k.to_string(), v.clone())
            } else {
                enc.add_itxt_chunk(k.to_string(), v.clone())
            };
            added.map_err(|e| Error::msg(format!("PNG text chunk {k}: {e}")))?;
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

/// `dir/entry` for a path a file of ours names (a manifest's image, a kit's picture), or why
/// it is refused: an absolute path, a `..` step, or a link that resolves outside `dir` would
/// let a hand-edited file make us read (and copy into a kit to share) any file on the disk.
/// A missing file is not refused here: the caller says what it expected there.
pub fn inside(dir: &Path, entry: &str) -> std::result::Result<PathBuf, String> {
    use std::path::Component;
    let rel = Path::new(entry);
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "`{entry}` climbs out with `..`: expected a path inside the folder"
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "`{entry}` is absolute: expected a path inside the folder"
                ))
            }
        }
    }
    let path = dir.join(rel);
    // A link (of the file or a folder on the way) may point anywhere: judge where it lands,
    // or where the deepest part that exists lands when the file itself is missing.
    let Ok(root) = dir.canonicalize() else {
        return Ok(path);
    };
    let mut probe = path.clone();
    loop {
        if let Ok(real) = probe.canonicalize() {
            if !real.starts_with(&root) {
                return Err(format!(
                    "`{entry}` is a link to {}, outside the folder: copy the file in instead",
                    real.display()
                ));
            }
            return Ok(path);
        }
        if !probe.pop() {
            return Ok(path);
        }
    }
}
