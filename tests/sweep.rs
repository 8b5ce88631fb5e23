//! `moslora sweep` on the toy world: plan, a local run two at a time, a task killed mid-run
//! and resumed with `--only-missing`, and the gathered results equal to an uninterrupted run.

mod common;
#[path = "slurm_support/mod.rs"]
mod slurm_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{repo, scratch, Failures};

fn moslora(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(args)
        .current_dir(dir)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A sweep folder: a base run on the toy model (few steps, 64 px, one seed), 3 subjects of
/// the toy world (2 objects, 1 live), LoRA and MoSLoRA.
fn sweep_folder(name: &str, steps: u64) -> PathBuf {
    let dir = scratch(name);
    let assets = repo().join("assets");
    std::fs::write(
        dir.join("base.yaml"),
        format!(
            "model: {model}\nseed: 0\ndevice: cpu\nsubject:\n  identifier: sks\n\
             train:\n  steps: {steps}\n  batch_size: 2\n  learning_rate: 1.0e-3\n  resolution: 64\n  \
             checkpoint_every: 2\n  crops_per_image: 1\nadapter:\n  rank: 4\n\
             render:\n  prompts: toy\n  seeds: [0]\n  steps: 4\n  guidance: 4.0\n  width: 64\n  height: 64\n\
             metrics:\n  clip: {judge}\n",
            model = assets.join("toy-model").display(),
            judge = assets.join("toy-judge").display(),
        ),
    )
    .unwrap();
    let subjects = dir.join("subjects");
    for s in ["spotted_cat", "gift_box", "star_ball"] {
        common::copy_dir(&assets.join("subjects").join(s), &subjects.join(s));
    }
    std::fs::write(
        subjects.join("subjects.txt"),
        "# name class kind\nspotted_cat cat live\ngift_box box object\nstar_ball ball object\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("sweep.yaml"),
        "base: base.yaml\noutput: out\nsubjects: subjects\nadapters: [lora, moslora]\n",
    )
    .unwrap();
    dir
}

/// Every file under the gathered folder that carries results (pictures, tables, manifests
/// without their absolute paths), by relative path.
fn gathered(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let root = dir.join("out/gather");
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(&root).unwrap().display().to_string();
            let mut bytes = std::fs::read(&p).unwrap();
            if rel.ends_with(".json") || rel.ends_with(".html") {
                // Manifests name their adapter files by absolute path: the two sweeps live
                // in different folders.
                let s = String::from_utf8(bytes).unwrap();
                bytes = s.replace(&dir.display().to_string(), "SWEEP").into_bytes();
            }
            if rel.ends_with(".json") {
                // An adapter file records the photo folder it was trained on, so its hash
                // (and the image keys made from it) differ with the folder; the adapters'
                // tensors are compared on their own.
                let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                drop_keys(&mut v, &["sha256", "key"]);
                bytes = serde_json::to_vec_pretty(&v).unwrap();
            }
            out.push((rel, bytes));
        }
    }
    out.sort();
    out
}

