//! One writer for the votes database, with group commit: the changes that arrive while a
//! commit is syncing are committed together in the next transaction (one disk sync for all),
//! and each request is answered only after the transaction holding its change has committed.
//! A change that fails (a constraint) is rolled back alone, to its savepoint.

use std::sync::mpsc;

use tokio::sync::oneshot;

use super::db::{Session, StoredAnswer, VoteDb};

/// Most changes in one transaction (keeps a commit short under a flood).
const MAX_BATCH: usize = 256;

/// One change a rater makes.
#[derive(Debug)]
pub enum Change {
    Answer {
        rater: i64,
        trial: String,
        answer: StoredAnswer,
    },
    Session {
        rater: i64,
        session: Session,
    },
}

type Job = (Change, oneshot::Sender<Result<(), String>>);

/// The handle requests send changes through.
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Start the writer thread on `db`; it ends when the last handle is dropped.
    pub fn start(db: VoteDb) -> std::io::Result<Writer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("votes-writer".into())
            .spawn(move || run(db, queue))?;
        Ok(Writer { jobs })
    }

    /// Apply `change`; returns once it is committed (and synced), or why it is not.
    pub async fn write(&self, change: Change) -> Result<(), String> {
        let (done, committed) = oneshot::channel();
        self.jobs
            .send((change, done))
            .map_err(|_| "the votes writer has stopped".to_string())?;
        committed
            .await
            .map_err(|_| "the votes writer has stopped".to_string())?
    }
}

fn run(mut db: VoteDb, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (changes, replies): (Vec<Change>, Vec<_>) = batch.into_iter().unzip();
        match db.apply(&changes) {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                }
            }
            Err(e) => {
                let e = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
