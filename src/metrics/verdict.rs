//! The automatic metrics in plain words: did each adapter learn the subject, and does one
//! adapter score differently from the other. One place decides these verdicts; the terminal,
//! `scores.md`, the gallery and the sweep page all print the sentences made here, with the
//! numbers below them.
//!
//! **Subject capture** reads the subject metric (CLIP-I, or DINO when CLIP was not given)
//! of an adapter's renders against the base model's renders of the same prompts and seeds,
//! and against the ceiling (the subject photos against each other):
//! - *learned the subject* when the adapter's 95 % interval lies wholly above the base
//!   model's;
//! - *did not capture the subject* when its mean is no higher than the base model's mean;
//! - *unclear* otherwise (higher, but the intervals overlap).
//!
//! Without a base-model column there is nothing to hold the adapter against, and the verdict
//! says so.
//!
//! **Adapter against adapter** reads the paired differences (same prompt, seed and noise):
//! a difference whose bootstrap 95 % interval leaves out zero is stated with its direction,
//! anything else as no clear difference.

use crate::render::manifest::{Estimate, ImageScores, MetricsSummary, PairedMetric};

/// What the subject metric says about one adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Its interval lies wholly above the base model's.
    Learned,
    /// No better than the base model (its mean at or below the base model's).
    NotCaptured,
    /// Above the base model's mean, but within the noise.
    Unclear,
    /// No base-model column to hold it against.
    NoBase,
}

/// One adapter's subject-capture verdict, with the numbers it rests on.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureVerdict {
    /// The adapter as the user named it.
    pub label: String,
    pub capture: Capture,
    /// The metric read: `CLIP-I` or `DINO`.
    pub metric: &'static str,
    pub adapter: Estimate,
    pub base: Option<Estimate>,
    /// The subject photos against each other.
    pub ceiling: Option<f64>,
}

/// Decide one adapter's verdict from its estimate, the base model's and the ceiling.
pub fn judge_capture(
    label: &str,
    metric: &'static str,
    adapter: Estimate,
    base: Option<Estimate>,
    ceiling: Option<f64>,
) -> CaptureVerdict {
    let capture = match base {
        None => Capture::NoBase,
        Some(b) if adapter.lo > b.hi => Capture::Learned,
        Some(b) if adapter.mean <= b.mean => Capture::NotCaptured,
        Some(_) => Capture::Unclear,
    };
    CaptureVerdict {
        label: label.to_string(),
        capture,
        metric,
        adapter,
        base,
        ceiling,
    }
}

