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
/// file is removed and `path` is untouched; a full disk becomes [`Error::NoSpace`].
///
/// The file is flushed to the disk before the rename and the folder after it, so a crash or a
/// power cut leaves either the old file or the whole new one, never a renamed empty one.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    write_atomic_sized(path, None, write)
}

/// [`write_atomic`] of `needed` bytes (when known), which the full-disk error then states.
fn write_atomic_sized(
    path: &Path,
    needed: Option<u64>,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(|e| no_space(Error::io(dir, e), path, needed))?;
    }
    let tmp = temp_path(path);
    let result = write(&tmp)
        .and_then(|()| sync(&tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| no_space(e, path, needed))?;
    if let Some(dir) = dir {
        // Some file systems cannot sync a folder; the file itself is already on the disk.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Give a written file the permissions `File::create` would have given it (0666 less the
/// umask). The safetensors crate writes through a private (0600) file, and an adapter the
/// artist shares or a model another user loads must be readable like any other file. (Files
/// that must stay private, like a study's links, are made so by their own writers.)
pub fn plain_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Some(mask) = umask() else { return };
    // Only plain files: a checkpoint's folder keeps its own mode.
    if path.is_file() {
        // A file system without Unix modes keeps what it has: nothing to report.
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666 & !mask));
    }
}

/// The process's umask, as Linux reports it in /proc/self/status (read, never set: setting
/// it to read it would race with other threads creating files).
fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

/// Flush a written file's data to the disk.
pub fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Turn an I/O error that means "the disk is full" (or a quota, or a file-size limit) into
/// [`Error::NoSpace`] about `path`, the file the user knows; any other error is returned as
/// it is.
pub fn no_space(e: Error, path: &Path, needed: Option<u64>) -> Error {
    use std::io::ErrorKind;
    let reason = match &e {
        Error::Io { source, .. } => match source.kind() {
            ErrorKind::StorageFull => "no space left on device",
            ErrorKind::QuotaExceeded => "disk quota exceeded",
            ErrorKind::FileTooLarge => "file size limit reached",
            _ => return e,
        },
        _ => return e,
    };
    Error::NoSpace {
        path: path.to_path_buf(),
        reason,
        needed,
        free: free_space(path),
    }
}

/// Bytes free to an unprivileged user on the file system holding `path` (or its nearest
/// existing ancestor).
pub fn free_space(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is written by statvfs before it is read.
    let st = unsafe {
        if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Is `name` a temporary of [`temp_path`] (or a checkpoint's `.NAME.tmp-PID` folder) whose
/// writer is no longer running? Such leftovers exist only when a process was killed outright
/// (SIGKILL, a power cut) mid-write.
fn dead_temporary(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((_, tail)) = rest.rsplit_once(".tmp-") else {
        return false;
    };
    let digits = tail.split('.').next().unwrap_or("");
    let Ok(pid) = digits.parse::<i32>() else {
        return false;
    };
    pid > 0 && pid as u32 != std::process::id() && !process_alive(pid)
}

/// Is process `pid` running (or a zombie not yet reaped)?
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Remove, under `dir` (recursively), the temporaries that killed processes left behind.
/// Returns how many were removed. Files and folders of live writers are left alone.
pub fn remove_dead_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(kind) = e.file_type() else { continue };
        if dead_temporary(&name) {
            let gone = if kind.is_dir() {
                std::fs::remove_dir_all(e.path())
            } else {
                std::fs::remove_file(e.path())
            };
            removed += usize::from(gone.is_ok());
        } else if kind.is_dir() {
            removed += remove_dead_temporaries(&e.path());
        }
    }
    removed
}

/// Write bytes atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_sized(path, Some(bytes.len() as u64), |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e))
    })
}

/// Write bytes atomically into an owner-only file (mode 0600, whatever the umask): a study's
/// key and links. The temporary is private from the moment it exists, so the secret is never
/// readable by others, not even between its creation and the rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_sized(path, Some(bytes.len() as u64), |tmp| {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .map_err(|e| Error::io(tmp, e))?;
        // A leftover temporary of the same name keeps its mode on opening: set it anyway.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| f.write_all(bytes))
            .map_err(|e| Error::io(tmp, e))
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

/// The `tEXt` value of `keyword` in a PNG's header chunks, read without decoding the pixels;
/// None when the file is missing, not a PNG, or lacks it.
pub fn png_text(path: &Path, keyword: &str) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_ignore_text_chunk(false);
    let reader = decoder.read_info().ok()?;
    reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == keyword)
        .map(|c| c.text.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomically_written_files_get_ordinary_permissions() {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mask = umask().expect("Linux reports the umask");
        let dir = std::env::temp_dir().join(format!("fsutil-mode-{}", std::process::id()));
        let path = dir.join("adapter.safetensors");
        // A writer that makes its file private, as the safetensors crate does.
        write_atomic(&path, |tmp| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(tmp)
                .map(drop)
                .map_err(|e| Error::io(tmp, e))?;
            plain_permissions(tmp);
            Ok(())
        })
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, 0o666 & !mask, "mode {mode:o} with umask {mask:o}");
    }

    #[test]
    fn private_files_are_owner_only_even_over_readable_ones() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("fsutil-private-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("S.key.json");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // A readable file there already, and a readable leftover temporary of this process.
        for p in [path.clone(), temp_path(&path)] {
            std::fs::write(&p, b"old").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        write_private(&path, b"secret").unwrap();
        let (got, bytes) = (mode(&path), std::fs::read(&path).unwrap());
        let left = temp_path(&path).exists();
        let fresh = dir.join("fresh.txt");
        write_private(&fresh, b"x").unwrap();
        let got_fresh = mode(&fresh);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got, 0o600, "replaced file: mode {got:o}");
        assert_eq!(got_fresh, 0o600, "new file: mode {got_fresh:o}");
        assert_eq!(bytes, b"secret");
        assert!(!left, "the temporary was left behind");
    }

    #[test]
    fn only_temporaries_of_dead_writers_are_recognised() {
        // PID 0x7fff_fff0 is above any pid_max Linux allows, so no such process runs.
        let dead = 0x7fff_fff0;
        for name in [
            format!(".adapter.tmp-{dead}.safetensors"),
            format!(".checkpoint.tmp-{dead}"),
            format!(".a.b.tmp-{dead}.png"),
        ] {
            assert!(dead_temporary(&name), "{name}");
        }
        let me = std::process::id();
        for name in [
            format!(".adapter.tmp-{me}.safetensors"),
            "adapter.safetensors".to_string(),
            format!("adapter.tmp-{dead}.png"),
            format!(".checkpoint.old-{dead}"),
            ".x.tmp-abc.png".to_string(),
        ] {
            assert!(!dead_temporary(&name), "{name}");
        }
    }
}
