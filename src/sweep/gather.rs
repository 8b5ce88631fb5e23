//! `sweep gather`: the finished tasks put together. One page across subjects
//! (`index.html`, a section each); per subject (and rank and seed, when they vary) one render
//! folder with every adapter's column side by side, grids and gallery;
//! one metric table across subjects (per adapter, per subject, object vs live, with the
//! real-photo row, in the layout of DreamBooth's Table 1); one blind study kit across all
//! subjects; and the list of what is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::status::{survey, Report};
use super::{Kind, Sweep};
use crate::error::{Error, Result};
use crate::metrics::stats;
use crate::render::manifest::Manifest;

/// What was gathered.
#[derive(Debug, Clone)]
pub struct Gathered {
    pub dir: PathBuf,
    /// The render folder of each group.
    pub groups: Vec<PathBuf>,
    /// `metrics.md`, when the tasks were scored.
    pub table: Option<PathBuf>,
    pub study: Option<PathBuf>,
    /// Task names not done (also in `missing.txt`).
    pub missing: Vec<String>,
}

/// Gather into `<output>/gather/`, replacing an earlier gathering.
pub fn gather(sweep: &Sweep) -> Result<Gathered> {
    let dir = sweep.config.output.join("gather");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let reports = survey(sweep);
    let mut missing = Vec::new();
    // group -> its done tasks, in index order
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in &reports {
        let t = &sweep.tasks[*i];
        match r {
            Report::Done => groups.entry(sweep.group(t)).or_default().push(*i),
            _ => missing.push(sweep.task_name(t)),
        }
    }
    let mut folders = Vec::new();
    let mut manifests = Vec::new();
    for (group, indices) in &groups {
        let out = dir.join(group);
        let m = merge_group(sweep, indices, &out)?;
        folders.push(out);
        manifests.push((indices[0], m));
    }
    let metrics = manifests
        .iter()
        .any(|(_, m)| m.images.iter().any(|i| i.scores.is_some()))
        .then(|| metric_table(sweep, &manifests));
    let table = match &metrics {
        Some(t) => {
            crate::fsutil::write_bytes(&dir.join("metrics.md"), t.markdown().as_bytes())?;
            crate::fsutil::write_bytes(&dir.join("metrics.csv"), t.csv.as_bytes())?;
            Some(dir.join("metrics.md"))
        }
        None => None,
    };
    let study = make_study(sweep, &folders, &dir)?;
    write_index(
        sweep,
        &dir,
        &groups,
        &missing,
        metrics.as_ref(),
        study.is_some(),
    )?;
    let mut text = String::new();
    for m in &missing {
        text.push_str(m);
        text.push('\n');
    }
    crate::fsutil::write_bytes(&dir.join("missing.txt"), text.as_bytes())?;
    Ok(Gathered {
        dir,
        groups: folders,
        table,
        study,
        missing,
    })
}

