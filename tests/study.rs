//! The blind study: pairing, blinding (nothing in the rater folder tells the methods apart),
//! side balance, repeats, the statistics against hand-computed values, and votes files that
//! are malformed, truncated, duplicated, foreign or partial.

mod common;
mod study_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use common::Failures;
use moslora::study::tally::{fleiss_kappa, sign_test, wilson};
use moslora::study::{Choice, Key, Which};
use serde_json::{json, Value};
use study_support::*;

fn load_key(path: &Path) -> Key {
    Key::load(path).unwrap()
}

/// Two subjects, 3 prompts x 2 seeds each, one unpaired image.
fn two_subjects(root: &Path) -> (PathBuf, PathBuf) {
    let mut robot = RenderSpec::new("robot", "toy", 3, 2, 24);
    robot.unpaired = true;
    let r = write_render(&root.join("robot-renders"), &robot);
    let c = write_render(
        &root.join("kitten-renders"),
        &RenderSpec::new("kitten", "cat", 3, 2, 24),
    );
    (r, c)
}

#[test]
fn pairs_join_same_prompt_and_seed_and_the_key_lies_outside() {
    let root = scratch("pairs");
    let (r, c) = two_subjects(&root);
    let out = root.join("STUDY");
    let (stdout, stderr) = make_study(&[&r, &c], &out, &["--repeats", "2", "--seed", "11"]);
    println!("{stdout}{stderr}");
    assert!(
        stderr.contains("1 `lora` image has no `moslora` image"),
        "the unpaired image is reported: {stderr}"
    );

    let key_path = root.join("STUDY.key.json");
    assert!(key_path.is_file(), "key beside the folder");
    assert!(!files_under(&out)
        .iter()
        .any(|f| f.ends_with("STUDY.key.json")));
    let key = load_key(&key_path);
    assert_eq!(
        (key.a.name.as_str(), key.b.name.as_str()),
        ("lora", "moslora")
    );
    assert_eq!(key.pairs(), 12);
    assert_eq!(key.trials.len(), 14);
    assert_eq!(key.subjects.len(), 2);
    assert_eq!(key.subjects[0].photos.len(), 2);

    // Every (subject, prompt, seed) appears once as an original.
    let originals: HashSet<(usize, String, u64)> = key
        .trials
        .iter()
        .filter(|t| t.repeat_of.is_none())
        .map(|t| (t.subject, t.prompt_id.clone(), t.seed))
        .collect();
    assert_eq!(originals.len(), 12);

    for t in &key.trials {
        let a_name = t
            .a_source
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let b_name = t
            .b_source
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(a_name, format!("{}_s{}_lora.png", t.prompt_id, t.seed));
        assert_eq!(b_name, format!("{}_s{}_moslora.png", t.prompt_id, t.seed));
        // The pixels on each side are those of the adapter the key says.
        let (left_src, right_src) = match t.left {
            Which::A => (&t.a_source, &t.b_source),
            Which::B => (&t.b_source, &t.a_source),
        };
        let shown = |f: &str| image::open(out.join(f)).unwrap().to_rgb8();
        let src = |p: &PathBuf| image::open(p).unwrap().to_rgb8();
        assert!(
            shown(&t.left_file) == src(left_src),
            "{}: left pixels",
            t.id
        );
        assert!(
            shown(&t.right_file) == src(right_src),
            "{}: right pixels",
            t.id
        );
        assert!(t.prompt.contains("sks"), "the key keeps the full prompt");
    }
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(
        page.contains("a toy in the jungle 0"),
        "prompt shown without the identifier"
    );
    assert!(
        !page.contains("sks"),
        "the rare-token identifier is not shown to raters"
    );
}

