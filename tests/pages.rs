//! Pages and paths with hostile contents. The gallery and the rater page, built from prompts,
//! subject and file names such as `<img src=x onerror=alert(1)>` and `</script>`, are opened in
//! headless Chromium (`tests/browser/hostile_pages.py`): nothing runs, the text shows as
//! written. Manifests naming `../../etc/passwd`, an absolute path or a link out of their folder
//! are refused, and `study make` copies nothing from outside the renders into a kit; votes
//! naming such paths as trials are skipped, and the report escapes what raters typed.

mod common;
mod study_support;

use std::path::Path;

use common::{python, repo, Failures};
use moslora::render::manifest::Manifest;
use serde_json::Value;
use study_support::*;

const IMG: &str = "<img src=x onerror=alert(1)>";
const END_SCRIPT: &str = "</script><script>alert(2)</script>";
const RATER: &str = "<img src=x onerror=alert(5)> & </script>";

/// A render folder whose subject name (and so its photo file names), class and prompts are
/// hostile; every prompt holds both markups, as the rater page shows one prompt at a time.
fn hostile_render(dir: &Path) -> std::path::PathBuf {
    let mut spec = RenderSpec::new(IMG, END_SCRIPT, 2, 1, 32);
    spec.prompts = vec![
        format!("a [V] {{class}} {IMG} on a beach"),
        format!("{END_SCRIPT} a [V] {{class}} {IMG} \u{2028} ' \" & <!-- at night"),
    ];
    write_render(dir, &spec)
}

#[test]
fn hostile_text_shows_as_text_in_chromium() {
    require_browser();
    let root = scratch("browser");
    let render = hostile_render(&root.join("render"));
    let m = Manifest::read(&render).unwrap();
    let photo = &m.subject.photos[0];
    assert!(
        photo.contains(IMG),
        "the photo's file name is hostile: {photo}"
    );
    moslora::render::gallery::write(&render, &m).unwrap();
    let study = root.join("STUDY");
    make_study(&[&render], &study, &["--seed", "3"]);

    let report = root.join("report.json");
    let out = std::process::Command::new(python())
        .arg(repo().join("tests/browser/hostile_pages.py"))
        .args(["--gallery", render.join("index.html").to_str().unwrap()])
        .args(["--rater-page", study.join("index.html").to_str().unwrap()])
        .args(["--expect-gallery", IMG, END_SCRIPT, "' \" & <!-- at night"])
        .args(["--expect-rater", IMG, END_SCRIPT])
        .args(["--rater-name", RATER])
        .args(["--out", report.to_str().unwrap()])
        .output()
        .expect("running python");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{so}");
    assert!(out.status.success(), "hostile_pages.py failed:\n{so}\n{se}");
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let mut f = Failures::new();
    for page in ["gallery", "rater", "rater_reloaded"] {
        let p = &r[page];
        f.check(page, p["calls"].as_array().unwrap().is_empty(), || {
            format!("script ran: {}", p["calls"])
        });
        f.check(page, p["img_src_x"] == 0, || {
            format!("{} injected <img src=x>", p["img_src_x"])
        });
        f.check(page, p["scripts"] == p["expected_scripts"], || {
            format!(
                "{} scripts, expected {}",
                p["scripts"], p["expected_scripts"]
            )
        });
        f.check(page, p["missing"].as_array().unwrap().is_empty(), || {
            format!("text not shown: {}", p["missing"])
        });
    }
    f.assert_none();
}

