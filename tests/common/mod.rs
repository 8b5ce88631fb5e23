//! Shared test helpers: fixture paths and reference tensors made by tests/reference/*.py,
//! scratch folders, the project's Python, PNGs as tensors, and adapter files made in a test.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use moslora::adapter::file::{AdapterMeta, ModelIdentity, FORMAT_VERSION};
use moslora::adapter::{self, AdapterConfig};
use moslora::sdxl::pipeline::TextEncoders;
use moslora::sdxl::unet::UNet2DConditionModel;
use tch::{Device, Kind, Tensor};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh, empty scratch folder for one test, under target/ (`CARGO_TARGET_TMPDIR`), named
/// after the test binary and `name`: whatever an earlier run left there is removed first.
/// Tests of one binary pass different names.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-{name}", env!("CARGO_CRATE_NAME")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copy the files of a folder (not recursive) into `to`, made if missing.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The project's virtual environment's Python (`make venv`), else python3 on PATH.
pub fn python() -> PathBuf {
    let venv = repo().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Run `tests/reference/<script>` with the project's Python, offline; print what it said and
/// fail the test, with its output, if it failed.
pub fn run_reference(script: &str, args: &[&Path]) {
    let py = python();
    let out = Command::new(&py)
        .arg(repo().join("tests/reference").join(script))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", py.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{script}:\n{text}");
    assert!(out.status.success(), "{script} failed:\n{text}");
}

/// Every tensor of a safetensors file, by name.
pub fn tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// A PNG as an (H, W, 3) float tensor in 0..255.
pub fn read_png(path: &Path) -> Tensor {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw())
        .reshape([h as i64, w as i64, 3])
        .to_kind(Kind::Float)
}

/// Mean absolute difference in 0..255 pixel units.
pub fn mean_pixel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().mean(Kind::Double).double_value(&[])
}

/// The metadata of an adapter made in a test (no training: `steps` 0, `training` `{}`), for a
/// base model called `base_model` (an empty name leaves the identity empty).
pub fn adapter_meta(
    name: &str,
    adapter: AdapterConfig,
    base_model: &str,
    layers: usize,
) -> AdapterMeta {
    AdapterMeta {
        format_version: FORMAT_VERSION,
        name: name.into(),
        adapter,
        base_model: ModelIdentity {
            name: base_model.into(),
            ..ModelIdentity::default()
        },
        training: serde_json::json!({}),
        steps: 0,
        layers,
        unet_blocks: None,
    }
}

/// Give every injected adapter a random `B` (N(0, 0.3^2)), so that it moves the picture: the
/// UNet's, then the text encoders' when given, drawn from the global generator seeded with
/// `seed` (locked meanwhile: see moslora::runtime::seeded).
pub fn randomize_b(unet: &mut UNet2DConditionModel, text: Option<&mut TextEncoders>, seed: i64) {
    let rng = moslora::runtime::seeded(seed);
    let mut randomize = |l: &mut moslora::sdxl::nn::Linear| {
        let a = adapter::lowrank_mut(l).unwrap();
        a.b = Tensor::randn(a.b.size(), (Kind::Float, Device::Cpu)) * 0.3;
    };
    adapter::adapted(unet).into_iter().for_each(&mut randomize);
    if let Some(text) = text {
        for (_, m) in adapter::text_encoder_parts(text) {
            adapter::adapted(m).into_iter().for_each(&mut randomize);
        }
    }
    drop(rng);
}

/// The fixtures folder (`make fixtures` writes it). A missing folder fails the test: a
/// parity test that silently skipped would prove nothing.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("MOSLORA_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fixtures"));
    assert!(
        dir.join("tiny-sdxl").is_dir(),
        "fixtures missing at {}: run `make fixtures` (or `make test`)",
        dir.display()
    );
    dir
}

/// Run libtorch on as many threads as the reference fixtures were computed with
/// (`make_fixtures.py` records it). For the tests that compare gradients and optimiser steps:
/// another thread count sums in another order, and that rounding, divided by AdamW's square
/// root of a near-zero second moment, grows past their tolerances (measured at 1 thread against
/// fixtures made on 2: LoRA after two AdamW steps 2.3e-5 relative, tolerance 2e-5). The test
/// run itself uses one thread a lane.
pub fn reference_threads() {
    let path = fixtures().join("reference-threads.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; remake the fixtures (`make fixtures`)",
            path.display()
        )
    });
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = v["threads"]
        .as_i64()
        .expect("reference-threads.json: threads");
    tch::set_num_threads(n as i32);
}

/// A training run of the tiny model on the bundled photos (class "toy", 64 px, no
/// checkpoints), writing to `out`; the caller sets its batch.
pub fn tiny_run(out: &Path, steps: u64) -> moslora::config::RunConfig {
    let mut c = moslora::config::RunConfig {
        model: tiny_model(),
        output: out.to_path_buf(),
        ..Default::default()
    };
    c.subject.images = repo().join("assets/subject");
    c.subject.class_noun = "toy".into();
    c.train.steps = steps;
    c.train.resolution = 64;
    c.train.checkpoint_every = 0;
    c
}