#[test]
fn nothing_in_the_study_folder_tells_the_methods_apart() {
    let root = scratch("leak");
    let (r, c) = two_subjects(&root);
    let out = root.join("STUDY");
    make_study(&[&r, &c], &out, &["--repeats", "3", "--seed", "987654321"]);
    let key = load_key(&root.join("STUDY.key.json"));

    // The inputs do carry the methods in names and metadata: the test must mean something.
    let src = std::fs::read(&key.trials[0].a_source).unwrap();
    assert!(png_chunks(&src).iter().any(|(k, _)| k == "tEXt"));

    let mut forbidden: Vec<String> = ["lora", "moslora", "mos", "base"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    forbidden.extend([key.a.label.to_lowercase(), key.b.label.to_lowercase()]);
    // Run names, source folders and file names, and the key's own contents.
    forbidden.extend(
        [
            "robot-renders",
            "kitten-renders",
            "robot-run",
            "robot",
            "kitten",
        ]
        .map(String::from),
    );
    forbidden.push("987654321".into());
    for t in &key.trials {
        for p in [&t.a_source, &t.b_source] {
            forbidden.push(p.file_name().unwrap().to_string_lossy().to_lowercase());
            forbidden.push(p.display().to_string().to_lowercase());
        }
        forbidden.push(format!("\"{}\"", t.pair));
    }
    forbidden.push("secret-camera-serial".into());
    forbidden.push("exif".into());
    forbidden.sort();
    forbidden.dedup();

    let files = files_under(&out);
    assert!(files.len() > 20);
    let mut sizes_by_file = HashMap::new();
    let mut mtimes = HashSet::new();
    for f in &files {
        let rel = f
            .strip_prefix(&out)
            .unwrap()
            .display()
            .to_string()
            .to_lowercase();
        for word in &forbidden {
            assert!(
                !rel.contains(word.as_str()),
                "file name {rel} contains {word:?}"
            );
        }
        let bytes = std::fs::read(f).unwrap();
        sizes_by_file.insert(rel.clone(), bytes.len());
        mtimes.insert(std::fs::metadata(f).unwrap().modified().unwrap());
        // What could be searched: the page source in full, and for images every byte that is
        // not compressed pixel data (compressed pixels could hold any 3 letters by chance).
        let searched: Vec<u8> = if rel.ends_with(".png") {
            let chunks = png_chunks(&bytes);
            for (kind, _) in &chunks {
                assert!(
                    ["IHDR", "IDAT", "IEND", "paDd"].contains(&kind.as_str()),
                    "{rel}: unexpected PNG chunk {kind}"
                );
            }
            chunks
                .iter()
                .filter(|(k, _)| k != "IDAT")
                .flat_map(|(k, d)| k.bytes().chain(d.iter().copied()))
                .collect()
        } else if rel.ends_with(".jpg") {
            // Segments before the scan: no EXIF (APP1) and no comment (COM).
            let mut at = 2;
            let mut head = Vec::new();
            while at + 4 <= bytes.len() && bytes[at] == 0xFF && bytes[at + 1] != 0xDA {
                let marker = bytes[at + 1];
                assert!(
                    marker != 0xE1 && marker != 0xFE,
                    "{rel}: metadata segment {marker:#x}"
                );
                let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
                head.extend_from_slice(&bytes[at..at + 2 + len]);
                at += 2 + len;
            }
            head
        } else {
            assert!(rel == "index.html", "unexpected file {rel}");
            bytes.clone()
        };
        let text = String::from_utf8_lossy(&searched).to_lowercase();
        for word in &forbidden {
            assert!(!text.contains(word.as_str()), "{rel} contains {word:?}");
        }
    }
    assert_eq!(
        mtimes.len(),
        1,
        "every file carries the same modification time"
    );

    // Within a pair both files have the same size, though the methods compress differently.
    let mut raw_differ = 0;
    for t in key.trials.iter().filter(|t| t.repeat_of.is_none()) {
        let (l, r) = (
            sizes_by_file[&t.left_file.to_lowercase()],
            sizes_by_file[&t.right_file.to_lowercase()],
        );
        assert_eq!(l, r, "{}: pair files differ in size", t.id);
        let (sa, sb) = (
            std::fs::metadata(&t.a_source).unwrap().len(),
            std::fs::metadata(&t.b_source).unwrap().len(),
        );
        raw_differ += usize::from(sa != sb);
    }
    assert!(
        raw_differ > 0,
        "the sources differ in size, so padding was needed"
    );

    // The page holds each image and photo it needs and nothing else.
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    for f in &files {
        let rel = f.strip_prefix(&out).unwrap().display().to_string();
        if rel != "index.html" {
            assert!(page.contains(&rel), "page does not reference {rel}");
        }
    }
    for src in ["http://", "https://", "fetch("] {
        assert!(
            !page.contains(src),
            "page must not load anything from the network: {src}"
        );
    }
}

#[test]
fn sides_balance_over_1000_pairs_and_repeats_are_swapped() {
    let root = scratch("balance");
    let a = write_render(&root.join("a"), &RenderSpec::new("dog", "dog", 100, 5, 4));
    let b = write_render(&root.join("b"), &RenderSpec::new("can", "can", 100, 5, 4));
    let out = root.join("S1");
    make_study(&[&a, &b], &out, &["--seed", "1"]);
    let key = load_key(&root.join("S1.key.json"));
    assert_eq!(key.pairs(), 1000);
    assert_eq!(key.trials.len(), 1100, "default repeats: 10 % of the pairs");

    let originals: Vec<_> = key
        .trials
        .iter()
        .filter(|t| t.repeat_of.is_none())
        .collect();
    let a_left = originals.iter().filter(|t| t.left == Which::A).count();
    println!("A on the left in {a_left} of 1000 pairs");
    assert_eq!(a_left, 500, "exactly balanced");
    for s in 0..2 {
        let n = originals
            .iter()
            .filter(|t| t.subject == s && t.left == Which::A)
            .count();
        assert_eq!(n, 250, "balanced within subject {s}");
    }
    // Random, not a pattern: in the order of the source folders, the number of runs of equal
    // sides is near its expectation (501 for 1000 balanced coin flips, sd about 16).
    let mut by_source: Vec<_> = originals.clone();
    by_source.sort_by_key(|t| (t.subject, t.prompt_id.clone(), t.seed));
    let runs = 1 + by_source
        .windows(2)
        .filter(|w| w[0].left != w[1].left)
        .count();
    println!("runs of equal sides in source order: {runs}");
    assert!((420..=580).contains(&runs), "runs {runs}");
    // Neither half of the source order leans to one side.
    let first_half = by_source[..500]
        .iter()
        .filter(|t| t.left == Which::A)
        .count();
    assert!((200..=300).contains(&first_half), "first half {first_half}");
    // Nor the trial order of the page.
    let by_trial: Vec<_> = key.trials.iter().collect();
    let early = by_trial[..550]
        .iter()
        .filter(|t| t.left == Which::A)
        .count();
    assert!((225..=325).contains(&early), "early trials {early}");

    // Repeats: the same two images, sides swapped, a distinct trial.
    let ids: HashMap<&str, _> = key.trials.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut repeated = HashSet::new();
    for t in key.trials.iter().filter(|t| t.repeat_of.is_some()) {
        let o = ids[t.repeat_of.as_deref().unwrap()];
        assert!(o.repeat_of.is_none());
        assert_eq!(t.pair, o.pair);
        assert_eq!(t.left, o.left.other(), "swapped");
        assert_eq!((&t.left_file, &t.right_file), (&o.right_file, &o.left_file));
        assert!(
            repeated.insert(t.pair.clone()),
            "a pair repeated once at most"
        );
    }
    assert_eq!(repeated.len(), 100);

    // Another seed gives another assignment; the same seed the same study.
    let out2 = root.join("S2");
    make_study(&[&a, &b], &out2, &["--seed", "2", "--repeats", "0"]);
    let key2 = load_key(&root.join("S2.key.json"));
    assert_eq!(key2.trials.len(), 1000);
    let side = |k: &Key| -> BTreeMap<(usize, String, u64), Which> {
        k.trials
            .iter()
            .filter(|t| t.repeat_of.is_none())
            .map(|t| ((t.subject, t.prompt_id.clone(), t.seed), t.left))
            .collect()
    };
    let (s1, s2) = (side(&key), side(&key2));
    let same = s1.iter().filter(|(k, v)| s2[*k] == **v).count();
    println!("seed 1 and seed 2 agree on {same} of 1000 sides");
    assert!((400..=600).contains(&same));
}

#[test]
fn the_same_seed_makes_the_same_study() {
    let root = scratch("seed");
    let r = write_render(&root.join("r"), &RenderSpec::new("robot", "toy", 2, 2, 8));
    make_study(&[&r], &root.join("X"), &["--seed", "5"]);
    make_study(&[&r], &root.join("Y"), &["--seed", "5"]);
    let (x, y) = (
        load_key(&root.join("X.key.json")),
        load_key(&root.join("Y.key.json")),
    );
    assert_eq!(x.study_id, y.study_id);
    assert_eq!(
        serde_json::to_value(&x.trials).unwrap(),
        serde_json::to_value(&y.trials).unwrap()
    );
    assert_eq!(
        std::fs::read(root.join("X/index.html")).unwrap(),
        std::fs::read(root.join("Y/index.html")).unwrap()
    );
}

#[test]
fn make_refuses_bad_input_with_one_clear_line() {
    let root = scratch("refuse");
    let r = write_render(&root.join("r"), &RenderSpec::new("robot", "toy", 2, 1, 8));
    let rs = r.display().to_string();
    let out = root.join("S").display().to_string();
    // Names and labels in any case. The key is owner-only (it tells the sides apart).
    moslora_ok(&[
        "study",
        "make",
        "--renders",
        &rs,
        "--a",
        "lora",
        "--b",
        "MOSLORA",
        "--out",
        &out,
    ]);
    let key_path = root.join("S.key.json");
    assert_eq!(file_mode(&key_path), 0o600, "the key's mode");
    // In order, each seeing the folders as the ones before left them: what is wrong, whether
    // to remove the study (not its key) first, the arguments after `study make --renders`
    // (`{r}` the render folder, `{root}` the scratch folder, `{S}` the study), what to say.
    // Each is an invocation to change: exit code 2, as the README promises.
    let cases: [(&str, bool, &str, &[&str]); 8] = [
        (
            "an unknown --b",
            false,
            "{r} --a LoRA --b dora --out /tmp/x-none",
            &[
                "--b dora",
                &rs,
                "base (Base), lora (LoRA), moslora (MoSLoRA)",
            ],
        ),
        (
            "a misspelt --b",
            false,
            "{r} --a LoRA --b MoSLoRa2 --out /tmp/x-none",
            &["--b MoSLoRa2", "no such adapter", "did you mean `MoSLoRA`?"],
        ),
        (
            "a misspelt --a",
            false,
            "{r} --a bsae --b MoSLoRA --out /tmp/x-none",
            &["--a bsae", "did you mean `Base`?"],
        ),
        (
            "the same adapter twice",
            false,
            "{r} --a LoRA --b lora --out /tmp/x-none",
            &["same adapter"],
        ),
        (
            "a study that is there",
            false,
            "{r} --a LoRA --b MoSLoRA --out {S}",
            &[
                &format!("{out} already exists"),
                "not empty",
                "--force",
                "another --out",
            ],
        ),
        (
            "a key that is there",
            true,
            "{r} --a LoRA --b MoSLoRA --out {S}",
            &[
                &format!("{} already exists", key_path.display()),
                "study key",
                "--force",
            ],
        ),
        (
            "a folder without a manifest",
            false,
            "{root} --a LoRA --b MoSLoRA --out /tmp/x-none",
            &["no manifest.json"],
        ),
        (
            "more repeats than pairs",
            false,
            "{r} --a LoRA --b MoSLoRA --repeats 9 --out /tmp/x-none2",
            &["only 2 pairs"],
        ),
    ];
    let mut failures = Failures::new();
    for (case, remove_study, template, says) in cases {
        if remove_study {
            std::fs::remove_dir_all(root.join("S")).unwrap();
        }
        let mut args = vec!["study", "make", "--renders"];
        args.extend(template.split(' ').map(|a| match a {
            "{r}" => rs.as_str(),
            "{root}" => root.to_str().unwrap(),
            "{S}" => out.as_str(),
            a => a,
        }));
        let o = moslora(&args);
        let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
        failures.check(case, o.status.code() == Some(2), || {
            format!("{args:?} should exit 2, exited {:?}: {e}", o.status.code())
        });
        failures.check(case, e.lines().count() == 1, || format!("one line: {e}"));
        failures.contains_all(case, &e, says);
    }
    failures.assert_none();
    // With --force the study is made again over the one there, and the replaced key, the
    // only record of which side was which, is kept under its study id; both owner-only.
    let old_key = std::fs::read(&key_path).unwrap();
    let old_id = serde_json::from_slice::<serde_json::Value>(&old_key).unwrap()["study_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, err) = moslora_ok(&[
        "study",
        "make",
        "--renders",
        &rs,
        "--a",
        "LoRA",
        "--b",
        "MoSLoRA",
        "--out",
        &out,
        "--force",
    ]);
    let kept = root.join(format!("S.key.{old_id}.json"));
    assert!(
        err.contains(&format!("kept as {}", kept.display())),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        old_key,
        "the kept key is the old one"
    );
    assert_eq!(file_mode(&kept), 0o600, "the kept key's mode");
    assert_eq!(file_mode(&key_path), 0o600, "the new key's mode");
    let new_key: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&key_path).unwrap()).unwrap();
    assert_ne!(new_key["study_id"].as_str().unwrap(), old_id);
}

