//! TensorBoard event files (`OUT/tb/<adapter>/`), read back with TensorBoard's own reader
//! (`event_accumulator`, through `tests/tensorboard_support/read_events.py`): every scalar
//! equals its value in `loss.csv` / `validation.csv`, each step shows once after a run killed
//! past its last checkpoint is resumed, the samples are there as images, and the two adapters'
//! runs sit side by side.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{python, repo, scratch, tiny_model};
use moslora::config::RunConfig;
use moslora::sdxl::pipeline::RunOptions;
use moslora::train::{self, loss_log, AdapterKind, Progress, Quiet, RunPaths};
use serde_json::Value;
use sha2::{Digest, Sha256};

const STEPS: u64 = 6;

fn write_run(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let yaml = format!(
        "model: {}\noutput: {}\nsubject:\n  images: {}\ntrain:\n  steps: {STEPS}\n  \
         resolution: 64\n  batch_size: 1\n  crops_per_image: 1\n  checkpoint_every: 2\n  \
         sample_every: 3\n  validate_every: 2\nrender:\n  steps: 2\n",
        tiny_model().display(),
        dir.join("out").display(),
        repo().join("assets/subject").display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Keeps a copy of the checkpoint as it is when step `at` begins (the one of step `at - 1`),
/// and stops the run after step `stop`.
struct KeepAndStop {
    checkpoint: std::path::PathBuf,
    copy: std::path::PathBuf,
    at: u64,
    stop: u64,
    done: u64,
}
impl Progress for KeepAndStop {
    fn step(&mut self, step: u64, _: f32, _: f64) {
        self.done = step;
        if step == self.at {
            copy_dir(&self.checkpoint, &self.copy);
        }
    }
    fn should_stop(&self) -> bool {
        self.done >= self.stop
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The `tb` folder as TensorBoard reads it (`raw`: without dropping the steps a resumed run
/// logged again).
fn read_tensorboard(tb: &Path, raw: bool) -> Value {
    let out = Command::new(python())
        .arg(repo().join("tests/tensorboard_support/read_events.py"))
        .arg(tb)
        .args(raw.then_some("--raw"))
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "TensorBoard's reader failed (make venv installs tensorboard): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// loss.csv's columns: step -> (loss, learning rate, gradient norm).
fn loss_csv(path: &Path) -> BTreeMap<u64, (f32, f64, f32)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("step,loss,smoothed_loss,learning_rate,grad_norm")
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let step = f[0].parse().unwrap();
            (
                step,
                (
                    f[1].parse().unwrap(),
                    f[3].parse().unwrap(),
                    f[4].parse().unwrap(),
                ),
            )
        })
        .collect()
}

/// A scalar series as (step, value).
fn series(run: &Value, tag: &str) -> Vec<(u64, f32)> {
    run["scalars"][tag]
        .as_array()
        .unwrap_or_else(|| panic!("no scalar {tag:?} in {run}"))
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap() as f32))
        .collect()
}

fn check_run(run: &Value, paths: &RunPaths) {
    let csv = loss_csv(&paths.loss_csv());
    assert_eq!(csv.len() as u64, STEPS);
    let expect = |f: &dyn Fn(&(f32, f64, f32)) -> f32| -> Vec<(u64, f32)> {
        csv.iter().map(|(s, v)| (*s, f(v))).collect()
    };
    // Each step once, each value exactly as logged (TensorBoard keeps 32-bit floats).
    assert_eq!(series(run, "loss/train"), expect(&|v| v.0));
    assert_eq!(series(run, "learning_rate"), expect(&|v| v.1 as f32));
    assert_eq!(series(run, "grad_norm"), expect(&|v| v.2));
    assert!(csv.values().all(|v| v.2.is_finite() && v.2 > 0.0));
    let validation = loss_log::read_validation_csv(&paths.validation_csv()).unwrap();
    assert_eq!(
        validation.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [0, 2, 4, 6]
    );
    assert_eq!(series(run, "loss/validation"), validation);
    // The samples of steps 3 and 6, the very files in samples/.
    let images = run["images"]["sample"].as_array().expect("sample images");
    let got: Vec<(u64, u64, u64, String)> = images
        .iter()
        .map(|i| {
            (
                i[0].as_u64().unwrap(),
                i[1].as_u64().unwrap(),
                i[2].as_u64().unwrap(),
                i[3].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, u64, String)> = [3u64, 6]
        .iter()
        .map(|&s| {
            let png = std::fs::read(paths.samples().join(format!("step_{s:06}.png"))).unwrap();
            let sha: String = Sha256::digest(&png)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (s, 64, 64, sha)
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn event_files_read_back_as_loss_csv_after_a_killed_and_resumed_run() {
    let root = scratch("tb");
    let run = write_run(&root);
    let cfg = RunConfig::load(&run).unwrap();
    let opts = RunOptions::default();
    let lora = RunPaths::new(&cfg, AdapterKind::Lora);

    // A run killed after step 5 whose last checkpoint was step 2's: its event file holds steps
    // 3 to 5, which the resumed run logs again.
    let mut p = KeepAndStop {
        checkpoint: lora.checkpoint(),
        copy: root.join("step2-checkpoint"),
        at: 3,
        stop: 5,
        done: 0,
    };
    let o = train::train(&cfg, &[AdapterKind::Lora], opts, false, &mut p).unwrap();
    assert!(o[0].interrupted);
    std::fs::remove_dir_all(lora.checkpoint()).unwrap();
    copy_dir(&root.join("step2-checkpoint"), &lora.checkpoint());
    let o = train::train(&cfg, &[AdapterKind::Lora], opts, true, &mut Quiet).unwrap();
    assert_eq!(o[0].steps_done, STEPS);
    let files = std::fs::read_dir(lora.tensorboard()).unwrap().count();
    assert_eq!(files, 2, "one event file per process");

    // The other adapter from the command line, beside it.
    let out = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["train", run.to_str().unwrap(), "--adapter", "moslora"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // As written, the killed run's steps 3 to 5 are there twice...
    let raw = read_tensorboard(&cfg.output.join("tb"), true);
    let steps: Vec<u64> = series(&raw["lora"], "loss/train")
        .iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 3, 4, 5, 6]);
    // ...and TensorBoard shows each step once.
    let tb = read_tensorboard(&cfg.output.join("tb"), false);
    let runs: Vec<&String> = tb.as_object().unwrap().keys().collect();
    assert_eq!(runs, ["lora", "moslora"]);
    check_run(&tb["lora"], &lora);
    check_run(&tb["moslora"], &RunPaths::new(&cfg, AdapterKind::Moslora));

    // A fresh run (not --resume) starts its TensorBoard folder afresh.
    let out = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args([
            "train",
            run.to_str().unwrap(),
            "--adapter",
            "lora",
            "--force",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(lora.tensorboard()).unwrap().count(), 1);
    std::fs::remove_dir_all(&root).unwrap();
}
