//! The tally as people read it (a terminal table and Markdown), as programs read it (CSV and
//! JSON), and as a bar chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::combinators::BindKeyPoints;
use plotters::prelude::*;

use super::tally::{kappa_words, Consistency, Share, Summary, Tally};
use super::Criterion;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::train::loss_log::register_font;

fn pct(s: &Share) -> String {
    match s.ci95 {
        Some((lo, hi)) => format!("{:.1} % [{lo:.1}, {hi:.1}]", s.percent),
        None => "-".into(),
    }
}

fn p_value(p: Option<f64>) -> String {
    match p {
        None => "-".into(),
        Some(p) if p < 0.001 => format!("{p:.1e}"),
        Some(p) => format!("{p:.3}"),
    }
}

fn sign(s: &Summary) -> String {
    match s.sign_test_p {
        None => "no non-tie votes".into(),
        Some(p) => format!(
            "p = {} ({} vs {})",
            p_value(Some(p)),
            s.counts.wins,
            s.counts.losses
        ),
    }
}

fn kappa(k: Option<f64>) -> String {
    match k {
        Some(k) => format!("{k:.3} ({})", kappa_words(k)),
        None => "n/a (needs 2+ raters on a pair, and some disagreement possible)".into(),
    }
}

fn cons(c: &Consistency) -> String {
    match c.percent() {
        Some(p) => format!("{}/{} ({p:.0} %)", c.consistent, c.compared),
        None => "-".into(),
    }
}

fn headline(t: &Tally) -> String {
    use crate::words::count;
    format!(
        "{} vs {}: {}, {} of {}, {} for consistency (study {})",
        t.b.label,
        t.a.label,
        count(t.raters, "rater"),
        count(t.pairs, "pair"),
        count(t.subjects, "subject"),
        count(t.repeated_pairs, "repeated pair"),
        t.study_id
    )
}

