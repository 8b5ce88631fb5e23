//! The app's pages, made by the server. Whatever a user wrote (subject names, captions, file
//! names, prompts, messages) goes through `html::esc`; the pages carry no inline script or
//! style (the Content-Security-Policy forbids both), only `/static/app.js` and `app.css`.

use std::fmt::Write as _;

use super::jobs::{self, JobFiles};
use super::presets::{self, PRESETS};
use super::routes::AppState;
use super::store::{self, Store};
use crate::error::Result;
use crate::html::esc;

pub const APP_JS: &str = include_str!("app.js");
pub const APP_CSS: &str = include_str!("app.css");

/// The page around `body`, with the navigation and the CSRF token the script sends.
fn layout(app: &AppState, title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"csrf\" content=\"{}\"><title>{} - moslora</title>\
         <link rel=\"stylesheet\" href=\"/static/app.css\">\
         <script src=\"/static/app.js\" defer></script></head><body>\
         <nav><a href=\"/queue\">Queue</a><a href=\"/subjects\">Subjects</a>\
         <a href=\"/models\">Models</a><a href=\"/new\">New comparison</a></nav>\
         <main><h1>{}</h1>\n{body}\n<p class=\"error\" id=\"error\" role=\"alert\"></p></main></body></html>\n",
        esc(&app.csrf),
        esc(title),
        esc(title)
    )
}

pub fn subjects(app: &AppState, db: &Store) -> Result<String> {
    let mut b = String::from("<ul class=\"cards\">");
    for s in db.subjects()? {
        let n = db.photos(s.id)?.len();
        let _ = write!(
            b,
            "<li><a href=\"/subjects/{}\">{}</a> <span class=\"muted\">{} ({}), {n} photo(s)</span></li>",
            s.id,
            esc(&s.name),
            esc(&s.class),
            esc(&s.identifier)
        );
    }
    b.push_str("</ul>");
    b.push_str(
        "<h2>New subject</h2><form class=\"api\" data-action=\"/api/subjects\" data-go=\"url\">\
         <label>Name <input name=\"name\" required maxlength=\"100\"></label>\
         <label>Class <input name=\"class\" required maxlength=\"60\" placeholder=\"dog\"></label>\
         <label>Identifier <input name=\"identifier\" required maxlength=\"30\" value=\"sks\"></label>\
         <button>Create</button></form>",
    );
    Ok(layout(app, "Subjects", &b))
}

pub fn subject(app: &AppState, db: &Store, id: i64) -> Result<String> {
    let Some(s) = db.subject(id)? else {
        return Ok(layout(app, "No such subject", ""));
    };
    let photos = db.photos(id)?;
    let mut b = format!(
        "<form class=\"api\" data-action=\"/api/subjects/{id}\">\
         <label>Name <input name=\"name\" value=\"{}\" maxlength=\"100\"></label>\
         <label>Class <input name=\"class\" value=\"{}\" maxlength=\"60\"></label>\
         <label>Identifier <input name=\"identifier\" value=\"{}\" maxlength=\"30\"></label>\
         <button>Save</button></form>\
         <div class=\"drop\" data-upload=\"/api/subjects/{id}/photos\">\
         <p>Drop photos here, or <label class=\"button\">choose files\
         <input type=\"file\" accept=\"image/png,image/jpeg,image/webp\" multiple></label></p>\
         <p class=\"muted\">PNG, JPEG or WebP; at most {} photos of {} MiB each. Each is checked by its content.</p>\
         <ul class=\"uploads\"></ul></div><ul class=\"photos\">",
        esc(&s.name),
        esc(&s.class),
        esc(&s.identifier),
        super::photos::MAX_PHOTOS,
        super::photos::MAX_UPLOAD_BYTES >> 20
    );
    for p in &photos {
        let checks: String = if p.checks.is_empty() {
            "<li class=\"ok\">ready</li>".into()
        } else {
            p.checks
                .lines()
                .map(|c| format!("<li>{}</li>", esc(c)))
                .collect()
        };
        let _ = write!(
            b,
            "<li class=\"photo\"><img src=\"/photos/{pid}/thumb\" alt=\"{orig}\" width=\"128\">\
             <div><b>{orig}</b> <span class=\"muted\">{w} x {h}</span><ul class=\"checks\">{checks}</ul>\
             <form class=\"api\" data-action=\"/api/photos/{pid}/caption\">\
             <input name=\"caption\" value=\"{cap}\" placeholder=\"caption (photo.txt), e.g. a photo of [V] {{class}} on grass\">\
             <button>Save caption</button></form>\
             <button class=\"post\" data-post=\"/api/photos/{pid}/remove\">Remove</button>\
             <label class=\"button\">Replace<input type=\"file\" class=\"replace\" accept=\"image/png,image/jpeg,image/webp\" \
             data-replace=\"/api/photos/{pid}/replace\"></label></div></li>",
            pid = p.id,
            orig = esc(&p.original),
            w = p.width,
            h = p.height,
            cap = esc(&p.caption)
        );
    }
    b.push_str("</ul>");
    Ok(layout(app, &format!("Subject: {}", s.name), &b))
}

