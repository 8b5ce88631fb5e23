//! The metrics as people read them: a terminal table, `scores.md`, `scores.csv`.

use crate::render::manifest::{Manifest, MetricsSummary};

fn aligned(header: &[&str], rows: &[[String; 5]]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

/// The terminal summary.
pub fn text(m: &Manifest) -> String {
    let Some(s) = &m.metrics else {
        return String::new();
    };
    let mut out = String::new();
    for v in super::verdict::sentences(s) {
        out += &format!("{v}\n");
    }
    out += &format!(
        "\n{} — mean [95 % bootstrap interval] over each adapter's images, against {}\n",
        m.subject.name,
        crate::words::count(s.photos, "subject photo")
    );
    out += &aligned(&MetricsSummary::TABLE_HEADER, &s.table_rows());
    if let Some(t) = s.paired_title() {
        out += &format!("\n{t}\n");
        out += &aligned(&MetricsSummary::PAIRED_HEADER, &s.paired_rows());
    }
    out
}

fn md_table(header: &[&str], rows: &[[String; 5]]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    out += &format!("|{}\n", "---|".repeat(header.len()));
    for r in rows {
        out += &format!("| {} |\n", r.join(" | "));
    }
    out
}

/// `scores.md`.
pub fn markdown(m: &Manifest) -> String {
    let Some(s) = &m.metrics else {
        return String::new();
    };
    let mut out = format!("# Automatic metrics: {}\n\n", m.subject.name);
    for v in super::verdict::sentences(s) {
        out += &format!("- {}\n", crate::html::md_text(&v));
    }
    out += "\n## The numbers\n\n";
    out += &format!(
        "Mean with its 95 % percentile-bootstrap interval ({} resamples, seed {}) over each \
         adapter's images. DINO and CLIP-I: mean cosine with each of the {} subject photos; \
         CLIP-T: cosine with the prompt, {}. The last row is the photos against each other \
         (every unordered pair): the ceiling.\n\n",
        s.bootstrap_resamples, s.bootstrap_seed, s.photos, s.clip_t_prompt
    );
    out += &md_table(&MetricsSummary::TABLE_HEADER, &s.table_rows());
    if let Some(t) = s.paired_title() {
        out += &format!("\n### {}\n\n", crate::html::md_text(&t));
        out += &md_table(&MetricsSummary::PAIRED_HEADER, &s.paired_rows());
        out += "\nWin / tie / loss counts the second adapter's pairs ahead, within the margin, \
                behind; the sign test is exact and two-sided on wins against losses.\n";
    }
    out += "\nEncoders: ";
    out += &[("CLIP", &s.clip), ("DINO", &s.dino)]
        .iter()
        .filter_map(|(n, d)| d.as_ref().map(|d| format!("{n} `{d}`")))
        .collect::<Vec<_>>()
        .join(", ");
    out += ". DINO preprocessing: resize 256 (bicubic, PIL), centre crop 224, ImageNet mean/std; \
            CLIP: shortest edge 224 (bicubic, PIL), centre crop 224, CLIP mean/std.\n";
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `scores.csv`: one row per image (empty cells where an encoder was not given).
pub fn csv(m: &Manifest) -> String {
    let texts = super::clip_t_texts(m);
    let mut out =
        String::from("file,adapter,prompt_id,seed,prompt,clip_t_prompt,dino,clip_i,clip_t\n");
    for (i, t) in m.images.iter().zip(&texts) {
        let s = i.scores.unwrap_or_default();
        let v = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.6}"));
        out += &format!(
            "{},{},{},{},{},{},{},{},{}\n",
            csv_field(&i.file),
            csv_field(&i.adapter),
            csv_field(&i.prompt_id),
            i.seed,
            csv_field(&i.prompt),
            csv_field(t),
            v(s.dino),
            v(s.clip_i),
            v(s.clip_t)
        );
    }
    out
}
