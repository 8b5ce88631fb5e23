//! The served study's votes: one SQLite database beside the study folder
//! (`STUDY.votes.sqlite`), read by the server and by `study tally`.
//!
//! Durability: WAL journal with `synchronous=FULL`, and the server acknowledges a vote only
//! after its transaction has committed (changes arriving together share one transaction:
//! [`super::writer`]). In WAL mode a commit has written the transaction to
//! the `-wal` file before it returns, so a killed process (even SIGKILL) loses nothing that
//! was acknowledged; `FULL` also syncs the WAL to disk at every commit, so an acknowledged
//! vote survives a power cut or an operating-system crash too (`NORMAL` would survive a
//! killed process only). The price is one disk sync per vote, far below any human's pace.
//!
//! Only SHA-256 digests of the access tokens are stored (see [`super::tokens`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::writer::Change;
use crate::error::{Error, Result};
use crate::study::tally::{Answer, RaterVotes, Source};
use crate::study::{Choice, Key};

/// The schema; `user_version` says which one a file holds.
const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
CREATE TABLE study (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    study_id TEXT NOT NULL,
    organiser_token_sha256 BLOB NOT NULL
);
CREATE TABLE raters (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_sha256 BLOB NOT NULL UNIQUE,
    -- what the rater calls themself on the page
    display_name TEXT,
    comment TEXT,
    -- the trial order the page drew for this rater (JSON list of trial ids) and where they are
    trial_order TEXT,
    pos INTEGER NOT NULL DEFAULT 0,
    started TEXT,
    updated TEXT
);
CREATE TABLE answers (
    rater INTEGER NOT NULL REFERENCES raters(id),
    trial TEXT NOT NULL,
    similarity TEXT CHECK (similarity IN ('left', 'tie', 'right')),
    prompt TEXT CHECK (prompt IN ('left', 'tie', 'right')),
    -- time on screen, summed over visits
    ms INTEGER NOT NULL DEFAULT 0 CHECK (ms >= 0),
    updated TEXT NOT NULL,
    PRIMARY KEY (rater, trial)
) WITHOUT ROWID;
";
/// UTC now, as SQLite writes it.
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Where a study's database goes: `STUDY` -> `STUDY.votes.sqlite` beside the folder.
pub fn db_path_for(study: &Path) -> PathBuf {
    beside(study, ".votes.sqlite")
}

/// The database of the study whose key is `STUDY.key.json`: `STUDY.votes.sqlite` beside it.
pub fn db_path_for_key(key: &Path) -> PathBuf {
    crate::study::beside_key(key, ".votes.sqlite")
}

/// `STUDY` + suffix, beside the folder (a trailing slash or `.` in the name is resolved first).
pub fn beside(study: &Path, suffix: &str) -> PathBuf {
    let named = if study.file_name().is_some() {
        study.to_path_buf()
    } else {
        study.canonicalize().unwrap_or_else(|_| study.to_path_buf())
    };
    let mut name = named.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    named.with_file_name(name)
}

fn sql_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::msg(format!("votes database {}: {e}", path.display()))
}

/// One rater as the server knows them.
#[derive(Debug, Clone)]
pub struct Rater {
    pub id: i64,
    pub name: String,
    pub token_sha256: [u8; 32],
}

/// One answer as the page keeps it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredAnswer {
    pub similarity: Option<Choice>,
    pub prompt: Option<Choice>,
    pub ms: u64,
}

/// What the page needs to resume a rater, on any device.
#[derive(Debug, Clone, Serialize)]
pub struct RaterState {
    /// The name the organiser gave.
    pub rater: String,
    /// The name the rater typed.
    pub name: Option<String>,
    pub order: Option<Vec<String>>,
    pub pos: u64,
    pub started: Option<String>,
    pub comment: Option<String>,
    pub answers: BTreeMap<String, StoredAnswer>,
}

