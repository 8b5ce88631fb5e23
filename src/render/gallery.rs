//! `index.html`: a self-contained gallery of a render folder (no network, works from
//! file://): the subject's training photos on top, then one section per prompt with the
//! adapters side by side, a prompt filter, and click-to-enlarge.

use std::path::Path;

use super::manifest::{ImageScores, Manifest, MetricsSummary, ValidationCurve};
use crate::error::Result;

use crate::html::{esc, url};

const STYLE: &str = r#"
:root { --ink: #1d232b; --muted: #5b6573; --line: #d9dee5; --bg: #f6f7f9; --accent: #2f6fdd; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: var(--bg); }
header { padding: 20px 28px 8px; }
h1 { font-size: 22px; margin: 0 0 4px; }
.meta { color: var(--muted); font-size: 13px; }
.photos { display: flex; gap: 8px; flex-wrap: wrap; margin: 12px 0; }
.photos img { height: 96px; border-radius: 6px; border: 1px solid var(--line); cursor: zoom-in; }
.tools { position: sticky; top: 0; background: var(--bg); padding: 10px 28px; border-bottom: 1px solid var(--line); z-index: 2; display: flex; gap: 14px; align-items: center; }
.tools input { font: inherit; padding: 6px 10px; width: min(480px, 60vw); border: 1px solid var(--line); border-radius: 6px; }
main { padding: 8px 28px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; margin: 16px 0; }
section h2 { font-size: 16px; margin: 0 0 10px; font-weight: 600; }
section h2 small { color: var(--muted); font-weight: 400; margin-left: 8px; }
table { border-collapse: collapse; }
th { font-size: 13px; color: var(--muted); font-weight: 600; padding: 2px 6px 6px; }
td { padding: 3px; }
td.seed { font-size: 12px; color: var(--muted); padding-right: 10px; white-space: nowrap; }
td img { width: 200px; max-width: 22vw; border-radius: 4px; display: block; cursor: zoom-in; }
.validation svg { width: min(600px, 100%); height: auto; background: #fff; border: 1px solid var(--line); border-radius: 6px; }
.validation polyline { fill: none; stroke-width: 2; }
.validation p { color: var(--muted); font-size: 13px; margin: 4px 0; }
.curve img { max-width: 640px; width: 100%; border: 1px solid var(--line); border-radius: 6px; }
#box { position: fixed; inset: 0; background: rgba(10,12,16,.88); display: none; align-items: center; justify-content: center; flex-direction: column; z-index: 5; }
#box.open { display: flex; }
#box img { max-width: 92vw; max-height: 82vh; image-rendering: auto; border-radius: 6px; }
#box p { color: #eef; margin: 12px; font-size: 14px; text-align: center; }
.hidden { display: none; }
.metrics table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
.metrics th, .metrics td { padding: 3px 10px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
.metrics p { color: var(--muted); font-size: 12px; margin: 4px 0; max-width: 900px; }
.verdicts ul { margin: 10px 0 6px; padding-left: 20px; max-width: 980px; }
.verdicts li { margin: 3px 0; font-size: 15px; }
.score { font-size: 11px; color: var(--muted); padding: 2px 0 4px; font-variant-numeric: tabular-nums; }
"#;

const SCRIPT: &str = r#"
const box = document.getElementById('box'), big = document.getElementById('big'), cap = document.getElementById('cap');
const zoomables = () => Array.from(document.querySelectorAll('img[data-caption]')).filter(i => !i.closest('.hidden'));
let current = -1;
function show(i) {
  const list = zoomables(); if (!list.length) return;
  current = (i + list.length) % list.length;
  big.src = list[current].src; cap.textContent = list[current].dataset.caption; box.classList.add('open');
}
document.addEventListener('click', e => {
  const img = e.target.closest('img[data-caption]');
  if (img && !box.contains(img)) show(zoomables().indexOf(img));
  else if (box.contains(e.target)) box.classList.remove('open');
});
document.addEventListener('keydown', e => {
  if (!box.classList.contains('open')) return;
  if (e.key === 'Escape') box.classList.remove('open');
  if (e.key === 'ArrowRight') show(current + 1);
  if (e.key === 'ArrowLeft') show(current - 1);
});
const filter = document.getElementById('filter'), count = document.getElementById('count');
function apply() {
  const q = filter.value.trim().toLowerCase(); let n = 0;
  document.querySelectorAll('section[data-prompt]').forEach(s => {
    const hit = !q || s.dataset.prompt.toLowerCase().includes(q);
    s.classList.toggle('hidden', !hit); n += hit;
  });
  count.textContent = n + ' prompt' + (n === 1 ? '' : 's');
}
filter.addEventListener('input', apply); apply();
"#;

/// "DINO 0.612 · CLIP-I 0.781 · CLIP-T 0.301" (only the metrics that were measured).
fn scores_line(s: &ImageScores) -> String {
    ImageScores::NAMES
        .iter()
        .filter_map(|k| {
            s.get(k)
                .map(|v| format!("{} {v:.3}", ImageScores::title(k)))
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

fn html_table(header: &[&str], rows: &[[String; 5]]) -> String {
    let mut t = String::from("<table><tr>");
    for c in header {
        t.push_str(&format!("<th>{}</th>", esc(c)));
    }
    t.push_str("</tr>");
    for r in rows {
        t.push_str("<tr>");
        for c in r {
            t.push_str(&format!("<td>{}</td>", esc(c)));
        }
        t.push_str("</tr>");
    }
    t.push_str("</table>");
    t
}

/// The automatic metrics' tables (written by `moslora score`).
fn metrics_section(s: &MetricsSummary) -> String {
    let mut h = String::from("<div class=\"verdicts\" id=\"verdicts\"><ul>");
    for v in &s.verdicts {
        h.push_str(&format!("<li>{}</li>", esc(v)));
    }
    h.push_str("</ul></div>");
    h.push_str(
        "<details class=\"metrics\" open><summary>the numbers: automatic metrics (DINO, CLIP-I, CLIP-T)</summary>",
    );
    h.push_str(&html_table(&MetricsSummary::TABLE_HEADER, &s.table_rows()));
    h.push_str(&format!(
        "<p>Mean [95 % bootstrap interval] over each adapter's images. DINO and CLIP-I: mean cosine with each of the {} subject photos; CLIP-T: cosine with the prompt, {}. The last row is the photos against each other.</p>",
        s.photos,
        esc(&s.clip_t_prompt)
    ));
    if let Some(title) = s.paired_title() {
        h.push_str(&format!("<p><b>{}</b></p>", esc(&title)));
        h.push_str(&html_table(
            &MetricsSummary::PAIRED_HEADER,
            &s.paired_rows(),
        ));
    }
    h.push_str("</details>");
    h
}

/// Write `index.html` into the render folder.
pub fn write(out: &Path, m: &Manifest) -> Result<()> {
    let mut h = String::new();
    let title = format!(
        "{} — {}",
        m.subject.name,
        m.adapters
            .iter()
            .map(|a| a.label.as_str())
            .collect::<Vec<_>>()
            .join(" vs ")
    );
    h.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    h.push_str(&format!(
        "<title>{}</title><style>{STYLE}</style></head><body>\n",
        esc(&title)
    ));
    h.push_str(&format!("<header><h1>{}</h1>", esc(&title)));
    let s = &m.settings;
    h.push_str(&format!(
        "<div class=\"meta\">subject “{}” ({} {}) · model {} · {} steps, guidance {}, {} · {}×{} · same seed, same initial noise in every column</div>",
        esc(&m.subject.name),
        esc(&m.subject.identifier),
        esc(&m.subject.class),
        esc(&m.model.name),
        s.steps,
        s.guidance,
        esc(&s.scheduler),
        s.width,
        s.height
    ));
    h.push_str("<div class=\"photos\">");
    for p in &m.subject.photos {
        h.push_str(&format!(
            "<img src=\"{}\" alt=\"training photo\" data-caption=\"training photo {}\">",
            url(p),
            esc(p)
        ));
    }
    h.push_str("</div>");
    if let Some(curve) = &m.loss_curve {
        let what = if m.validation.is_empty() {
            "training loss"
        } else {
            "training and validation loss"
        };
        h.push_str(&format!(
            "<details class=\"curve\"><summary>{what}</summary><img src=\"{}\" alt=\"loss curves\"></details>",
            url(curve)
        ));
    }
    if !m.validation.is_empty() {
        h.push_str(&validation_section(&m.validation));
    }
    if let Some(ms) = &m.metrics {
        h.push_str(&metrics_section(ms));
    }
    h.push_str("</header>\n<div class=\"tools\"><input id=\"filter\" type=\"search\" placeholder=\"Filter prompts…\" autofocus><span id=\"count\" class=\"meta\"></span>");
    h.push_str(&format!(
        "<a class=\"meta\" href=\"{}\">contact sheet</a></div>\n<main>\n",
        url(&m.contact_sheet)
    ));
    let seeds: Vec<u64> = {
        let mut v: Vec<u64> = m.images.iter().map(|i| i.seed).collect();
        v.sort();
        v.dedup();
        v
    };
    for p in &m.prompts {
        h.push_str(&format!(
            "<section data-prompt=\"{}\"><h2>{}<small>{}</small></h2><table><tr><th></th>",
            esc(&p.text),
            esc(&p.text),
            esc(&p.id)
        ));
        for a in &m.adapters {
            let size = a
                .parameters
                .map(|n| format!("<small>{} parameters</small>", count(n)))
                .unwrap_or_default();
            h.push_str(&format!("<th>{}{size}</th>", esc(&a.label)));
        }
        h.push_str("</tr>");
        for seed in &seeds {
            h.push_str(&format!("<tr><td class=\"seed\">seed {seed}</td>"));
            for a in &m.adapters {
                match m.images.iter().find(|i| i.prompt_id == p.id && i.seed == *seed && i.adapter == a.name) {
                    Some(i) => h.push_str(&format!(
                        "<td><img loading=\"lazy\" src=\"{}\" alt=\"{}\" data-caption=\"{} — {} — seed {}{}\">{}</td>",
                        url(&i.file),
                        esc(&a.label),
                        esc(&a.label),
                        esc(&p.text),
                        seed,
                        i.scores.map(|s| format!(" — {}", scores_line(&s))).unwrap_or_default(),
                        i.scores
                            .map(|s| format!("<div class=\"score\">{}</div>", scores_line(&s)))
                            .unwrap_or_default()
                    )),
                    None => h.push_str("<td></td>"),
                }
            }
            h.push_str("</tr>");
        }
        h.push_str("</table></section>\n");
    }
    h.push_str("</main>\n<div id=\"box\"><img id=\"big\" alt=\"\"><p id=\"cap\"></p></div>\n");
    h.push_str(&format!("<script>{SCRIPT}</script>\n</body></html>\n"));
    crate::fsutil::write_bytes(&out.join("index.html"), h.as_bytes())
}

/// The validation curves (one polyline per adapter, each in a style of its own, on one scale)
/// and, in words, each one's lowest validation loss past step 0.
fn validation_section(curves: &[ValidationCurve]) -> String {
    let points = curves.iter().flat_map(|c| c.points.iter());
    let finite: Vec<(u64, f32)> = points.copied().filter(|(_, l)| l.is_finite()).collect();
    let last = finite.iter().map(|(s, _)| *s).max().unwrap_or(0).max(1) as f64;
    let (lo, hi) = finite
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &(_, l)| (a.min(l), b.max(l)));
    let span = ((hi - lo) as f64).max(1e-9);
    let (w, h, pad) = (600.0, 200.0, 10.0);
    let mut svg = format!(
        "<svg viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"validation loss by step\">"
    );
    // One style per curve, in the run's adapter order (the app's chart uses the same five).
    const STYLES: [(&str, &str, &str); 5] = [
        ("#1f77b4", "", "solid"),
        ("#d62728", " stroke-dasharray=\"6 4\"", "dashed"),
        ("#2ca02c", " stroke-dasharray=\"2 3\"", "dotted"),
        ("#9467bd", " stroke-dasharray=\"8 3 2 3\"", "dash-dot"),
        ("#ff7f0e", " stroke-dasharray=\"12 4\"", "long dashes"),
    ];
    let mut words = Vec::new();
    let mut legend = Vec::new();
    for (i, c) in curves.iter().enumerate() {
        let (colour, dash, how) = STYLES[i % STYLES.len()];
        legend.push(format!("{} {how}", esc(&c.label)));
        let pts: Vec<String> = c
            .points
            .iter()
            .filter(|(_, l)| l.is_finite())
            .map(|&(s, l)| {
                let x = pad + (w - 2.0 * pad) * s as f64 / last;
                let y = h - pad - (h - 2.0 * pad) * (l - lo) as f64 / span;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        svg.push_str(&format!(
            "<polyline data-adapter=\"{}\" stroke=\"{colour}\"{dash} points=\"{}\"/>",
            esc(&c.adapter),
            pts.join(" ")
        ));
        let best = c
            .points
            .iter()
            .filter(|(s, l)| *s > 0 && l.is_finite())
            .fold(None, |b: Option<(u64, f32)>, &(s, l)| match b {
                Some((_, bl)) if bl <= l => b,
                _ => Some((s, l)),
            });
        if let Some((s, l)) = best {
            words.push(format!("{} {l:.5} at step {s}", esc(&c.label)));
        }
    }
    svg.push_str("</svg>");
    format!(
        "<div class=\"validation\"><h2>Validation loss</h2>{svg}<p>Lowest validation loss: {}. \
         Steps 0 to {last}; {}.</p></div>",
        words.join("; "),
        legend.join(", ")
    )
}

/// A parameter count for people: `86.3 k`, `1.24 M`.
fn count(n: i64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} k", n as f64 / 1e3),
        n => n.to_string(),
    }
}