pub fn models(app: &AppState, db: &Store) -> Result<String> {
    let mut b = String::from("<ul class=\"cards\">");
    for m in db.models()? {
        let _ = write!(
            b,
            "<li><b>{}</b> <code>{}</code></li>",
            esc(&m.name),
            esc(&m.path)
        );
    }
    b.push_str(
        "</ul><h2>Add a model</h2><form class=\"api\" data-action=\"/api/models\">\
         <label>SDXL folder or single .safetensors file (full path) <input name=\"path\" required></label>\
         <label>Name <input name=\"name\"></label><button>Check and add</button></form>",
    );
    Ok(layout(app, "Models", &b))
}

fn options(items: impl Iterator<Item = (String, String)>) -> String {
    items
        .map(|(v, l)| format!("<option value=\"{}\">{}</option>", esc(&v), esc(&l)))
        .collect()
}

pub fn new_job(app: &AppState, db: &Store) -> Result<String> {
    let subjects = options(
        db.subjects()?
            .into_iter()
            .map(|s| (s.id.to_string(), s.name)),
    );
    let models = options(db.models()?.into_iter().map(|m| (m.id.to_string(), m.name)));
    let mut adapters = String::new();
    for (name, label) in presets::adapters() {
        let _ = write!(
            adapters,
            "<li data-adapter=\"{n}\"><label class=\"inline\"><input type=\"checkbox\" name=\"adapters\" \
             value=\"{n}\" data-list{checked}> <b>{l}</b></label>",
            n = esc(name),
            l = esc(label),
            checked = if presets::ticked(name) { " checked" } else { "" }
        );
        if presets::has_mixer(name) {
            let mixers = options(presets::mixers().into_iter().map(|m| {
                let l = if m == "orthogonal" {
                    "orthogonal (the paper's)".to_string()
                } else {
                    m.to_string()
                };
                (m.to_string(), l)
            }));
            let _ = write!(
                adapters,
                " <label class=\"inline\">with its mixer <select name=\"mixer\">{mixers}</select></label>"
            );
        }
        adapters.push_str("</li>");
    }
    let presets = options(
        PRESETS
            .iter()
            .map(|(id, l, what)| (id.to_string(), format!("{l}: {what}"))),
    );
    let b = format!(
        "<form class=\"api job\" data-action=\"/api/jobs\" data-go=\"url\">\
         <label>Subject <select name=\"subject\" data-int>{subjects}</select></label>\
         <label>Model <select name=\"model\" data-int>{models}</select></label>\
         <label>Preset <select name=\"preset\">{presets}</select></label>\
         <label>Prompts <select name=\"prompts\"><option value=\"toy\">toy (the toy world's)</option>\
         <option value=\"study8\">study8</option><option value=\"dreambooth\">dreambooth</option></select></label>\
         <label>Or your own prompts, one a line ([V] is the subject, {{class}} its class)\
         <textarea name=\"lines\" rows=\"3\"></textarea></label>\
         <fieldset class=\"adapters\"><legend>Adapters, trained one after the other and compared (two or more)</legend>\
         <ul>{adapters}</ul><label class=\"inline\">rank (alpha follows it) \
         <input name=\"rank\" type=\"number\" min=\"1\" max=\"128\" value=\"4\" data-int></label> \
         <label class=\"inline\"><input type=\"checkbox\" name=\"same_parameters\"> the same number of trainable \
         parameters (each adapter's rank set to match LoRA's at this rank)</label></fieldset>\
         <details><summary>Advanced: the RUN.yaml</summary>\
         <button type=\"button\" class=\"preview\">Show the RUN.yaml of these choices</button>\
         <textarea name=\"yaml\" rows=\"24\" spellcheck=\"false\"></textarea>\
         <p class=\"yaml-check muted\" data-yaml-check role=\"status\">Checked as you type, as `moslora compare` checks it.</p></details>\
         <button>Start</button></form>"
    );
    Ok(layout(app, "New comparison", &b))
}

