//! `moslora demo` end to end (fewer steps, same code path), and the README's command list
//! against `moslora --help`.

mod common;

use std::path::Path;
use std::process::Command;

use common::repo;
use moslora::adapter::file::AdapterFile;
use moslora::render::manifest::Manifest;

/// Every `src="..."` / `href="..."` of a page that is a relative path must exist; returns how
/// many there are.
fn assert_references_exist(page: &Path) -> usize {
    let html = std::fs::read_to_string(page).unwrap();
    let dir = page.parent().unwrap();
    let mut n = 0;
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let target = part.split('"').next().unwrap();
            if target.is_empty()
                || target.starts_with('#')
                || target.contains(':')
                || target.contains("${")
            {
                continue;
            }
            assert!(
                dir.join(target).exists(),
                "{} references missing {target}",
                page.display()
            );
            n += 1;
        }
    }
    n
}

fn assert_png(path: &Path) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(img.width() > 0 && img.height() > 0);
}

#[test]
fn demo_makes_every_promised_output() {
    let out = std::env::temp_dir().join(format!("moslora-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["demo", "--train-steps", "3", "--render-steps", "2", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("toy world's pretrained"),
        "the demo must say which model it ran on:\n{stdout}"
    );
    assert!(
        stdout.contains("CLIP-I") && stdout.contains("CLIP-T") && stdout.contains("photos"),
        "the demo must print the judge's table with the photos' row:\n{stdout}"
    );
    assert!(
        stdout.contains("xdg-open"),
        "the demo must say how to open the gallery"
    );

    // Adapters load and carry the recipe.
    for kind in ["lora", "moslora"] {
        let f = AdapterFile::read(&out.join(format!("run/{kind}/adapter.safetensors"))).unwrap();
        assert_eq!(f.meta.steps, 3);
        assert_eq!(f.meta.adapter.rank, 4);
        // The toy UNet: 7 transformer blocks x 2 attentions x 4 projections.
        assert_eq!(f.layers.len(), 56);
        assert_png(&out.join(format!("run/{kind}/loss.png")));
        assert!(stdout.contains(&format!("run/{kind}/adapter.safetensors")));
    }
    assert_png(&out.join("run/loss.png"));

    // Renders: every listed file exists, every PNG decodes, the gallery's references exist.
    let renders = out.join("run/renders");
    let m = Manifest::read(&renders).unwrap();
    assert_eq!(m.prompts.len(), 8);
    assert_eq!(m.adapters.len(), 3);
    assert!(
        m.metrics.is_some(),
        "the demo's manifest carries the scores"
    );
    assert!(renders.join("scores.md").exists() && renders.join("scores.csv").exists());
    for f in m.files() {
        let p = renders.join(&f);
        assert!(p.exists(), "manifest lists missing {f}");
        if f.ends_with(".png") {
            assert_png(&p);
        }
    }
    assert!(assert_references_exist(&renders.join("index.html")) > m.images.len());

    // The study kit: the page's references exist (its images are listed in its embedded trial
    // data, checked below through the key), and the key matches the study folder.
    let study = out.join("study");
    assert_references_exist(&study.join("index.html"));
    let key: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("study.key.json")).unwrap())
            .unwrap();
    let page = std::fs::read_to_string(study.join("index.html")).unwrap();
    let study_id = key["study_id"].as_str().expect("the key names its study");
    assert!(
        page.contains(study_id),
        "the page belongs to another study than the key"
    );
    let trials = key["trials"].as_array().unwrap();
    assert!(
        trials.len() >= 32,
        "8 prompts x 4 seeds pairs, plus repeats"
    );
    for t in trials {
        let id = t["id"].as_str().unwrap();
        assert!(
            page.contains(id),
            "trial {id} of the key is not on the page"
        );
        for side in ["left_file", "right_file"] {
            let f = t[side].as_str().unwrap();
            assert!(
                study.join(f).exists(),
                "trial {id}: {f} is not in the study folder"
            );
            assert_png(&study.join(f));
        }
    }
    assert!(
        !study.join("study.key.json").exists(),
        "the key must stay outside the rater folder"
    );

    // Re-running reuses the trained adapters.
    let again = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["demo", "--train-steps", "3", "--render-steps", "2", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains("steps in"),
        "the second demo run retrained"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// The subcommands `moslora --help` lists: the user's commands, then the groups of tools
/// after the options (each under its heading, up to a blank line).
fn help_commands() -> Vec<String> {
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let first = |l: &str| l.split_whitespace().next().map(str::to_string);
    let mut commands: Vec<String> = text
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(first)
        .filter(|c| c != "help")
        .collect();
    for heading in ["Toy-world tools:", "Model tools:"] {
        let section = text
            .split(heading)
            .nth(1)
            .unwrap_or_else(|| panic!("{heading}\n{text}"));
        commands.extend(
            section
                .lines()
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .filter_map(first),
        );
    }
    commands
}

#[test]
fn readme_documents_every_subcommand() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let first: Vec<&str> = readme
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .take(3)
        .collect();
    assert!(
        first.iter().any(|l| l.starts_with("make demo")),
        "README must open with `make demo`: {first:?}"
    );
    assert!(
        first.iter().any(|l| l.starts_with("make test")),
        "README must open with `make test`: {first:?}"
    );
    let commands = help_commands();
    assert!(commands.len() >= 10, "{commands:?}");
    for c in &commands {
        assert!(
            readme.contains(&format!("`moslora {c}")),
            "README does not document `moslora {c}`"
        );
        let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
            .args([c.as_str(), "--help"])
            .output()
            .unwrap();
        assert!(o.status.success(), "`moslora {c} --help` failed");
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(
            help.lines().count() >= 4,
            "`moslora {c} --help` is too thin:\n{help}"
        );
    }
    // And nothing documented that does not exist.
    for part in readme.split("`moslora ").skip(1) {
        let word = part.split([' ', '`']).next().unwrap();
        if word.starts_with('-') || word.is_empty() || word.chars().all(|c| c.is_ascii_uppercase())
        {
            continue;
        }
        assert!(
            commands.iter().any(|c| c == word),
            "README documents `moslora {word}`, which does not exist"
        );
    }
}