/// A file's permission bits.
fn file_mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

// ---------------------------------------------------------------- statistics

/// C(n, k) exactly.
fn choose(n: u32, k: u32) -> u128 {
    (0..k).fold(1u128, |acc, i| acc * (n - i) as u128 / (i + 1) as u128)
}

/// The sign test from its definition with exact integers (n up to 120).
fn exact_sign_p(w: u32, l: u32) -> f64 {
    let n = w + l;
    let tail: u128 = (0..=w.min(l)).map(|i| choose(n, i)).sum();
    (2.0 * tail as f64 / 2f64.powi(n as i32)).min(1.0)
}

#[test]
fn sign_test_equals_the_exact_binomial_sum() {
    for (w, l) in [
        (8, 2),
        (5, 15),
        (10, 10),
        (0, 7),
        (60, 40),
        (1, 0),
        (33, 64),
        (0, 120),
    ] {
        let got = sign_test(w as usize, l as usize).unwrap();
        let want = exact_sign_p(w, l);
        println!("sign test {w} vs {l}: p = {got:.6e} (exact {want:.6e})");
        assert!(
            (got - want).abs() <= 1e-12 + 1e-9 * want,
            "{w} vs {l}: {got} != {want}"
        );
    }
    assert!((sign_test(8, 2).unwrap() - 0.109375).abs() < 1e-15); // 2 * (1 + 10 + 45) / 1024
    assert!((sign_test(5, 15).unwrap() - 0.04138946533203125).abs() < 1e-15);
    // Large n (beyond exact integers here): values from exact rational arithmetic
    // (Python: 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n).
    for (w, l, want) in [
        (420, 520, 0.001230418901527439),
        (1500, 1400, 0.06598734966518381),
        (30, 70, 7.85013964559367e-05),
    ] {
        let got = sign_test(w, l).unwrap();
        assert!(
            (got / want - 1.0).abs() < 1e-9,
            "{w} vs {l}: {got} != {want}"
        );
    }
    assert_eq!(sign_test(0, 0), None);
}

