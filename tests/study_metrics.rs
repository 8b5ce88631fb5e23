//! `study tally` with scored render folders: the automatic metrics on the same pairs beside
//! the votes, and how often the votes agree with them, against hand counts.

mod common;
mod study_support;

use moslora::render::manifest::{ImageScores, Manifest};
use moslora::study::tally::tally;
use moslora::study::{Criterion, Key, Which};
use serde_json::json;
use study_support::*;

#[test]
fn tally_shows_metrics_and_agreement() {
    let root = scratch("auto-metrics");
    let r = write_render(&root.join("r1"), &RenderSpec::new("robot", "toy", 4, 2, 8));
    make_study(
        &[&r],
        &root.join("STUDY"),
        &["--repeats", "2", "--seed", "5"],
    );
    let key = Key::load(&root.join("STUDY.key.json")).unwrap();

    // Scores: on even prompts MoSLoRA is ahead on CLIP-T by 0.1, on odd ones behind by 0.1;
    // DINO within the tie margin everywhere.
    let mut m = Manifest::read(&r).unwrap();
    for img in &mut m.images {
        let even = img
            .prompt_id
            .trim_start_matches('p')
            .parse::<u32>()
            .unwrap_or(0)
            % 2
            == 0;
        let up = if img.adapter == "moslora" {
            0.05
        } else {
            -0.05
        };
        img.scores = Some(ImageScores {
            dino: Some(0.6 + if img.adapter == "moslora" { 0.001 } else { 0.0 }),
            clip_i: Some(0.8),
            clip_t: Some(0.3 + if even { up } else { -up }),
        });
    }
    m.write(&r).unwrap();

    // One rater always picks MoSLoRA on prompt and ties on similarity.
    let votes: Vec<_> = key
        .trials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let b_side = if t.left == Which::B { "left" } else { "right" };
            json!({"trial": t.id, "position": i + 1, "similarity": "tie", "prompt": b_side,
                   "seconds": 2.0})
        })
        .collect();
    let file = root.join("votes.json");
    let doc = json!({
        "format": "study-votes", "format_version": 1, "study_id": key.study_id,
        "rater": "ann", "trials_total": key.trials.len(), "answered": key.trials.len(),
        "started": "2026-01-01T10:00:00.000Z", "saved": "2026-01-01T10:30:00.000Z",
        "votes": votes,
    });
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let t = tally(&key, &[file]);
    assert_eq!(t.raters, 1);
    let originals: Vec<_> = key
        .trials
        .iter()
        .filter(|t| t.repeat_of.is_none())
        .collect();
    let even = originals
        .iter()
        .filter(|t| {
            t.prompt_id
                .trim_start_matches('p')
                .parse::<u32>()
                .unwrap_or(0)
                % 2
                == 0
        })
        .count();
    assert_eq!(t.auto_metrics.len(), 2, "{:?}", t.auto_metrics);
    let sim = &t.auto_metrics[0];
    assert_eq!(
        (sim.criterion, sim.metric.as_str()),
        (Criterion::Similarity, "dino")
    );
    assert_eq!(
        (sim.pairs, sim.wins, sim.ties, sim.losses),
        (originals.len(), 0, originals.len(), 0)
    );
    assert_eq!(sim.votes, 0, "no pair is decided by DINO");
    let pr = &t.auto_metrics[1];
    assert_eq!(
        (pr.criterion, pr.metric.as_str()),
        (Criterion::Prompt, "clip_t")
    );
    assert_eq!((pr.wins, pr.losses), (even, originals.len() - even));
    // Every vote is for MoSLoRA: it agrees exactly where CLIP-T says MoSLoRA.
    assert_eq!((pr.votes, pr.agree), (originals.len(), even));
    let text = moslora::study::report::text(&t);
    assert!(
        text.contains("Automatic metrics on the same pairs"),
        "{text}"
    );
    assert!(text.contains("CLIP-T"), "{text}");
    let md = moslora::study::report::markdown(&t);
    assert!(
        md.contains("## Automatic metrics on the same pairs"),
        "{md}"
    );
}
