//! The rater page in a real headless Chromium: `tests/browser/study_rater.py` answers every
//! trial by keyboard, reloads half-way, goes back once to change an answer and downloads the
//! votes; the tally of that file must equal the answers the script gave, mapped through the
//! key. Needs Debian's chromium and chromium-driver and selenium (`make browser`).

mod common;
mod study_support;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{python, repo};
use moslora::study::{Key, Which};
use serde_json::Value;
use study_support::*;

#[test]
fn scripted_rater_in_chromium_is_tallied_exactly() {
    require_browser();
    let root = scratch("browser");
    let r = write_render(&root.join("r1"), &RenderSpec::new("robot", "toy", 3, 2, 64));
    let c = write_render(
        &root.join("r2"),
        &RenderSpec::new("kitten", "cat", 2, 2, 64),
    );
    let study = root.join("STUDY");
    make_study(&[&r, &c], &study, &["--repeats", "3", "--seed", "42"]);
    let key = Key::load(&root.join("STUDY.key.json")).unwrap();
    assert_eq!(key.trials.len(), 13);

    let answers_path = root.join("answers.json");
    let downloads = root.join("downloads");
    let out = std::process::Command::new(python())
        .arg(repo().join("tests/browser/study_rater.py"))
        .args(["--page", study.join("index.html").to_str().unwrap()])
        .args(["--downloads", downloads.to_str().unwrap()])
        .args(["--answers", answers_path.to_str().unwrap()])
        .args(["--seed", "7", "--rater", "Robin Scripted"])
        .args(["--screenshot", root.join("page.png").to_str().unwrap()])
        .output()
        .expect("running python");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{so}");
    assert!(
        out.status.success(),
        "the scripted rater failed:\n{so}\n{se}"
    );

    let script: Value = serde_json::from_slice(&std::fs::read(&answers_path).unwrap()).unwrap();
    let given = scripted_answers(&script["answers"]);
    assert_eq!(given.len(), key.trials.len(), "every trial answered");

    // The downloaded votes say exactly what the script answered.
    let votes_path = PathBuf::from(script["votes_file"].as_str().unwrap());
    let votes: Value = serde_json::from_slice(&std::fs::read(&votes_path).unwrap()).unwrap();
    assert_eq!(votes["study_id"], key.study_id.as_str());
    assert_eq!(votes["rater"], "Robin Scripted");
    assert_eq!(votes["answered"], key.trials.len());
    let list = votes["votes"].as_array().unwrap();
    assert_eq!(list.len(), key.trials.len());
    let mut positions: Vec<u64> = Vec::new();
    for v in list {
        let id = v["trial"].as_str().unwrap();
        let (s, p) = given[id];
        assert_eq!(
            choice(v["similarity"].as_str().unwrap()),
            s,
            "{id} similarity"
        );
        assert_eq!(choice(v["prompt"].as_str().unwrap()), p, "{id} prompt");
        assert!(v["seconds"].as_f64().unwrap() >= 0.0);
        positions.push(v["position"].as_u64().unwrap());
    }
    positions.sort();
    assert_eq!(positions, (1..=key.trials.len() as u64).collect::<Vec<_>>());

    // The tally equals the answers mapped through the key.
    let key_path = root.join("STUDY.key.json").display().to_string();
    let (stdout, _) = moslora_ok(&[
        "study",
        "tally",
        "--key",
        &key_path,
        votes_path.to_str().unwrap(),
    ]);
    println!("{stdout}");
    let tally: Value =
        serde_json::from_slice(&std::fs::read(root.join("STUDY.tally/tally.json")).unwrap())
            .unwrap();
    let by_id: HashMap<&str, _> = key.trials.iter().map(|t| (t.id.as_str(), t)).collect();
    for (i, prompt) in [(0, false), (1, true)] {
        let pick = |id: &str| if prompt { given[id].1 } else { given[id].0 };
        let mut want = [0usize; 3];
        let mut consistent = 0;
        for t in &key.trials {
            match &t.repeat_of {
                None => {
                    want[match t.chosen(pick(&t.id)) {
                        Some(Which::B) => 0,
                        None => 1,
                        Some(Which::A) => 2,
                    }] += 1
                }
                Some(o) => {
                    consistent +=
                        usize::from(t.chosen(pick(&t.id)) == by_id[o.as_str()].chosen(pick(o)))
                }
            }
        }
        let o = &tally["overall"][i];
        let c = &o["summary"]["counts"];
        let got = [&c["wins"], &c["ties"], &c["losses"]].map(|v| v.as_u64().unwrap() as usize);
        println!("criterion {i}: script {want:?}, tally {got:?}, consistent {consistent}/3");
        assert_eq!(got, want);
        assert_eq!(o["consistency"]["compared"], 3);
        assert_eq!(o["consistency"]["consistent"], consistent);
    }
    assert_eq!(tally["per_rater"][0]["answered"], key.trials.len());
    assert_eq!(tally["raters"], 1);
}