/// Rewrite the manifest in `dir` with `edit`.
fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("manifest.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn manifests_naming_files_outside_their_folder_are_refused() {
    let root = scratch("paths");
    // A file outside every render folder that a hostile manifest would have copied into a kit.
    let secret = root.join("secret.png");
    moslora::fsutil::write_png(&secret, &picture(24, 1, "lora"), &[]).unwrap();
    let mut f = Failures::new();
    type Edit = fn(&Path, &Path);
    let cases: [(&str, Edit, &[&str]); 5] = [
        (
            "a `..` path",
            |dir, _| {
                edit_manifest(dir, |v| {
                    v["images"][1]["file"] = "../../../../../../etc/passwd".into()
                })
            },
            &[
                "images[1].file",
                "`../../../../../../etc/passwd` climbs out with `..`",
            ],
        ),
        (
            "an absolute path",
            |dir, secret| {
                edit_manifest(dir, |v| {
                    v["images"][2]["file"] = secret.to_str().unwrap().into()
                })
            },
            &["images[2].file", "is absolute"],
        ),
        (
            "a photo `..` path",
            |dir, _| edit_manifest(dir, |v| v["subject"]["photos"][0] = "../secret.png".into()),
            &["subject.photos[0]", "climbs out"],
        ),
        (
            "an image that is a link out of the folder",
            |dir, secret| {
                let img = dir.join("images/p00_s0_lora.png");
                std::fs::remove_file(&img).unwrap();
                std::os::unix::fs::symlink(secret, &img).unwrap();
            },
            &[
                "images[1].file",
                "`images/p00_s0_lora.png` is a link to",
                "outside the folder",
            ],
        ),
        (
            "a folder on the way that links out",
            |dir, secret| {
                let away = secret.with_file_name("images-elsewhere");
                std::fs::rename(dir.join("images"), &away).unwrap();
                std::os::unix::fs::symlink(&away, dir.join("images")).unwrap();
            },
            &["images[0].file", "is a link to", "outside the folder"],
        ),
    ];
    for (i, (case, edit, expect)) in cases.iter().enumerate() {
        let dir = root.join(format!("r{i}"));
        write_render(&dir, &RenderSpec::new("robot", "toy", 2, 1, 24));
        edit(&dir, &secret);
        let out = root.join(format!("KIT{i}"));
        let o = moslora(&[
            "study",
            "make",
            "--renders",
            dir.to_str().unwrap(),
            "--a",
            "LoRA",
            "--b",
            "MoSLoRA",
            "--out",
            out.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        println!("{case}: {err}");
        f.check(case, !o.status.success(), || "study make succeeded".into());
        f.contains_all(case, &err, expect);
        f.contains_all(case, &err, &["manifest.json"]);
        f.check(case, !out.exists(), || "a kit was written".into());
    }
    // A link that stays inside the folder is fine (a render folder may share images).
    let dir = root.join("inside");
    write_render(&dir, &RenderSpec::new("robot", "toy", 2, 1, 24));
    let img = dir.join("images/p00_s0_base.png");
    std::fs::remove_file(&img).unwrap();
    std::os::unix::fs::symlink("p01_s0_base.png", &img).unwrap();
    f.check("a link inside", Manifest::read(&dir).is_ok(), || {
        format!("{:?}", Manifest::read(&dir).err())
    });
    f.assert_none();
}

#[test]
fn votes_naming_paths_are_skipped_and_rater_names_escaped_in_the_report() {
    let root = scratch("votes");
    let r = write_render(&root.join("r"), &RenderSpec::new("robot", "toy", 2, 1, 24));
    let study = root.join("STUDY");
    make_study(&[&r], &study, &["--seed", "5"]);
    let key: Value =
        serde_json::from_slice(&std::fs::read(root.join("STUDY.key.json")).unwrap()).unwrap();
    let trial = key["trials"][0]["id"].as_str().unwrap().to_string();
    let votes = root.join("votes.json");
    let file = serde_json::json!({
        "format": moslora::study::VOTES_FORMAT,
        "format_version": moslora::study::FORMAT_VERSION,
        "study_id": key["study_id"],
        "rater": format!("{RATER} | col"),
        "votes": [
            {"trial": trial, "similarity": "left", "prompt": "tie"},
            {"trial": "../../etc/passwd", "similarity": "left", "prompt": "left"},
            {"trial": "/etc/shadow", "similarity": "left", "prompt": "left"},
        ],
    });
    std::fs::write(&votes, serde_json::to_vec(&file).unwrap()).unwrap();
    let (stdout, stderr) = moslora_ok(&[
        "study",
        "tally",
        "--key",
        root.join("STUDY.key.json").to_str().unwrap(),
        votes.to_str().unwrap(),
    ]);
    println!("{stdout}{stderr}");
    let md = std::fs::read_to_string(root.join("STUDY.tally/tally.md")).unwrap();
    let mut f = Failures::new();
    f.contains_all(
        "tally.md",
        &md,
        &[
            "2 answer(s) name trials that are not in this study",
            "../../etc/passwd",
            "&lt;img src=x onerror=alert(5)&gt; &amp; &lt;/script&gt; \\| col",
        ],
    );
    f.check(
        "tally.md",
        !md.contains("<img") && !md.contains("</script>"),
        || format!("raw markup in the report:\n{md}"),
    );
    f.assert_none();
}
