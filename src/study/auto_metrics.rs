//! The automatic metrics beside the human votes: when the study's render folders have been
//! scored (`moslora score`), each criterion is read with its metric on the same pairs (DINO,
//! or CLIP-I without DINO, for subject similarity; CLIP-T for prompt consistency), and every
//! non-tie vote on a pair the metric decides (difference beyond the tie margin) is checked
//! against it: the agreement rate, with a Wilson 95 % interval.

use std::collections::HashMap;

use serde::Serialize;

use super::tally::{wilson, RaterVotes};
use super::{Criterion, Key, Which};
use crate::metrics::TIE_MARGIN;
use crate::render::manifest::{ImageScores, Manifest};

/// One criterion read by its metric.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricAgreement {
    pub criterion: Criterion,
    /// `dino`, `clip_i` or `clip_t`.
    pub metric: String,
    /// Pairs whose two images both have the metric.
    pub pairs: usize,
    /// B against A by the metric, at `tie_margin`.
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    pub tie_margin: f64,
    /// Mean of B - A over the pairs.
    pub mean_diff: f64,
    /// Non-tie votes on pairs the metric decides, and how many pick the metric's winner.
    pub votes: usize,
    pub agree: usize,
    pub agree_percent: Option<f64>,
    pub agree_ci95: Option<(f64, f64)>,
}

/// Empty when no render folder of the study has scores.
pub fn compute(key: &Key, raters: &[RaterVotes]) -> Vec<MetricAgreement> {
    // (subject, prompt, seed, adapter) -> scores, from every scored render folder.
    let mut scores: HashMap<(usize, &str, u64, String), ImageScores> = HashMap::new();
    let manifests: Vec<Option<Manifest>> = key
        .subjects
        .iter()
        .map(|s| Manifest::read(&s.render_dir).ok())
        .collect();
    for (si, m) in manifests.iter().enumerate() {
        for img in m.iter().flat_map(|m| &m.images) {
            if let Some(s) = img.scores {
                scores.insert(
                    (si, img.prompt_id.as_str(), img.seed, img.adapter.clone()),
                    s,
                );
            }
        }
    }
    if scores.is_empty() {
        return Vec::new();
    }
    let has = |metric: &str| scores.values().any(|s| s.get(metric).is_some());
    let similarity_metric = if has("dino") { "dino" } else { "clip_i" };
    let mut out = Vec::new();
    for (criterion, metric) in [
        (Criterion::Similarity, similarity_metric),
        (Criterion::Prompt, "clip_t"),
    ] {
        if !has(metric) {
            continue;
        }
        let mut row = MetricAgreement {
            criterion,
            metric: metric.into(),
            pairs: 0,
            wins: 0,
            ties: 0,
            losses: 0,
            tie_margin: TIE_MARGIN,
            mean_diff: 0.0,
            votes: 0,
            agree: 0,
            agree_percent: None,
            agree_ci95: None,
        };
        let mut sum = 0.0;
        for t in key.trials.iter().filter(|t| t.repeat_of.is_none()) {
            let get = |name: &str| {
                scores
                    .get(&(t.subject, t.prompt_id.as_str(), t.seed, name.to_string()))
                    .and_then(|s| s.get(metric))
            };
            let (Some(a), Some(b)) = (get(&key.a.name), get(&key.b.name)) else {
                continue;
            };
            let d = b - a;
            row.pairs += 1;
            sum += d;
            let winner = if d > TIE_MARGIN {
                row.wins += 1;
                Which::B
            } else if d < -TIE_MARGIN {
                row.losses += 1;
                Which::A
            } else {
                row.ties += 1;
                continue;
            };
            for r in raters {
                let chosen = r
                    .answers
                    .get(&t.id)
                    .and_then(|ans| ans.get(criterion))
                    .and_then(|c| t.chosen(c));
                if let Some(w) = chosen {
                    row.votes += 1;
                    row.agree += usize::from(w == winner);
                }
            }
        }
        if row.pairs == 0 {
            continue;
        }
        row.mean_diff = sum / row.pairs as f64;
        row.agree_percent = (row.votes > 0).then(|| 100.0 * row.agree as f64 / row.votes as f64);
        row.agree_ci95 = wilson(row.agree, row.votes).map(|(lo, hi)| (100.0 * lo, 100.0 * hi));
        out.push(row);
    }
    out
}

/// Rows for the reports: criterion, metric, pairs, B win / tie / loss, mean B - A, agreement.
pub fn rows(v: &[MetricAgreement]) -> Vec<Vec<String>> {
    v.iter()
        .map(|m| {
            vec![
                m.criterion.title().to_string(),
                ImageScores::title(&m.metric).to_string(),
                m.pairs.to_string(),
                format!("{} / {} / {}", m.wins, m.ties, m.losses),
                format!("{:+.4}", m.mean_diff),
                match (m.agree_percent, m.agree_ci95) {
                    (Some(p), Some((lo, hi))) => {
                        format!("{p:.0} % of {} votes [{lo:.0}, {hi:.0}]", m.votes)
                    }
                    _ => "no decided pair with a non-tie vote".into(),
                },
            ]
        })
        .collect()
}

pub const HEADER: [&str; 6] = [
    "criterion",
    "metric",
    "pairs",
    "metric: B win / tie / loss",
    "mean B - A",
    "votes agreeing with the metric",
];