/// Left-aligned columns.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The terminal printout.
pub fn text(t: &Tally) -> String {
    let (a, b) = (&t.a.label, &t.b.label);
    let mut out = String::new();
    for v in super::verdict::sentences(t) {
        let _ = writeln!(out, "{v}");
    }
    out.push('\n');
    out.push_str(&headline(t));
    out.push_str("\n\n");
    let mut rows = vec![vec![
        "criterion".into(),
        "votes".into(),
        format!("{b} wins"),
        "tie".into(),
        format!("{a} wins"),
        "sign test (non-ties)".into(),
    ]];
    for o in &t.overall {
        let s = &o.summary;
        rows.push(vec![
            o.criterion.title().into(),
            s.votes.to_string(),
            pct(&s.win),
            pct(&s.tie),
            pct(&s.loss),
            sign(s),
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    for o in &t.overall {
        let _ = writeln!(
            out,
            "{}: Fleiss' kappa {} over {} pairs; consistency on repeated pairs {}",
            o.criterion.title(),
            kappa(o.fleiss_kappa),
            o.kappa_pairs,
            cons(&o.consistency)
        );
    }
    out.push_str("\nPer subject\n");
    let mut rows = vec![vec![
        "subject".into(),
        "pairs".into(),
        "criterion".into(),
        "votes".into(),
        format!("{b} wins"),
        "tie".into(),
        format!("{a} wins"),
        "sign test".into(),
    ]];
    for s in &t.per_subject {
        for cs in &s.by_criterion {
            let (c, sum) = (cs.criterion, &cs.summary);
            rows.push(vec![
                s.subject.clone(),
                s.pairs.to_string(),
                c.title().into(),
                sum.votes.to_string(),
                pct(&sum.win),
                pct(&sum.tie),
                pct(&sum.loss),
                p_value(sum.sign_test_p),
            ]);
        }
    }
    out.push_str(&table(&rows));
    out.push_str("\nPer rater (win / tie / loss of ");
    let _ = writeln!(out, "{b} against {a})");
    let mut rows = vec![vec![
        "rater".into(),
        "answered".into(),
        "similarity".into(),
        "prompt".into(),
        "consistency (sim., prompt)".into(),
        "left %".into(),
        "median s".into(),
    ]];
    for r in &t.per_rater {
        let wtl = |i: usize| {
            let c = &r.by_criterion[i].summary.counts;
            format!("{} / {} / {}", c.wins, c.ties, c.losses)
        };
        rows.push(vec![
            r.rater.clone(),
            format!("{}/{}", r.answered, r.trials),
            wtl(0),
            wtl(1),
            format!(
                "{}, {}",
                cons(&r.by_criterion[0].consistency),
                cons(&r.by_criterion[1].consistency)
            ),
            r.left_percent.map_or("-".into(), |p| format!("{p:.0}")),
            r.median_seconds.map_or("-".into(), |s| format!("{s:.1}")),
        ]);
    }
    out.push_str(&table(&rows));
    if !t.auto_metrics.is_empty() {
        let _ = writeln!(
            out,
            "\nAutomatic metrics on the same pairs ({b} - {a}; a metric tie is |difference| <= {})",
            crate::metrics::TIE_MARGIN
        );
        let mut rows = vec![super::auto_metrics::HEADER
            .iter()
            .map(|h| h.to_string())
            .collect()];
        rows.extend(super::auto_metrics::rows(&t.auto_metrics));
        out.push_str(&table(&rows));
    }
    out
}

/// The Markdown report.
pub fn markdown(t: &Tally) -> String {
    use crate::html::md_text;
    let (a, b) = (&md_text(&t.a.label), &md_text(&t.b.label));
    let mut md = format!("# Human evaluation: {b} vs {a}\n\n");
    for v in super::verdict::sentences(t) {
        let _ = writeln!(md, "- **{}**", md_text(&v));
    }
    md.push_str("\n## The numbers\n\n");
    let _ = writeln!(
        md,
        "{}, {} of {}; {} shown a second time with sides swapped to \
         measure consistency (those second showings are not counted below). Study `{}`.\n",
        crate::words::count(t.raters, "rater"),
        crate::words::count(t.pairs, "pair"),
        crate::words::count(t.subjects, "subject"),
        crate::words::count(t.repeated_pairs, "pair"),
        t.study_id
    );
    let _ = writeln!(
        md,
        "| criterion | votes | {b} wins | tie | {a} wins | sign test (non-ties) | Fleiss' kappa | consistency |"
    );
    md.push_str("| --- | ---: | ---: | ---: | ---: | --- | --- | --- |\n");
    for o in &t.overall {
        let s = &o.summary;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            o.criterion.title(),
            s.votes,
            pct(&s.win),
            pct(&s.tie),
            pct(&s.loss),
            sign(s),
            kappa(o.fleiss_kappa),
            cons(&o.consistency)
        );
    }
    md.push_str(
        "\nShares with Wilson 95 % intervals. The sign test is exact, two-sided, on wins against \
         losses (ties left out); it counts every vote as independent, which votes of several raters \
         on one pair are not. Kappa: agreement between raters on (A better, tie, B better) beyond \
         chance, Landis and Koch's words.\n\n![win / tie / loss](tally.png)\n\n## Per subject\n\n",
    );
    let _ = writeln!(
        md,
        "| subject | pairs | criterion | votes | {b} wins | tie | {a} wins | sign test p |"
    );
    md.push_str("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
    for s in &t.per_subject {
        for cs in &s.by_criterion {
            let (c, sum) = (cs.criterion, &cs.summary);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                md_text(&s.subject),
                s.pairs,
                c.title(),
                sum.votes,
                pct(&sum.win),
                pct(&sum.tie),
                pct(&sum.loss),
                p_value(sum.sign_test_p)
            );
        }
    }
    md.push_str("\n## Per rater\n\n");
    md.push_str(
        "| rater | answered | similarity W / T / L | prompt W / T / L | consistency (similarity) | \
         consistency (prompt) | left % of non-ties | median seconds |\n",
    );
    md.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in &t.per_rater {
        let wtl = |i: usize| {
            let c = &r.by_criterion[i].summary.counts;
            format!("{} / {} / {}", c.wins, c.ties, c.losses)
        };
        let _ = writeln!(
            md,
            "| {} | {}/{} | {} | {} | {} | {} | {} | {} |",
            md_text(&r.rater),
            r.answered,
            r.trials,
            wtl(0),
            wtl(1),
            cons(&r.by_criterion[0].consistency),
            cons(&r.by_criterion[1].consistency),
            r.left_percent.map_or("-".into(), |p| format!("{p:.0}")),
            r.median_seconds.map_or("-".into(), |s| format!("{s:.1}")),
        );
    }
    if !t.auto_metrics.is_empty() {
        let _ = writeln!(
            md,
            "\n## Automatic metrics on the same pairs\n\n{b} − {a} per pair; a metric tie is |difference| ≤ {}. \
             Agreement counts the non-tie votes on pairs the metric decides.\n",
            crate::metrics::TIE_MARGIN
        );
        let _ = writeln!(md, "| {} |", super::auto_metrics::HEADER.join(" | "));
        let _ = writeln!(md, "|{}", "---|".repeat(super::auto_metrics::HEADER.len()));
        for r in super::auto_metrics::rows(&t.auto_metrics) {
            let _ = writeln!(md, "| {} |", r.join(" | "));
        }
    }
    md.push_str("\n## Votes files\n\n");
    for f in &t.files {
        let _ = writeln!(
            md,
            "- {}: {}{}",
            md_text(&f.file.display().to_string()),
            if f.tallied { "" } else { "**not tallied**: " },
            md_text(&f.message)
        );
    }
    md
}

/// One HTML table: a header row and body rows, every cell escaped; `num` marks the
/// columns aligned right.
fn html_table(header: &[String], rows: &[Vec<String>], num: &[usize]) -> String {
    use crate::html::esc;
    let mut h = String::from("<table><thead><tr>");
    for (i, c) in header.iter().enumerate() {
        let cls = if num.contains(&i) {
            " class=\"num\""
        } else {
            ""
        };
        let _ = write!(h, "<th{cls}>{}</th>", esc(c));
    }
    h.push_str("</tr></thead><tbody>");
    for r in rows {
        h.push_str("<tr>");
        for (i, c) in r.iter().enumerate() {
            let cls = if num.contains(&i) {
                " class=\"num\""
            } else {
                ""
            };
            let _ = write!(h, "<td{cls}>{}</td>", esc(c));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    h
}

/// The tally as an HTML fragment for a page (the organiser's): the verdicts in words, a bar
/// per criterion (B wins, tie, A wins, drawn with CSS: the page needs no picture), then the
/// tables. Everything users wrote (labels, subject and rater names) is escaped; the page's
/// own stylesheet styles the classes used here.
pub fn html(t: &Tally) -> String {
    use crate::html::esc;
    let (a, b) = (&t.a.label, &t.b.label);
    let mut h = String::from("<ul class=\"verdicts\">");
    for v in super::verdict::sentences(t) {
        let _ = write!(h, "<li>{}</li>", esc(&v));
    }
    h.push_str("</ul>");
    let _ = write!(h, "<p class=\"mute\">{}</p>", esc(&headline(t)));
    h.push_str("<div class=\"chart\">");
    for o in &t.overall {
        let s = &o.summary;
        let _ = write!(
            h,
            "<div class=\"chart-row\"><div class=\"chart-label\">{}</div><div class=\"stack\">",
            esc(o.criterion.title())
        );
        for (share, cls, who) in [
            (&s.win, "b", format!("{b} wins")),
            (&s.tie, "tie", "tie".to_string()),
            (&s.loss, "a", format!("{a} wins")),
        ] {
            if share.percent.is_finite() && share.percent > 0.0 {
                let _ = write!(
                    h,
                    "<div class=\"seg {cls}\" style=\"width:{:.2}%\" title=\"{}: {}\">{:.0} %</div>",
                    share.percent,
                    esc(&who),
                    esc(&pct(share)),
                    share.percent
                );
            }
        }
        h.push_str("</div></div>");
    }
    let _ = write!(
        h,
        "<div class=\"legend\"><span class=\"key b\"></span>{} wins <span class=\"key tie\"></span>tie \
         <span class=\"key a\"></span>{} wins</div></div>",
        esc(b),
        esc(a)
    );
    h.push_str("<h2>The numbers</h2>");
    let header: Vec<String> = vec![
        "criterion".into(),
        "votes".into(),
        format!("{b} wins"),
        "tie".into(),
        format!("{a} wins"),
        "sign test (non-ties)".into(),
        "Fleiss' kappa".into(),
        "consistency".into(),
    ];
    let rows: Vec<Vec<String>> = t
        .overall
        .iter()
        .map(|o| {
            let s = &o.summary;
            vec![
                o.criterion.title().into(),
                s.votes.to_string(),
                pct(&s.win),
                pct(&s.tie),
                pct(&s.loss),
                sign(s),
                kappa(o.fleiss_kappa),
                cons(&o.consistency),
            ]
        })
        .collect();
    h.push_str(&html_table(&header, &rows, &[1, 2, 3, 4]));
    h.push_str(
        "<p class=\"mute small\">Shares with Wilson 95 % intervals; the sign test is exact and \
         two-sided on wins against losses (ties left out).</p>",
    );
    let header: Vec<String> = vec![
        "subject".into(),
        "pairs".into(),
        "criterion".into(),
        "votes".into(),
        format!("{b} wins"),
        "tie".into(),
        format!("{a} wins"),
        "sign test p".into(),
    ];
    let mut rows = Vec::new();
    for s in &t.per_subject {
        for cs in &s.by_criterion {
            let sum = &cs.summary;
            rows.push(vec![
                s.subject.clone(),
                s.pairs.to_string(),
                cs.criterion.title().into(),
                sum.votes.to_string(),
                pct(&sum.win),
                pct(&sum.tie),
                pct(&sum.loss),
                p_value(sum.sign_test_p),
            ]);
        }
    }
    h.push_str("<details><summary>per subject</summary>");
    h.push_str(&html_table(&header, &rows, &[1, 3, 4, 5, 6, 7]));
    h.push_str("</details>");
    let header: Vec<String> = [
        "rater",
        "answered",
        "similarity W / T / L",
        "prompt W / T / L",
        "consistency",
        "left % of non-ties",
        "median seconds",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = t
        .per_rater
        .iter()
        .map(|r| {
            let wtl = |i: usize| {
                let c = &r.by_criterion[i].summary.counts;
                format!("{} / {} / {}", c.wins, c.ties, c.losses)
            };
            vec![
                r.rater.clone(),
                format!("{}/{}", r.answered, r.trials),
                wtl(0),
                wtl(1),
                format!(
                    "{}, {}",
                    cons(&r.by_criterion[0].consistency),
                    cons(&r.by_criterion[1].consistency)
                ),
                r.left_percent.map_or("-".into(), |p| format!("{p:.0}")),
                r.median_seconds.map_or("-".into(), |s| format!("{s:.1}")),
            ]
        })
        .collect();
    h.push_str("<details><summary>per rater</summary>");
    h.push_str(&html_table(&header, &rows, &[1, 2, 3, 5, 6]));
    h.push_str("</details>");
    h
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One row per (scope, name, criterion); shares in percent.
pub fn csv(t: &Tally) -> String {
    let mut out = String::from(
        "scope,name,criterion,a,b,votes,b_wins,ties,a_wins,b_win_pct,b_win_lo,b_win_hi,\
         tie_pct,tie_lo,tie_hi,a_win_pct,a_win_lo,a_win_hi,sign_test_p,fleiss_kappa,\
         consistent,compared\n",
    );
    let f = |v: f64| {
        if v.is_finite() {
            format!("{v:.4}")
        } else {
            String::new()
        }
    };
    let share = |s: &Share| {
        let (lo, hi) = s.ci95.unwrap_or((f64::NAN, f64::NAN));
        format!("{},{},{}", f(s.percent), f(lo), f(hi))
    };
    let mut row = |scope: &str,
                   name: &str,
                   c: Criterion,
                   s: &Summary,
                   kappa: Option<f64>,
                   cons: Option<&Consistency>| {
        let _ = writeln!(
            out,
            "{scope},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            csv_field(name),
            c.name(),
            csv_field(&t.a.label),
            csv_field(&t.b.label),
            s.votes,
            s.counts.wins,
            s.counts.ties,
            s.counts.losses,
            share(&s.win),
            share(&s.tie),
            share(&s.loss),
            s.sign_test_p.map_or(String::new(), |p| format!("{p:.6e}")),
            kappa.map_or(String::new(), f),
            cons.map_or(String::new(), |c| c.consistent.to_string()),
            cons.map_or(String::new(), |c| c.compared.to_string()),
        );
    };
    for o in &t.overall {
        row(
            "overall",
            "all",
            o.criterion,
            &o.summary,
            o.fleiss_kappa,
            Some(&o.consistency),
        );
    }
    for s in &t.per_subject {
        for cs in &s.by_criterion {
            let (c, sum) = (cs.criterion, &cs.summary);
            row("subject", &s.subject, c, sum, None, None);
        }
    }
    for r in &t.per_rater {
        for rc in &r.by_criterion {
            row(
                "rater",
                &r.rater,
                rc.criterion,
                &rc.summary,
                None,
                Some(&rc.consistency),
            );
        }
    }
    out
}

/// Grouped bars per criterion (B wins, tie, A wins) with Wilson 95 % whiskers.
pub fn chart(t: &Tally, path: &Path) -> Result<()> {
    register_font();
    let (a, b) = (t.a.label.clone(), t.b.label.clone());
    let groups: Vec<(String, &Summary)> = t
        .overall
        .iter()
        .map(|o| {
            let p = match o.summary.sign_test_p {
                Some(p) => format!("sign test p = {}", p_value(Some(p))),
                None => "no non-tie votes".into(),
            };
            (format!("{} ({p})", o.criterion.title()), &o.summary)
        })
        .collect();
    let bars = [
        (format!("{b} wins"), RGBColor(214, 96, 77)),
        ("tie".to_string(), RGBColor(170, 170, 170)),
        (format!("{a} wins"), RGBColor(67, 147, 195)),
    ];
    let title = format!(
        "{b} vs {a}: {}, {}, {} per question",
        crate::words::count(t.raters, "rater"),
        crate::words::count(t.pairs, "pair"),
        crate::words::count(t.overall.first().map_or(0, |o| o.summary.votes), "vote")
    );
    // x in hundredths of a group (integer coordinates carry custom key points and labels).
    let n = groups.len().max(1) as i32 * 100;
    let centres: Vec<i32> = (0..groups.len() as i32).map(|i| i * 100 + 50).collect();
    let err = |e: &dyn std::fmt::Display| Error::msg(format!("drawing {}: {e}", path.display()));
    // Drawn in memory and written by fsutil, as loss.png is (one PNG encoder in the build).
    let (w, h) = (1000u32, 560u32);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let label_of = |x: &i32| {
            groups
                .iter()
                .enumerate()
                .find(|(i, _)| *i as i32 * 100 + 50 == *x)
                .map(|(_, g)| g.0.clone())
                .unwrap_or_default()
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(58)
            .y_label_area_size(60)
            .build_cartesian_2d((0i32..n).with_key_points(centres.clone()), 0f64..100f64)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&label_of)
            .x_desc("whiskers: Wilson 95 % intervals")
            .y_desc("share of votes (%)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .draw()
            .map_err(|e| err(&e))?;
        let width = 20;
        for (k, (name, colour)) in bars.iter().enumerate() {
            let colour = *colour;
            let mut rects = Vec::new();
            let mut whiskers = Vec::new();
            let mut labels = Vec::new();
            for (g, (_, s)) in groups.iter().enumerate() {
                let share = [&s.win, &s.tie, &s.loss][k];
                let x0 = g as i32 * 100 + 50 + (k as i32 * 2 - 3) * width / 2 + 1;
                let x1 = x0 + width - 2;
                let v = if share.percent.is_finite() {
                    share.percent
                } else {
                    0.0
                };
                rects.push(Rectangle::new([(x0, 0.0), (x1, v)], colour.filled()));
                let xm = (x0 + x1) / 2;
                let mut top = v;
                if let Some((lo, hi)) = share.ci95 {
                    let cap = width / 5;
                    whiskers.push(PathElement::new(
                        vec![(xm, lo), (xm, hi)],
                        BLACK.stroke_width(2),
                    ));
                    whiskers.push(PathElement::new(
                        vec![(xm - cap, lo), (xm + cap, lo)],
                        BLACK.stroke_width(2),
                    ));
                    whiskers.push(PathElement::new(
                        vec![(xm - cap, hi), (xm + cap, hi)],
                        BLACK.stroke_width(2),
                    ));
                    top = hi;
                }
                if share.percent.is_finite() {
                    labels.push(Text::new(
                        format!("{:.1} %", share.percent),
                        (xm - width / 4, (top + 2.0).min(97.0) + 3.5),
                        ("sans-serif", 15).into_font(),
                    ));
                }
            }
            chart
                .draw_series(rects)
                .map_err(|e| err(&e))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled())
                });
            chart.draw_series(whiskers).map_err(|e| err(&e))?;
            chart.draw_series(labels).map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperMiddle)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    let img = image::RgbImage::from_raw(w, h, pixels).expect("the buffer is w x h x 3");
    fsutil::write_png(path, &img, &[])
}

/// Write `tally.md`, `tally.csv`, `tally.json` and `tally.png` into `dir`.
pub fn write_all(t: &Tally, dir: &Path) -> Result<Vec<PathBuf>> {
    let md = dir.join("tally.md");
    let csv_path = dir.join("tally.csv");
    let json = dir.join("tally.json");
    let png = dir.join("tally.png");
    fsutil::write_bytes(&md, markdown(t).as_bytes())?;
    fsutil::write_bytes(&csv_path, csv(t).as_bytes())?;
    let text = serde_json::to_string_pretty(t).map_err(|e| Error::msg(e.to_string()))?;
    fsutil::write_bytes(&json, text.as_bytes())?;
    chart(t, &png)?;
    Ok(vec![md, csv_path, json, png])
}
