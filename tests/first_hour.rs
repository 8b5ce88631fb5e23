//! What a new user relies on in their first hour, run as they run it: a rerun never replaces
//! work without being asked (`train` and `compare` stop before any work, naming what is there
//! and the ways on; `--resume` names each changed setting; `export` asks for `--force`); a run
//! refused at once leaves no folder behind; advice names only options the command has; sizes
//! far from the model's warn once; kohya bucket defaults follow `resolution`.

mod common;
mod run_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{copy_dir, repo, scratch, tiny_model, Failures};
use run_support::{checkpoint_step, error_lines, inode, moslora, Running};

const LIMIT: Duration = Duration::from_secs(120);

/// A RUN.yaml at `dir/NAME` writing to `output`, on the tiny model at 64 px, one prompt and
/// one seed with 2 sampler steps; `extra` adds lines under `train:`, `subject` is the
/// `subject:` section's lines (photos, class).
fn write_run(dir: &Path, name: &str, output: &Path, subject: &str, train: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let prompts = dir.join("prompts.yaml");
    std::fs::write(&prompts, "prompts:\n  - \"a [V] {class} in the snow\"\n").unwrap();
    let yaml = format!(
        "model: {}\noutput: {}\nsubject:\n{subject}train:\n  resolution: 64\n  batch_size: 1\n  \
         crops_per_image: 1\n{train}render:\n  prompts: {}\n  seeds: [0]\n  steps: 2\n",
        tiny_model().display(),
        output.display(),
        prompts.display()
    );
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The bundled robot's photos, as a `subject:` section.
fn robot() -> String {
    format!(
        "  images: {}\n  class: robot\n",
        repo().join("assets/subject").display()
    )
}

/// The same photos copied to `dir` and called a teapot: another subject for the same output.
fn teapot(dir: &Path) -> String {
    let photos = dir.join("teapot-photos");
    copy_dir(&repo().join("assets/subject"), &photos);
    format!("  images: {}\n  class: teapot\n", photos.display())
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.file_name() != ".moslora.lock" {
                files.insert(e.path(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    files
}

/// The command was refused before any work: one error line, no photo read or latent cached.
fn refused_at_once(f: &mut Failures, case: &str, code: Option<i32>, err: &str, expect: i32) {
    f.check(case, code == Some(expect), || {
        format!("exit {code:?}, expected {expect}: {err}")
    });
    f.check(case, error_lines(err).len() == 1, || {
        format!("not one error line: {err}")
    });
    f.check(
        case,
        !err.contains("photos in") && !err.contains("cached"),
        || format!("started working before refusing: {err}"),
    );
}

#[test]
fn an_interrupted_run_is_not_restarted_nor_resumed_with_other_settings() {
    let root = scratch("interrupted");
    let out = root.join("out");
    let run = write_run(
        &root,
        "run.yaml",
        &out,
        &robot(),
        "  steps: 40\n  checkpoint_every: 1\n",
    );
    let run_s = run.to_str().unwrap();
    // Ctrl-C at a step past the first checkpoint.
    let mut p = Running::start(
        &["train", run_s, "--adapter", "lora"],
        &root.join("first.txt"),
    );
    let ckpt = out.join("lora/checkpoint");
    assert!(
        p.wait_for(LIMIT, || checkpoint_step(&ckpt).is_some()),
        "the run ended before it could be interrupted"
    );
    p.signal("INT");
    let (status, err) = p.finish();
    assert_eq!(status.code(), Some(130), "{err}");
    let step = checkpoint_step(&ckpt).unwrap();
    let before = snapshot(&out);
    let state_inode = inode(&ckpt.join("state.json"));

    let mut f = Failures::new();
    // Without --resume: refused, naming the checkpoint and the three ways on.
    for (case, args) in [
        (
            "train --adapter lora",
            vec!["train", run_s, "--adapter", "lora"],
        ),
        ("train (both adapters)", vec!["train", run_s]),
    ] {
        let (code, err) = moslora(&args);
        println!(
            "{case} over a step {step} checkpoint: exit {code:?}: {}",
            err.trim()
        );
        refused_at_once(&mut f, case, code, &err, 2);
        f.contains_all(
            case,
            &err,
            &[
                &format!("a step {step} of 40 checkpoint of lora"),
                "--resume",
                "--force",
                "`output:`",
                run_s,
            ],
        );
    }

    // Other photos, another class, another learning rate, and a bookkeeping setting that does
    // not change the result: --resume names the three, before reading a photo.
    let other = write_run(
        &root,
        "other.yaml",
        &out,
        &teapot(&root),
        "  steps: 1\n  learning_rate: 5.0e-4\n  checkpoint_every: 7\n",
    );
    let other_s = other.to_str().unwrap();
    let case = "train --resume with changed settings";
    let (code, err) = moslora(&["train", other_s, "--adapter", "lora", "--resume"]);
    println!("{case}: exit {code:?}: {}", err.trim());
    refused_at_once(&mut f, case, code, &err, 2);
    f.contains_all(
        case,
        &err,
        &[
            "subject.images",
            "subject.class",
            "train.learning_rate",
            "train.steps",
            "--force",
        ],
    );
    f.check(case, !err.contains("checkpoint_every"), || {
        format!("a bookkeeping setting named as changed: {err}")
    });
    f.check(case, !err.contains("model, seed, subject"), || {
        format!("the changed settings are not named: {err}")
    });

    // compare onto the same output with another subject: no retraining, nothing wiped.
    let case = "compare with another subject";
    let (code, err) = moslora(&["compare", other_s]);
    println!("{case}: exit {code:?}: {}", err.trim());
    refused_at_once(&mut f, case, code, &err, 2);
    f.contains_all(
        case,
        &err,
        &[
            &format!("a step {step} of 40 checkpoint of lora with other settings"),
            "subject.images",
            "subject.class",
            "--force",
            "`output:`",
        ],
    );
    f.check(case, snapshot(&out) == before, || {
        "the output folder changed".into()
    });
    f.check(case, inode(&ckpt.join("state.json")) == state_inode, || {
        "the checkpoint was rewritten".into()
    });
    f.check(
        case,
        !out.join("renders").exists() && !out.join("moslora").exists(),
        || "compare made folders".into(),
    );

    // --force and --resume together make no sense.
    let (code, err) = moslora(&["train", other_s, "--force", "--resume"]);
    f.check("--force --resume", code == Some(2), || err.clone());

    // Asked for: --force replaces the interrupted run.
    let (code, err) = moslora(&["train", other_s, "--adapter", "lora", "--force"]);
    f.check("train --force", code == Some(0), || err.clone());
    let meta = moslora::adapter::file::read_meta(&out.join("lora/adapter.safetensors"));
    f.check(
        "train --force",
        meta.is_ok_and(|m| m.training["subject"]["class"] == "teapot"),
        || "the forced run's adapter is not the teapot's".into(),
    );
    f.assert_none();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn compare_reruns_reuse_its_work_and_another_subject_does_not_replace_it() {
    let root = scratch("compare");
    let out = root.join("out");
    let run = write_run(&root, "run.yaml", &out, &robot(), "  steps: 1\n");
    let run_s = run.to_str().unwrap();
    let (code, err) = moslora(&["compare", run_s]);
    assert_eq!(code, Some(0), "{err}");
    let adapter = out.join("moslora/adapter.safetensors");
    let adapter_inode = inode(&adapter);

    let mut f = Failures::new();
    // The same command again: nothing to retrain, nothing to render.
    let (code, err) = moslora(&["compare", run_s]);
    f.check("compare again", code == Some(0), || err.clone());
    f.contains_all("compare again", &err, &["up to date: not retraining"]);
    f.check("compare again", inode(&adapter) == adapter_inode, || {
        "the adapter was rewritten".into()
    });

    // train over the finished run, without --resume.
    let case = "train over finished adapters";
    let (code, err) = moslora(&["train", run_s]);
    println!("{case}: exit {code:?}: {}", err.trim());
    refused_at_once(&mut f, case, code, &err, 2);
    f.contains_all(
        case,
        &err,
        &[
            "adapters lora, moslora(orthogonal) trained 1 step on",
            "(class robot)",
            "--resume",
            "--force",
        ],
    );

    // compare of another subject onto the same output.
    let before = snapshot(&out);
    let other = write_run(&root, "other.yaml", &out, &teapot(&root), "  steps: 1\n");
    let case = "compare with another subject";
    let (code, err) = moslora(&["compare", other.to_str().unwrap()]);
    println!("{case}: exit {code:?}: {}", err.trim());
    refused_at_once(&mut f, case, code, &err, 2);
    f.contains_all(
        case,
        &err,
        &[
            "adapters lora, moslora(orthogonal) trained 1 step on",
            "with other settings (changed since: subject.class, subject.images)",
            "--force",
        ],
    );
    let now = snapshot(&out);
    f.check(case, now == before, || {
        let changed: Vec<_> = before
            .keys()
            .chain(now.keys())
            .filter(|p| before.get(*p) != now.get(*p))
            .collect();
        format!("changed: {changed:?}")
    });
    for file in [
        "loss.png",
        "lora/loss.csv",
        "moslora/loss.png",
        "moslora/adapter.safetensors",
    ] {
        f.check(case, out.join(file).exists(), || format!("{file} is gone"));
    }
    f.assert_none();
    std::fs::remove_dir_all(&root).unwrap();
}

/// `device: cuda` where libtorch sees no GPU (or, on a GPU machine, a GPU that is not there).
fn missing_gpu() -> &'static str {
    if tch::Cuda::is_available() {
        "cuda:64"
    } else {
        "cuda"
    }
}

/// One run refused at once: the command, what is wrong, the RUN.yaml's model and photos
/// (None: the tiny model, the bundled robot), its extra top-level lines, the exit code (None:
/// any failure) and what the one error line must say.
struct Refusal {
    command: &'static str,
    what: &'static str,
    model: Option<PathBuf>,
    photos: Option<PathBuf>,
    extra: String,
    code: Option<i32>,
    says: Vec<String>,
}

#[test]
fn runs_refused_at_once_leave_nothing_behind_and_advise_what_the_command_has() {
    let root = scratch("refused");
    let empty = root.join("no-photos");
    std::fs::create_dir_all(&empty).unwrap();
    let gpu = missing_gpu();
    let no_gpu = |command| Refusal {
        command,
        what: "a GPU that is not there",
        model: None,
        photos: None,
        extra: format!("device: {gpu}\n"),
        code: Some(4),
        says: vec![
            format!("`device: {gpu}` (RUN.yaml)"),
            "`device: cpu` (RUN.yaml)".into(),
        ],
    };
    let cases = [
        no_gpu("train"),
        no_gpu("compare"),
        no_gpu("render"),
        Refusal {
            command: "train",
            what: "bf16 on the CPU",
            model: None,
            photos: None,
            extra: "dtype: bf16\n".into(),
            code: Some(2),
            says: vec!["`dtype: f32` (RUN.yaml)".into()],
        },
        Refusal {
            command: "compare",
            what: "a model that is not there",
            model: Some(PathBuf::from("/nonexistent/sdxl")),
            photos: None,
            extra: String::new(),
            code: Some(2),
            says: vec!["/nonexistent/sdxl".into(), "`model:`".into()],
        },
        Refusal {
            command: "compare",
            what: "an empty photo folder (refused once the output folders are locked)",
            model: None,
            photos: Some(empty.clone()),
            extra: String::new(),
            code: None,
            says: vec![],
        },
        Refusal {
            command: "render",
            what: "adapters not trained yet (refused once the output folder is locked)",
            model: None,
            photos: None,
            extra: String::new(),
            code: None,
            says: vec!["train it first".into()],
        },
    ];
    let mut f = Failures::new();
    for (i, c) in cases.iter().enumerate() {
        let case = format!("{}: {}", c.command, c.what);
        let dir = root.join(format!("r{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let runs = dir.join("runs");
        let run = dir.join("run.yaml");
        let yaml = format!(
            "model: {}\noutput: {}\nsubject:\n  images: {}\ntrain:\n  steps: 1\n  \
             resolution: 64\n{}",
            c.model.clone().unwrap_or_else(tiny_model).display(),
            runs.join("cuda").display(),
            c.photos
                .clone()
                .unwrap_or_else(|| repo().join("assets/subject"))
                .display(),
            c.extra
        );
        std::fs::write(&run, yaml).unwrap();
        let (code, err) = moslora(&[c.command, run.to_str().unwrap()]);
        println!("{case}: exit {code:?}: {}", err.trim());
        match c.code {
            Some(expect) => f.check(&case, code == Some(expect), || {
                format!("exit {code:?}, expected {expect}: {err}")
            }),
            None => f.check(&case, code.is_some_and(|c| c != 0), || err.clone()),
        }
        let says: Vec<&str> = c.says.iter().map(String::as_str).collect();
        f.contains_all(&case, &err, &says);
        // Only options that exist: train, compare and render have no --device or --dtype.
        f.check(
            &case,
            !err.contains("--device") && !err.contains("--dtype"),
            || format!("names a flag `{}` does not have: {err}", c.command),
        );
        f.check(&case, !runs.exists(), || {
            let left: Vec<_> = snapshot(&runs).into_keys().collect();
            format!("left behind: {} ({left:?})", runs.display())
        });
    }
    // generate has the flags, and its advice names them.
    let (code, err) = moslora(&[
        "generate",
        "--model",
        tiny_model().to_str().unwrap(),
        "--prompt",
        "a robot",
        "--device",
        gpu,
        "--out",
        root.join("x.png").to_str().unwrap(),
    ]);
    f.check("generate --device", code == Some(4), || err.clone());
    f.contains_all("generate --device", &err, &[&format!("`--device {gpu}`")]);
    f.assert_none();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn export_asks_before_replacing_a_file() {
    let root = scratch("export");
    let out = root.join("out");
    let run = write_run(&root, "run.yaml", &out, &robot(), "  steps: 1\n");
    let (code, err) = moslora(&["train", run.to_str().unwrap(), "--adapter", "lora"]);
    assert_eq!(code, Some(0), "{err}");
    let adapter = out.join("lora/adapter.safetensors");
    let target = root.join("teapot-lora.safetensors");
    std::fs::write(&target, b"an earlier export").unwrap();
    let model = tiny_model();
    let export = |extra: &[&str]| {
        let mut args = vec![
            "export",
            adapter.to_str().unwrap(),
            "--format",
            "kohya",
            "--model",
            model.to_str().unwrap(),
            "--out",
            target.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        moslora(&args)
    };
    let mut f = Failures::new();
    let (code, err) = export(&[]);
    println!(
        "export onto an existing file: exit {code:?}: {}",
        err.trim()
    );
    f.check("without --force", code == Some(2), || err.clone());
    f.contains_all("without --force", &err, &["already exists", "--force"]);
    f.check(
        "without --force",
        std::fs::read(&target).unwrap() == b"an earlier export",
        || "the file was replaced".into(),
    );
    let (code, err) = export(&["--force"]);
    f.check("with --force", code == Some(0), || err.clone());
    f.check(
        "with --force",
        safetensors::SafeTensors::deserialize(&std::fs::read(&target).unwrap()).is_ok(),
        || "not replaced by the export".into(),
    );
    let (code, err) = moslora(&[
        "export",
        adapter.to_str().unwrap(),
        "--format",
        "onnx",
        "--out",
        root.join("y.safetensors").to_str().unwrap(),
    ]);
    f.check("an unknown --format", code == Some(2), || err.clone());
    for command in ["train", "compare", "export"] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_moslora"))
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&o.stdout);
        f.check(
            &format!("{command} --help"),
            help.contains("--force"),
            || help.to_string(),
        );
    }
    f.assert_none();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn sizes_far_from_the_model_warn_once_and_kohya_defaults_follow_resolution() {
    let root = scratch("sizes");
    let mut f = Failures::new();
    // kohya buckets at 64 px with every bucket setting left out: trains.
    let out = root.join("kohya/out");
    let run = write_run(
        &root.join("kohya"),
        "run.yaml",
        &out,
        &robot(),
        "  steps: 1\n  buckets: kohya\n",
    );
    let (code, err) = moslora(&["train", run.to_str().unwrap(), "--adapter", "lora"]);
    println!("kohya at 64 px: exit {code:?}:\n{err}");
    f.check("kohya at 64 px", code == Some(0), || err.clone());
    // An explicit bad value still names its field.
    let bad = write_run(
        &root.join("bad"),
        "run.yaml",
        &root.join("bad/out"),
        &robot(),
        "  steps: 1\n  buckets: kohya\n  bucket_min: 48\n",
    );
    let (code, err) = moslora(&["train", bad.to_str().unwrap(), "--adapter", "lora"]);
    println!("kohya with bucket_min 48: exit {code:?}: {}", err.trim());
    f.check("bucket_min 48", code == Some(2), || err.clone());
    f.contains_all(
        "bucket_min 48",
        &err,
        &["train.bucket_min (48)", "train.bucket_step (32"],
    );

    // Training and rendering at 32 px on a 128 px model: each warns once.
    let out = root.join("small/out");
    let run = write_run(
        &root.join("small"),
        "run.yaml",
        &out,
        &robot(),
        "  steps: 1\n",
    );
    let yaml = std::fs::read_to_string(&run)
        .unwrap()
        .replace("resolution: 64", "resolution: 32")
        .replace("  steps: 2\n", "  steps: 2\n  width: 32\n  height: 32\n");
    std::fs::write(&run, yaml).unwrap();
    let (code, err) = moslora(&["compare", run.to_str().unwrap()]);
    println!("compare at 32 px:\n{err}");
    f.check("compare at 32 px", code == Some(0), || err.clone());
    for what in ["train.resolution 32", "render size 32x32"] {
        let line = format!(
            "{what} is far from this model's native 128 px (sample_size 16 x VAE factor 8)"
        );
        let n = err.matches(&line).count();
        f.check(what, n == 1, || format!("{n} warnings `{line}`: {err}"));
    }
    // 1024 px: the warning comes before the first photo is read.
    let empty = root.join("large/no-photos");
    std::fs::create_dir_all(&empty).unwrap();
    let run = write_run(
        &root.join("large"),
        "run.yaml",
        &root.join("large/out"),
        &format!("  images: {}\n", empty.display()),
        "  steps: 1\n",
    );
    let yaml = std::fs::read_to_string(&run)
        .unwrap()
        .replace("resolution: 64", "resolution: 1024");
    std::fs::write(&run, yaml).unwrap();
    let (_, err) = moslora(&["train", run.to_str().unwrap()]);
    println!("train at 1024 px:\n{err}");
    f.contains_all(
        "train at 1024 px",
        &err,
        &[
            "train.resolution 1024 is far from this model's native 128 px",
            "64 times",
        ],
    );
    f.assert_none();
    std::fs::remove_dir_all(&root).unwrap();
}