fn state_badge(state: &str) -> String {
    format!(
        "<span class=\"state state-{}\" data-state>{}</span>",
        esc(state),
        esc(state)
    )
}

fn actions(id: i64, state: &str) -> String {
    let mut a = String::new();
    let mut button = |action: &str, label: &str| {
        let _ = write!(
            a,
            "<button class=\"post\" data-post=\"/api/jobs/{id}/{action}\">{label}</button>"
        );
    };
    match state {
        store::RUNNING => button("stop", "Stop"),
        store::QUEUED => {
            button("up", "Up");
            button("down", "Down");
            button("stop", "Hold");
            button("remove", "Remove");
        }
        store::STOPPED | store::FAILED => {
            button("resume", "Resume");
            button("remove", "Remove");
        }
        store::DONE => button("remove", "Remove"),
        _ => {}
    }
    a
}

pub fn queue(app: &AppState, db: &Store) -> Result<String> {
    let jobs = db.jobs()?;
    let mut b = String::from(
        "<table class=\"queue\"><thead><tr><th>#</th><th>Job</th><th>Device</th><th>State</th><th></th></tr></thead><tbody>",
    );
    for j in &jobs {
        let _ = write!(
            b,
            "<tr><td>{id}</td><td><a href=\"/jobs/{id}\">{t}</a> <span class=\"muted\">{m}</span></td>\
             <td>{d}</td><td>{s}</td><td>{a}</td></tr>",
            id = j.id,
            t = esc(&j.title),
            m = esc(&j.message),
            d = esc(&j.device),
            s = state_badge(&j.state),
            a = actions(j.id, &j.state)
        );
    }
    b.push_str("</tbody></table>");
    if jobs.is_empty() {
        b.push_str("<p>No jobs yet: add a subject's photos, then start a <a href=\"/new\">new comparison</a>.</p>");
    }
    Ok(layout(app, "Queue", &b))
}