/// `gather/index.html`: one page across subjects, a section each (its grids, with its own
/// gallery a click away), the metric table and what is missing. Self-contained, no script.
fn write_index(
    sweep: &Sweep,
    dir: &Path,
    groups: &BTreeMap<String, Vec<usize>>,
    missing: &[String],
    metrics: Option<&Metrics>,
    study: bool,
) -> Result<()> {
    use crate::html::{esc, url};
    let mut h = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>moslora sweep</title>\
         <style>body{font:15px/1.45 system-ui,sans-serif;margin:24px;color:#1d232b;background:#f6f7f9}\
         section{background:#fff;border:1px solid #d9dee5;border-radius:10px;padding:12px 16px;margin:16px 0}\
         h2{font-size:17px;margin:0 0 8px}.meta{color:#5b6573;font-size:13px}\
         .grids{display:flex;flex-wrap:wrap;gap:8px}.grids img{height:150px;border:1px solid #d9dee5;border-radius:4px}\
         table{border-collapse:collapse;width:100%;margin:4px 0 12px;font-size:13px}\
         th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e6e9ee;vertical-align:top;overflow-wrap:anywhere}\
         th{color:#5b6573;font-weight:600}h3{font-size:15px;margin:14px 0 4px}\
         .verdicts{margin:4px 0 10px;padding-left:20px;font-size:15px}.verdicts li{margin:2px 0}\
         .grids img{max-width:100%}</style>\
         </head><body>\n",
    );
    h.push_str(&format!(
        "<h1>Sweep: {} subjects, {} tasks</h1><p class=\"meta\">{}</p>\n",
        sweep.subjects.len(),
        sweep.tasks.len(),
        esc(&sweep.file.display().to_string())
    ));
    if study {
        h.push_str("<p>Blind study kit: <a href=\"study/index.html\">study/index.html</a> (its key is study.key.json, kept out of the kit).</p>\n");
    }
    if !missing.is_empty() {
        h.push_str(&format!(
            "<p><b>Not done ({}):</b> {}</p>\n",
            missing.len(),
            esc(&missing.join(", "))
        ));
    }
    if let Some(t) = metrics {
        h.push_str(&format!(
            "<section><h2>Metrics <span class=\"meta\">(<a href=\"metrics.md\">metrics.md</a>, \
             <a href=\"metrics.csv\">metrics.csv</a>)</span></h2>{}</section>\n",
            t.html()
        ));
    }
    for (group, indices) in groups {
        let s = &sweep.subjects[sweep.tasks[indices[0]].subject];
        let m = Manifest::read(&dir.join(group))?;
        h.push_str(&format!(
            "<section><h2>{} <span class=\"meta\">{} ({}) &middot; <a href=\"{}/index.html\">gallery</a></span></h2>",
            esc(group),
            esc(&s.class),
            s.kind.name(),
            url(group)
        ));
        if let Some(ms) = m.metrics.as_ref().filter(|ms| !ms.verdicts.is_empty()) {
            h.push_str("<ul class=\"verdicts\">");
            for v in &ms.verdicts {
                h.push_str(&format!("<li>{}</li>", esc(v)));
            }
            h.push_str("</ul>");
        }
        h.push_str("<div class=\"grids\">");
        for g in &m.grids {
            h.push_str(&format!(
                "<a href=\"{0}/{1}\"><img src=\"{0}/{1}\" alt=\"{2}\"></a>",
                url(group),
                url(&g.file),
                esc(&g.prompt_id)
            ));
        }
        h.push_str("</div></section>\n");
    }
    h.push_str("</body></html>\n");
    crate::fsutil::write_bytes(&dir.join("index.html"), h.as_bytes())
}

/// One render folder from the tasks of a group: their images copied in, their manifests
/// merged (adapters in task order), then grids, gallery and manifest laid out.
fn merge_group(sweep: &Sweep, indices: &[usize], out: &Path) -> Result<Manifest> {
    let mut merged: Option<Manifest> = None;
    for &i in indices {
        let t = &sweep.tasks[i];
        let cfg = sweep.run_config(t)?;
        let src = cfg.render_dir();
        let m = Manifest::read(&src)?;
        for f in m
            .images
            .iter()
            .map(|i| i.file.clone())
            .chain(m.subject.photos.iter().cloned())
        {
            let to = out.join(&f);
            if !to.exists() {
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                }
                std::fs::copy(src.join(&f), &to).map_err(|e| Error::io(&src.join(&f), e))?;
            }
        }
        match &mut merged {
            None => merged = Some(m),
            Some(all) => {
                if all.prompts != m.prompts || all.settings != m.settings {
                    return Err(Error::msg(format!(
                        "{}: its prompts or render settings differ from the other tasks of \
                         `{}`: they cannot share grids",
                        src.display(),
                        sweep.group(t)
                    )));
                }
                for a in m.adapters {
                    if !all.adapters.iter().any(|b| b.name == a.name) {
                        all.adapters.push(a);
                    }
                }
                for img in m.images {
                    if !all.images.iter().any(|x| x.file == img.file) {
                        all.images.push(img);
                    }
                }
            }
        }
    }
    let mut m = merged.expect("a group has at least one task");
    m.loss_curve = None;
    if let Some(s) = m.metrics.take() {
        m.metrics = Some(crate::metrics::summarise(&m, s.ceiling, s.clip, s.dino));
    }
    crate::render::lay_out(out, m)
}

/// `mean [lo, hi]` or a dash.
fn cell(e: Option<crate::render::manifest::Estimate>) -> String {
    match e {
        Some(e) => format!("{:.3} [{:.3}, {:.3}]", e.mean, e.lo, e.hi),
        None => "-".into(),
    }
}

const METRICS: [&str; 3] = ["dino", "clip_i", "clip_t"];

/// One table of the sweep's metrics, written as Markdown (`metrics.md`) and as HTML (the
/// page).
struct Table {
    title: String,
    intro: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// The metric tables, the sentences that say what they mean, and `metrics.csv`.
struct Metrics {
    intro: String,
    verdicts: Vec<String>,
    tables: Vec<Table>,
    csv: String,
}

impl Metrics {
    fn markdown(&self) -> String {
        use crate::html::md_text;
        let mut md = String::from("# Sweep metrics\n\n");
        for v in &self.verdicts {
            md.push_str(&format!("- **{}**\n", md_text(v)));
        }
        if !self.verdicts.is_empty() {
            md.push('\n');
        }
        md.push_str(&self.intro);
        md.push_str("\n\n");
        for t in &self.tables {
            md.push_str(&format!("## {}\n\n", md_text(&t.title)));
            if !t.intro.is_empty() {
                md.push_str(&format!("{}\n\n", t.intro));
            }
            let head: Vec<String> = t.header.iter().map(|h| md_text(h)).collect();
            md.push_str(&format!(
                "| {} |\n|{}\n",
                head.join(" | "),
                "---|".repeat(head.len())
            ));
            for r in &t.rows {
                let cells: Vec<String> = r.iter().map(|c| md_text(c)).collect();
                md.push_str(&format!("| {} |\n", cells.join(" | ")));
            }
            md.push('\n');
        }
        md
    }

    fn html(&self) -> String {
        use crate::html::esc;
        let mut h = String::new();
        if !self.verdicts.is_empty() {
            h.push_str("<ul class=\"verdicts\">");
            for v in &self.verdicts {
                h.push_str(&format!("<li>{}</li>", esc(v)));
            }
            h.push_str("</ul>");
        }
        h.push_str(&format!("<p class=\"meta\">{}</p>", esc(&self.intro)));
        for t in &self.tables {
            h.push_str(&format!("<h3>{}</h3>", esc(&t.title)));
            if !t.intro.is_empty() {
                h.push_str(&format!("<p class=\"meta\">{}</p>", esc(&t.intro)));
            }
            h.push_str("<table><thead><tr>");
            for c in &t.header {
                h.push_str(&format!("<th>{}</th>", esc(c)));
            }
            h.push_str("</tr></thead><tbody>");
            for r in &t.rows {
                h.push_str("<tr>");
                for c in r {
                    h.push_str(&format!("<td>{}</td>", esc(c)));
                }
                h.push_str("</tr>");
            }
            h.push_str("</tbody></table>");
        }
        h
    }
}

/// The metric tables: rows are the real photos and each adapter, over all subjects and split
/// object / live; then each adapter against the baseline image by image; then one row per
/// subject and adapter. Means with bootstrap 95 % intervals.
fn metric_table(sweep: &Sweep, manifests: &[(usize, Manifest)]) -> Metrics {
    use crate::render::manifest::{ImageScores, PairedMetric};
    let (resamples, seed) = (stats::BOOTSTRAP_RESAMPLES, stats::BOOTSTRAP_SEED);
    let kind_of = |first: usize| sweep.subjects[sweep.tasks[first].subject].kind;
    let name_of = |first: usize| sweep.group(&sweep.tasks[first]);
    let mut adapters: Vec<(String, String)> = Vec::new();
    for (_, m) in manifests {
        for a in &m.adapters {
            if !adapters.iter().any(|(n, _)| n == &a.name) {
                adapters.push((a.name.clone(), a.label.clone()));
            }
        }
    }
    let values = |adapter: &str, metric: &str, which: &dyn Fn(usize) -> bool| -> Vec<f64> {
        manifests
            .iter()
            .filter(|(f, _)| which(*f))
            .flat_map(|(_, m)| m.images.iter())
            .filter(|i| i.adapter == adapter)
            .filter_map(|i| i.scores.and_then(|s| s.get(metric)))
            .collect()
    };
    let ceiling = |metric: &str, which: &dyn Fn(usize) -> bool| -> Vec<f64> {
        manifests
            .iter()
            .filter(|(f, _)| which(*f))
            .filter_map(|(_, m)| m.metrics.as_ref().and_then(|s| s.ceiling.get(metric)))
            .collect()
    };
    let scopes = [
        ("all", None),
        ("object", Some(Kind::Object)),
        ("live", Some(Kind::Live)),
    ];
    let titles: Vec<String> = METRICS
        .iter()
        .map(|m| ImageScores::title(m).to_string())
        .collect();
    let mut tables = Vec::new();
    let mut verdicts = Vec::new();
    let mut csv = String::from("scope,row,metric,mean,lo,hi,n\n");
    for (scope, only) in scopes {
        let which: &dyn Fn(usize) -> bool = &|f| only.is_none_or(|k| kind_of(f) == k);
        let mut header = vec![String::new()];
        header.extend(titles.iter().cloned());
        let mut real = vec!["Real images".to_string()];
        real.extend(
            METRICS
                .iter()
                .map(|m| cell(stats::bootstrap_mean(&ceiling(m, which), resamples, seed))),
        );
        let mut rows = vec![real];
        for (name, label) in &adapters {
            let mut row = vec![label.clone()];
            for metric in METRICS {
                let e = stats::bootstrap_mean(&values(name, metric, which), resamples, seed);
                if let Some(e) = e {
                    csv.push_str(&format!(
                        "{scope},{name},{metric},{},{},{},{}\n",
                        e.mean, e.lo, e.hi, e.n
                    ));
                }
                row.push(cell(e));
            }
            rows.push(row);
        }
        tables.push(Table {
            title: format!("{scope} subjects"),
            intro: String::new(),
            header,
            rows,
        });
    }
    // Every other adapter against the baseline (LoRA when present), image by image over
    // identical prompt, seed and initial noise: the automatic judge's win / tie / loss.
    if let Some((base, base_label)) = adapters
        .iter()
        .find(|(n, _)| n == "lora")
        .or(adapters.first())
        .cloned()
    {
        let mut rows = Vec::new();
        for (name, label) in adapters.iter().filter(|(n, _)| *n != base) {
            for metric in METRICS {
                let mut pairs = Vec::new();
                for (_, m) in manifests {
                    for i in m.images.iter().filter(|i| i.adapter == *name) {
                        let other = m.images.iter().find(|j| {
                            j.adapter == base && j.prompt_id == i.prompt_id && j.seed == i.seed
                        });
                        let a = other.and_then(|j| j.scores).and_then(|s| s.get(metric));
                        if let (Some(a), Some(b)) = (a, i.scores.and_then(|s| s.get(metric))) {
                            pairs.push((a, b));
                        }
                    }
                }
                let Some(p) = stats::paired(&pairs, crate::metrics::TIE_MARGIN, resamples, seed)
                else {
                    continue;
                };
                csv.push_str(&format!(
                    "paired,{name}-vs-{base},{metric},{},{},{},{}\n",
                    p.diff.mean, p.diff.lo, p.diff.hi, p.diff.n
                ));
                let pm = PairedMetric {
                    a: base.clone(),
                    b: name.clone(),
                    metric: metric.to_string(),
                    diff: p.diff,
                    wins: p.wins,
                    ties: p.ties,
                    losses: p.losses,
                    tie_margin: p.tie_margin,
                    sign_test_p: p.sign_test_p,
                };
                verdicts.push(crate::metrics::verdict::difference(&pm, &base_label, label));
                rows.push(vec![
                    label.clone(),
                    ImageScores::title(metric).to_string(),
                    format!("{} / {} / {}", p.wins, p.ties, p.losses),
                    format!("{:+.4} [{:+.4}, {:+.4}]", p.diff.mean, p.diff.lo, p.diff.hi),
                    p.sign_test_p
                        .map(|x| format!("{x:.3}"))
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
        }
        tables.push(Table {
            title: format!("Against {base_label}, image by image"),
            intro: format!(
                "Wins, ties and losses of each adapter's score over {base_label}'s on the same \
                 prompt, seed and noise (a tie within {}), the mean difference with its 95 % \
                 interval, and the two-sided sign test.",
                crate::metrics::TIE_MARGIN
            ),
            header: [
                "adapter",
                "metric",
                "win / tie / loss",
                "mean difference",
                "sign test p",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            rows,
        });
    }
    let mut header: Vec<String> = ["subject", "kind", "adapter"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    header.extend(titles.iter().cloned());
    let mut rows = Vec::new();
    for (first, m) in manifests {
        for a in &m.adapters {
            let only = |f: usize| f == *first;
            let mut row = vec![
                name_of(*first),
                kind_of(*first).name().to_string(),
                a.label.clone(),
            ];
            row.extend(METRICS.iter().map(|metric| {
                cell(stats::bootstrap_mean(
                    &values(&a.name, metric, &only),
                    resamples,
                    seed,
                ))
            }));
            rows.push(row);
        }
    }
    tables.push(Table {
        title: "Per subject".into(),
        intro: String::new(),
        header,
        rows,
    });
    Metrics {
        intro: format!(
            "{} subjects, {} adapters. Mean over images with a bootstrap 95 % interval \
             ({resamples} resamples); the real-photo row compares each subject's photos with \
             each other (the ceiling).",
            manifests.len(),
            adapters.len()
        ),
        verdicts,
        tables,
        csv,
    }
}

/// One blind study kit over every subject: LoRA against MoSLoRA when both are there (else the
/// first two adapters), with a fixed seed so that gathering twice gives the same kit.
fn make_study(sweep: &Sweep, folders: &[PathBuf], dir: &Path) -> Result<Option<PathBuf>> {
    let mut names: Vec<String> = Vec::new();
    for t in &sweep.tasks {
        if !names.contains(&t.adapter.name) {
            names.push(t.adapter.name.clone());
        }
    }
    let (a, b) = if names.iter().any(|n| n == "lora") && names.iter().any(|n| n == "moslora") {
        ("lora".to_string(), "moslora".to_string())
    } else if names.len() >= 2 {
        (names[0].clone(), names[1].clone())
    } else {
        return Ok(None);
    };
    let with_both: Vec<PathBuf> = folders
        .iter()
        .filter(|f| {
            Manifest::read(f).is_ok_and(|m| {
                m.adapters.iter().any(|x| x.name == a) && m.adapters.iter().any(|x| x.name == b)
            })
        })
        .cloned()
        .collect();
    if with_both.is_empty() {
        return Ok(None);
    }
    let out = dir.join("study");
    crate::study::make::make(&crate::study::make::MakeOptions {
        renders: with_both,
        a,
        b,
        repeats: None,
        seed: Some(sweep.base.seed),
        out: out.clone(),
        force: true,
    })?;
    Ok(Some(out))
}
