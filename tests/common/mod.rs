//! Shared test helpers: fixture paths and reference tensors made by tests/reference/*.py.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use tch::Tensor;

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
