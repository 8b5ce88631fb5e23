//! `study tally`: votes files read against the key, and the statistics of the paper's Table 6
//! with honest uncertainty.
//!
//! - Win / tie / loss of B against A per criterion, on the first showing of every pair (the
//!   repeated, side-swapped showings only measure consistency, so no pair counts twice).
//! - Wilson 95 % score intervals for each share (they stay inside [0, 1] and behave at small n).
//! - An exact two-sided sign test on the non-tie votes (binomial, p = 1/2). As in common
//!   practice every vote counts as one observation, although votes of different raters on
//!   the same pair are not independent: read the p-value with the kappa next to it.
//! - Fleiss' kappa across raters over the categories (A better, tie, B better). Pairs answered
//!   by fewer than two raters are left out; with unequal numbers of raters per pair the
//!   per-pair agreement uses each pair's own count (Fleiss' formula generalised the usual way),
//!   which is Fleiss' kappa exactly when every rater answered every pair.
//! - Per subject and per rater breakdowns, and each rater's consistency on repeated pairs.
//!
//! Every votes file gets a one-line verdict; a bad file never stops the others being tallied.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Choice, Criterion, Key, KeyAdapter, KeyTrial, Which, FORMAT_VERSION, VOTES_FORMAT};

/// z for a two-sided 95 % interval.
const Z95: f64 = 1.959_963_984_540_054;

/// Wilson score interval for `k` successes in `n` trials (95 %); `None` for n = 0.
pub fn wilson(k: usize, n: usize) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// The exact sign test lives with the automatic metrics' statistics (one copy for both).
pub use crate::metrics::stats::sign_test;

/// Fleiss' kappa of a table `items x categories` of rating counts. Items with fewer than two
/// ratings are skipped; `None` when nothing is left or agreement by chance is already total.
pub fn fleiss_kappa(table: &[Vec<usize>]) -> Option<f64> {
    let rows: Vec<&Vec<usize>> = table
        .iter()
        .filter(|r| r.iter().sum::<usize>() >= 2)
        .collect();
    if rows.is_empty() {
        return None;
    }
    let cats = rows[0].len();
    let total: usize = rows.iter().map(|r| r.iter().sum::<usize>()).sum();
    let p_j: Vec<f64> = (0..cats)
        .map(|j| rows.iter().map(|r| r[j]).sum::<usize>() as f64 / total as f64)
        .collect();
    let p_bar = rows
        .iter()
        .map(|r| {
            let n: usize = r.iter().sum();
            let agree: usize = r.iter().map(|&c| c * c).sum::<usize>() - n;
            agree as f64 / (n * (n - 1)) as f64
        })
        .sum::<f64>()
        / rows.len() as f64;
    let p_e: f64 = p_j.iter().map(|p| p * p).sum();
    if (1.0 - p_e).abs() < 1e-12 {
        return None;
    }
    Some((p_bar - p_e) / (1.0 - p_e))
}

/// Landis and Koch's words for a kappa.
pub fn kappa_words(k: f64) -> &'static str {
    match k {
        k if k < 0.0 => "poor",
        k if k <= 0.20 => "slight",
        k if k <= 0.40 => "fair",
        k if k <= 0.60 => "moderate",
        k if k <= 0.80 => "substantial",
        _ => "almost perfect",
    }
}

/// Win / tie / loss counts of B against A.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
}

impl Counts {
    pub fn n(&self) -> usize {
        self.wins + self.ties + self.losses
    }

    fn add(&mut self, outcome: Option<Which>) {
        match outcome {
            Some(Which::B) => self.wins += 1,
            Some(Which::A) => self.losses += 1,
            None => self.ties += 1,
        }
    }
}

/// A share in percent with its Wilson interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Share {
    pub percent: f64,
    pub ci95: Option<(f64, f64)>,
}

impl Share {
    fn of(k: usize, n: usize) -> Share {
        Share {
            percent: if n == 0 {
                f64::NAN
            } else {
                100.0 * k as f64 / n as f64
            },
            ci95: wilson(k, n).map(|(lo, hi)| (100.0 * lo, 100.0 * hi)),
        }
    }
}

/// Counts with their shares and the sign test.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub counts: Counts,
    pub votes: usize,
    pub win: Share,
    pub tie: Share,
    pub loss: Share,
    /// Exact two-sided sign test on wins against losses.
    pub sign_test_p: Option<f64>,
}

