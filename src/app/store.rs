//! The app's state in SQLite (`DATA/app.sqlite`, WAL, synced commits): subjects, their
//! photos, models, and the job queue with each job's state. Every change is one committed
//! transaction, so the queue survives an app restart or a SIGKILL as it was.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::{Error, Result};

/// A job's states. `running` and `stopping` are the ones a dead app may leave behind.
pub const QUEUED: &str = "queued";
pub const RUNNING: &str = "running";
pub const STOPPING: &str = "stopping";
pub const STOPPED: &str = "stopped";
pub const DONE: &str = "done";
pub const FAILED: &str = "failed";

#[derive(Debug, Clone, Serialize)]
pub struct Subject {
    pub id: i64,
    pub name: String,
    pub class: String,
    pub identifier: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Photo {
    pub id: i64,
    pub subject: i64,
    /// The file's name in the subject's photo folder (made by the app, never by a client).
    pub file: String,
    /// The name it was uploaded under (shown, escaped; never used as a path).
    pub original: String,
    pub caption: String,
    pub width: i64,
    pub height: i64,
    /// The checks' findings, one a line (empty: none).
    pub checks: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Model {
    pub id: i64,
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub title: String,
    pub subject: i64,
    pub model: i64,
    pub preset: String,
    pub device: String,
    pub state: String,
    pub position: i64,
    pub pid: Option<i64>,
    pub exit_code: Option<i64>,
    pub message: String,
    pub created: i64,
}

pub struct Store {
    conn: Connection,
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::msg(format!("{}: {e}", path.display()))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

const JOB_COLUMNS: &str =
    "id, title, subject, model, preset, device, state, position, pid, exit_code, message, created";

fn job_row(r: &rusqlite::Row) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        title: r.get(1)?,
        subject: r.get(2)?,
        model: r.get(3)?,
        preset: r.get(4)?,
        device: r.get(5)?,
        state: r.get(6)?,
        position: r.get(7)?,
        pid: r.get(8)?,
        exit_code: r.get(9)?,
        message: r.get(10)?,
        created: r.get(11)?,
    })
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).map_err(|e| db_err(path, e))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS subjects (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
               class TEXT NOT NULL, identifier TEXT NOT NULL, created INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS photos (id INTEGER PRIMARY KEY,
               subject INTEGER NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
               file TEXT NOT NULL, original TEXT NOT NULL, caption TEXT NOT NULL DEFAULT '',
               width INTEGER NOT NULL, height INTEGER NOT NULL, checks TEXT NOT NULL DEFAULT '');
             CREATE TABLE IF NOT EXISTS models (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
               path TEXT NOT NULL UNIQUE);
             CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, title TEXT NOT NULL,
               subject INTEGER NOT NULL, model INTEGER NOT NULL, preset TEXT NOT NULL,
               device TEXT NOT NULL, state TEXT NOT NULL, position INTEGER NOT NULL,
               pid INTEGER, exit_code INTEGER, message TEXT NOT NULL DEFAULT '',
               created INTEGER NOT NULL);",
        )
        .map_err(|e| db_err(path, e))?;
        Ok(Store { conn })
    }

    fn e(&self, e: rusqlite::Error) -> Error {
        Error::msg(format!("the app's database: {e}"))
    }

    // Subjects and photos.

    pub fn add_subject(&self, name: &str, class: &str, identifier: &str) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO subjects (name, class, identifier, created) VALUES (?1, ?2, ?3, ?4)",
                params![name, class, identifier, now()],
            )
            .map_err(|e| self.e(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn update_subject(&self, id: i64, name: &str, class: &str, identifier: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE subjects SET name = ?2, class = ?3, identifier = ?4 WHERE id = ?1",
                params![id, name, class, identifier],
            )
            .map_err(|e| self.e(e))?;
        Ok(())
    }

    pub fn subjects(&self) -> Result<Vec<Subject>> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, class, identifier FROM subjects ORDER BY id")
            .map_err(|e| self.e(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(Subject {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    class: r.get(2)?,
                    identifier: r.get(3)?,
                })
            })
            .map_err(|e| self.e(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.e(e))
    }

    pub fn subject(&self, id: i64) -> Result<Option<Subject>> {
        Ok(self.subjects()?.into_iter().find(|s| s.id == id))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn add_photo(
        &self,
        subject: i64,
        file: &str,
        original: &str,
        width: u32,
        height: u32,
        checks: &str,
    ) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO photos (subject, file, original, width, height, checks)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![subject, file, original, width, height, checks],
            )
            .map_err(|e| self.e(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn photos(&self, subject: i64) -> Result<Vec<Photo>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, subject, file, original, caption, width, height, checks FROM photos
                 WHERE subject = ?1 ORDER BY id",
            )
            .map_err(|e| self.e(e))?;
        let rows = st
            .query_map([subject], |r| {
                Ok(Photo {
                    id: r.get(0)?,
                    subject: r.get(1)?,
                    file: r.get(2)?,
                    original: r.get(3)?,
                    caption: r.get(4)?,
                    width: r.get(5)?,
                    height: r.get(6)?,
                    checks: r.get(7)?,
                })
            })
            .map_err(|e| self.e(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.e(e))
    }

    pub fn photo(&self, id: i64) -> Result<Option<Photo>> {
        let subject: Option<i64> = self
            .conn
            .query_row("SELECT subject FROM photos WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.e(e))?;
        match subject {
            Some(s) => Ok(self.photos(s)?.into_iter().find(|p| p.id == id)),
            None => Ok(None),
        }
    }

    pub fn set_caption(&self, photo: i64, caption: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE photos SET caption = ?2 WHERE id = ?1",
                params![photo, caption],
            )
            .map_err(|e| self.e(e))?;
        Ok(())
    }

    pub fn remove_photo(&self, photo: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM photos WHERE id = ?1", [photo])
            .map_err(|e| self.e(e))?;
        Ok(())
    }

    // Models.

    pub fn add_model(&self, name: &str, path: &Path) -> Result<i64> {
        let p = path.to_string_lossy();
        self.conn
            .execute(
                "INSERT OR IGNORE INTO models (name, path) VALUES (?1, ?2)",
                params![name, p],
            )
            .map_err(|e| self.e(e))?;
        self.conn
            .query_row("SELECT id FROM models WHERE path = ?1", [p], |r| r.get(0))
            .map_err(|e| self.e(e))
    }

    pub fn models(&self) -> Result<Vec<Model>> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, path FROM models ORDER BY id")
            .map_err(|e| self.e(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(Model {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    path: r.get(2)?,
                })
            })
            .map_err(|e| self.e(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.e(e))
    }

    pub fn model(&self, id: i64) -> Result<Option<Model>> {
        Ok(self.models()?.into_iter().find(|m| m.id == id))
    }

    // Jobs.

    pub fn add_job(
        &self,
        title: &str,
        subject: i64,
        model: i64,
        preset: &str,
        device: &str,
    ) -> Result<i64> {
        let last: i64 = self
            .conn
            .query_row("SELECT COALESCE(MAX(position), 0) FROM jobs", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.e(e))?;
        self.conn
            .execute(
                "INSERT INTO jobs (title, subject, model, preset, device, state, position, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    title,
                    subject,
                    model,
                    preset,
                    device,
                    QUEUED,
                    last + 1,
                    now()
                ],
            )
            .map_err(|e| self.e(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn jobs(&self) -> Result<Vec<Job>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs ORDER BY position, id"
            ))
            .map_err(|e| self.e(e))?;
        let rows = st.query_map([], job_row).map_err(|e| self.e(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.e(e))
    }

    pub fn job(&self, id: i64) -> Result<Option<Job>> {
        self.conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_row,
            )
            .optional()
            .map_err(|e| self.e(e))
    }

    /// Sets a job's state (and pid, exit code and message where given).
    pub fn set_state(
        &self,
        id: i64,
        state: &str,
        pid: Option<i64>,
        exit_code: Option<i64>,
        message: &str,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET state = ?2, pid = ?3, exit_code = ?4, message = ?5 WHERE id = ?1",
                params![id, state, pid, exit_code, message],
            )
            .map_err(|e| self.e(e))?;
        Ok(())
    }

    /// Changes `from` to `to` only where the job is in `from`; whether it was.
    pub fn transition(&self, id: i64, from: &[&str], to: &str) -> Result<bool> {
        let Some(j) = self.job(id)? else {
            return Ok(false);
        };
        if !from.contains(&j.state.as_str()) {
            return Ok(false);
        }
        self.conn
            .execute(
                "UPDATE jobs SET state = ?2 WHERE id = ?1 AND state = ?3",
                params![id, to, j.state],
            )
            .map_err(|e| self.e(e))
            .map(|n| n == 1)
    }

    /// Moves a waiting job one place up (`-1`) or down (`+1`) among the queue.
    pub fn move_job(&self, id: i64, by: i64) -> Result<()> {
        let jobs = self.jobs()?;
        let Some(i) = jobs.iter().position(|j| j.id == id) else {
            return Ok(());
        };
        let j = i as i64 + by;
        if j < 0 || j as usize >= jobs.len() {
            return Ok(());
        }
        let (a, b) = (&jobs[i], &jobs[j as usize]);
        let tx = self.conn.unchecked_transaction().map_err(|e| self.e(e))?;
        tx.execute(
            "UPDATE jobs SET position = ?2 WHERE id = ?1",
            params![a.id, b.position],
        )
        .map_err(|e| self.e(e))?;
        tx.execute(
            "UPDATE jobs SET position = ?2 WHERE id = ?1",
            params![b.id, a.position],
        )
        .map_err(|e| self.e(e))?;
        tx.commit().map_err(|e| self.e(e))
    }

    pub fn remove_job(&self, id: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM jobs WHERE id = ?1", [id])
            .map_err(|e| self.e(e))?;
        Ok(())
    }
}

/// The folders under `DATA`.
pub fn subject_dir(data: &Path, id: i64) -> PathBuf {
    data.join("subjects").join(id.to_string())
}
pub fn job_dir(data: &Path, id: i64) -> PathBuf {
    data.join("jobs").join(id.to_string())
}
