//! The README and the pages it links to, held against the program: every `moslora ...`
//! command they show names a command that exists and only options that command has, and
//! every relative link points at a file (and heading) that is there.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo;

/// The README and every Markdown page under docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// `moslora WORDS... --help`'s text, or None when that command does not exist.
fn help(words: &[&str]) -> Option<String> {
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(words)
        .arg("--help")
        .output()
        .unwrap();
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Each command line a page shows: the text after `moslora ` up to the end of its code span
/// (inline) or of its line (a code block line that starts with it, continued over lines ending in `\`).
fn commands(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            let l = line.trim();
            let joined = format!("{pending} {}", l.trim_end_matches('\\'));
            if l.ends_with('\\') {
                pending = joined;
                continue;
            }
            pending.clear();
            // A command line starts the line (program output that mentions moslora does not).
            let joined = joined.split(" #").next().unwrap().trim().to_string();
            let joined = joined.strip_prefix("$ ").unwrap_or(&joined);
            if let Some(rest) = joined.strip_prefix("moslora ") {
                found.push(rest.to_string());
            }
        } else {
            for part in line.split("`moslora ").skip(1) {
                found.push(part.split('`').next().unwrap().to_string());
            }
        }
    }
    found
}

const GROUPS: [&str; 2] = ["study", "sweep"];

#[test]
fn every_command_shown_exists_with_its_options() {
    let mut helps: HashMap<Vec<String>, Option<String>> = HashMap::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for cmd in commands(&text) {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let Some(&first) = words.first() else {
                continue;
            };
            if first.starts_with('-') || first.chars().all(|c| c.is_ascii_uppercase()) {
                continue;
            }
            // `study make`, `sweep plan\|run`: the group's subcommands, each alternative.
            let mut paths: Vec<Vec<String>> = vec![vec![first.to_string()]];
            if GROUPS.contains(&first) {
                if let Some(sub) = words.get(1).filter(|w| !w.starts_with('-')) {
                    paths = sub
                        .split("\\|")
                        .flat_map(|s| s.split('|'))
                        .map(|s| vec![first.to_string(), s.to_string()])
                        .collect();
                }
            }
            let flags: Vec<String> = words
                .iter()
                .filter(|w| w.starts_with("--") || w.starts_with("[--"))
                .map(|w| {
                    w.trim_start_matches('[')
                        .split(['=', ']', ')', ',', '\\', '|', '`'])
                        .next()
                        .unwrap()
                        .to_string()
                })
                .filter(|f| f.len() > 2)
                .collect();
            for path in paths {
                let h = helps
                    .entry(path.clone())
                    .or_insert_with(|| help(&path.iter().map(String::as_str).collect::<Vec<_>>()))
                    .clone();
                let Some(h) = h else {
                    panic!(
                        "{} shows `moslora {cmd}`, but `moslora {}` does not exist",
                        page.display(),
                        path.join(" ")
                    );
                };
                for f in &flags {
                    assert!(
                        h.contains(&format!("{f} "))
                            || h.contains(&format!("{f}\n"))
                            || h.contains(&format!("{f},")),
                        "{} shows `moslora {cmd}`, but `moslora {}` has no option {f}",
                        page.display(),
                        path.join(" ")
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "only {checked} command lines found");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(page: &Path) -> HashSet<String> {
    let text = std::fs::read_to_string(page).unwrap();
    let mut in_block = false;
    let mut set = HashSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if !in_block && line.starts_with('#') {
            set.insert(anchor(line.trim_start_matches('#')));
        }
    }
    set
}

#[test]
fn every_relative_link_points_at_something() {
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let dir = page.parent().unwrap();
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap();
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, frag) = target.split_once('#').unwrap_or((target, ""));
            let file = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            assert!(
                file.exists(),
                "{} links to {target}, which is not there",
                page.display()
            );
            if !frag.is_empty() && file.extension().is_some_and(|e| e == "md") {
                assert!(
                    anchors(&file).contains(frag),
                    "{} links to {target}: no such heading in {}",
                    page.display(),
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} links found");
}

#[test]
fn the_readme_stays_short() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let words = readme.split_whitespace().count();
    // About five minutes' reading at 250 words a minute, with the RUN.yaml block skimmed.
    assert!(words <= 2600, "the README has grown to {words} words");
    for internal in ["munged", "sbatch", "kubectl", "Fleiss"] {
        assert!(
            !readme.contains(internal),
            "the README talks about {internal}: that belongs in docs/"
        );
    }
}