#[test]
fn wilson_interval_solves_its_defining_equation() {
    let z: f64 = 1.959963984540054;
    for (k, n) in [
        (0, 10),
        (10, 10),
        (3, 10),
        (45, 100),
        (81, 263),
        (1, 1),
        (500, 1000),
    ] {
        let (lo, hi) = wilson(k, n).unwrap();
        // The interval is the set of p with (p_hat - p)^2 <= z^2 p (1 - p) / n: its ends are
        // the roots of (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0.
        let (ph, nf) = (k as f64 / n as f64, n as f64);
        let (qa, qb, qc) = (1.0 + z * z / nf, -(2.0 * ph + z * z / nf), ph * ph);
        let disc = (qb * qb - 4.0 * qa * qc).sqrt();
        let (r1, r2) = ((-qb - disc) / (2.0 * qa), (-qb + disc) / (2.0 * qa));
        println!("wilson {k}/{n}: [{lo:.6}, {hi:.6}]");
        assert!((lo - r1.max(0.0)).abs() < 1e-12 && (hi - r2.min(1.0)).abs() < 1e-12);
    }
    // Closed forms at the edges: 0/n has upper bound z^2 / (n + z^2).
    let (lo, hi) = wilson(0, 10).unwrap();
    assert_eq!(lo, 0.0);
    assert!((hi - z * z / (10.0 + z * z)).abs() < 1e-12);
    assert!((hi - 0.27753).abs() < 1e-5);
    let (lo, _) = wilson(10, 10).unwrap();
    assert!((lo - 0.72247).abs() < 1e-5);
    assert_eq!(wilson(0, 0), None);
}