/// The two safetensors files hold the same tensors, bit for bit.
pub fn assert_same_tensors(a: &Path, b: &Path) {
    let (x, y) = (tensors(a), tensors(b));
    assert_eq!(x.len(), y.len());
    for (name, t) in &x {
        assert!(
            t.equal(&y[name]),
            "{name} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// The tiny SDXL pipeline in the layout of a real download.
pub fn tiny_model() -> PathBuf {
    fixtures().join("tiny-sdxl")
}

/// Reference tensors `ref/<name>.safetensors`.
pub fn reference(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join("ref").join(format!("{name}.safetensors"));
    assert!(
        path.exists(),
        "reference {} missing: run `make fixtures`",
        path.display()
    );
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Largest absolute difference, in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Assert `a` matches `b` within `tol` max abs error, printing the measured error.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let err = max_abs_diff(a, b);
    println!("{what}: max abs error {err:.3e} (tolerance {tol:.0e})");
    assert!(
        err <= tol,
        "{what}: max abs error {err:.3e} exceeds {tol:.0e}"
    );
}

/// What the cases of a table got wrong: every case runs, and the test then fails once, naming
/// every failing case and why.
#[derive(Default)]
pub struct Failures(Vec<String>);

impl Failures {
    pub fn new() -> Self {
        Self::default()
    }

    /// Note a failure of `case`, saying `why`, unless `ok`.
    pub fn check(&mut self, case: &str, ok: bool, why: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("{case}: {}", why()));
        }
    }

    /// Note a failure of `case` for every fragment that `text` lacks.
    pub fn contains_all(&mut self, case: &str, text: &str, fragments: &[&str]) {
        for f in fragments {
            self.check(case, text.contains(f), || {
                format!("{f:?} missing from: {text}")
            });
        }
    }

    /// Fail, listing every failure noted, if there was any.
    pub fn assert_none(&self) {
        assert!(
            self.0.is_empty(),
            "{} failure(s):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// The environment variable that asks the tests to remake the documentation's pictures
/// (`docs/screenshots/*.png`, `docs/app-*.png`); without it they go under `target/` only, and
/// a test run leaves the working tree as it was.
pub const SCREENSHOTS_ENV: &str = "MOSLORA_SCREENSHOTS";

/// Where a test writes documentation picture `rel` (a path under `docs/`): `docs/` itself
/// when `MOSLORA_SCREENSHOTS` is set (to anything but `0`), else `target/screenshots/`.
pub fn docs_picture(rel: &str) -> PathBuf {
    let asked = std::env::var(SCREENSHOTS_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
    let path = if asked {
        repo().join("docs").join(rel)
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("screenshots")
            .join(rel)
    };
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    path
}

/// A page for `tests/browser/screenshots.py`: opened at a laptop's width (1366 px) once
/// `ready` (JavaScript) is true; its screenshot goes to `docs/screenshots/<shot>` when asked
/// ([`docs_picture`]).
pub struct Page<'a> {
    pub name: &'a str,
    pub url: String,
    pub ready: &'a str,
    /// Texts the page must show.
    pub expect: Vec<String>,
    pub shot: &'a str,
}

/// Open the pages in headless Chromium, save their screenshots ([`docs_picture`]),
/// and fail if a page scrolls sideways at 1366 px or lacks a text it must show.
pub fn check_pages(pages: &[Page], scratch: &Path) -> serde_json::Value {
    let spec: Vec<serde_json::Value> = pages
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name, "url": p.url, "ready": p.ready, "expect": p.expect,
                "shot": docs_picture(&format!("screenshots/{}", p.shot)),
            })
        })
        .collect();
    let spec_path = scratch.join("pages.json");
    let report_path = scratch.join("pages-report.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let out = Command::new(python())
        .arg(repo().join("tests/browser/screenshots.py"))
        .arg("--spec")
        .arg(&spec_path)
        .arg("--out")
        .arg(&report_path)
        .output()
        .expect("running python");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{so}");
    assert!(out.status.success(), "screenshots.py failed:\n{so}\n{se}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let mut f = Failures::new();
    for p in pages {
        let r = &report[p.name];
        f.check(p.name, r["error"].is_null(), || format!("{}", r["error"]));
        f.check(
            p.name,
            r["scroll_width"].as_u64() <= r["client_width"].as_u64(),
            || {
                format!(
                    "scrolls sideways at 1366 px: scrollWidth {} > clientWidth {}",
                    r["scroll_width"], r["client_width"]
                )
            },
        );
        f.check(
            p.name,
            r["missing"].as_array().is_some_and(|m| m.is_empty()),
            || format!("missing {} in:\n{}", r["missing"], r["text"]),
        );
    }
    f.assert_none();
    report
}
