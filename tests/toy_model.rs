//! The toy world's pretraining: a few steps lower both losses, and the folder it writes is a
//! diffusers folder that diffusers renders exactly as moslora does (same token ids,
//! embeddings, final latents and pixels).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_close, max_abs_diff};
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::{Denoiser, GenerateOptions, RunOptions, TextEncoders};
use moslora::toyworld::pretrain::{pretrain, PretrainOptions, PretrainProgress, Recipe};
use tch::{Kind, Tensor};

/// Tensors: 1e-4 max abs error, as for every model part.
const TOL: f64 = 1e-4;
/// Pixels: mean absolute difference at most half a level of 255.
const PIXEL_TOL: f64 = 0.5;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python(script: &str, args: &[&Path]) {
    let py = repo().join(".venv/bin/python");
    let out = Command::new(&py)
        .arg(repo().join("tests/reference").join(script))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", py.display()));
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_png(path: &Path) -> Tensor {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw())
        .reshape([h as i64, w as i64, 3])
        .to_kind(Kind::Float)
}

/// Render `model` with diffusers and with moslora, and compare stage by stage.
fn renders_as_diffusers_does(model: &Path) {
    let model = model.to_path_buf();
    let out = tempfile_dir("toy-ref");
    python("check_toy_model.py", &[&model, &out]);
    let r: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(out.join("toy.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("toy.json")).unwrap()).unwrap();
    let size = spec["size"].as_i64().unwrap();
    let cases = spec["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3, "every case must be checked");
    let dir = ModelDir::open(&model).unwrap();
    let opts = RunOptions::default();
    let text = TextEncoders::load(&dir, opts).unwrap();
    let den = Denoiser::load(&dir, opts).unwrap();
    for (i, case) in cases.iter().enumerate() {
        let prompt = case["prompt"].as_str().unwrap();
        let (ids1, ids2) = text.token_ids(prompt).unwrap();
        assert_eq!(
            max_abs_diff(&ids1, &r[&format!("{i}.ids1")]),
            0.0,
            "{prompt}: ids 1"
        );
        assert_eq!(
            max_abs_diff(&ids2, &r[&format!("{i}.ids2")]),
            0.0,
            "{prompt}: ids 2"
        );
        let cond = text.encode(prompt).unwrap();
        assert_close(
            &format!("{prompt}: embeds"),
            &cond.hidden,
            &r[&format!("{i}.prompt_embeds")],
            TOL,
        );
        assert_close(
            &format!("{prompt}: pooled"),
            &cond.pooled,
            &r[&format!("{i}.pooled")],
            TOL,
        );
        let o = GenerateOptions {
            steps: case["steps"].as_u64().unwrap() as usize,
            guidance: case["guidance"].as_f64().unwrap(),
            width: size,
            height: size,
            seed: case["seed"].as_u64().unwrap(),
        };
        let noise = den.initial_noise(o.seed, size, size).unwrap();
        let lat = den
            .sample(&cond, &cond.zeros_like(), &noise, &o, |_| {})
            .unwrap();
        assert_close(
            &format!("{prompt}: final latents"),
            &lat,
            &r[&format!("{i}.latents")],
            TOL,
        );
        let ours = den.decode(&lat).permute([1, 2, 0]).to_kind(Kind::Float);
        let theirs = read_png(&out.join(format!("toy_{i}.png")));
        let diff = (&ours - &theirs).abs().mean(Kind::Double).double_value(&[]);
        println!("{prompt}: mean pixel difference {diff:.4} (tolerance {PIXEL_TOL})");
        assert!(diff <= PIXEL_TOL, "{prompt}: pixels differ by {diff:.4}");
    }
}

fn tempfile_dir(name: &str) -> PathBuf {
    let d = repo()
        .join("target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[derive(Default)]
struct Losses {
    stage: String,
    vae: Vec<f64>,
    unet: Vec<f64>,
}

impl PretrainProgress for Losses {
    fn stage(&mut self, name: &str, _total: u64, _done: u64) {
        self.stage = name.to_string();
    }
    fn step(&mut self, _step: u64, loss: f64) {
        match self.stage.as_str() {
            "VAE" => self.vae.push(loss),
            "UNet" => self.unet.push(loss),
            _ => {}
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn a_few_pretraining_steps_lower_both_losses_and_diffusers_renders_the_folder() {
    let dir = tempfile_dir("pretrain");
    let recipe = Recipe {
        vae_steps: 40,
        vae_batch: 4,
        unet_steps: 60,
        unet_batch: 8,
        unet_warmup: 10,
        pictures: 64,
        ..Recipe::default()
    };
    let o = PretrainOptions {
        out: dir.join("model"),
        recipe,
        checkpoint_every: 1000,
        dtype: Kind::Float,
        preview: false,
    };
    let mut losses = Losses::default();
    pretrain(&o, &mut losses).unwrap();
    let (v, u) = (&losses.vae, &losses.unet);
    assert_eq!((v.len(), u.len()), (40, 60));
    let (v0, v1) = (mean(&v[..8]), mean(&v[32..]));
    let (u0, u1) = (mean(&u[..12]), mean(&u[48..]));
    println!("VAE reconstruction MSE {v0:.4} -> {v1:.4}; UNet epsilon MSE {u0:.4} -> {u1:.4}");
    assert!(v1 < 0.7 * v0, "VAE loss {v0:.4} -> {v1:.4}");
    assert!(u1 < 0.9 * u0, "UNet loss {u0:.4} -> {u1:.4}");
    // The folder is complete, loads like any SDXL folder, and diffusers renders it as we do.
    ModelDir::open(&o.out).unwrap();
    renders_as_diffusers_does(&o.out);
}