#[test]
fn fleiss_kappa_of_the_textbook_example_is_0_210() {
    // Fleiss' kappa worked example (Wikipedia): 10 subjects, 14 raters, 5 categories.
    let table = vec![
        vec![0, 0, 0, 0, 14],
        vec![0, 2, 6, 4, 2],
        vec![0, 0, 3, 5, 6],
        vec![0, 3, 9, 2, 0],
        vec![2, 2, 8, 1, 1],
        vec![7, 7, 0, 0, 0],
        vec![3, 2, 6, 3, 0],
        vec![2, 5, 3, 2, 2],
        vec![6, 5, 2, 1, 0],
        vec![0, 2, 2, 3, 7],
    ];
    let k = fleiss_kappa(&table).unwrap();
    println!("Fleiss' kappa of the worked example: {k:.5}");
    assert!((k - 0.20993070442195522).abs() < 1e-12);
    assert_eq!(format!("{k:.3}"), "0.210");
    // Full agreement spread over categories is 1; one rating per item has nothing to compare.
    assert!(
        (fleiss_kappa(&[vec![3, 0, 0], vec![0, 0, 3], vec![0, 3, 0]]).unwrap() - 1.0).abs() < 1e-12
    );
    assert_eq!(fleiss_kappa(&[vec![1, 0, 0], vec![0, 1, 0]]), None);
    assert_eq!(
        fleiss_kappa(&[vec![2, 0, 0], vec![3, 0, 0]]),
        None,
        "chance agreement is total"
    );
}

