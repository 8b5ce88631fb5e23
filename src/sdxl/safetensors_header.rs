//! The header of a `.safetensors` file, checked before the `safetensors` crate reads it, so
//! that a damaged or hostile file is refused with a line that names the tensor and says what
//! is wrong (the crate's own errors name neither, and it keeps the last of two tensors with
//! the same name). Nothing here allocates by a length the file claims: the header is a slice
//! of the memory map, bounded by the file's real size.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use safetensors::tensor::TensorInfo;
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::error::{Error, Result};

/// The largest header the format allows (the `safetensors` crate's own limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The header's top-level entries in file order, duplicates kept (a map would drop them).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry::<String, serde_json::Value>()? {
                    out.push(kv);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Check the whole file `bytes`: the header length, the JSON, each tensor's dtype, shape and
/// byte span, that no two tensors share a name or overlap, and that the data is exactly
/// covered.
pub fn check(bytes: &[u8], path: &Path) -> Result<()> {
    let bad = |what: String| Error::BadFile {
        path: path.to_path_buf(),
        what: format!("not a valid safetensors file: {what}"),
    };
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(bad(format!(
            "{} bytes, too short to hold the 8-byte header length",
            bytes.len()
        )));
    };
    let claimed = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    let rest = (bytes.len() - 8) as u64;
    if claimed > MAX_HEADER_BYTES || claimed > rest {
        return Err(bad(format!(
            "the header claims {claimed} bytes, but the file holds {rest} bytes after the \
             length (and the format allows at most {MAX_HEADER_BYTES})"
        )));
    }
    let header = &bytes[8..8 + claimed as usize];
    let data_len = rest - claimed;
    let text =
        std::str::from_utf8(header).map_err(|e| bad(format!("the header is not UTF-8 ({e})")))?;
    let Entries(entries) = serde_json::from_str(text)
        .map_err(|e| bad(format!("the header is not a JSON object of tensors ({e})")))?;

    let mut seen = HashSet::new();
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(entries.len());
    for (name, value) in &entries {
        if !seen.insert(name.as_str()) {
            return Err(bad(format!(
                "the name `{name}` appears twice in the header"
            )));
        }
        if name == "__metadata__" {
            continue;
        }
        let info: TensorInfo = serde_json::from_value(value.clone()).map_err(|e| {
            bad(format!(
                "tensor `{name}`: expected {{\"dtype\", \"shape\", \"data_offsets\"}} ({e})"
            ))
        })?;
        let (start, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        let bits = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize() as u128, |n, &d| {
                n.checked_mul(d as u128)
            });
        let span = end.checked_sub(start);
        let fits = match (bits, span) {
            (Some(bits), Some(span)) => bits % 8 == 0 && bits / 8 == span as u128,
            _ => false,
        };
        if !fits {
            let need = match bits {
                Some(b) if b % 8 == 0 => format!("{} bytes", b / 8),
                Some(b) => format!("{b} bits, not whole bytes"),
                None => "more bytes than can be counted".to_string(),
            };
            let has = span.map_or("a negative length".to_string(), |s| format!("{s} bytes"));
            return Err(bad(format!(
                "tensor `{name}` is {:?} {:?}, which takes {need}, but its data_offsets \
                 [{start}, {end}] span {has}",
                info.dtype, info.shape
            )));
        }
        spans.push((start, end, name));
    }
    spans.sort_unstable();
    let mut at = 0u64;
    let mut previous: Option<&str> = None;
    for &(start, end, name) in &spans {
        if start != at {
            let what = if start < at {
                "overlaps"
            } else {
                "leaves a gap after"
            };
            return Err(bad(format!(
                "tensor `{name}` (bytes {start}..{end}) {what} {}",
                previous.map_or("the start of the data".to_string(), |p| format!(
                    "tensor `{p}`, which ends at byte {at}"
                ))
            )));
        }
        at = end;
        previous = Some(name);
    }
    if at != data_len {
        return Err(bad(format!(
            "the tensors cover {at} bytes of data, but the file holds {data_len} after the header"
        )));
    }
    Ok(())
}
