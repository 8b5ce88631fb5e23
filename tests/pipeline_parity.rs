//! End to end against diffusers' StableDiffusionXLPipeline on the tiny model (fp32, CPU):
//! prompt embeddings, seeded initial noise, final latents, and the PNG itself.

mod common;

use std::process::Command;

use common::{assert_close, fixtures, mean_pixel_diff, read_png, reference, tiny_model};
use moslora::schedule::sampler::SamplerKind;
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::{Denoiser, GenerateOptions, RunOptions, TextEncoders};
use serde_json::Value;
use tch::Kind;

/// Parity tolerance for tensors: 1e-4 max abs error, as for every model part.
const TOL: f64 = 1e-4;

/// The reference cases (tests/reference/ref_pipeline.py's CASES): a plain classifier-free
/// guided render and one with a negative prompt and a non-square size. An empty or shortened
/// list fails here rather than letting the loops below pass on nothing.
fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("ref/pipeline.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = cases.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["cfg", "negative"], "reference cases");
    cases
}

fn options(case: &Value) -> GenerateOptions {
    GenerateOptions {
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance: case["guidance"].as_f64().unwrap(),
        width: case["width"].as_i64().unwrap(),
        height: case["height"].as_i64().unwrap(),
        seed: case["seed"].as_u64().unwrap(),
        sampler: SamplerKind::Euler,
    }
}

#[test]
fn pipeline_matches_diffusers_stage_by_stage() {
    let dir = ModelDir::open(&tiny_model()).unwrap();
    let opts = RunOptions::default();
    let text = TextEncoders::load(&dir, opts).unwrap();
    let den = Denoiser::load(&dir, opts).unwrap();
    let mut compared = 0;
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let r = reference(&format!("pipeline_{name}"));
        let o = options(&case);
        let cond = text.encode(case["prompt"].as_str().unwrap()).unwrap();
        let uncond = text
            .encode_negative(case["negative_prompt"].as_str(), &cond)
            .unwrap();
        assert_close(
            &format!("{name}: prompt embeds"),
            &cond.hidden,
            &r["prompt_embeds"],
            TOL,
        );
        assert_close(&format!("{name}: pooled"), &cond.pooled, &r["pooled"], TOL);
        assert_close(
            &format!("{name}: negative embeds"),
            &uncond.hidden,
            &r["negative_prompt_embeds"],
            TOL,
        );
        assert_close(
            &format!("{name}: negative pooled"),
            &uncond.pooled,
            &r["negative_pooled"],
            TOL,
        );
        let noise = den.initial_noise(o.seed, o.width, o.height).unwrap();
        // Same generator, same draws: bit-identical.
        assert!(
            noise.equal(&r["initial_noise"]),
            "{name}: initial noise differs from torch.randn"
        );
        let latents = den.sample(&cond, &uncond, &noise, &o, |_| {}).unwrap();
        assert_close(
            &format!("{name}: final latents"),
            &latents,
            &r["final_latents"],
            TOL,
        );
        let ours = den.decode(&latents).permute([1, 2, 0]).to_kind(Kind::Float);
        let theirs = read_png(&fixtures().join(format!("ref/pipeline_{name}.png")));
        let diff = mean_pixel_diff(&ours, &theirs);
        println!("{name}: mean abs pixel difference {diff:.4} (tolerance 1 level of 255)");
        assert!(
            diff < 1.0,
            "{name}: mean abs pixel difference {diff} >= 1/255"
        );
        compared += 1;
    }
    assert_eq!(compared, 2, "every reference case compared");
}

#[test]
fn generate_command_writes_the_diffusers_png() {
    let case = &cases()[0];
    let out = std::env::temp_dir().join(format!("moslora-generate-{}.png", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["generate", "--model"])
        .arg(tiny_model())
        .args(["--prompt", case["prompt"].as_str().unwrap()])
        .args([
            "--seed",
            &case["seed"].to_string(),
            "--steps",
            &case["steps"].to_string(),
        ])
        .args(["--guidance", &case["guidance"].to_string()])
        .args([
            "--width",
            &case["width"].to_string(),
            "--height",
            &case["height"].to_string(),
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let ours = read_png(&out);
    let theirs = read_png(&fixtures().join("ref/pipeline_cfg.png"));
    let diff = mean_pixel_diff(&ours, &theirs);
    println!("generate: mean abs pixel difference {diff:.4} (tolerance 1 level of 255)");
    assert!(diff < 1.0, "mean abs pixel difference {diff} >= 1/255");
    std::fs::remove_file(&out).unwrap();
}