/// One rater's progress, for the organiser.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub rater: String,
    pub name: Option<String>,
    /// Trials with both questions answered.
    pub answered: u64,
    pub started: Option<String>,
    pub updated: Option<String>,
    pub comment: Option<String>,
}

/// The parts of a rater's session the page may change.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub name: Option<String>,
    pub order: Option<Vec<String>>,
    pub pos: Option<u64>,
    pub started: Option<String>,
    pub comment: Option<String>,
}

pub struct VoteDb {
    conn: Connection,
    path: PathBuf,
}

fn choice_name(c: Option<Choice>) -> Option<&'static str> {
    c.map(|c| match c {
        Choice::Left => "left",
        Choice::Tie => "tie",
        Choice::Right => "right",
    })
}

fn parse_choice(s: Option<String>) -> Option<Choice> {
    match s.as_deref() {
        Some("left") => Some(Choice::Left),
        Some("tie") => Some(Choice::Tie),
        Some("right") => Some(Choice::Right),
        _ => None,
    }
}

/// Store one answer, replacing the rater's earlier answer to that trial.
fn put_answer(
    conn: &Connection,
    rater: i64,
    trial: &str,
    a: &StoredAnswer,
) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "INSERT INTO answers (rater, trial, similarity, prompt, ms, updated)
             VALUES (?1, ?2, ?3, ?4, ?5, {NOW})
             ON CONFLICT (rater, trial) DO UPDATE SET similarity = excluded.similarity,
               prompt = excluded.prompt, ms = excluded.ms, updated = excluded.updated"
        ),
        params![
            rater,
            trial,
            choice_name(a.similarity),
            choice_name(a.prompt),
            a.ms as i64
        ],
    )?;
    Ok(())
}

/// Change the given parts of a rater's session.
fn put_session(conn: &Connection, rater: i64, s: &Session) -> rusqlite::Result<()> {
    let order = match &s.order {
        Some(o) => Some(
            serde_json::to_string(o)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        ),
        None => None,
    };
    conn.execute(
        &format!(
            "UPDATE raters SET display_name = COALESCE(?2, display_name),
               trial_order = COALESCE(?3, trial_order), pos = COALESCE(?4, pos),
               started = COALESCE(started, ?5), comment = COALESCE(?6, comment),
               updated = {NOW}
             WHERE id = ?1"
        ),
        params![
            rater,
            s.name,
            order,
            s.pos.map(|p| p as i64),
            s.started,
            s.comment
        ],
    )?;
    Ok(())
}