// ---------------------------------------------------------------- tally

fn choice_name(c: Choice) -> &'static str {
    match c {
        Choice::Left => "left",
        Choice::Tie => "tie",
        Choice::Right => "right",
    }
}

/// A votes file as the rater page writes it.
fn votes_json(key: &Key, rater: &str, answers: &[(String, Choice, Choice)]) -> Value {
    json!({
        "format": "study-votes",
        "format_version": 1,
        "study_id": key.study_id,
        "rater": rater,
        "trials_total": key.trials.len(),
        "answered": answers.len(),
        "started": "2026-01-01T10:00:00.000Z",
        "saved": "2026-01-01T10:30:00.000Z",
        "votes": answers.iter().enumerate().map(|(i, (id, s, p))| json!({
            "trial": id, "position": i + 1, "similarity": choice_name(*s),
            "prompt": choice_name(*p), "seconds": 2.5 + i as f64
        })).collect::<Vec<_>>()
    })
}

/// A rater who prefers B on similarity with probability `bias`, else tie or A; uses a tiny
/// generator so the answers are fixed.
fn scripted_answers(key: &Key, seed: u64, bias: u64) -> Vec<(String, Choice, Choice)> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut roll = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) % 100
    };
    key.trials
        .iter()
        .map(|t| {
            let pick = |r: u64, b_share: u64| {
                let want_b = r < b_share;
                let tie = !want_b && r < b_share + 20;
                if tie {
                    Choice::Tie
                } else if want_b == (t.left == Which::B) {
                    Choice::Left
                } else {
                    Choice::Right
                }
            };
            (t.id.clone(), pick(roll(), bias), pick(roll(), 45))
        })
        .collect()
}

/// Win / tie / loss of B from answers, computed here from the key directly.
fn expected_counts(key: &Key, raters: &[&[(String, Choice, Choice)]], prompt: bool) -> [usize; 3] {
    let by_id: HashMap<&str, _> = key.trials.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut c = [0; 3];
    for r in raters {
        for (id, s, p) in r.iter() {
            let t = by_id[id.as_str()];
            if t.repeat_of.is_some() {
                continue;
            }
            let ch = if prompt { *p } else { *s };
            let b_side = if t.left == Which::B {
                Choice::Left
            } else {
                Choice::Right
            };
            c[if ch == Choice::Tie {
                1
            } else if ch == b_side {
                0
            } else {
                2
            }] += 1;
        }
    }
    c
}

fn small_study(root: &Path) -> Key {
    let r = write_render(&root.join("r1"), &RenderSpec::new("robot", "toy", 4, 2, 8));
    let c = write_render(&root.join("r2"), &RenderSpec::new("kitten", "cat", 4, 2, 8));
    make_study(
        &[&r, &c],
        &root.join("STUDY"),
        &["--repeats", "4", "--seed", "3"],
    );
    load_key(&root.join("STUDY.key.json"))
}