impl Summary {
    pub fn of(c: Counts) -> Summary {
        let n = c.n();
        Summary {
            counts: c,
            votes: n,
            win: Share::of(c.wins, n),
            tie: Share::of(c.ties, n),
            loss: Share::of(c.losses, n),
            sign_test_p: sign_test(c.wins, c.losses),
        }
    }
}

/// Same answer (in A / tie / B terms) on both showings of a repeated pair.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Consistency {
    pub consistent: usize,
    pub compared: usize,
}

impl Consistency {
    pub fn percent(&self) -> Option<f64> {
        (self.compared > 0).then(|| 100.0 * self.consistent as f64 / self.compared as f64)
    }
}

/// One criterion over all raters.
#[derive(Debug, Clone, Serialize)]
pub struct Overall {
    pub criterion: Criterion,
    pub summary: Summary,
    pub fleiss_kappa: Option<f64>,
    /// Pairs answered by at least two raters (the items of the kappa).
    pub kappa_pairs: usize,
    pub consistency: Consistency,
}

#[derive(Debug, Clone, Serialize)]
pub struct CriterionSummary {
    pub criterion: Criterion,
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubjectRow {
    pub subject: String,
    pub pairs: usize,
    pub by_criterion: Vec<CriterionSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RaterCriterion {
    pub criterion: Criterion,
    pub summary: Summary,
    pub consistency: Consistency,
}

#[derive(Debug, Clone, Serialize)]
pub struct RaterRow {
    pub rater: String,
    pub file: PathBuf,
    /// Trials with both questions answered, of all trials (repeats included).
    pub answered: usize,
    pub trials: usize,
    pub by_criterion: Vec<RaterCriterion>,
    /// Share of left among non-tie answers, in percent: far from 50 hints at a side habit.
    pub left_percent: Option<f64>,
    pub median_seconds: Option<f64>,
}

/// What happened to one votes file.
#[derive(Debug, Clone, Serialize)]
pub struct FileNote {
    pub file: PathBuf,
    pub tallied: bool,
    pub message: String,
}

/// The whole tally.
#[derive(Debug, Clone, Serialize)]
pub struct Tally {
    pub study_id: String,
    pub a: KeyAdapter,
    pub b: KeyAdapter,
    pub raters: usize,
    pub pairs: usize,
    pub repeated_pairs: usize,
    pub subjects: usize,
    pub overall: Vec<Overall>,
    pub per_subject: Vec<SubjectRow>,
    pub per_rater: Vec<RaterRow>,
    pub files: Vec<FileNote>,
    /// The automatic metrics on the same pairs, when the render folders were scored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub auto_metrics: Vec<super::auto_metrics::MetricAgreement>,
}

/// One rater's answer to one trial.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    pub similarity: Option<Choice>,
    pub prompt: Option<Choice>,
    pub seconds: Option<f64>,
}

impl Answer {
    pub fn get(&self, c: Criterion) -> Option<Choice> {
        match c {
            Criterion::Similarity => self.similarity,
            Criterion::Prompt => self.prompt,
        }
    }
}

/// The votes of one rater, checked against the key.
#[derive(Debug, Clone)]
pub struct RaterVotes {
    pub rater: String,
    pub file: PathBuf,
    pub saved: Option<String>,
    pub answers: BTreeMap<String, Answer>,
}

impl RaterVotes {
    fn complete(&self) -> usize {
        self.answers
            .values()
            .filter(|a| a.similarity.is_some() && a.prompt.is_some())
            .count()
    }