/// The last `n` lines of a file.
fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn job(app: &AppState, db: &Store, id: i64) -> Result<String> {
    let Some(j) = db.job(id)? else {
        return Ok(layout(app, "No such job", ""));
    };
    let files = JobFiles::new(&app.data, id);
    let command = jobs::command_line(&app.exe, &files)
        .iter()
        .map(|a| esc(a))
        .collect::<Vec<_>>()
        .join(" ");
    // One curve per adapter kind, each in a style of its own: the first solid and thick, the
    // next dashed over it, so that curves that overlap all show.
    const STYLES: [(&str, &str); 5] = [
        ("solid", "stroke=\"#1f77b4\" stroke-width=\"2.5\""),
        (
            "dashed",
            "stroke=\"#d62728\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"",
        ),
        (
            "dotted",
            "stroke=\"#2ca02c\" stroke-width=\"1.5\" stroke-dasharray=\"2 3\"",
        ),
        (
            "dash-dot",
            "stroke=\"#9467bd\" stroke-width=\"1.5\" stroke-dasharray=\"8 3 2 3\"",
        ),
        (
            "long dashes",
            "stroke=\"#ff7f0e\" stroke-width=\"1.5\" stroke-dasharray=\"12 4\"",
        ),
    ];
    let curves: Vec<(&str, &str, &str, &str)> = presets::of_job(&files.run_yaml())
        .into_iter()
        .zip(STYLES.iter().cycle())
        .map(|((name, label), (how, style))| (name, label, *how, *style))
        .collect();
    let b = format!(
        "<section class=\"live\" data-job=\"{id}\">\
         <p>{state} <span class=\"muted\" data-message>{msg}</span> {actions}</p>\
         <p class=\"status\"><b data-phase>waiting</b> <span data-steps></span> <span data-speed></span> <span data-eta></span></p>\
         <progress data-progress max=\"1\" value=\"0\"></progress>\
         <h2>Training loss</h2><svg class=\"chart\" data-chart viewBox=\"0 0 600 200\" role=\"img\" aria-label=\"loss curves: {aria}\">\
         {lines}<defs><marker id=\"dot\" viewBox=\"0 0 10 10\" refX=\"5\" refY=\"5\" markerWidth=\"3\" markerHeight=\"3\"><circle cx=\"5\" cy=\"5\" r=\"4\" fill=\"#fff\" stroke=\"#333\" stroke-width=\"2\"/></marker></defs></svg>\
         <p class=\"legend\">{legend}<span class=\"validation\" data-validation-legend hidden>validation: the bold lines through dots</span> \
         <span data-loss></span> <span data-validation></span></p>\
         <h2>Samples</h2>{sample_now}<div class=\"samples\" data-samples></div>\
         <p><a href=\"/jobs/{id}/results\" data-results>Results</a></p>\
         <h2>Log</h2><pre class=\"log\" data-log>{log}</pre>\
         <h2>The command that reproduces this job</h2><pre>{command}</pre>\
         <details><summary>RUN.yaml</summary><pre>{yaml}</pre></details></section>",
        state = state_badge(&j.state),
        msg = esc(&j.message),
        actions = actions(id, &j.state),
        aria = esc(&curves.iter().map(|c| format!("{} {}", c.1, c.2)).collect::<Vec<_>>().join(", ")),
        // Each kind's training curve, and its validation curve in the same colour and dashes,
        // bold through dots.
        lines = curves.iter().map(|c| format!(
            "<polyline data-series=\"{0}\" fill=\"none\" {1} points=\"\"></polyline>\
             <polyline data-series=\"{0}-validation\" fill=\"none\" {2} stroke-linecap=\"round\" \
             stroke-linejoin=\"round\" marker-mid=\"url(#dot)\" marker-start=\"url(#dot)\" \
             marker-end=\"url(#dot)\" points=\"\"></polyline>",
            c.0, c.3, c.3.replace("stroke-width=\"2.5\"", "stroke-width=\"4\"").replace("stroke-width=\"1.5\"", "stroke-width=\"4\"")
        )).collect::<String>(),
        legend = curves.iter().map(|c| format!(
            "<span><svg viewBox=\"0 0 30 10\" aria-hidden=\"true\"><line x1=\"0\" y1=\"5\" x2=\"30\" y2=\"5\" {}/></svg> {}</span> ",
            c.3, esc(c.1)
        )).collect::<String>(),
        sample_now = if j.state == store::RUNNING {
            format!(
                "<p><button type=\"button\" class=\"sample-now\" data-sample=\"/api/jobs/{id}/sample\">Sample now</button> \
                 <span class=\"muted\" data-sample-note>a sample of the adapter in training at its next step</span></p>"
            )
        } else {
            String::new()
        },
        log = esc(&tail(&files.log(), 30)),
        yaml = esc(&std::fs::read_to_string(files.run_yaml()).unwrap_or_default()),
    );
    Ok(layout(app, &format!("Job {id}: {}", j.title), &b))
}

/// The steps at which adapter `kind`'s training wrote a sample (`samples/step_NNNNNN.png`).
fn sample_steps(out: &std::path::Path, kind: &str) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(out.join(kind).join("samples"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("step_")?
                .strip_suffix(".png")?
                .parse()
                .ok()
        })
        .collect();
    steps.sort_unstable();
    steps
}

