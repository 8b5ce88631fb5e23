//! `--progress json` through the real command line: `compare` and `train` write one JSON event
//! a line on stdout, nothing else, in the order and with the fields docs/progress-json.md
//! gives; a run stopped by SIGTERM ends with a `stopped` event and exit 130, and a bad run
//! file with a `failed` event carrying the exit code the command returns.

mod common;
mod run_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{repo, scratch, tiny_model};
use serde_json::Value;

/// A compare run of `steps` steps with a sample every 2 steps and an adapter kept every 2.
fn write_run(dir: &Path, steps: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let prompts = dir.join("prompts.yaml");
    std::fs::write(
        &prompts,
        "prompts:\n  - \"a [V] {class} in the snow\"\n  - \"a [V] {class} on a beach\"\n",
    )
    .unwrap();
    let yaml = format!(
        "model: {}\noutput: {}\nsubject:\n  images: {}\ntrain:\n  steps: {steps}\n  \
         resolution: 64\n  batch_size: 1\n  crops_per_image: 1\n  checkpoint_every: 1\n  \
         sample_every: 2\n  save_adapter_every: 2\nrender:\n  prompts: {}\n  seeds: [0]\n  steps: 2\n",
        tiny_model().display(),
        dir.join("out").display(),
        repo().join("assets/subject").display(),
        prompts.display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Every stdout line parsed as JSON (a line that is not JSON fails the test).
fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn of<'a>(ev: &'a [Value], name: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["event"] == name).collect()
}