impl VoteDb {
    /// Open (or create) the database of the study `key` for the server.
    pub fn open(path: &Path, key: &Key) -> Result<VoteDb> {
        let conn = Connection::open(path).map_err(|e| sql_err(path, e))?;
        let db = VoteDb::configure(conn, path)?;
        let version: i64 = db
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db.err(e))?;
        match version {
            0 => {
                let tx = db.conn.unchecked_transaction().map_err(|e| db.err(e))?;
                tx.execute_batch(SCHEMA).map_err(|e| db.err(e))?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(|e| db.err(e))?;
                tx.commit().map_err(|e| db.err(e))?;
            }
            SCHEMA_VERSION => {}
            v => {
                return Err(Error::config(
                    path,
                    format!("votes database schema {v}, this moslora reads {SCHEMA_VERSION}"),
                ))
            }
        }
        if let Some(id) = db.study_id()? {
            if id != key.study_id {
                return Err(Error::config(
                    path,
                    format!(
                        "this votes database belongs to study {id}, but the key is for study {}",
                        key.study_id
                    ),
                ));
            }
        }
        Ok(db)
    }

    /// Open an existing database to read (`study tally`), also while a server writes to it.
    pub fn open_existing(path: &Path) -> Result<VoteDb> {
        if !path.is_file() {
            return Err(Error::config(path, "no such votes database"));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_err(path, e))?;
        let db = VoteDb::configure(conn, path)?;
        let version: i64 = db
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db.err(e))?;
        if version != SCHEMA_VERSION {
            return Err(Error::config(
                path,
                format!("not a votes database of `moslora study serve` (schema {version}, expected {SCHEMA_VERSION})"),
            ));
        }
        Ok(db)
    }

    fn configure(conn: Connection, path: &Path) -> Result<VoteDb> {
        let db = VoteDb {
            conn,
            path: path.to_path_buf(),
        };
        // A reader (`study tally`) may briefly wait on a checkpoint.
        db.conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(|e| db.err(e))?;
        let mode: String = db
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| db.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::config(
                path,
                format!("cannot use a write-ahead log here (journal mode stays {mode:?}); put the study on a local disk"),
            ));
        }
        db.conn
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(|e| db.err(e))?;
        Ok(db)
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        sql_err(&self.path, e)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The study this database belongs to, once a server has started on it.
    pub fn study_id(&self) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT study_id FROM study WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn organiser_digest(&self) -> Result<Option<[u8; 32]>> {
        self.conn
            .query_row(
                "SELECT organiser_token_sha256 FROM study WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn raters(&self) -> Result<Vec<Rater>> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, token_sha256 FROM raters ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(Rater {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    token_sha256: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Record the study (with the organiser's digest, when new or replaced) and new raters, in
    /// one transaction.
    pub fn register(
        &mut self,
        study_id: &str,
        organiser: Option<[u8; 32]>,
        raters: &[(String, [u8; 32])],
    ) -> Result<()> {
        let path = self.path.clone();
        let err = |e| sql_err(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        if let Some(d) = organiser {
            tx.execute(
                "INSERT INTO study (id, study_id, organiser_token_sha256) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET organiser_token_sha256 = excluded.organiser_token_sha256",
                params![study_id, d],
            )
            .map_err(err)?;
        }
        for (name, d) in raters {
            tx.execute(
                "INSERT INTO raters (name, token_sha256) VALUES (?1, ?2)",
                params![name, d],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Apply changes in one transaction, each under its own savepoint: the result of each,
    /// or an error for all when the transaction cannot commit. When this returns Ok, every
    /// change that succeeded is committed and synced.
    pub fn apply(&mut self, changes: &[Change]) -> Result<Vec<Result<()>>> {
        let path = self.path.clone();
        let err = |e| sql_err(&path, e);
        let mut tx = self.conn.transaction().map_err(err)?;
        let mut results = Vec::with_capacity(changes.len());
        for c in changes {
            let sp = tx.savepoint().map_err(err)?;
            let r = match c {
                Change::Answer {
                    rater,
                    trial,
                    answer,
                } => put_answer(&sp, *rater, trial, answer),
                Change::Session { rater, session } => put_session(&sp, *rater, session),
            };
            match r {
                Ok(()) => sp.commit().map_err(err)?,
                Err(_) => drop(sp), // rolled back alone
            }
            results.push(r.map_err(err));
        }
        tx.commit().map_err(err)?;
        Ok(results)
    }

    pub fn rater_state(&self, rater: i64) -> Result<RaterState> {
        let (name, display, order, pos, started, comment): (
            String,
            Option<String>,
            Option<String>,
            i64,
            Option<String>,
            Option<String>,
        ) = self
            .conn
            .query_row(
                "SELECT name, display_name, trial_order, pos, started, comment FROM raters WHERE id = ?1",
                [rater],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .map_err(|e| self.err(e))?;
        let order = match order {
            Some(o) => Some(serde_json::from_str(&o).map_err(|e| {
                Error::config(&self.path, format!("rater {name}: trial order: {e}"))
            })?),
            None => None,
        };
        Ok(RaterState {
            rater: name,
            name: display,
            order,
            pos: pos.max(0) as u64,
            started,
            comment,
            answers: self.answers_of(rater)?,
        })
    }

    fn answers_of(&self, rater: i64) -> Result<BTreeMap<String, StoredAnswer>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT trial, similarity, prompt, ms FROM answers WHERE rater = ?1")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([rater], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    StoredAnswer {
                        similarity: parse_choice(r.get(1)?),
                        prompt: parse_choice(r.get(2)?),
                        ms: r.get::<_, i64>(3)?.max(0) as u64,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()
            .map_err(|e| self.err(e))
    }

    /// Every rater's progress, in the order they were added.
    pub fn progress(&self) -> Result<Vec<Progress>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT r.name, r.display_name, r.started, r.comment,
                   MAX(COALESCE(r.updated, ''), COALESCE(MAX(a.updated), '')),
                   COUNT(a.similarity IS NOT NULL AND a.prompt IS NOT NULL OR NULL)
                 FROM raters r LEFT JOIN answers a ON a.rater = r.id
                 GROUP BY r.id ORDER BY r.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                let updated: String = r.get(4)?;
                Ok(Progress {
                    rater: r.get(0)?,
                    name: r.get(1)?,
                    started: r.get(2)?,
                    comment: r.get(3)?,
                    updated: (!updated.is_empty()).then_some(updated),
                    answered: r.get::<_, i64>(5)?.max(0) as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Every rater's votes as `study tally` reads a votes file: the same answers (a trial
    /// with neither question answered is left out, as the page leaves it out of its file),
    /// times in seconds rounded to a tenth as the page rounds them, and the same notes. Each
    /// rater's source is named `DATABASE#RATER`.
    pub fn sources(&self, key: &Key) -> Result<Vec<Source>> {
        match self.study_id()? {
            Some(id) if id == key.study_id => {}
            Some(id) => {
                return Err(Error::config(
                    &self.path,
                    format!(
                        "votes of another study (study id {id}, but this key is for {})",
                        key.study_id
                    ),
                ))
            }
            None => return Ok(Vec::new()),
        }
        let trials: std::collections::HashSet<&str> =
            key.trials.iter().map(|t| t.id.as_str()).collect();
        let mut out = Vec::new();
        for r in self.raters()? {
            let source = PathBuf::from(format!("{}#{}", self.path.display(), r.name));
            let stored = self.answers_of(r.id)?;
            let updated: Option<String> = self
                .conn
                .query_row(
                    "SELECT MAX(updated) FROM answers WHERE rater = ?1",
                    [r.id],
                    |row| row.get(0),
                )
                .map_err(|e| self.err(e))?;
            let mut answers = BTreeMap::new();
            let mut unknown = Vec::new();
            for (trial, a) in stored {
                if a.similarity.is_none() && a.prompt.is_none() {
                    continue;
                }
                if !trials.contains(trial.as_str()) {
                    unknown.push(trial);
                    continue;
                }
                answers.insert(
                    trial,
                    Answer {
                        similarity: a.similarity,
                        prompt: a.prompt,
                        seconds: Some((a.ms as f64 / 100.0).round() / 10.0),
                    },
                );
            }
            if answers.is_empty() {
                out.push((source, Err("no answers yet".to_string())));
                continue;
            }
            let mut notes = Vec::new();
            if !unknown.is_empty() {
                notes.push(format!(
                    "{} answer(s) name trials that are not in this study ({}): skipped",
                    unknown.len(),
                    unknown
                        .iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let half = answers
                .values()
                .filter(|a| a.similarity.is_some() != a.prompt.is_some())
                .count();
            if half > 0 {
                notes.push(format!(
                    "{half} trial(s) with only one of the two questions answered: that answer counts"
                ));
            }
            let file = source.clone();
            out.push((
                source,
                Ok((
                    RaterVotes {
                        rater: r.name,
                        file,
                        saved: updated,
                        answers,
                    },
                    notes,
                )),
            ));
        }
        Ok(out)
    }
}