/// The samples training wrote along the way, one row a step, one column an adapter: where
/// the subject arrives, and where it starts to overfit.
fn step_series(id: i64, out: &std::path::Path, kinds: &[(&str, &str)]) -> String {
    let per_kind: Vec<Vec<u64>> = kinds.iter().map(|k| sample_steps(out, k.0)).collect();
    let mut steps: Vec<u64> = per_kind.iter().flatten().copied().collect();
    steps.sort_unstable();
    steps.dedup();
    if steps.is_empty() {
        return String::new();
    }
    let mut b = String::from(
        "<h2>Step series</h2><p class=\"muted\">The sample each adapter drew along the way \
         (the instance prompt, seed 0, the same noise at every step).</p>\
         <table class=\"steps\"><thead><tr><th>step</th>",
    );
    for k in kinds {
        let _ = write!(b, "<th>{}</th>", esc(k.1));
    }
    b.push_str("</tr></thead><tbody>");
    for step in steps {
        let _ = write!(b, "<tr><td>{step}</td>");
        for (k, have) in kinds.iter().zip(&per_kind) {
            if have.contains(&step) {
                let _ = write!(
                    b,
                    "<td><img src=\"/jobs/{id}/sample/{}/{step}\" alt=\"{} at step {step}\" \
                     title=\"{} at step {step}\"></td>",
                    k.0,
                    esc(k.1),
                    esc(k.1)
                );
            } else {
                b.push_str("<td></td>");
            }
        }
        b.push_str("</tr>");
    }
    b.push_str("</tbody></table>");
    b
}

/// A table of text cells, escaped.
fn cells_table(header: &[&str], rows: &[[String; 5]]) -> String {
    let mut b = String::from("<table><thead><tr>");
    for h in header {
        let _ = write!(b, "<th>{}</th>", esc(h));
    }
    b.push_str("</tr></thead><tbody>");
    for r in rows {
        b.push_str("<tr>");
        for c in r {
            let _ = write!(b, "<td>{}</td>", esc(c));
        }
        b.push_str("</tr>");
    }
    b.push_str("</tbody></table>");
    b
}

/// The downloads of a finished job: per adapter, its file, its kohya and diffusers exports
/// and the model with it merged in.
fn downloads(id: i64, out: &std::path::Path, kinds: &[(&str, &str)]) -> String {
    let mut b = String::from("<h2>Downloads</h2><table class=\"downloads\"><tbody>");
    for &(name, label) in kinds {
        if !out.join(name).join("adapter.safetensors").is_file() {
            continue;
        }
        let _ = write!(
            b,
            "<tr><th>{l}</th><td><a href=\"/jobs/{id}/download/{name}\" data-download=\"{name}\">adapter</a></td>\
             <td><a href=\"/jobs/{id}/download/kohya-{name}\" data-download=\"kohya-{name}\">kohya (A1111, ComfyUI)</a></td>\
             <td><a href=\"/jobs/{id}/download/diffusers-{name}\" data-download=\"diffusers-{name}\">diffusers</a></td>\
             <td><a href=\"/jobs/{id}/download/merged-{name}\" data-download=\"merged-{name}\">merged model</a> \
             <span class=\"muted\">(one .safetensors file; SDXL's takes minutes to make)</span></td></tr>",
            l = esc(label)
        );
    }
    b.push_str("</tbody></table>");
    b
}