/// The two sweeps' gathered folders hold the same files with the same bytes; their count.
fn assert_same_gathering(a: &Path, b: &Path, what: &str) -> usize {
    let (ga, gb) = (gathered(a), gathered(b));
    assert_eq!(
        ga.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        gb.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for ((n, x), (_, y)) in ga.iter().zip(&gb) {
        assert!(x == y, "{n} differs between {what}");
    }
    ga.len()
}

fn drop_keys(v: &mut serde_json::Value, keys: &[&str]) {
    match v {
        serde_json::Value::Object(m) => {
            for k in keys {
                m.remove(*k);
            }
            m.values_mut().for_each(|x| drop_keys(x, keys));
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| drop_keys(x, keys)),
        _ => {}
    }
}

#[test]
fn a_sweep_runs_locally_resumes_a_killed_task_and_gathers_the_same_results() {
    let started = Instant::now();
    let a = sweep_folder("resumed", 20);

    // The plan: 3 subjects x 2 adapters, subjects in name order.
    let o = moslora(&["sweep", "plan", "sweep.yaml"], &a);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("6 tasks (3 subjects)"), "{out}");
    assert!(
        out.contains("gift_box") && out.contains("box (object)") && out.contains("cat (live)"),
        "{out}"
    );

    // Kill task 3 (spotted_cat, MoSLoRA) once it has a checkpoint.
    let mut child = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["sweep", "task", "sweep.yaml", "--index", "3"])
        .current_dir(&a)
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = a.join("out/tasks/0003-spotted_cat-moslora/run/moslora/checkpoint/state.json");
    let t0 = Instant::now();
    while !ckpt.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "task 3 ended before its first checkpoint"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint in 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let o = moslora(&["sweep", "status", "sweep.yaml"], &a);
    let (out, _) = text(&o);
    assert!(out.contains("0 done") && out.contains("1 running"), "{out}");

    // The other five, two at a time; the gather then names the killed one as missing.
    let o = moslora(
        &[
            "sweep",
            "run",
            "sweep.yaml",
            "--local",
            "--jobs",
            "2",
            "--only-missing",
        ],
        &a,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("[6/6]"),
        "--only-missing runs the killed task too: {out}"
    );
    let o = moslora(&["sweep", "status", "sweep.yaml"], &a);
    assert!(text(&o).0.contains("6 done"), "{}", text(&o).0);

    // Done tasks skip: a second run changes nothing.
    let image = a.join("out/tasks/0000-gift_box-lora/run/renders/images/p00_s0_lora.png");
    let before = std::fs::metadata(&image).unwrap().modified().unwrap();
    let o = moslora(&["sweep", "task", "sweep.yaml", "--index", "0"], &a);
    assert!(text(&o).0.contains("already done"), "{}", text(&o).0);
    assert_eq!(
        std::fs::metadata(&image).unwrap().modified().unwrap(),
        before
    );

    // The gathered folder: each subject's columns side by side, the table, the study kit.
    let g = a.join("out/gather");
    for s in ["gift_box", "spotted_cat", "star_ball"] {
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(g.join(s).join("manifest.json")).unwrap(),
        )
        .unwrap();
        let names: Vec<&str> = m["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["lora", "moslora"], "{s}");
        assert!(g.join(s).join("index.html").is_file());
    }
    let index = std::fs::read_to_string(g.join("index.html")).unwrap();
    for s in [
        "gift_box/index.html",
        "spotted_cat/grids/p00-",
        "star_ball",
        "study/index.html",
    ] {
        assert!(index.contains(s), "the page across subjects lacks {s}");
    }
    let table = std::fs::read_to_string(g.join("metrics.md")).unwrap();
    for row in [
        "Real images",
        "| LoRA |",
        "| MoSLoRA |",
        "## object subjects",
        "## live subjects",
    ] {
        assert!(table.contains(row), "{row} missing from:\n{table}");
    }
    let key: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(g.join("study.key.json")).unwrap()).unwrap();
    assert_eq!(key["subjects"].as_array().unwrap().len(), 3, "{key}");
    // The page across subjects: the verdicts in words, the metric tables as HTML tables (no
    // Markdown in a <pre>), readable at a laptop's width without scrolling sideways.
    assert!(
        !index.contains("<pre>") && index.contains("<table>"),
        "{index}"
    );
    common::check_pages(
        &[common::Page {
            name: "sweep",
            url: format!("file://{}", g.join("index.html").display()),
            ready: "document.querySelector('table')",
            expect: vec![
                "your photos".into(),
                "Against LoRA, image by image".into(),
                "Real images".into(),
            ],
            shot: "sweep.png",
        }],
        &a,
    );

    // An uninterrupted sweep of the same settings gathers the same bytes.
    let b = sweep_folder("whole", 20);
    let o = moslora(
        &["sweep", "run", "sweep.yaml", "--local", "--jobs", "2"],
        &b,
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let files = assert_same_gathering(&a, &b, "the resumed and the uninterrupted sweep");
    // Every adapter, the resumed one included, has exactly the uninterrupted run's tensors.
    for t in std::fs::read_dir(a.join("out/tasks")).unwrap().flatten() {
        let name = t.file_name();
        let kind = if name.to_string_lossy().ends_with("moslora") {
            "moslora"
        } else {
            "lora"
        };
        let rel = Path::new("run").join(kind).join("adapter.safetensors");
        let (x, y) = (
            common::tensors(&t.path().join(&rel)),
            common::tensors(&b.join("out/tasks").join(&name).join(&rel)),
        );
        assert_eq!(x.len(), y.len());
        for (k, v) in &x {
            assert!(v.equal(&y[k]), "{name:?}: {k} differs");
        }
    }
    println!(
        "{files} gathered files equal; the test took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn bad_sweeps_are_refused_clearly() {
    let dir = sweep_folder("bad", 2);
    let mut f = Failures::new();
    type Break = fn(&Path);
    let cases: [(&str, Break, &[&str]); 5] = [
        (
            "a subject folder without photos",
            |d| {
                for e in std::fs::read_dir(d.join("subjects/gift_box")).unwrap() {
                    std::fs::remove_file(e.unwrap().path()).unwrap();
                }
            },
            &["subjects/gift_box", "no photos"],
        ),
        (
            "an axis with no values",
            |d| {
                std::fs::write(
                    d.join("sweep.yaml"),
                    "base: base.yaml\nsubjects: subjects\nranks: []\n",
                )
                .unwrap()
            },
            &["sweep.yaml", "`ranks` has no values"],
        ),
        (
            "an unknown adapter",
            |d| {
                std::fs::write(
                    d.join("sweep.yaml"),
                    "base: base.yaml\nsubjects: subjects\nadapters: [lora, moslora:wavelet]\n",
                )
                .unwrap()
            },
            &["moslora:wavelet", "orthogonal"],
        ),
        (
            "a subject folder without a class (DreamBooth layout)",
            |d| {
                std::fs::remove_file(d.join("subjects/subjects.txt")).unwrap();
                std::fs::write(
                    d.join("subjects/prompts_and_classes.txt"),
                    "Classes\n\nsubject_name,class\nspotted_cat,cat\ngift_box,box\n\nPrompts\n",
                )
                .unwrap();
            },
            &["star_ball", "no class in prompts_and_classes.txt"],
        ),
        (
            "a misspelt field",
            |d| {
                std::fs::write(
                    d.join("sweep.yaml"),
                    "base: base.yaml\nsubjects: subjects\nseed: [1]\n",
                )
                .unwrap()
            },
            &["sweep.yaml", "unknown field `seed`"],
        ),
    ];
    for (case, break_it, fragments) in cases {
        let d = scratch(&format!("bad-{}", case.len()));
        common::copy_dir(&dir, &d);
        break_it(&d);
        let o = moslora(&["sweep", "plan", "sweep.yaml"], &d);
        let (_, err) = text(&o);
        f.check(case, o.status.code() == Some(2), || {
            format!("exit code {:?}, expected 2", o.status.code())
        });
        f.check(case, err.lines().count() == 1, || {
            format!("not one line: {err}")
        });
        f.contains_all(case, &err, fragments);
        std::fs::remove_dir_all(&d).unwrap();
    }

    // No sbatch on the PATH: say so, and how to run without Slurm.
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["sweep", "run", "sweep.yaml", "--slurm"])
        .current_dir(&dir)
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    f.check("sbatch missing", !o.status.success(), || "succeeded".into());
    f.contains_all("sbatch missing", &err, &["sbatch not found", "--local"]);

    // A gather over a sweep with failures gathers what is done, names the rest, exits non-zero.
    let o = moslora(&["sweep", "task", "sweep.yaml", "--index", "0"], &dir);
    f.check("one task", o.status.success(), || text(&o).1);
    let o = moslora(&["sweep", "gather", "sweep.yaml"], &dir);
    let (out, err) = text(&o);
    f.check("partial gather", !o.status.success(), || "exit 0".into());
    f.contains_all(
        "partial gather",
        &err,
        &["5 of 6 tasks are not done", "0003-spotted_cat-moslora"],
    );
    f.contains_all("partial gather", &out, &["gathered 1 render folders"]);
    f.check(
        "partial gather",
        dir.join("out/gather/gift_box/index.html").is_file(),
        || "gift_box was not gathered".into(),
    );
    f.assert_none();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Until Slurm holds no job of ours (bounded); panics with the daemons' logs otherwise.
fn wait_for_queue(slurm: &slurm_support::Slurm, within: Duration) {
    let t0 = Instant::now();
    loop {
        let q = slurm.run("squeue", &["-h", "-o", "%i %T"]);
        if q.trim().is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "jobs still queued after {within:?}:\n{q}\n{}",
            slurm.log_tails()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn submit(slurm: &slurm_support::Slurm, dir: &Path, extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["sweep", "run", "sweep.yaml", "--slurm"])
        .args(extra)
        .current_dir(dir)
        .envs(slurm.env())
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}\n{}", slurm.log_tails());
    out
}

#[test]
fn a_sweep_on_a_real_slurm_resubmits_what_was_killed_and_gathers_as_a_local_run_does() {
    let started = Instant::now();
    let slurm = slurm_support::Slurm::start(&scratch("slurm-daemons"));
    let a = sweep_folder("slurm", 20);
    std::fs::write(
        a.join("sweep.yaml"),
        "base: base.yaml\noutput: out\nsubjects: subjects\nadapters: [lora, moslora]\n\
         slurm:\n  cpus: 1\n  max_parallel: 2\n",
    )
    .unwrap();

    // The array and its gather; task 3 is cancelled once it has a checkpoint.
    let out = submit(&slurm, &a, &[]);
    assert!(out.contains("submitted 6 tasks as job array"), "{out}");
    let array = out.split_whitespace().nth(6).unwrap().to_string();
    let script = std::fs::read_to_string(a.join("out/slurm/array.sh")).unwrap();
    assert!(
        script.contains("#SBATCH --array=0-5%2") && script.contains("--cpus-per-task=1"),
        "{script}"
    );
    let ckpt = a.join("out/tasks/0003-spotted_cat-moslora/run/moslora/checkpoint/state.json");
    let t0 = Instant::now();
    while !ckpt.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "task 3 made no checkpoint:\n{}",
            slurm.log_tails()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    slurm.run("scancel", &[&format!("{array}_3")]);
    wait_for_queue(&slurm, Duration::from_secs(300));
    let o = moslora(&["sweep", "status", "sweep.yaml"], &a);
    let (st, _) = text(&o);
    assert!(st.contains("5 done"), "{st}");
    // The gather job ran after the array (afterany) and named the cancelled task.
    let gather_log = std::fs::read_to_string(a.join("out/logs/gather.log")).unwrap_or_default();
    assert!(
        gather_log.contains("0003-spotted_cat-moslora"),
        "{gather_log}"
    );

    // Only the missing task again; its gather then completes the sweep.
    let out = submit(&slurm, &a, &["--only-missing"]);
    assert!(out.contains("submitted 1 tasks"), "{out}");
    let script = std::fs::read_to_string(a.join("out/slurm/array.sh")).unwrap();
    assert!(script.contains("#SBATCH --array=3%2"), "{script}");
    wait_for_queue(&slurm, Duration::from_secs(300));
    let o = moslora(&["sweep", "status", "sweep.yaml"], &a);
    assert!(text(&o).0.contains("6 done"), "{}", text(&o).0);
    let missing = std::fs::read_to_string(a.join("out/gather/missing.txt")).unwrap();
    assert!(missing.is_empty(), "{missing}");
    drop(slurm);

    // The same sweep run locally gathers the same results.
    let b = sweep_folder("slurm-local", 20);
    let o = moslora(
        &["sweep", "run", "sweep.yaml", "--local", "--jobs", "2"],
        &b,
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let files = assert_same_gathering(&a, &b, "the Slurm and the local sweep");
    println!(
        "{files} gathered files equal to the local run's; the test took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}
