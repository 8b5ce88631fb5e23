//! `moslora score` on bad input: one line naming the file and what was expected, a failure
//! exit, and nothing written as if complete (no scores.csv or scores.md, the manifest and the
//! gallery untouched). And the good path through the command line.

mod common;
mod metrics_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{copy_dir, scratch};
use metrics_support::{fx, renders_folder};
use tch::Tensor;

fn run(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn keep_tensors(dir: &Path, keep: impl Fn(&str) -> bool) {
    let path = dir.join("model.safetensors");
    let all = Tensor::read_safetensors(&path).unwrap();
    let kept: Vec<(String, Tensor)> = all.into_iter().filter(|(n, _)| keep(n)).collect();
    Tensor::write_safetensors(&kept, &path).unwrap();
}

/// `moslora score` fails with exactly one `error:` line containing every `needles`, and leaves
/// the render folder as it was.
fn refused(renders: &Path, args: &[&str], needles: &[&str]) {
    let manifest_before = std::fs::read(renders.join("manifest.json")).ok();
    let mut all = vec!["score", renders.to_str().unwrap()];
    all.extend_from_slice(args);
    let (ok, _out, err) = run(&all);
    println!("{args:?}: {err}");
    assert!(!ok, "{args:?} succeeded");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} missing from: {err}");
    }
    assert!(!renders.join("scores.csv").exists(), "partial scores.csv");
    assert!(!renders.join("scores.md").exists(), "partial scores.md");
    assert_eq!(
        std::fs::read(renders.join("manifest.json")).ok(),
        manifest_before,
        "manifest changed"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let root = scratch("cli-bad");
    let renders = root.join("renders");
    renders_folder(&renders);
    let clip = fx().join("tiny-clip");
    let dino = fx().join("tiny-dino");

    // No encoder at all.
    refused(&renders, &[], &["--clip", "--dino"]);
    // A missing folder.
    let missing = root.join("no-such-clip");
    refused(
        &renders,
        &["--clip", s(&missing)],
        &[s(&missing), "no such folder"],
    );
    // A partial folder: config but no weights.
    let partial = root.join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(clip.join("config.json"), partial.join("config.json")).unwrap();
    refused(
        &renders,
        &["--clip", s(&partial)],
        &[s(&partial), "model.safetensors"],
    );
    // Weights without config.
    let noconfig = root.join("noconfig");
    std::fs::create_dir_all(&noconfig).unwrap();
    std::fs::copy(
        clip.join("model.safetensors"),
        noconfig.join("model.safetensors"),
    )
    .unwrap();
    refused(
        &renders,
        &["--dino", s(&noconfig)],
        &[s(&noconfig), "config.json"],
    );
    // Pickle weights only.
    let pickle = root.join("pickle");
    std::fs::create_dir_all(&pickle).unwrap();
    std::fs::copy(clip.join("config.json"), pickle.join("config.json")).unwrap();
    std::fs::write(pickle.join("pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
    refused(
        &renders,
        &["--clip", s(&pickle)],
        &["pytorch_model.bin", "convert", "safetensors"],
    );
    // A text-only checkpoint where both towers are needed: by config, and by weights.
    let text_cfg = root.join("text-only-config");
    copy_dir(&clip, &text_cfg);
    edit_config(&text_cfg, |v| {
        v["model_type"] = "clip_text_model".into();
        v["architectures"] = serde_json::json!(["CLIPTextModelWithProjection"]);
    });
    refused(
        &renders,
        &["--clip", s(&text_cfg)],
        &["config.json", "text-only", "both"],
    );
    let text_w = root.join("text-only-weights");
    copy_dir(&clip, &text_w);
    keep_tensors(&text_w, |n| {
        !n.starts_with("vision_model.") && n != "visual_projection.weight"
    });
    refused(
        &renders,
        &["--clip", s(&text_w)],
        &["vision_model.", "missing", "model.safetensors"],
    );
    let vision_cfg = root.join("vision-only-config");
    copy_dir(&clip, &vision_cfg);
    edit_config(&vision_cfg, |v| {
        v["model_type"] = "clip_vision_model".into()
    });
    refused(&renders, &["--clip", s(&vision_cfg)], &["vision-only"]);
    // A DINO folder given as CLIP, and the other way round.
    refused(
        &renders,
        &["--clip", s(&dino)],
        &["config.json", "not CLIP", "--dino"],
    );
    refused(
        &renders,
        &["--dino", s(&clip)],
        &["config.json", "not DINO", "--clip"],
    );
    // Weights of another size than the config says.
    let wrong = root.join("wrong-shape");
    copy_dir(&dino, &wrong);
    edit_config(&wrong, |v| v["hidden_size"] = 64.into());
    refused(
        &renders,
        &["--dino", s(&wrong)],
        &["model.safetensors", "shape"],
    );

    // A renders folder without a manifest.
    let empty = root.join("not-renders");
    std::fs::create_dir_all(&empty).unwrap();
    refused(
        &empty,
        &["--clip", s(&clip)],
        &["manifest.json", "render folder"],
    );
    // An unreadable image: named, and nothing written.
    let gallery_before = std::fs::read(renders.join("index.html")).ok();
    let bad = renders.join("images/p1_s0_moslora.png");
    std::fs::write(&bad, b"this is not a PNG").unwrap();
    refused(
        &renders,
        &["--clip", s(&clip), "--dino", s(&dino)],
        &["images/p1_s0_moslora.png", "not a readable image"],
    );
    assert_eq!(
        std::fs::read(renders.join("index.html")).ok(),
        gallery_before
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn score_command_prints_and_writes_the_tables() {
    let root = scratch("cli-good");
    let renders = root.join("renders");
    renders_folder(&renders);
    let clip: PathBuf = fx().join("tiny-clip");
    let (ok, out, err) = run(&["score", s(&renders), "--clip", s(&clip)]);
    println!("{out}{err}");
    assert!(ok, "{err}");
    assert!(
        out.contains("CLIP-I") && out.contains("real photos (ceiling)"),
        "{out}"
    );
    assert!(out.contains("MoSLoRA − LoRA"), "{out}");
    let csv = std::fs::read_to_string(renders.join("scores.csv")).unwrap();
    // CLIP only: the DINO column is empty.
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(row[6], "", "{csv}");
    assert!(!row[7].is_empty() && !row[8].is_empty(), "{csv}");

    // A prompt longer than CLIP reads: CLIP-T scores its start and the warning names the rest.
    let words: Vec<String> = (0..80).map(|i| format!("w{i}")).collect();
    let long = format!("a [V] {{class}} on the beach {}", words.join(" "));
    let path = renders.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["prompts"][0]["template"] = long.clone().into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let (ok, out, err) = run(&["score", s(&renders), "--clip", s(&clip)]);
    println!("{out}{err}");
    assert!(ok, "{err}");
    assert!(
        err.contains("truncated because CLIP can only handle sequences up to")
            && err.contains("w 7 9\""),
        "no warning naming the cut words:\n{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