    /// The answers, for telling a duplicated file from a second round of the same rater.
    fn fingerprint(&self) -> Vec<(String, Option<Choice>, Option<Choice>)> {
        self.answers
            .iter()
            .map(|(id, a)| (id.clone(), a.similarity, a.prompt))
            .collect()
    }
}

/// A votes file as the rater page writes it.
#[derive(Debug, Deserialize)]
struct VotesFile {
    study_id: String,
    #[serde(default)]
    rater: String,
    #[serde(default)]
    saved: Option<String>,
    votes: Vec<VoteEntry>,
}

#[derive(Debug, Deserialize)]
struct VoteEntry {
    trial: String,
    #[serde(default)]
    similarity: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    seconds: Option<f64>,
}

fn parse_choice(s: &Option<String>) -> Result<Option<Choice>, String> {
    match s.as_deref() {
        None => Ok(None),
        Some("left") => Ok(Some(Choice::Left)),
        Some("tie") => Ok(Some(Choice::Tie)),
        Some("right") => Ok(Some(Choice::Right)),
        Some(other) => Err(other.to_string()),
    }
}

/// Read one votes file: the rater's answers and a list of things worth saying about them,
/// or why the whole file cannot be used.
pub fn read_votes(key: &Key, path: &Path) -> Result<(RaterVotes, Vec<String>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it ({e})"))?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("the file is empty".into());
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_eof() {
            format!(
                "truncated: the JSON stops early (line {}, column {})",
                e.line(),
                e.column()
            )
        } else {
            format!("not valid JSON ({e})")
        }
    })?;
    let format = value.get("format").and_then(|f| f.as_str());
    if format != Some(VOTES_FORMAT) {
        return Err(match format {
            Some(f) => format!("not a votes file of a study page (format {f:?})"),
            None => "not a votes file of a study page (no `format` field)".into(),
        });
    }
    let version = value.get("format_version").and_then(|v| v.as_u64());
    if version != Some(FORMAT_VERSION as u64) {
        return Err(format!(
            "votes format version {version:?} is not supported (expected {FORMAT_VERSION})"
        ));
    }
    let file: VotesFile =
        serde_json::from_value(value).map_err(|e| format!("malformed votes file ({e})"))?;
    if file.study_id != key.study_id {
        return Err(format!(
            "votes of another study (study id {}, but this key is for {})",
            file.study_id, key.study_id
        ));
    }
    let trials: HashMap<&str, &KeyTrial> = key.trials.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut notes = Vec::new();
    let rater = match file.rater.trim() {
        "" => {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "unnamed".into());
            notes.push(format!("no rater name: called `{stem}` after the file"));
            stem
        }
        r => r.to_string(),
    };
    let mut answers = BTreeMap::new();
    let (mut unknown, mut invalid, mut repeated) = (Vec::new(), Vec::new(), 0usize);
    for v in &file.votes {
        if !trials.contains_key(v.trial.as_str()) {
            unknown.push(v.trial.clone());
            continue;
        }
        let mut answer = Answer {
            similarity: None,
            prompt: None,
            seconds: v.seconds.filter(|s| s.is_finite() && *s >= 0.0),
        };
        match parse_choice(&v.similarity) {
            Ok(c) => answer.similarity = c,
            Err(bad) => invalid.push(format!("{} similarity {bad:?}", v.trial)),
        }
        match parse_choice(&v.prompt) {
            Ok(c) => answer.prompt = c,
            Err(bad) => invalid.push(format!("{} prompt {bad:?}", v.trial)),
        }
        if answers.insert(v.trial.clone(), answer).is_some() {
            repeated += 1;
        }
    }
    if !unknown.is_empty() {
        notes.push(format!(
            "{} answer(s) name trials that are not in this study ({}): skipped",
            unknown.len(),
            list(&unknown)
        ));
    }
    if !invalid.is_empty() {
        notes.push(format!(
            "{} answer(s) are not left / tie / right ({}): skipped",
            invalid.len(),
            list(&invalid)
        ));
    }
    if repeated > 0 {
        notes.push(format!(
            "{repeated} trial(s) answered twice in the file: the later answer counts"
        ));
    }
    let votes = RaterVotes {
        rater,
        file: path.to_path_buf(),
        saved: file.saved,
        answers,
    };
    let half = votes
        .answers
        .values()
        .filter(|a| a.similarity.is_some() != a.prompt.is_some())
        .count();
    if half > 0 {
        notes.push(format!(
            "{half} trial(s) with only one of the two questions answered: that answer counts"
        ));
    }
    Ok((votes, notes))
}

/// The first few items of a list, for messages.
fn list(items: &[String]) -> String {
    let mut s = items.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 3 {
        s.push_str(&format!(", and {} more", items.len() - 3));
    }
    s
}

