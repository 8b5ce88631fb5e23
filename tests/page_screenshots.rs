//! The pages people read, opened in headless Chromium at a laptop's width (1366 px): the
//! gallery of a scored render folder and a served study's organiser page show their verdicts
//! in words above the numbers, as HTML tables that need no sideways scrolling. Their
//! screenshots are saved in `docs/screenshots/` when `MOSLORA_SCREENSHOTS` is set, else under
//! `target/` (the sweep page's is taken by `tests/sweep.rs`, which gathers a real sweep).

mod common;
mod serve_support;
mod study_support;

use std::path::Path;

use moslora::render::manifest::{ImageScores, Manifest};
use serde_json::json;
use serve_support::{tokens, Server};
use study_support::*;

/// A render folder whose images carry CLIP-I and CLIP-T scores: the base model well below
/// the adapters, MoSLoRA a little above LoRA; the subject photos' ceiling 0.32.
fn scored_render(dir: &Path, subject: &str) -> std::path::PathBuf {
    let mut spec = RenderSpec::new(subject, "robot", 4, 3, 48);
    spec.prompts[0] = "a photo of a [V] {class} on the beach, a very long prompt about the \
                       waves, the sand and a red umbrella in the late afternoon sun"
        .into();
    let render = write_render(dir, &spec);
    let mut m = Manifest::read(&render).unwrap();
    for (k, img) in m.images.iter_mut().enumerate() {
        let wiggle = ((k * 37 % 11) as f64 - 5.0) * 0.004;
        let (clip_i, clip_t) = match img.adapter.as_str() {
            "base" => (0.11, 0.30),
            "lora" => (0.21, 0.29),
            _ => (0.23, 0.29),
        };
        img.scores = Some(ImageScores {
            dino: None,
            clip_i: Some(clip_i + wiggle),
            clip_t: Some(clip_t - wiggle / 2.0),
        });
    }
    let ceiling = ImageScores {
        dino: None,
        clip_i: Some(0.32),
        clip_t: None,
    };
    m.metrics = Some(moslora::metrics::summarise(
        &m,
        ceiling,
        Some("openai/clip-vit-base-patch32".into()),
        None,
    ));
    m.write(&render).unwrap();
    moslora::render::gallery::write(&render, &m).unwrap();
    render
}

#[test]
fn gallery_and_organiser_show_verdicts_without_sideways_scrolling() {
    require_browser();
    let root = scratch("screens");
    let render = scored_render(&root.join("r1"), "robot");
    let other = write_render(
        &root.join("r2"),
        &RenderSpec::new("grey_sloth_plushie", "plushie", 3, 3, 16),
    );
    // The verdicts are in the manifest, and so on the page, above the numbers.
    let m = Manifest::read(&render).unwrap();
    let verdicts = &m.metrics.as_ref().unwrap().verdicts;
    assert!(
        verdicts[0].starts_with("LoRA learned the subject: CLIP-I 0.21, against 0.11 for the base model and 0.32 between your photos"),
        "{verdicts:?}"
    );
    let gallery = std::fs::read_to_string(render.join("index.html")).unwrap();
    assert!(gallery.find("learned the subject") < gallery.find("<table"));

    let study = root.join("STUDY");
    make_study(
        &[&render, &other],
        &study,
        &["--repeats", "2", "--seed", "5"],
    );
    let key_path = root.join("STUDY.key.json");
    let key = moslora::study::Key::load(&key_path).unwrap();
    // The key is found beside the study: no --key.
    let server = Server::start(&study, &key_path, &["--raters", "4"]);
    let tok = tokens(&key_path);
    let mut http = server.client();
    // Four raters: on similarity MoSLoRA (B) mostly wins; on the prompt it is even.
    for (r, rater) in ["rater-01", "rater-02", "rater-03", "rater-04"]
        .iter()
        .enumerate()
    {
        let name = ["Ann", "Bo <b>", "Cy", "Dee"][r];
        let s = http.post(
            "/api/rater/session",
            Some(&tok[*rater]),
            &json!({"name": name, "comment": ""}),
        );
        assert_eq!(s.status, 200, "{}", s.text());
        for (i, t) in key.trials.iter().enumerate() {
            let b_side = match t.left {
                moslora::study::Which::B => "left",
                moslora::study::Which::A => "right",
            };
            let a_side = if b_side == "left" { "right" } else { "left" };
            let similarity = if (i + r) % 5 == 0 { a_side } else { b_side };
            let prompt = ["tie", a_side, b_side][(i + r) % 3];
            let body =
                json!({"trial": t.id, "similarity": similarity, "prompt": prompt, "ms": 1500 + i});
            let a = http.post("/api/rater/answer", Some(&tok[*rater]), &body);
            assert_eq!(a.status, 200, "{}", a.text());
        }
    }
    let addr = server.addr;
    common::check_pages(
        &[
            common::Page {
                name: "gallery",
                url: format!("file://{}", render.join("index.html").display()),
                ready: "document.getElementById('verdicts')",
                expect: vec![
                    "LoRA learned the subject".into(),
                    "MoSLoRA learned the subject".into(),
                    "MoSLoRA resembles your photos more closely than LoRA".into(),
                ],
                shot: "gallery-verdicts.png",
            },
            common::Page {
                name: "organiser",
                url: format!("http://{addr}/organiser#{}", tok["organiser"]),
                ready: "document.querySelector('#tally table')",
                expect: vec![
                    "subject similarity: raters preferred MoSLoRA".into(),
                    "prompt consistency: no clear difference yet".into(),
                    "more raters would detect a 10-point difference".into(),
                    "Bo <b>".into(),
                ],
                shot: "organiser.png",
            },
        ],
        &root,
    );
    // `study tally` finds the key beside the study, and the votes database beside the key.
    let (out, _) = moslora_ok(&["study", "tally", "--study", study.to_str().unwrap()]);
    assert!(
        out.trim_start()
            .starts_with("subject similarity: raters preferred MoSLoRA"),
        "{out}"
    );
    server.kill();
    // A study folder with no key beside it: the error names where the key was looked for.
    let lost = root.join("elsewhere");
    std::fs::create_dir_all(&lost).unwrap();
    for args in [
        vec!["study", "serve", lost.to_str().unwrap()],
        vec!["study", "tally", "--study", lost.to_str().unwrap()],
    ] {
        let o = moslora(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "no key at {}",
                root.join("elsewhere.key.json").display()
            )),
            "{err}"
        );
    }
}
