//! TensorBoard event files (`OUT/tb/<adapter>/`): the loss, validation loss, learning rate and
//! gradient norm of each step as scalars, and the sample renders as images, so that runs sit
//! side by side in `tensorboard --logdir OUT/tb`.
//!
//! The format, to TensorBoard's spec: a file of TFRecords (little-endian u64 length, its
//! masked CRC-32C, the data, the data's masked CRC-32C), each holding one `tensorboard.Event`
//! protobuf, the first of which carries `file_version` `brain.Event:2`. The few fields written
//! are encoded here by hand (field numbers from `tensorboard/compat/proto/event.proto` and
//! `summary.proto`).
//!
//! Crash safety: records are only ever appended, each in one write, so a killed run leaves at
//! worst a torn last record, which TensorBoard's reader skips. Each process that logs a step
//! writes a new file (made at its first event: a run resumed at its end makes none);
//! a resumed run's file starts with a `SessionLog` START at its first step, by which
//! TensorBoard drops what a killed run had logged past its last checkpoint (the steps the
//! resumed run logs again), as PyTorch's `SummaryWriter(purge_step=...)` does.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One process's event file in a run's TensorBoard folder.
#[derive(Debug)]
pub struct EventWriter {
    dir: PathBuf,
    purge_from: Option<u64>,
    /// The file and its path, once the first event is written.
    file: Option<(File, PathBuf)>,
}

impl EventWriter {
    /// The event file of this process in `dir` (both made at the first event). `purge_from`:
    /// the first step this process logs when it continues an earlier one; what earlier files
    /// hold from that step on is then dropped by TensorBoard.
    pub fn new(dir: &Path, purge_from: Option<u64>) -> EventWriter {
        EventWriter {
            dir: dir.to_path_buf(),
            purge_from,
            file: None,
        }
    }

    /// Start the file: named in the order files are made (a sequence number first), which
    /// is the order TensorBoard reads them in; `file_version` first, then the purge.
    fn open(&mut self) -> Result<()> {
        let dir = &self.dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let seq = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("tfevents"))
            .count();
        let secs = now().floor() as u64;
        let path = dir.join(format!("events.out.tfevents.{seq:04}.{secs}.moslora"));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        self.file = Some((file, path));
        let mut first = Vec::new();
        field_double(&mut first, 1, now());
        field_bytes(&mut first, 3, b"brain.Event:2");
        self.record(&first)?;
        if let Some(step) = self.purge_from {
            let mut log = Vec::new();
            field_varint(&mut log, 1, 1); // SessionLog.status = START
            self.event(step, 7, &log)?;
        }
        Ok(())
    }

    /// Scalars (tag, value) of one step, in one event.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f32)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut value = Vec::new();
            field_bytes(&mut value, 1, tag.as_bytes());
            field_float(&mut value, 2, *v);
            field_bytes(&mut summary, 1, &value);
        }
        self.event(step, 5, &summary)
    }

    /// An encoded picture (PNG) of `width` x `height` RGB pixels under `tag`.
    pub fn image(
        &mut self,
        step: u64,
        tag: &str,
        png: &[u8],
        width: u32,
        height: u32,
    ) -> Result<()> {
        let mut image = Vec::new();
        field_varint(&mut image, 1, height as u64);
        field_varint(&mut image, 2, width as u64);
        field_varint(&mut image, 3, 3); // RGB
        field_bytes(&mut image, 4, png);
        let mut value = Vec::new();
        field_bytes(&mut value, 1, tag.as_bytes());
        field_bytes(&mut value, 4, &image);
        let mut summary = Vec::new();
        field_bytes(&mut summary, 1, &value);
        self.event(step, 5, &summary)
    }

    /// Make what was written durable (at checkpoints and at the end).
    pub fn sync(&mut self) -> Result<()> {
        match &self.file {
            Some((f, path)) => f.sync_data().map_err(|e| Error::io(path, e)),
            None => Ok(()),
        }
    }

    /// An event of `step` with its payload message in field `field` (5 summary, 7 session log).
    fn event(&mut self, step: u64, field: u32, payload: &[u8]) -> Result<()> {
        if self.file.is_none() {
            self.open()?;
        }
        let mut e = Vec::with_capacity(payload.len() + 24);
        field_double(&mut e, 1, now());
        field_varint(&mut e, 2, step);
        field_bytes(&mut e, field, payload);
        self.record(&e)
    }

    /// One TFRecord, in a single write.
    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut r = Vec::with_capacity(data.len() + 16);
        r.extend_from_slice(&len);
        r.extend_from_slice(&masked_crc(&len).to_le_bytes());
        r.extend_from_slice(data);
        r.extend_from_slice(&masked_crc(data).to_le_bytes());
        let (file, path) = self.file.as_mut().expect("opened before the first record");
        file.write_all(&r)
            .map_err(|e| crate::fsutil::no_space(Error::io(path, e), path, None))
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// TFRecord's masked CRC-32C (Castagnoli): rotated right by 15 bits plus a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u32, v: u64) {
    varint(out, (field as u64) << 3);
    varint(out, v);
}

fn field_double(out: &mut Vec<u8>, field: u32, v: f64) {
    varint(out, ((field as u64) << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn field_float(out: &mut Vec<u8>, field: u32, v: f32) {
    varint(out, ((field as u64) << 3) | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn field_bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    varint(out, ((field as u64) << 3) | 2);
    varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C's check value, and protobuf's own examples of its encoding.
    #[test]
    fn crc_and_wire_format() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let mut v = Vec::new();
        field_varint(&mut v, 1, 150);
        assert_eq!(v, [0x08, 0x96, 0x01]);
        let mut v = Vec::new();
        field_bytes(&mut v, 2, b"testing");
        assert_eq!(v, [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']);
        let mut v = Vec::new();
        field_float(&mut v, 2, 1.0);
        assert_eq!(v, [0x15, 0, 0, 0x80, 0x3f]);
    }
}
