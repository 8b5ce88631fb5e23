//! Caption files, kohya's convention: `photo.txt` beside `photo.jpg` holds that photo's
//! training prompt ("[V] dog wearing a red collar"), used instead of `subject.prompt` for it.
//! A DreamBooth user adds one when a photo shows something the class prompt does not say, so
//! that the collar is not learned as part of the dog. `[V]` and `{class}` are filled in as in
//! every prompt.

use std::path::{Path, PathBuf};

use super::dataset::Photo;
use crate::config::Subject;
use crate::error::{Error, Result};

/// A caption longer than this is not a caption (and is not read whole into memory).
const MAX_BYTES: u64 = 16 * 1024;

/// The caption file that goes with a photo: same folder, same stem, `.txt`.
pub fn caption_path(photo: &Path) -> PathBuf {
    photo.with_extension("txt")
}

/// Which byte order UTF-16 text without a byte-order mark seems to have: Windows' Notepad and
/// PowerShell save "Unicode" as UTF-16, and a prompt is mostly ASCII, so every other byte is 0.
fn utf16_without_bom(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() < 2 || !bytes.len().is_multiple_of(2) {
        return None;
    }
    let zeros = |start: usize| {
        bytes
            .iter()
            .skip(start)
            .step_by(2)
            .filter(|&&b| b == 0)
            .count()
    };
    let half = bytes.len() / 4;
    if zeros(1) > half && zeros(0) == 0 {
        Some("little-endian")
    } else if zeros(0) > half && zeros(1) == 0 {
        Some("big-endian")
    } else {
        None
    }
}

/// A caption file's text: UTF-8 (a UTF-8 byte-order mark is dropped later), or UTF-16 with a
/// byte-order mark (what Windows calls "Unicode"). UTF-16 without one, or any other encoding,
/// is refused naming it.
fn decode(path: &Path, bytes: Vec<u8>) -> Result<String> {
    let utf16 = |rest: &[u8], big: bool| {
        let units = rest.chunks(2).map(|c| {
            let pair = [c[0], *c.get(1).unwrap_or(&0)];
            if big {
                u16::from_be_bytes(pair)
            } else {
                u16::from_le_bytes(pair)
            }
        });
        if !rest.len().is_multiple_of(2) {
            return Err(Error::msg(format!(
                "{}: the caption starts with a UTF-16 byte-order mark but has an odd number of \
                 bytes: save it as UTF-8",
                path.display()
            )));
        }
        char::decode_utf16(units)
            .collect::<std::result::Result<String, _>>()
            .map_err(|e| {
                Error::msg(format!(
                    "{}: the caption is not valid UTF-16 ({e}): save it as UTF-8",
                    path.display()
                ))
            })
    };
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        return utf16(rest, false);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        return utf16(rest, true);
    }
    if let Some(order) = utf16_without_bom(&bytes) {
        return Err(Error::msg(format!(
            "{}: the caption is UTF-16 ({order}) text without a byte-order mark: save it as \
             UTF-8 (in Notepad: Save as, Encoding UTF-8)",
            path.display()
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::msg(format!(
            "{}: the caption is not UTF-8 text (invalid byte at offset {}): save it as UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// The caption of the photo at `photo`, if it has a caption file: trimmed, from UTF-8 (or
/// UTF-16 with a byte-order mark). An empty, oversized or otherwise encoded file is an error
/// naming it.
pub fn read_caption(photo: &Path) -> Result<Option<String>> {
    let path = caption_path(photo);
    if !path.is_file() {
        return Ok(None);
    }
    let len = std::fs::metadata(&path)
        .map_err(|e| Error::io(&path, e))?
        .len();
    if len > MAX_BYTES {
        return Err(Error::msg(format!(
            "{}: the caption file is {len} bytes; a caption is one prompt (at most {MAX_BYTES} \
             bytes)",
            path.display()
        )));
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let text = decode(&path, bytes)?;
    // A byte-order mark is how some editors say "UTF-8"; it is not part of the prompt.
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.is_empty() {
        return Err(Error::msg(format!(
            "{}: the caption file is empty: write the photo's prompt (e.g. \"a photo of [V] \
             {{class}} wearing a red collar\") or delete the file",
            path.display()
        )));
    }
    // kohya's captions are one line; several lines are joined as one prompt.
    Ok(Some(text.split_whitespace().collect::<Vec<_>>().join(" ")))
}

/// The photos' captions, filled in (`[V]`, `{class}`): the distinct prompts, and for each
/// photo the index of its prompt (None: the run's own prompt). A caption that names neither
/// `[V]` nor the identifier gets a warning through `note`: the photo would not teach the
/// identifier.
pub fn captions(
    photos: &[Photo],
    subject: &Subject,
    note: &mut dyn FnMut(&str),
) -> Result<(Vec<String>, Vec<Option<usize>>)> {
    let mut prompts: Vec<String> = Vec::new();
    let mut of_photo = Vec::new();
    for p in photos {
        let Some(raw) = read_caption(&p.path)? else {
            of_photo.push(None);
            continue;
        };
        let names_subject = raw.contains("[V]")
            || raw
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w == subject.identifier);
        if !names_subject {
            note(&format!(
                "warning (caption without the subject): {} says {raw:?}, with neither \"[V]\" \
                 nor {:?}: that photo will not teach the identifier",
                caption_path(&p.path).display(),
                subject.identifier
            ));
        }
        let filled = subject.fill(&raw);
        let i = match prompts.iter().position(|q| *q == filled) {
            Some(i) => i,
            None => {
                prompts.push(filled);
                prompts.len() - 1
            }
        };
        of_photo.push(Some(i));
    }
    Ok((prompts, of_photo))
}