#[test]
fn tally_of_scripted_raters_matches_hand_counts() {
    let root = scratch("tally");
    let key = small_study(&root);
    let r1 = scripted_answers(&key, 1, 70);
    let r2 = scripted_answers(&key, 2, 50);
    let r3 = scripted_answers(&key, 3, 30);
    let mut paths = Vec::new();
    for (name, a) in [("ann", &r1), ("bo", &r2), ("cy", &r3)] {
        let p = root.join(format!("votes-{name}.json"));
        std::fs::write(
            &p,
            serde_json::to_vec_pretty(&votes_json(&key, name, a)).unwrap(),
        )
        .unwrap();
        paths.push(p.display().to_string());
    }
    let key_path = root.join("STUDY.key.json").display().to_string();
    let mut args = vec!["study", "tally", "--key", &key_path];
    args.extend(paths.iter().map(|s| s.as_str()));
    let (stdout, stderr) = moslora_ok(&args);
    println!("{stderr}{stdout}");
    assert!(stdout.contains("MoSLoRA wins") && stdout.contains("LoRA wins"));

    let tally: Value =
        serde_json::from_slice(&std::fs::read(root.join("STUDY.tally/tally.json")).unwrap())
            .unwrap();
    assert_eq!(tally["raters"], 3);
    assert_eq!(tally["pairs"], 16);
    let all: Vec<&[(String, Choice, Choice)]> = vec![&r1, &r2, &r3];
    for (i, prompt) in [(0, false), (1, true)] {
        let o = &tally["overall"][i];
        let want = expected_counts(&key, &all, prompt);
        let c = &o["summary"]["counts"];
        let got = [&c["wins"], &c["ties"], &c["losses"]].map(|v| v.as_u64().unwrap() as usize);
        assert_eq!(got, want, "criterion {i}");
        let p = o["summary"]["sign_test_p"].as_f64().unwrap();
        assert!((p - exact_sign_p(want[0] as u32, want[2] as u32)).abs() < 1e-12);
        let win = o["summary"]["win"]["percent"].as_f64().unwrap();
        assert!((win - 100.0 * want[0] as f64 / 48.0).abs() < 1e-9);
        // Kappa from the per-pair table built here.
        let by_id: HashMap<&str, _> = key.trials.iter().map(|t| (t.id.as_str(), t)).collect();
        let mut table: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for r in &all {
            for (id, s, p) in r.iter() {
                let t = by_id[id.as_str()];
                if t.repeat_of.is_some() {
                    continue;
                }
                let ch = if prompt { *p } else { *s };
                let b_side = if t.left == Which::B {
                    Choice::Left
                } else {
                    Choice::Right
                };
                let cat = if ch == Choice::Tie {
                    1
                } else if ch == b_side {
                    2
                } else {
                    0
                };
                table.entry(&t.pair).or_insert_with(|| vec![0; 3])[cat] += 1;
            }
        }
        let rows: Vec<Vec<usize>> = table.into_values().collect();
        let k = o["fleiss_kappa"].as_f64().unwrap();
        assert!((k - fleiss_kappa(&rows).unwrap()).abs() < 1e-12);
        // Consistency: repeats compared with their originals, per rater.
        let mut consistent = 0;
        for r in &all {
            let ans: HashMap<&str, Choice> = r
                .iter()
                .map(|(id, s, p)| (id.as_str(), if prompt { *p } else { *s }))
                .collect();
            for t in key.trials.iter().filter(|t| t.repeat_of.is_some()) {
                let o = by_id[t.repeat_of.as_deref().unwrap()];
                consistent +=
                    usize::from(t.chosen(ans[t.id.as_str()]) == o.chosen(ans[o.id.as_str()]));
            }
        }
        assert_eq!(o["consistency"]["compared"], 12);
        assert_eq!(o["consistency"]["consistent"], consistent);
    }
    // Breakdowns add up.
    for i in 0..2 {
        let sum: u64 = tally["per_subject"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["by_criterion"][i]["summary"]["votes"].as_u64().unwrap())
            .sum();
        assert_eq!(sum, 48);
    }
    let ann = &tally["per_rater"][0];
    assert_eq!(ann["rater"], "ann");
    assert_eq!(ann["answered"], 20);
    let want = expected_counts(&key, &[&r1], false);
    assert_eq!(ann["by_criterion"][0]["summary"]["counts"]["wins"], want[0]);

    for f in ["tally.md", "tally.csv", "tally.png"] {
        assert!(root.join("STUDY.tally").join(f).is_file(), "{f}");
    }
    let csv = std::fs::read_to_string(root.join("STUDY.tally/tally.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + 2 + 4 + 6,
        "header, overall, subjects, raters"
    );
    let png = image::open(root.join("STUDY.tally/tally.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1000, 560));
    let md = std::fs::read_to_string(root.join("STUDY.tally/tally.md")).unwrap();
    assert!(md.contains("| subject similarity |") && md.contains("Fleiss"));
}

#[test]
fn bad_votes_files_get_a_clear_line_each_and_the_rest_are_tallied() {
    let root = scratch("badvotes");
    let key = small_study(&root);
    let good = scripted_answers(&key, 9, 60);
    let write = |name: &str, bytes: Vec<u8>| {
        let p = root.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let json_of = |v: &Value| serde_json::to_vec_pretty(v).unwrap();
    let ann = votes_json(&key, "ann", &good);
    let files = vec![
        write("ann.json", json_of(&ann)),
        write("ann-copy.json", json_of(&ann)),
        write(
            "bo.json",
            json_of(&votes_json(&key, "bo", &scripted_answers(&key, 4, 40))),
        ),
        write("partial.json", json_of(&votes_json(&key, "cy", &good[..7]))),
        write(
            "truncated.json",
            json_of(&votes_json(&key, "dee", &good))[..300].to_vec(),
        ),
        write(
            "malformed.json",
            b"rater: ed\nvotes: left left right\n".to_vec(),
        ),
        write("empty.json", Vec::new()),
        write("foreign.json", {
            let mut v = votes_json(&key, "fay", &good);
            v["study_id"] = json!("0123456789abcdef");
            json_of(&v)
        }),
        write("other-format.json", b"{\"hello\": 1}".to_vec()),
        write("odd-answers.json", {
            let mut v = votes_json(&key, "gus", &good);
            v["votes"][0]["similarity"] = json!("up");
            v["votes"][1]["trial"] = json!("t999");
            json_of(&v)
        }),
        root.join("missing.json").display().to_string(),
    ];
    let key_path = root.join("STUDY.key.json").display().to_string();
    let out = root.join("T").display().to_string();
    let mut args = vec!["study", "tally", "--key", &key_path, "--out", &out];
    args.extend(files.iter().map(|s| s.as_str()));
    let (stdout, stderr) = moslora_ok(&args);
    println!("{stderr}");
    // Each file's line: how it starts and what it says.
    let expect: [(&str, &str, &[&str]); 11] = [
        ("ann.json", "ok:", &["all 20 trials"]),
        ("ann-copy.json", "SKIPPED", &["duplicate of"]),
        ("bo.json", "ok:", &[]),
        ("partial.json", "ok:", &["7 of 20", "partial"]),
        ("truncated.json", "", &["truncated"]),
        ("malformed.json", "", &["not valid JSON"]),
        ("empty.json", "", &["empty"]),
        ("foreign.json", "", &["another study", "0123456789abcdef"]),
        ("other-format.json", "", &["not a votes file"]),
        ("odd-answers.json", "ok:", &["\"up\"", "t999"]),
        ("missing.json", "", &["cannot read"]),
    ];
    assert_eq!(expect.len(), files.len(), "an expected line for every file");
    let mut failures = Failures::new();
    for (f, start, says) in expect {
        let hits: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&format!("/{f}:")))
            .collect();
        failures.check(f, hits.len() == 1, || format!("one line for {f}: {stderr}"));
        if let [line] = hits[..] {
            failures.check(f, line.starts_with(start), || {
                format!("not {start:?}: {line}")
            });
            failures.contains_all(f, line, says);
        }
    }
    failures.assert_none();
    assert!(stdout.contains("4 raters"), "{stdout}");

    let tally: Value =
        serde_json::from_slice(&std::fs::read(root.join("T/tally.json")).unwrap()).unwrap();
    assert_eq!(tally["raters"], 4);
    assert_eq!(
        tally["files"].as_array().unwrap().len(),
        files.len(),
        "a note for every file"
    );
    let md = std::fs::read_to_string(root.join("T/tally.md")).unwrap();
    assert!(md.contains("**not tallied**: votes of another study"));

    // The same rater twice with different answers: the fuller file is kept, and said so.
    let second = write(
        "cy-again.json",
        json_of(&votes_json(&key, "CY", &good[..12])),
    );
    let first = root.join("partial.json").display().to_string();
    let (_, stderr) = moslora_ok(&[
        "study", "tally", "--key", &key_path, "--out", &out, &first, &second,
    ]);
    assert!(
        stderr.lines().any(|l| l.starts_with("SKIPPED")
            && l.contains("partial.json")
            && l.contains("cy-again.json")),
        "{stderr}"
    );

    // Nothing usable at all: an error, after the per-file lines.
    let o = moslora(&[
        "study", "tally", "--key", &key_path, "--out", &out, &files[5], &files[7],
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("none of the 2 votes file(s) could be tallied"),
        "{e}"
    );
}