#[test]
fn compare_streams_every_phase_step_and_file() {
    let root = scratch("compare");
    let run = write_run(&root, 4);
    let out = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["compare", run.to_str().unwrap(), "--progress", "json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{stdout}");
    let ev = events(&stdout);
    assert_eq!(ev[0]["event"], "start");
    assert_eq!(ev[0]["schema"], 1);
    assert_eq!(ev[0]["command"], "compare");
    let last = ev.last().unwrap();
    assert_eq!(last["event"], "done");
    assert_eq!(last["exit_code"], 0);
    // Times only grow.
    let t: Vec<f64> = ev.iter().map(|e| e["t"].as_f64().unwrap()).collect();
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "{t:?}");
    let phases: Vec<&str> = of(&ev, "phase")
        .iter()
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "loading",
            "caching",
            "training lora",
            "training moslora",
            "rendering"
        ]
    );
    for kind in ["lora", "moslora"] {
        let steps: Vec<&Value> = of(&ev, "step")
            .into_iter()
            .filter(|e| e["adapter"] == kind)
            .collect();
        assert_eq!(
            steps
                .iter()
                .map(|e| e["step"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [1, 2, 3, 4],
            "{kind}"
        );
        for s in &steps {
            assert_eq!(s["total"], 4);
            assert!(s["loss"].as_f64().unwrap().is_finite());
            assert!(s["smoothed"].as_f64().unwrap().is_finite());
            assert!(s["speed"].as_f64().unwrap() >= 0.0);
        }
        assert_eq!(steps[3]["eta"], 0.0);
        let files: Vec<(String, String)> = of(&ev, "file")
            .into_iter()
            .filter(|e| e["adapter"] == kind)
            .map(|e| {
                let p = e["path"].as_str().unwrap();
                assert!(Path::new(p).is_file(), "{p} reported but not there");
                (
                    e["what"].as_str().unwrap().to_string(),
                    Path::new(p)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            })
            .collect();
        for want in [
            ("sample", "step_000002.png"),
            ("sample", "step_000004.png"),
            ("step adapter", "step000002.safetensors"),
            ("step adapter", "step000004.safetensors"),
            ("loss csv", "loss.csv"),
            ("adapter", "adapter.safetensors"),
        ] {
            assert!(
                files.iter().any(|(w, n)| w == want.0 && n == want.1),
                "{kind}: no {want:?} in {files:?}"
            );
        }
        // A sample is reported after its step, before training ends.
        let at = |pred: &dyn Fn(&Value) -> bool| ev.iter().position(pred).unwrap();
        let sample2 = at(&|e| e["what"] == "sample" && e["adapter"] == kind && e["step"] == 2);
        let step2 = at(&|e| e["event"] == "step" && e["adapter"] == kind && e["step"] == 2);
        assert!(sample2 > step2);
    }
    let images = of(&ev, "image");
    let render = of(&ev, "render");
    assert_eq!(render.len(), 1);
    let total = render[0]["total"].as_u64().unwrap();
    assert_eq!(images.len() as u64, total);
    assert_eq!(images.last().unwrap()["done"], total);
    for what in ["gallery", "manifest"] {
        let f = of(&ev, "file");
        let g = f.iter().find(|e| e["what"] == what).unwrap();
        assert!(Path::new(g["path"].as_str().unwrap()).is_file());
    }
    // Run again: nothing is stale, nothing is trained, and the stream still ends `done`.
    let again = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["compare", run.to_str().unwrap(), "--progress", "json"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0));
    let ev = events(&String::from_utf8(again.stdout).unwrap());
    assert!(of(&ev, "step").is_empty());
    assert_eq!(ev.last().unwrap()["event"], "done");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_stopped_train_ends_stopped_and_a_bad_run_failed() {
    let root = scratch("stop");
    let run = write_run(&root, 400);
    let mut child = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args([
            "train",
            run.to_str().unwrap(),
            "--adapter",
            "lora",
            "--progress",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read events until a few steps are done, then ask it to stop.
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let stepped = v["event"] == "step" && v["step"].as_u64().unwrap() >= 3;
        seen.push(v);
        if stepped {
            break;
        }
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    for line in lines {
        seen.push(serde_json::from_str(&line.unwrap()).unwrap());
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let last = seen.last().unwrap();
    assert_eq!(last["event"], "stopped", "{seen:?}");
    assert_eq!(last["exit_code"], 130);
    let steps = of(&seen, "step");
    assert!(steps.last().unwrap()["step"].as_u64().unwrap() < 400);
    std::thread::sleep(Duration::from_millis(10));

    // A run file with an unknown field: `failed`, exit 2, the command line's message.
    let bad = root.join("bad.yaml");
    std::fs::write(&bad, "model: x\nsteps: 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["compare", bad.to_str().unwrap(), "--progress", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let ev = events(&String::from_utf8(out.stdout).unwrap());
    let last = ev.last().unwrap();
    assert_eq!(last["event"], "failed");
    assert_eq!(last["exit_code"], 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let msg = last["message"].as_str().unwrap();
    assert!(stderr.contains(msg), "{msg} / {stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A run on more than one CPU thread with OpenMP's wait policy unset starts itself again
/// (`exec`, the same process id) with the passive policy: its stream still holds one `start`
/// and one `loading`, then the steps and `done`.
#[test]
fn a_run_restarted_for_openmp_starts_its_stream_once() {
    let root = scratch("reexec");
    let run = write_run(&root, 1);
    let yaml = std::fs::read_to_string(&run).unwrap();
    std::fs::write(&run, format!("threads: 2\n{yaml}")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args([
            "train",
            run.to_str().unwrap(),
            "--adapter",
            "lora",
            "--progress",
            "json",
        ])
        .env_remove("OMP_WAIT_POLICY")
        .env_remove("MOSLORA_THREADS")
        .env("OMP_NUM_THREADS", "2")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = events(&stdout);
    assert_eq!(of(&ev, "start").len(), 1, "{stdout}");
    assert_eq!(ev[0]["event"], "start");
    let loading = of(&ev, "phase")
        .iter()
        .filter(|e| e["phase"] == "loading")
        .count();
    assert_eq!(loading, 1, "{stdout}");
    assert_eq!(of(&ev, "step").len(), 1, "{stdout}");
    assert_eq!(ev.last().unwrap()["event"], "done");
    std::fs::remove_dir_all(&root).unwrap();
}
