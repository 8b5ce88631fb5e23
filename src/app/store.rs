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

/// The job table's definition. `AUTOINCREMENT`: see [`Store::never_reuse_job_numbers`].
const JOBS_TABLE: &str = "id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL,
    subject INTEGER NOT NULL, model INTEGER NOT NULL, preset TEXT NOT NULL,
    device TEXT NOT NULL, state TEXT NOT NULL, position INTEGER NOT NULL,
    pid INTEGER, exit_code INTEGER, message TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL";

/// The job numbers that name something under `DATA`: `jobs/N`, `studies/N`, `exports/jobN-*`.
fn used_job_numbers(data: &Path) -> Vec<i64> {
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(data.join(dir))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let folders = ["jobs", "studies"]
        .into_iter()
        .flat_map(names)
        .filter_map(|n| n.parse::<i64>().ok());
    let exports = names("exports").into_iter().filter_map(|n| {
        n.strip_prefix("job")?
            .split_once('-')?
            .0
            .parse::<i64>()
            .ok()
    });
    folders.chain(exports).collect()
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
             CREATE TABLE IF NOT EXISTS jobs (JOBS_TABLE);"
                .replace("JOBS_TABLE", JOBS_TABLE)
                .as_str(),
        )
        .map_err(|e| db_err(path, e))?;
        let store = Store { conn };
        let data = path.parent().unwrap_or(Path::new("."));
        store
            .never_reuse_job_numbers(data)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        Ok(store)
    }

    /// A job's number names its folders (`jobs/N`, `studies/N`, `exports/jobN-*`), and a
    /// study's folder outlives its job (the raters' answers are kept): a number used once is
    /// never given again. SQLite's plain `INTEGER PRIMARY KEY` hands out the highest number
    /// plus one, so removing the newest job gave its number, and its study, to the next one;
    /// `AUTOINCREMENT` does not. A database made before that is moved over to it (in one
    /// transaction), and the counter starts above every number already on disk, so a
    /// database lost or remade beside old folders cannot hand them out either.
    fn never_reuse_job_numbers(&self, data: &Path) -> rusqlite::Result<()> {
        let sql: String = self.conn.query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
            [],
            |r| r.get(0),
        )?;
        if !sql.contains("AUTOINCREMENT") {
            self.conn.execute_batch(
                &"BEGIN IMMEDIATE;
                 CREATE TABLE jobs_numbered (JOBS_TABLE);
                 INSERT INTO jobs_numbered SELECT * FROM jobs;
                 DROP TABLE jobs;
                 ALTER TABLE jobs_numbered RENAME TO jobs;
                 COMMIT;"
                    .replace("JOBS_TABLE", JOBS_TABLE),
            )?;
        }
        let on_disk = used_job_numbers(data).into_iter().max().unwrap_or(0);
        let tx = self.conn.unchecked_transaction()?;
        let counter: Option<i64> = tx
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'jobs'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let in_table: i64 =
            tx.query_row("SELECT COALESCE(MAX(id), 0) FROM jobs", [], |r| r.get(0))?;
        let want = on_disk.max(in_table);
        if want > counter.unwrap_or(0) {
            tx.execute("DELETE FROM sqlite_sequence WHERE name = 'jobs'", [])?;
            tx.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?1)",
                [want],
            )?;
        }
        tx.commit()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("moslora-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn add(s: &Store) -> i64 {
        s.add_job("t", 1, 1, "toy", "cpu").unwrap()
    }

    #[test]
    fn a_removed_jobs_number_is_not_given_again() {
        let dir = scratch("numbers");
        let s = Store::open(&dir.join("app.sqlite")).unwrap();
        assert_eq!((add(&s), add(&s)), (1, 2));
        s.remove_job(2).unwrap();
        assert_eq!(add(&s), 3);
        s.remove_job(3).unwrap();
        drop(s);
        // Nor after a restart.
        let s = Store::open(&dir.join("app.sqlite")).unwrap();
        assert_eq!(add(&s), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_older_database_moves_over_and_counts_above_the_folders_on_disk() {
        let dir = scratch("older");
        let db = dir.join("app.sqlite");
        {
            // The table as the app made it before: numbers handed out as MAX(id) + 1.
            let c = Connection::open(&db).unwrap();
            c.execute_batch(
                "CREATE TABLE jobs (id INTEGER PRIMARY KEY, title TEXT NOT NULL,
                   subject INTEGER NOT NULL, model INTEGER NOT NULL, preset TEXT NOT NULL,
                   device TEXT NOT NULL, state TEXT NOT NULL, position INTEGER NOT NULL,
                   pid INTEGER, exit_code INTEGER, message TEXT NOT NULL DEFAULT '',
                   created INTEGER NOT NULL);
                 INSERT INTO jobs VALUES (1, 'first', 1, 1, 'toy', 'cpu', 'done', 1, NULL, 0,
                   'kept', 5);
                 INSERT INTO jobs VALUES (2, 'second', 1, 1, 'toy', 'cpu', 'queued', 2, NULL,
                   NULL, '', 6);",
            )
            .unwrap();
        }
        // Job 7 was removed, its study (and raters' answers) kept; job 9's export is left.
        std::fs::create_dir_all(dir.join("studies/7/study")).unwrap();
        std::fs::create_dir_all(dir.join("jobs/2")).unwrap();
        std::fs::create_dir_all(dir.join("exports")).unwrap();
        std::fs::write(dir.join("exports/job9-lora-kohya.safetensors"), b"x").unwrap();
        let s = Store::open(&db).unwrap();
        let sql: String = s
            .conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'jobs'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(sql.contains("AUTOINCREMENT"), "{sql}");
        let first = s.job(1).unwrap().expect("job 1 kept");
        assert_eq!(
            (first.title.as_str(), first.message.as_str()),
            ("first", "kept")
        );
        assert_eq!(s.job(2).unwrap().expect("job 2 kept").state, QUEUED);
        assert_eq!(add(&s), 10);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
