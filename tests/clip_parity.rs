//! The text encoders against transformers (tests/reference/ref_clip.py), loaded from the
//! real-download layout (`text_model.` prefix, stored `position_ids`).
//!
//! Tolerance: 1e-4 max abs error in float32 (the two sides run the same libtorch kernels; the
//! measured errors are printed).

mod common;

use std::collections::HashMap;
use std::rc::Rc;

use moslora::sdxl::clip::{ClipOutput, ClipTextModel};
use moslora::sdxl::config::{read_json, ClipTextConfig};
use moslora::sdxl::weights::{SafetensorsSource, Weights};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn load(name: &str, kind: Kind, eos_token_id: Option<i64>) -> (ClipTextModel, Weights) {
    let dir = common::tiny_model().join(name);
    let mut cfg: ClipTextConfig = read_json(&dir.join("config.json")).unwrap();
    if let Some(eos) = eos_token_id {
        cfg.eos_token_id = eos;
    }
    let source = SafetensorsSource::open(&[dir.join("model.safetensors")]).unwrap();
    let w = Weights::new(Rc::new(source), name, kind, Device::Cpu);
    let model = ClipTextModel::new(&w, &cfg, name == "text_encoder_2").unwrap();
    (model, w)
}

fn run(model: &ClipTextModel, r: &HashMap<String, Tensor>, key: &str) -> ClipOutput {
    tch::no_grad(|| model.forward(&r[&format!("{key}.input_ids")]))
}

fn check(name: &str, key: &str) {
    let r = common::reference("clip");
    let (model, w) = load(name, Kind::Float, None);
    // Every stored tensor is used, except the `position_ids` buffer (always arange).
    assert_eq!(
        w.unused(),
        vec!["text_model.embeddings.position_ids".to_string()]
    );

    let out = run(&model, &r, key);
    assert_eq!(out.hidden_states.len(), model.num_layers() + 1);
    let all = Tensor::stack(&out.hidden_states, 0);
    common::assert_close(
        &format!("{key} hidden_states (all)"),
        &all,
        &r[&format!("{key}.hidden_states")],
        TOL,
    );
    common::assert_close(
        &format!("{key} hidden_states[-2]"),
        out.penultimate(),
        &r[&format!("{key}.penultimate")],
        TOL,
    );
    common::assert_close(
        &format!("{key} last_hidden_state"),
        &out.last_hidden_state,
        &r[&format!("{key}.last_hidden_state")],
        TOL,
    );
    common::assert_close(
        &format!("{key} pooled"),
        &out.pooled,
        &r[&format!("{key}.pooled")],
        TOL,
    );
    match (&out.text_embeds, r.get(&format!("{key}.text_embeds"))) {
        (Some(got), Some(want)) => {
            common::assert_close(&format!("{key} text_embeds"), got, want, TOL)
        }
        (None, None) => {}
        (got, want) => panic!(
            "{key}: text_embeds present {} vs reference {}",
            got.is_some(),
            want.is_some()
        ),
    }

    // The non-legacy pooling rule (eos_token_id != 2): first position equal to it.
    let (model, _) = load(name, Kind::Float, Some(320));
    let out = run(&model, &r, key);
    common::assert_close(
        &format!("{key} pooled (eos_token_id 320)"),
        &out.pooled,
        &r[&format!("{key}.pooled_eos320")],
        TOL,
    );
}

#[test]
fn text_encoder_matches_transformers() {
    check("text_encoder", "te1");
}

#[test]
fn text_encoder_2_matches_transformers() {
    check("text_encoder_2", "te2");
}

/// Half-precision weights run end to end and stay near the float32 reference.
#[test]
fn half_precision_runs() {
    let r = common::reference("clip");
    for kind in [Kind::BFloat16, Kind::Half] {
        for (name, key) in [("text_encoder", "te1"), ("text_encoder_2", "te2")] {
            let (model, _) = load(name, kind, None);
            let out = run(&model, &r, key);
            assert_eq!(out.penultimate().kind(), kind);
            // Loose: bf16 keeps 8 bits of mantissa, and the activations here are O(1).
            let tol = if kind == Kind::BFloat16 { 0.1 } else { 0.02 };
            common::assert_close(
                &format!("{key} {kind:?} hidden_states[-2]"),
                out.penultimate(),
                &r[&format!("{key}.penultimate")],
                tol,
            );
            common::assert_close(
                &format!("{key} {kind:?} pooled"),
                &out.pooled,
                &r[&format!("{key}.pooled")],
                tol,
            );
        }
    }
}
