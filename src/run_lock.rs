//! One run per output folder: a lock file (`.moslora.lock`) held with an advisory OS lock
//! (`flock`) for as long as the run lives. The OS drops the lock when the process ends, however
//! it ends (SIGKILL, a crash, a node reboot), so a dead run's lock never blocks the next one;
//! the file's text only says who holds it, for the message the second run prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil;

/// The lock file's name inside the folder it guards.
pub const LOCK_FILE: &str = ".moslora.lock";

/// A held lock; dropping it (or the process ending) lets the next run in.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    /// The outermost folder this lock made, if `dir` did not exist: a run refused before it
    /// wrote anything (bad photos, a missing model) leaves no empty output behind.
    made: Option<PathBuf>,
}

impl RunLock {
    /// Lock `dir` (made if missing) for `command` (what the holder is doing, as the other run
    /// will read it), or fail at once with [`Error::Locked`] naming the live holder.
    ///
    /// Taking the lock also clears the temporaries a killed run left in `dir`.
    pub fn acquire(dir: &Path, command: &str) -> Result<RunLock> {
        let made = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .last()
            .map(Path::to_path_buf);
        std::fs::create_dir_all(dir).map_err(|e| fsutil::no_space(Error::io(dir, e), dir, None))?;
        let path = dir.join(LOCK_FILE);
        // Never truncated on open: the holder's text must survive a second run opening it.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| fsutil::no_space(Error::io(&path, e), &path, None))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    dir: dir.to_path_buf(),
                    holder: holder(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::msg(format!(
                    "{}: cannot lock the output folder ({e})",
                    path.display()
                )))
            }
        }
        let text = format!(
            "pid {}, `{command}`, on {} since {} UTC\n",
            std::process::id(),
            hostname(),
            crate::runtime::iso_date_now().replace('T', " ")
        );
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(text.as_bytes())
        };
        // The OS lock is what guards the folder; the text only names the holder. A full
        // disk must not stop a run here, before it can report what it failed to write.
        let _ = write(&mut file);
        fsutil::remove_dead_temporaries(dir);
        Ok(RunLock { file, path, made })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Emptied, not removed: removing it would let a run that opened the old file and a run
        // that creates a new one both hold "the" lock. The OS lock goes with the file handle.
        let _ = self.file.set_len(0);
        // A folder this run made and left holding only the lock (and empty folders it made
        // before it was refused) is taken away again. A second run can only be refused on it
        // meanwhile (the lock is still held here).
        let Some(made) = &self.made else { return };
        let Some(dir) = self.path.parent() else {
            return;
        };
        let only_lock = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .all(|e| e.file_name() == LOCK_FILE || holds_no_file(&e.path()))
            })
            .unwrap_or(false);
        if only_lock && std::fs::remove_file(&self.path).is_ok() {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let _ = remove_empty_tree(&e.path());
                }
            }
            for d in dir.ancestors() {
                if std::fs::remove_dir(d).is_err() || d == made.as_path() {
                    break;
                }
            }
        }
    }
}

/// A real folder (not a link) holding no file at any depth, only folders.
fn holds_no_file(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    meta.is_dir()
        && std::fs::read_dir(path)
            .map(|entries| entries.flatten().all(|e| holds_no_file(&e.path())))
            .unwrap_or(false)
}

/// Remove a tree of empty folders, deepest first (`remove_dir` never removes a file).
fn remove_empty_tree(path: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(path)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_tree(&e.path())?;
        }
    }
    std::fs::remove_dir(path)
}

/// Who holds the lock, from its text. The holder writes it just after locking, so a run
/// arriving in between may briefly find it empty: wait a moment for it.
fn holder(file: &mut File) -> String {
    for _ in 0..20 {
        let mut text = String::new();
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.take(4096).read_to_string(&mut text));
        if read.is_ok() && !text.trim().is_empty() {
            return text.trim().to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    "a process that has not said who it is".to_string()
}

/// This machine's name, for a lock seen from another node of a shared file system.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "an unknown host".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_freed_by_the_first_dropping() {
        let dir = std::env::temp_dir().join(format!("moslora-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = RunLock::acquire(&dir, "moslora train a.yaml").unwrap();
        let e = RunLock::acquire(&dir, "moslora train b.yaml").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id()))
                && text.contains("moslora train a.yaml"),
            "{text}"
        );
        drop(first);
        let again = RunLock::acquire(&dir, "moslora train b.yaml").unwrap();
        drop(again);
        // The lock made the folder and nothing else was written: it is gone again.
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
