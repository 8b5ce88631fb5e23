//! The validation loss (`train.validate_every`, `train.validation_split`) on the tiny model: a
//! run with it trains the very adapters a run without it trains, an interrupted and resumed run
//! logs what the whole run logs, held-out photos leave training, and the command line names the
//! lowest-validation step and the adapter saved nearest to it, in words and as JSON events.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_same_tensors, repo, scratch, tiny_model};
use moslora::config::RunConfig;
use moslora::sdxl::pipeline::RunOptions;
use moslora::train::{self, loss_log, AdapterKind, Progress, Quiet, RunPaths};

fn config(out: &Path, steps: u64, validate_every: u64) -> RunConfig {
    let mut c = common::tiny_run(out, steps);
    c.train.batch_size = 1;
    c.train.crops_per_image = 1;
    c.train.validate_every = validate_every;
    c
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Stops the run once `0` steps are done; records the validation losses it is told of.
struct StopAt(u64, u64, Vec<(u64, f32)>);
impl Progress for StopAt {
    fn step(&mut self, step: u64, _: f32, _: f64) {
        self.1 = step;
    }
    fn validation(&mut self, step: u64, loss: f32) {
        self.2.push((step, loss));
    }
    fn should_stop(&self) -> bool {
        self.1 >= self.0
    }
}

#[test]
fn validation_leaves_training_untouched_and_resumes_to_the_same_log() {
    let root = scratch("untouched");
    let (plain, with, parts) = (root.join("plain"), root.join("with"), root.join("parts"));
    let opts = RunOptions::default();
    let kinds = [AdapterKind::Lora];
    let steps = 7;
    train::train(&config(&plain, steps, 0), &kinds, opts, false, &mut Quiet).unwrap();
    let cfg = config(&with, steps, 3);
    let mut seen = StopAt(u64::MAX, 0, Vec::new());
    let o = train::train(&cfg, &kinds, opts, false, &mut seen).unwrap();

    // The same adapter and training log, to the bit, with or without validation.
    let (p, w) = (
        RunPaths::new(&config(&plain, steps, 0), kinds[0]),
        RunPaths::new(&cfg, kinds[0]),
    );
    assert_same_tensors(&p.adapter(), &w.adapter());
    assert_eq!(read(&p.loss_csv()), read(&w.loss_csv()));
    assert!(
        !p.validation_csv().exists(),
        "validation.csv without validation"
    );
    // Measured before the first step, every 3 steps, and at the last.
    let v = loss_log::read_validation_csv(&w.validation_csv()).unwrap();
    let at: Vec<u64> = v.iter().map(|(s, _)| *s).collect();
    assert_eq!(at, [0, 3, 6, 7]);
    assert_eq!(v, seen.2, "the log and the progress reports differ");
    assert!(v.iter().all(|(_, l)| l.is_finite() && *l > 0.0), "{v:?}");
    // LoRA starts as the base model and learns: the losses move.
    assert!(v.windows(2).any(|p| p[0].1 != p[1].1), "{v:?}");
    // The lowest past step 0 is named, with the final adapter (the only one saved).
    let best = o[0].best_validation.clone().expect("a best step");
    let min = v[1..].iter().map(|(_, l)| *l).fold(f32::MAX, f32::min);
    assert_eq!(best.loss, min);
    assert_eq!(
        (best.adapter_step, best.adapter.clone()),
        (steps, w.adapter())
    );
    assert!(w.loss_png().exists());

    // Stopped after 4 steps and resumed: the same adapter and the same logs.
    let cfg_parts = config(&parts, steps, 3);
    let o = train::train(
        &cfg_parts,
        &kinds,
        opts,
        false,
        &mut StopAt(4, 0, Vec::new()),
    )
    .unwrap();
    assert!(o[0].interrupted);
    train::train(&cfg_parts, &kinds, opts, true, &mut Quiet).unwrap();
    let r = RunPaths::new(&cfg_parts, kinds[0]);
    assert_same_tensors(&w.adapter(), &r.adapter());
    assert_eq!(read(&w.loss_csv()), read(&r.loss_csv()));
    assert_eq!(read(&w.validation_csv()), read(&r.validation_csv()));
    std::fs::remove_dir_all(&root).unwrap();
}

fn write_run(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let yaml = format!(
        "model: {}\noutput: {}\nsubject:\n  images: {}\ntrain:\n  steps: 4\n  resolution: 64\n  \
         batch_size: 1\n  crops_per_image: 1\n  random_flip: false\n{extra}",
        tiny_model().display(),
        dir.join("out").display(),
        repo().join("assets/subject").display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn moslora(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn held_out_photos_and_the_best_step_from_the_command_line() {
    let root = scratch("held-out");
    // 2 of the 5 photos held out; an adapter kept every 2 steps.
    let run = write_run(
        &root,
        "  validate_every: 1\n  validation_split: 0.4\n  save_adapter_every: 2\n",
    );
    let (code, _, err) = moslora(&["train", run.to_str().unwrap(), "--adapter", "lora"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("validation: 2 photos held out of training ("),
        "{err}"
    );
    // The training set is the other 3: one latent each (one crop, no flips).
    assert!(err.contains("3 cached latent variants"), "{err}");
    assert!(err.contains("step 1: validation loss"), "{err}");
    let v = loss_log::read_validation_csv(&root.join("out/lora/validation.csv")).unwrap();
    assert_eq!(v.len(), 5);
    let best = v[1..]
        .iter()
        .fold((0, f32::MAX), |b, &(s, l)| if l < b.1 { (s, l) } else { b });
    let line = err
        .lines()
        .find(|l| l.contains("lowest validation loss"))
        .unwrap_or_else(|| panic!("no best step named: {err}"));
    assert!(
        line.contains(&format!("at step {};", best.0)),
        "{line} vs {v:?}"
    );
    // Adapters at 2 and 4 (the final one): the nearest to the best step, the earlier of two.
    let nearest = [2u64, 4]
        .into_iter()
        .min_by_key(|s| (s.abs_diff(best.0), *s))
        .unwrap();
    let file = if nearest == 4 {
        "lora/adapter.safetensors".to_string()
    } else {
        format!("lora/adapters/step{nearest:06}.safetensors")
    };
    assert!(
        line.contains(&file),
        "{line}: expected {file} (best step {})",
        best.0
    );

    // The same as JSON events: one `validation` per measurement, then `best`.
    let json_run = write_run(
        &root.join("json"),
        "  validate_every: 2\n  validation_split: 0.4\n",
    );
    let (code, out, err) = moslora(&[
        "train",
        json_run.to_str().unwrap(),
        "--adapter",
        "moslora",
        "--progress",
        "json",
    ]);
    assert_eq!(code, Some(0), "{err}\n{out}");
    let ev: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let vals: Vec<&serde_json::Value> = ev.iter().filter(|e| e["event"] == "validation").collect();
    let steps: Vec<u64> = vals.iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 2, 4]);
    assert!(vals
        .iter()
        .all(|e| e["adapter"] == "moslora" && e["loss"].as_f64().is_some()));
    let best: Vec<&serde_json::Value> = ev.iter().filter(|e| e["event"] == "best").collect();
    assert_eq!(best.len(), 1, "{out}");
    assert_eq!(best[0]["adapter_step"], 4);
    assert!(best[0]["path"]
        .as_str()
        .unwrap()
        .ends_with("moslora/adapter.safetensors"));

    // A split with nothing to measure it is refused, naming both fields.
    let bad = write_run(&root.join("bad"), "  validation_split: 0.2\n");
    let (code, _, err) = moslora(&["train", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("train.validation_split") && err.contains("train.validate_every"),
        "{err}"
    );
    // Too few photos to hold any out: said once, and measured on the training photos.
    let few = write_run(
        &root.join("few"),
        "  validate_every: 1\n  validation_split: 0.9\n",
    );
    let (code, _, err) = moslora(&["train", few.to_str().unwrap(), "--adapter", "lora"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        err.matches("measured on the training photos").count(),
        1,
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