pub fn results(app: &AppState, db: &Store, id: i64) -> Result<String> {
    let Some(j) = db.job(id)? else {
        return Ok(layout(app, "No such job", ""));
    };
    let files = JobFiles::new(&app.data, id);
    let out = files.out();
    let kinds = presets::of_job(&files.run_yaml());
    let render = out.join("renders");
    let Ok(m) = crate::render::manifest::Manifest::read(&render) else {
        let b = format!(
            "<p>No renders yet: the job has not finished.</p>{}",
            step_series(id, &out, &kinds)
        );
        return Ok(layout(app, &format!("Results of job {id}"), &b));
    };
    let mut b = String::new();
    if let Some(s) = &m.metrics {
        b.push_str("<h2>Scores</h2><ul class=\"verdicts\" data-verdicts>");
        for v in &s.verdicts {
            let _ = write!(b, "<li>{}</li>", esc(v));
        }
        b.push_str("</ul>");
        let _ =
            write!(
            b,
            "<p class=\"muted\">{}: mean [95 % bootstrap interval] over each adapter's images, \
             against {}</p>{}",
            esc(&m.subject.name),
            esc(&crate::words::count(s.photos, "subject photo")),
            cells_table(&crate::render::manifest::MetricsSummary::TABLE_HEADER, &s.table_rows())
        );
        if let Some(t) = s.paired_title() {
            let _ = write!(
                b,
                "<p class=\"muted\">{}</p>{}",
                esc(&t),
                cells_table(
                    &crate::render::manifest::MetricsSummary::PAIRED_HEADER,
                    &s.paired_rows()
                )
            );
        }
    }
    b.push_str(&downloads(id, &out, &kinds));
    let _ = write!(
        b,
        "<p><button class=\"post\" data-post=\"/api/jobs/{id}/study\" data-go=\"url\">Make a study</button> \
         <a href=\"/jobs/{id}/study\">the study's links</a></p>"
    );
    let label = |name: &str| {
        kinds
            .iter()
            .find(|k| k.0 == name)
            .map_or(name.to_string(), |k| k.1.to_string())
    };
    let _ = write!(
        b,
        "<h2>{} from the same noise</h2><div class=\"pairs\">",
        esc(&presets::and_list(
            &kinds.iter().map(|k| k.1).collect::<Vec<_>>()
        ))
    );
    let find = |prompt: &str, seed: u64, adapter: &str| {
        m.images
            .iter()
            .position(|i| i.prompt_id == prompt && i.seed == seed && i.adapter == adapter)
    };
    let first = kinds.first().map_or("lora", |k| k.0);
    let mut shown = 0;
    for (n, img) in m.images.iter().enumerate() {
        if img.adapter != first {
            continue;
        }
        let others: Vec<(&str, usize)> = kinds
            .iter()
            .skip(1)
            .filter_map(|k| find(&img.prompt_id, img.seed, k.0).map(|i| (k.0, i)))
            .collect();
        let Some(&(second, other)) = others.first() else {
            continue;
        };
        shown += 1;
        let _ = write!(
            b,
            "<figure class=\"pair\"><figcaption>{} <span class=\"muted\">seed {}</span></figcaption><div class=\"side\">",
            esc(&img.prompt),
            img.seed
        );
        for (kind, i) in std::iter::once((first, n)).chain(others.iter().copied()) {
            let l = esc(&label(kind));
            let _ = write!(
                b,
                "<figure class=\"one\"><img src=\"/jobs/{id}/image/{i}\" alt=\"{l}\"><figcaption data-label>{l}</figcaption></figure>"
            );
        }
        let _ = write!(
            b,
            "</div><div class=\"flip\"><img data-flip data-a=\"/jobs/{id}/image/{n}\" data-b=\"/jobs/{id}/image/{other}\" \
             data-label-a=\"{la}\" data-label-b=\"{lb}\" src=\"/jobs/{id}/image/{n}\" alt=\"{la}\">\
             <button type=\"button\" class=\"flipper\">Flip: <span>{la}</span></button></div></figure>",
            la = esc(&label(first)),
            lb = esc(&label(second))
        );
    }
    b.push_str("</div>");
    if shown == 0 {
        b.push_str("<p>No pairs of adapters from the same noise in this render.</p>");
    }
    b.push_str(&step_series(id, &out, &kinds));
    Ok(layout(
        app,
        &format!("Results of job {id}: {}", j.title),
        &b,
    ))
}

pub fn study(app: &AppState, db: &Store, id: i64) -> Result<String> {
    if db.job(id)?.is_none() {
        return Ok(layout(app, "No such job", ""));
    }
    let links = super::study::links(&app.data, id);
    if links.is_empty() {
        let b = format!(
            "<p>No study yet. <button class=\"post\" data-post=\"/api/jobs/{id}/study\" data-go=\"url\">Make a study</button></p>"
        );
        return Ok(layout(app, &format!("Study of job {id}"), &b));
    }
    let kinds = presets::of_job(&JobFiles::new(&app.data, id).run_yaml());
    let (a, b) = presets::study_pair(&kinds).map_or(("LoRA", "MoSLoRA"), |(a, b)| (a.1, b.1));
    let mut b = format!(
        "<p>A blind study of {} against {}, served by <code>moslora study serve</code>. \
         Send each rater their own link (it is their password); the organiser's page shows each \
         rater's progress and the tally.</p><ul class=\"links\">",
        esc(a),
        esc(b)
    );
    for (name, url) in &links {
        if name == "organiser" {
            let _ = write!(
                b,
                "<li><a href=\"{u}\" data-organiser>Organiser: progress and tally</a></li>",
                u = esc(url)
            );
        } else {
            let _ = write!(
                b,
                "<li><label>{} <input readonly value=\"{}\" data-link></label></li>",
                esc(name),
                esc(url)
            );
        }
    }
    b.push_str("</ul>");
    Ok(layout(app, &format!("Study of job {id}"), &b))
}