impl CaptureVerdict {
    /// The verdict as one sentence, e.g. "LoRA learned the subject: CLIP-I 0.22, against 0.11
    /// for the base model and 0.32 between your photos".
    pub fn sentence(&self) -> String {
        let (l, m, v) = (&self.label, self.metric, self.adapter.mean);
        let ceiling = self
            .ceiling
            .map(|c| format!(" and {c:.2} between your photos"))
            .unwrap_or_default();
        let base = self.base.map_or(0.0, |b| b.mean);
        match self.capture {
            Capture::Learned => format!(
                "{l} learned the subject: {m} {v:.2}, against {base:.2} for the base model{ceiling}"
            ),
            Capture::NotCaptured => format!(
                "{l} did not capture the subject (no better than the base model: {m} {v:.2}, \
                 against {base:.2}{ceiling}): try more steps or a higher learning rate"
            ),
            Capture::Unclear => format!(
                "{l} may have learned the subject, but it is not clear yet: {m} {v:.2}, against \
                 {base:.2} for the base model{ceiling}, within the noise; render more seeds or \
                 prompts, or train longer"
            ),
            Capture::NoBase => format!(
                "{l}: {m} {v:.2}{}; render with the base model too (render.include_base) to \
                 tell whether it learned the subject",
                self.ceiling
                    .map(|c| format!(", against {c:.2} between your photos"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// The subject metric of a summary: CLIP-I when measured, else DINO.
fn subject_metric(s: &MetricsSummary) -> Option<&'static str> {
    ["clip_i", "dino"]
        .into_iter()
        .find(|k| s.adapters.iter().any(|a| a.get(k).is_some()))
}

/// Every adapter's subject-capture verdict (the base model's own column left out).
pub fn capture(s: &MetricsSummary) -> Vec<CaptureVerdict> {
    let Some(key) = subject_metric(s) else {
        return Vec::new();
    };
    let base = s
        .adapters
        .iter()
        .find(|a| a.adapter == "base")
        .and_then(|a| a.get(key).copied());
    s.adapters
        .iter()
        .filter(|a| a.adapter != "base")
        .filter_map(|a| {
            let e = *a.get(key)?;
            Some(judge_capture(
                &a.label,
                ImageScores::title(key),
                e,
                base,
                s.ceiling.get(key),
            ))
        })
        .collect()
}

/// What a metric measures, for the sentence about a difference.
fn measures(metric: &str) -> &'static str {
    match metric {
        "clip_t" => "follows the prompts",
        _ => "resembles your photos",
    }
}

/// One paired comparison in words: "MoSLoRA resembles your photos more than LoRA (CLIP-I
/// +0.012 per picture, 95 % interval +0.004 to +0.020)", or "no clear difference between
/// MoSLoRA and LoRA in how closely they resemble your photos (CLIP-I ...)".
pub fn difference(p: &PairedMetric, a_label: &str, b_label: &str) -> String {
    let d = &p.diff;
    let numbers = format!(
        "{} {:+.3} per picture, 95 % interval {:+.3} to {:+.3}",
        ImageScores::title(&p.metric),
        d.mean,
        d.lo,
        d.hi
    );
    let what = measures(&p.metric);
    let (more, less) = if d.lo > 0.0 {
        (b_label, a_label)
    } else if d.hi < 0.0 {
        (a_label, b_label)
    } else {
        return format!(
            "no clear difference between {b_label} and {a_label} in how closely they {} \
             ({numbers})",
            what.replace("follows", "follow")
                .replace("resembles", "resemble")
        );
    };
    format!("{more} {what} more closely than {less} ({numbers})")
}

/// Every verdict of a summary, in reading order: capture per adapter, then the paired
/// comparison on each metric.
pub fn sentences(s: &MetricsSummary) -> Vec<String> {
    let mut out: Vec<String> = capture(s).iter().map(CaptureVerdict::sentence).collect();
    let label = |name: &str| {
        s.adapters
            .iter()
            .find(|a| a.adapter == name)
            .map_or_else(|| name.to_string(), |a| a.label.clone())
    };
    out.extend(
        s.paired
            .iter()
            .map(|p| difference(p, &label(&p.a), &label(&p.b))),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(mean: f64, half: f64) -> Estimate {
        Estimate {
            mean,
            lo: mean - half,
            hi: mean + half,
            n: 32,
        }
    }

    #[test]
    fn capture_reads_the_intervals() {
        let base = Some(est(0.11, 0.02));
        let v = judge_capture("LoRA", "CLIP-I", est(0.22, 0.03), base, Some(0.32));
        assert_eq!(v.capture, Capture::Learned);
        assert_eq!(
            v.sentence(),
            "LoRA learned the subject: CLIP-I 0.22, against 0.11 for the base model and 0.32 \
             between your photos"
        );
        // The new user's adapters: below the base model.
        let base = Some(est(0.126, 0.01));
        let v = judge_capture("my-lora", "CLIP-I", est(0.108, 0.01), base, Some(0.30));
        assert_eq!(v.capture, Capture::NotCaptured);
        assert!(
            v.sentence().starts_with(
                "my-lora did not capture the subject (no better than the base model: CLIP-I \
                 0.11, against 0.13 and 0.30 between your photos): try more steps or a higher \
                 learning rate"
            ),
            "{}",
            v.sentence()
        );
        // Above, but overlapping.
        let v = judge_capture("MoSLoRA", "DINO", est(0.14, 0.03), base, None);
        assert_eq!(v.capture, Capture::Unclear);
        assert!(v.sentence().contains("not clear yet"), "{}", v.sentence());
        let v = judge_capture("MoSLoRA", "DINO", est(0.14, 0.03), None, Some(0.5));
        assert_eq!(v.capture, Capture::NoBase);
        assert!(v.sentence().contains("render.include_base"));
    }

    #[test]
    fn differences_say_which_way_only_when_the_interval_leaves_out_zero() {
        let p = |mean: f64, half: f64, metric: &str| PairedMetric {
            a: "lora".into(),
            b: "moslora".into(),
            metric: metric.into(),
            diff: est(mean, half),
            wins: 20,
            ties: 4,
            losses: 8,
            tie_margin: 0.005,
            sign_test_p: Some(0.03),
        };
        assert_eq!(
            difference(&p(0.012, 0.008, "clip_i"), "LoRA", "MoSLoRA"),
            "MoSLoRA resembles your photos more closely than LoRA (CLIP-I +0.012 per picture, \
             95 % interval +0.004 to +0.020)"
        );
        assert!(difference(&p(-0.02, 0.01, "clip_t"), "LoRA", "MoSLoRA")
            .starts_with("LoRA follows the prompts more closely than MoSLoRA"));
        assert!(difference(&p(0.002, 0.01, "dino"), "LoRA", "MoSLoRA").starts_with(
            "no clear difference between MoSLoRA and LoRA in how closely they resemble your photos"
        ));
    }
}