/// Read all votes files: the raters to tally, and one note per file. A file that repeats
/// another exactly is a duplicate; two different files of the same rater name are taken as a
/// rater who downloaded twice, and the one with more answers (then the later) is kept.
pub fn read_all(key: &Key, paths: &[PathBuf]) -> (Vec<RaterVotes>, Vec<FileNote>) {
    let read = paths.iter().map(|p| (p.clone(), read_votes(key, p)));
    gather(key, read.collect())
}

/// Where votes came from (a votes file, or a rater in the served study's database), with that
/// source's answers and notes, or why it cannot be used.
pub type Source = (PathBuf, Result<(RaterVotes, Vec<String>), String>);

/// The raters to tally from all sources, and one note per source, whichever route the votes
/// took (votes files, the served study's database, or both): duplicates and second rounds of
/// one rater are settled the same way for all.
pub fn gather(key: &Key, sources: Vec<Source>) -> (Vec<RaterVotes>, Vec<FileNote>) {
    let total = key.trials.len();
    let paths: Vec<PathBuf> = sources.iter().map(|(p, _)| p.clone()).collect();
    let mut read: Vec<Option<(RaterVotes, Vec<String>)>> = Vec::new();
    let mut notes: Vec<FileNote> = Vec::new();
    for (p, votes) in sources {
        let p = &p;
        match votes {
            Ok(v) => {
                read.push(Some(v));
                notes.push(FileNote {
                    file: p.clone(),
                    tallied: true,
                    message: String::new(),
                });
            }
            Err(why) => {
                read.push(None);
                notes.push(FileNote {
                    file: p.clone(),
                    tallied: false,
                    message: format!("{why}: skipped"),
                });
            }
        }
    }
    // Exact duplicates (the same file given twice, or a copy): the later one is skipped.
    for i in 0..read.len() {
        let Some((vi, _)) = &read[i] else { continue };
        let dup = (0..i).find(|&j| {
            read[j].as_ref().is_some_and(|(vj, _)| {
                same_path(&vj.file, &vi.file)
                    || (vj.rater.to_lowercase() == vi.rater.to_lowercase()
                        && vj.fingerprint() == vi.fingerprint())
            })
        });
        if let Some(j) = dup {
            notes[i].tallied = false;
            notes[i].message = format!(
                "duplicate of {} (same rater `{}`, same answers): skipped",
                paths[j].display(),
                vi.rater
            );
            read[i] = None;
        }
    }
    // Same rater name, different answers: keep the fuller (then the later saved) file.
    for i in 0..read.len() {
        let Some((vi, _)) = &read[i] else { continue };
        let rival = (0..read.len()).find(|&j| {
            j != i
                && read[j].as_ref().is_some_and(|(vj, _)| {
                    vj.rater.to_lowercase() == vi.rater.to_lowercase()
                        && (vj.complete(), vj.saved.as_deref(), std::cmp::Reverse(j))
                            > (vi.complete(), vi.saved.as_deref(), std::cmp::Reverse(i))
                })
        });
        if let Some(j) = rival {
            let (vj, _) = read[j].as_ref().expect("checked");
            notes[i].tallied = false;
            notes[i].message = format!(
                "rater `{}` is also in {}, which has {} answers (saved {}); this file has {} (saved {}): skipped in its favour",
                vi.rater,
                paths[j].display(),
                vj.complete(),
                vj.saved.as_deref().unwrap_or("at an unknown time"),
                vi.complete(),
                vi.saved.as_deref().unwrap_or("at an unknown time"),
            );
            read[i] = None;
        }
    }
    let mut raters = Vec::new();
    for (i, r) in read.into_iter().enumerate() {
        let Some((v, extra)) = r else { continue };
        let done = v.complete();
        let mut msg = if done == total {
            format!("rater `{}`: all {total} trials answered", v.rater)
        } else {
            format!(
                "rater `{}`: {done} of {total} trials answered (partial: those answers are tallied)",
                v.rater
            )
        };
        for e in extra {
            msg.push_str("; ");
            msg.push_str(&e);
        }
        notes[i].message = msg;
        raters.push(v);
    }
    (raters, notes)
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The statistics of the given raters' answers.
pub fn compute(key: &Key, raters: &[RaterVotes], files: Vec<FileNote>) -> Tally {
    let originals: Vec<&KeyTrial> = key
        .trials
        .iter()
        .filter(|t| t.repeat_of.is_none())
        .collect();
    let by_id: HashMap<&str, &KeyTrial> = key.trials.iter().map(|t| (t.id.as_str(), t)).collect();

    let outcome = |r: &RaterVotes, t: &KeyTrial, c: Criterion| -> Option<Option<Which>> {
        let choice = r.answers.get(&t.id)?.get(c)?;
        Some(t.chosen(choice))
    };
    let consistency = |r: &RaterVotes, c: Criterion| -> Consistency {
        let mut cons = Consistency::default();
        for t in key.trials.iter().filter(|t| t.repeat_of.is_some()) {
            let first = by_id[t.repeat_of.as_deref().expect("a repeat")];
            if let (Some(x), Some(y)) = (outcome(r, first, c), outcome(r, t, c)) {
                cons.compared += 1;
                cons.consistent += usize::from(x == y);
            }
        }
        cons
    };

    let overall = Criterion::BOTH
        .iter()
        .map(|&c| {
            let mut counts = Counts::default();
            let mut table = Vec::new();
            for t in &originals {
                let mut row = vec![0usize; 3];
                for r in raters {
                    if let Some(o) = outcome(r, t, c) {
                        counts.add(o);
                        row[match o {
                            Some(Which::A) => 0,
                            None => 1,
                            Some(Which::B) => 2,
                        }] += 1;
                    }
                }
                table.push(row);
            }
            let mut cons = Consistency::default();
            for r in raters {
                let x = consistency(r, c);
                cons.consistent += x.consistent;
                cons.compared += x.compared;
            }
            Overall {
                criterion: c,
                summary: Summary::of(counts),
                fleiss_kappa: fleiss_kappa(&table),
                kappa_pairs: table
                    .iter()
                    .filter(|r| r.iter().sum::<usize>() >= 2)
                    .count(),
                consistency: cons,
            }
        })
        .collect();

    let per_subject = key
        .subjects
        .iter()
        .enumerate()
        .map(|(s, subject)| {
            let trials: Vec<&&KeyTrial> = originals.iter().filter(|t| t.subject == s).collect();
            SubjectRow {
                subject: subject.name.clone(),
                pairs: trials.len(),
                by_criterion: Criterion::BOTH
                    .iter()
                    .map(|&c| {
                        let mut counts = Counts::default();
                        for t in &trials {
                            for r in raters {
                                if let Some(o) = outcome(r, t, c) {
                                    counts.add(o);
                                }
                            }
                        }
                        CriterionSummary {
                            criterion: c,
                            summary: Summary::of(counts),
                        }
                    })
                    .collect(),
            }
        })
        .collect();

    let per_rater = raters
        .iter()
        .map(|r| {
            let (mut left, mut right) = (0usize, 0usize);
            let mut seconds = Vec::new();
            for a in r.answers.values() {
                for c in Criterion::BOTH {
                    match a.get(c) {
                        Some(Choice::Left) => left += 1,
                        Some(Choice::Right) => right += 1,
                        _ => {}
                    }
                }
                seconds.extend(a.seconds);
            }
            RaterRow {
                rater: r.rater.clone(),
                file: r.file.clone(),
                answered: r.complete(),
                trials: key.trials.len(),
                by_criterion: Criterion::BOTH
                    .iter()
                    .map(|&c| {
                        let mut counts = Counts::default();
                        for t in &originals {
                            if let Some(o) = outcome(r, t, c) {
                                counts.add(o);
                            }
                        }
                        RaterCriterion {
                            criterion: c,
                            summary: Summary::of(counts),
                            consistency: consistency(r, c),
                        }
                    })
                    .collect(),
                left_percent: (left + right > 0)
                    .then(|| 100.0 * left as f64 / (left + right) as f64),
                median_seconds: median(&mut seconds),
            }
        })
        .collect();

    Tally {
        study_id: key.study_id.clone(),
        a: key.a.clone(),
        b: key.b.clone(),
        raters: raters.len(),
        pairs: originals.len(),
        repeated_pairs: key.trials.len() - originals.len(),
        subjects: key.subjects.len(),
        overall,
        per_subject,
        per_rater,
        files,
        auto_metrics: super::auto_metrics::compute(key, raters),
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Read the votes files and tally them.
pub fn tally(key: &Key, votes: &[PathBuf]) -> Tally {
    let (raters, notes) = read_all(key, votes);
    compute(key, &raters, notes)
}
