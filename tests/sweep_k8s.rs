//! The Kubernetes Indexed Job of a sweep, held against the API's schema as the official
//! Python client (`kubernetes`) models it: tests/reference/check_k8s_job.py deserializes each
//! manifest into V1Job, refuses any key a model does not know, and checks the fields a sweep
//! depends on.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use moslora::sweep::k8s::{manifest, IndexedJob, Volume};
use serde_json::json;

const CHECKER: &str = "check_k8s_job.py";

fn task(sweep: &str) -> Vec<String> {
    ["moslora", "sweep", "task", sweep]
        .map(String::from)
        .to_vec()
}

/// Write `job`'s manifest and what the checker should find in it to `dir`; the manifest's path
/// and the expectations' path.
fn write(dir: &Path, job: &IndexedJob, expected: serde_json::Value) -> (PathBuf, PathBuf) {
    let yaml = manifest(job).unwrap();
    println!("{}:\n{yaml}", job.name);
    let m = dir.join(format!("{}.yaml", job.name));
    let e = dir.join(format!("{}.json", job.name));
    std::fs::write(&m, yaml).unwrap();
    std::fs::write(&e, serde_json::to_string_pretty(&expected).unwrap()).unwrap();
    (m, e)
}

/// Run the checker on a manifest; whether it passed, and what it said.
fn checker(manifest: &Path) -> (bool, String) {
    let out = Command::new(common::python())
        .arg(common::repo().join("tests/reference").join(CHECKER))
        .arg(manifest)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn minimal_job_is_a_valid_v1job() {
    let dir = common::scratch("minimal");
    let job = IndexedJob::new("dogs", "moslora:0.1.0", 12, task("/work/sweep.yaml"));
    let (m, e) = write(
        &dir,
        &job,
        json!({
            "name": "dogs",
            "namespace": null,
            "completions": 12,
            "parallelism": 1,
            "command": ["moslora", "sweep", "task", "/work/sweep.yaml"],
            "workdir": "/work",
            "requests": {},
            "limits": {},
            "backoff_limit_per_index": null,
        }),
    );
    common::run_reference(CHECKER, &[&m, &e]);
}

#[test]
fn gpu_job_with_volume_and_namespace_is_a_valid_v1job() {
    let dir = common::scratch("gpu");
    let mut job = IndexedJob::new(
        "dreambooth-30-subjects",
        "registry.example.com/team/moslora:0.1.0-cuda",
        30,
        task("/data/sweeps/dreambooth.yaml"),
    );
    job.namespace = Some("research".into());
    job.parallelism = 8;
    job.workdir = "/data".into();
    job.cpus = Some(8);
    job.memory = Some("48Gi".into());
    job.gpus = Some(1);
    job.volume = Some(Volume {
        claim: "moslora-data.v2".into(),
        sub_path: Some("runs/2026".into()),
    });
    job.backoff_limit_per_index = Some(2);
    job.active_deadline_seconds = Some(172_800);
    job.ttl_seconds_after_finished = Some(86_400);
    job.env.insert("HF_HOME".into(), "/data/hf".into());
    job.env.insert("HF_HUB_OFFLINE".into(), "1".into());
    let (m, e) = write(
        &dir,
        &job,
        json!({
            "name": "dreambooth-30-subjects",
            "namespace": "research",
            "completions": 30,
            "parallelism": 8,
            "command": ["moslora", "sweep", "task", "/data/sweeps/dreambooth.yaml"],
            "workdir": "/data",
            "requests": {"cpu": "8", "memory": "48Gi"},
            "limits": {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1"},
            "claim": "moslora-data.v2",
            "backoff_limit_per_index": 2,
        }),
    );
    common::run_reference(CHECKER, &[&m, &e]);
}

#[test]
fn cpu_job_with_volume_is_a_valid_v1job() {
    let dir = common::scratch("cpu");
    let mut job = IndexedJob::new("cats-rank8", "moslora:0.1.0", 3, task("/work/cats.yaml"));
    job.parallelism = 3;
    job.memory = Some("16Gi".into());
    job.volume = Some(Volume {
        claim: "scratch".into(),
        sub_path: None,
    });
    job.backoff_limit = Some(1);
    let (m, e) = write(
        &dir,
        &job,
        json!({
            "name": "cats-rank8",
            "completions": 3,
            "parallelism": 3,
            "command": ["moslora", "sweep", "task", "/work/cats.yaml"],
            "requests": {"memory": "16Gi"},
            "limits": {"memory": "16Gi"},
            "claim": "scratch",
        }),
    );
    common::run_reference(CHECKER, &[&m, &e]);
    let back: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
    assert_eq!(back["spec"]["backoffLimit"], 1);
}

/// The client's deserializer drops keys it does not know; the checker must not. A misspelt
/// key at each depth (the Job's spec, the pod's container, a nested model in a list) fails it,
/// naming where; so does a value of the wrong type.
#[test]
fn checker_refuses_misspelt_keys() {
    let dir = common::scratch("misspelt");
    let mut job = IndexedJob::new("typo", "moslora:0.1.0", 4, task("/work/sweep.yaml"));
    job.gpus = Some(1);
    job.volume = Some(Volume {
        claim: "data".into(),
        sub_path: None,
    });
    job.ttl_seconds_after_finished = Some(60);
    let good = manifest(&job).unwrap();
    let path = dir.join("good.yaml");
    std::fs::write(&path, &good).unwrap();
    let (ok, text) = checker(&path);
    assert!(ok, "the unaltered manifest fails:\n{text}");

    let mut f = common::Failures::new();
    for (case, from, to, reported) in [
        (
            "completionsMode",
            "completionMode:",
            "completionsMode:",
            "spec.completionsMode: unknown key in V1JobSpec",
        ),
        (
            "ttl",
            "ttlSecondsAfterFinished:",
            "ttlSecondAfterFinished:",
            "spec.ttlSecondAfterFinished: unknown key in V1JobSpec",
        ),
        (
            "workDir",
            "workingDir:",
            "workDir:",
            "spec.template.spec.containers[0].workDir: unknown key in V1Container",
        ),
        (
            "claimname",
            "claimName:",
            "claimname:",
            "spec.template.spec.volumes[0].persistentVolumeClaim.claimname: unknown key",
        ),
        (
            "wrong type",
            "completions: 4",
            "completions: four",
            "does not deserialize into V1Job",
        ),
    ] {
        assert!(good.contains(from), "{from} not in the manifest");
        let bad = dir.join(format!("{}.yaml", case.replace(' ', "-")));
        std::fs::write(&bad, good.replacen(from, to, 1)).unwrap();
        let (ok, text) = checker(&bad);
        f.check(case, !ok, || format!("the checker passed it:\n{text}"));
        f.contains_all(case, &text, &[reported]);
    }
    f.assert_none();
}

#[test]
fn sweep_run_emit_k8s_writes_the_whole_sweep_as_a_valid_indexed_job() {
    let dir = common::scratch("emit");
    let assets = common::repo().join("assets");
    std::fs::write(
        dir.join("base.yaml"),
        format!("model: {}\n", assets.join("toy-model").display()),
    )
    .unwrap();
    std::fs::write(
        dir.join("sweep.yaml"),
        format!(
            "base: base.yaml\nsubjects: {}\nadapters: [lora, moslora, 'moslora:zero']\n\
             k8s:\n  name: toy-sweep\n  image: moslora:0.1.0\n  parallelism: 3\n  cpus: 4\n",
            assets.join("subjects").display()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["sweep", "run", "sweep.yaml", "--emit", "k8s"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = dir.join("sweep/k8s/job.yaml");
    // 5 toy subjects x 3 adapters.
    let e = dir.join("expected.json");
    std::fs::write(
        &e,
        serde_json::to_string_pretty(&json!({
            "name": "toy-sweep", "completions": 15, "parallelism": 3,
            "command": task("/work/sweep.yaml"),
        }))
        .unwrap(),
    )
    .unwrap();
    common::run_reference(CHECKER, &[&m, &e]);
    // Without a `k8s:` section: what to add.
    std::fs::write(
        dir.join("sweep.yaml"),
        format!(
            "base: base.yaml\nsubjects: {}\n",
            assets.join("subjects").display()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["sweep", "run", "sweep.yaml", "--emit", "k8s"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("needs a `k8s:` section"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
