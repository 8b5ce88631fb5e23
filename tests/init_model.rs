//! `moslora init-model`: a random tiny SDXL that moslora and diffusers both load.

mod common;

use std::path::PathBuf;
use std::process::Command;

use moslora::schedule::sampler::SamplerKind;
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::{generate, GenerateOptions, RunOptions};

fn init(out: &PathBuf, seed: u64) {
    let status = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args([
            "init-model",
            "--preset",
            "tiny",
            "--seed",
            &seed.to_string(),
            "--force",
            "--out",
        ])
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn tiny_model_loads_in_moslora_and_diffusers() {
    let out = common::scratch("init");
    init(&out, 7);
    // Same tensor names as diffusers' own save of the same configs.
    for (component, file) in [
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
    ] {
        let ours = tch::Tensor::read_safetensors(out.join(component).join(file)).unwrap();
        let theirs = tch::Tensor::read_safetensors(
            common::fixtures()
                .join("tiny-sdxl-saved")
                .join(component)
                .join(file),
        )
        .unwrap();
        let mut a: Vec<_> = ours.iter().map(|(n, t)| (n.clone(), t.size())).collect();
        let mut b: Vec<_> = theirs.iter().map(|(n, t)| (n.clone(), t.size())).collect();
        a.sort();
        b.sort();
        assert_eq!(
            a, b,
            "{component}: names and shapes differ from diffusers' save"
        );
    }
    // moslora renders with it.
    let o = GenerateOptions {
        steps: 3,
        guidance: 5.0,
        width: 64,
        height: 64,
        seed: 0,
        sampler: SamplerKind::Euler,
    };
    let img = generate(
        &out,
        "a photo of sks dog",
        None,
        &o,
        RunOptions::default(),
        |_| {},
    )
    .unwrap();
    assert_eq!(img.size(), [3, 64, 64]);
    assert!(ModelDir::open(&out).is_ok());
    // diffusers and transformers read it: exact key sets, and a pipeline render.
    common::run_reference("check_pipeline_dir.py", &[&out]);
    // The same seed gives the same weights; another seed does not.
    let again = common::scratch("init2");
    init(&again, 7);
    let f = "unet/diffusion_pytorch_model.safetensors";
    assert_eq!(
        std::fs::read(out.join(f)).unwrap(),
        std::fs::read(again.join(f)).unwrap()
    );
    init(&again, 8);
    assert_ne!(
        std::fs::read(out.join(f)).unwrap(),
        std::fs::read(again.join(f)).unwrap()
    );
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&again).unwrap();
}

#[test]
fn init_model_refuses_to_overwrite() {
    let out = common::scratch("init-keep");
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["init-model", "--preset", "tiny", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    // Exit code 2: the invocation must change (another --out, or --force).
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_dir_all(&out).unwrap();
}
