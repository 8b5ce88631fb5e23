//! One server per study: an exclusive OS lock on `STUDY.votes.lock` beside the database,
//! held for the server's life and released by the kernel however it ends (SIGKILL included),
//! so a stale lock never needs cleaning up. The file names the holder's pid and address, for
//! the refusal a second server prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct ServerLock {
    file: File,
    path: PathBuf,
}

impl ServerLock {
    /// Take the lock of `path`, or say who holds it.
    pub fn acquire(path: &Path, study: &Path) -> Result<ServerLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.split_whitespace().collect::<Vec<_>>().join(" ");
                return Err(Error::msg(format!(
                    "{} is already being served ({}; lock {}): stop that server first",
                    study.display(),
                    if holder.is_empty() {
                        "by a server that is starting".to_string()
                    } else {
                        holder
                    },
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(path, e)),
        }
        let mut lock = ServerLock {
            file,
            path: path.to_path_buf(),
        };
        lock.record(&format!("pid {}, starting", std::process::id()))?;
        Ok(lock)
    }

    /// Say who holds the lock (pid, address), for a second server's refusal.
    pub fn record(&mut self, holder: &str) -> Result<()> {
        let path = self.path.clone();
        let io = |e| Error::io(&path, e);
        self.file.set_len(0).map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.write_all(holder.as_bytes()).map_err(io)?;
        self.file.write_all(b"\n").map_err(io)?;
        self.file.flush().map_err(io)
    }
}
