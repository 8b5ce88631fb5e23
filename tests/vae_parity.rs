//! The VAE against diffusers' `AutoencoderKL` on the tiny SDXL VAE (tests/reference/ref_vae.py):
//! encode (posterior mean, log-variance, std, a draw with given noise), decode, and the
//! training/pipeline scaling, each within 1e-4 max abs error in float32.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use common::{assert_close, reference, tiny_model};
use moslora::sdxl::config::{read_json, VaeConfig};
use moslora::sdxl::vae::{AutoencoderKL, DiagonalGaussian};
use moslora::sdxl::weights::{SafetensorsSource, Weights};
use tch::{Device, Kind, Tensor};

/// Max abs error allowed against diffusers, float32 on the CPU.
const TOL: f64 = 1e-4;

fn load(kind: Kind) -> (AutoencoderKL, Weights, Rc<SafetensorsSource>) {
    let dir = tiny_model().join("vae");
    let cfg: VaeConfig = read_json(&dir.join("config.json")).unwrap();
    let src = Rc::new(
        SafetensorsSource::open(&[dir.join("diffusion_pytorch_model.safetensors")]).unwrap(),
    );
    let w = Weights::new(src.clone(), "vae", kind, Device::Cpu);
    let vae = AutoencoderKL::new(&w, &cfg).unwrap();
    (vae, w, src)
}

fn get<'a>(r: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    r.get(name)
        .unwrap_or_else(|| panic!("reference tensor {name} missing"))
}

#[test]
fn every_tensor_in_the_file_is_used_once() {
    let (_, w, src) = load(Kind::Float);
    let used = w.used();
    let asked: BTreeSet<&str> = used.iter().map(String::as_str).collect();
    assert_eq!(asked.len(), used.len(), "a tensor was requested twice");
    let stored: BTreeSet<&str> = src.names().map(|(n, _)| n.as_str()).collect();
    let missing: Vec<_> = stored.difference(&asked).collect();
    let extra: Vec<_> = asked.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "in the file but never requested: {missing:?}"
    );
    assert!(extra.is_empty(), "requested but not in the file: {extra:?}");
    assert!(w.unused().is_empty());
    assert_eq!(used.len(), 180);
}

#[test]
fn encode_and_decode_match_diffusers() {
    let (vae, _, _) = load(Kind::Float);
    assert_eq!(vae.scaling_factor(), 0.13025);
    let r = reference("vae");
    for case in ["a", "b"] {
        let at = |n: &str| get(&r, &format!("{case}.{n}"));
        let post = tch::no_grad(|| vae.encode(at("x")));
        assert_close(
            &format!("{case}: posterior mean"),
            &post.mean,
            at("mean"),
            TOL,
        );
        assert_close(
            &format!("{case}: posterior logvar"),
            &post.logvar,
            at("logvar"),
            TOL,
        );
        assert_close(
            &format!("{case}: posterior std"),
            &post.std(),
            at("std"),
            TOL,
        );
        assert_close(
            &format!("{case}: posterior sample"),
            &post.sample(at("noise")),
            at("sample"),
            TOL,
        );
        assert!(post.mode().equal(&post.mean));
        let decoded = tch::no_grad(|| vae.decode(at("z")));
        assert_close(&format!("{case}: decode"), &decoded, at("decoded"), TOL);
    }
}

#[test]
fn latent_scaling_matches_training_script_and_pipeline() {
    let (vae, _, _) = load(Kind::Float);
    let r = reference("vae");
    let latents = tch::no_grad(|| vae.encode_latents(get(&r, "a.x"), Some(get(&r, "a.noise"))));
    assert_close(
        "encode_latents (sample * scaling)",
        &latents,
        get(&r, "a.latents"),
        TOL,
    );
    let mode = tch::no_grad(|| vae.encode_latents(get(&r, "a.x"), None));
    assert_close(
        "encode_latents (mode * scaling)",
        &mode,
        &(get(&r, "a.mean") * 0.13025),
        TOL,
    );
    let image = tch::no_grad(|| vae.decode_latents(get(&r, "a.latents")));
    assert_close(
        "decode_latents (latents / scaling)",
        &image,
        get(&r, "a.latents_decoded"),
        TOL,
    );
}

#[test]
fn other_weight_kinds_take_float_inputs() {
    // Inputs are cast to the weights' kind: double weights accept the float32 reference input.
    let (vae, _, _) = load(Kind::Double);
    let r = reference("vae");
    let decoded = tch::no_grad(|| vae.decode(get(&r, "b.z")));
    assert_eq!(decoded.kind(), Kind::Double);
    assert_close(
        "b: decode with f64 weights",
        &decoded,
        get(&r, "b.decoded"),
        TOL,
    );
}

#[test]
fn logvar_is_clamped_like_diffusers() {
    let mean = Tensor::zeros([1, 2, 1, 1], (Kind::Float, Device::Cpu));
    let logvar = Tensor::from_slice(&[50.0f32, -50.0]).reshape([1, 2, 1, 1]);
    let g = DiagonalGaussian::from_moments(&Tensor::cat(&[mean, logvar], 1));
    assert_eq!(
        Vec::<f32>::try_from(g.logvar.flatten(0, -1)).unwrap(),
        vec![20.0, -30.0]
    );
    let std = Vec::<f32>::try_from(g.std().flatten(0, -1)).unwrap();
    assert_eq!(std, vec![10f32.exp(), (-15f32).exp()]);
}
