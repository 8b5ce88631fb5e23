//! The UNet against diffusers' `UNet2DConditionModel` on the tiny SDXL checkpoint
//! (references made by tests/reference/ref_unet.py).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use moslora::sdxl::config::{self, UNetConfig};
use moslora::sdxl::unet::UNet2DConditionModel;
use moslora::sdxl::weights::{SafetensorsSource, Weights};
use tch::{Device, Kind, Tensor};

/// f32 on the CPU, same weights and inputs: only summation order can differ from PyTorch
/// (measured: 0, the same libtorch kernels run). Tighter than 1e-4 on purpose: on these tiny
/// random weights a tanh-approximated GELU in the feed-forward is off by only 5e-5.
const TOL_F32: f64 = 1e-5;
/// Half-precision weights and activations: bf16 keeps about three significant digits, f16
/// about four; the tiny UNet's outputs are of order 1 and rounding accumulates over its layers.
const TOL_BF16: f64 = 0.1;
const TOL_F16: f64 = 0.02;

fn load(kind: Kind) -> (UNet2DConditionModel, Weights, Rc<SafetensorsSource>) {
    let dir = common::tiny_model().join("unet");
    let src = Rc::new(
        SafetensorsSource::open(&[dir.join("diffusion_pytorch_model.safetensors")]).unwrap(),
    );
    let w = Weights::new(src.clone(), "unet", kind, Device::Cpu);
    let cfg: UNetConfig = config::read_json(&dir.join("config.json")).unwrap();
    let unet = UNet2DConditionModel::new(&w, &cfg).unwrap();
    (unet, w, src)
}

fn run(unet: &UNet2DConditionModel, r: &HashMap<String, Tensor>, case: &str) -> Tensor {
    let get = |k: &str| &r[&format!("{case}.{k}")];
    tch::no_grad(|| {
        unet.forward(
            get("sample"),
            get("timesteps"),
            get("encoder_hidden_states"),
            get("text_embeds"),
            get("time_ids"),
        )
    })
}

#[test]
fn unet_matches_diffusers_f32() {
    let (unet, _, _) = load(Kind::Float);
    let r = common::reference("unet");
    // a: batch 2, 16x16, one timestep per sample.
    // b: batch 2, 10x14 (not a multiple of 4: explicit upsample sizes), one broadcast timestep.
    for case in ["a", "b"] {
        let out = run(&unet, &r, case);
        assert_eq!(out.kind(), Kind::Float);
        common::assert_close(
            &format!("unet case {case} (f32)"),
            &out,
            &r[&format!("{case}.out")],
            TOL_F32,
        );
    }
}

/// The f32 inputs are cast to the weights' dtype and the output comes back in it.
#[test]
fn unet_runs_in_half_precision() {
    let r = common::reference("unet");
    for (kind, tol) in [(Kind::BFloat16, TOL_BF16), (Kind::Half, TOL_F16)] {
        let (unet, _, _) = load(kind);
        for case in ["a", "b"] {
            let out = run(&unet, &r, case);
            assert_eq!(out.kind(), kind);
            let what = format!("unet case {case} ({kind:?})");
            common::assert_close(&what, &out, &r[&format!("{case}.out")], tol);
        }
    }
}

#[test]
fn unet_uses_every_tensor_in_the_file() {
    let (_, w, src) = load(Kind::Float);
    let used = w.used();
    let used_set: BTreeSet<String> = used.iter().cloned().collect();
    assert_eq!(used_set.len(), used.len(), "a tensor was requested twice");
    let stored: BTreeSet<String> = src.names().map(|(k, _)| k.clone()).collect();
    let missing: Vec<_> = stored.difference(&used_set).collect();
    let extra: Vec<_> = used_set.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "tensors in the file the model never asked for: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "tensors the model asked for that the file lacks: {extra:?}"
    );
    assert!(w.unused().is_empty());
    println!("unet: {} tensors, all used", used.len());
}

#[test]
fn attention_linears_in_module_order() {
    let (mut unet, _, _) = load(Kind::Float);
    let names: Vec<String> = unet
        .attention_linears_mut()
        .iter()
        .map(|l| l.name.clone())
        .collect();
    // Tiny config: transformer depth [1, 1, 2]; 2 attentions in down blocks 1 and 2, 3 in up
    // blocks 0 and 1, 1 in the mid block: (2 + 4 + 6 + 3 + 2) blocks x 2 attentions x 4 linears.
    assert_eq!(names.len(), 136);
    assert_eq!(
        names[0],
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    );
    assert_eq!(
        names[7],
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0"
    );
    // diffusers registers `up_blocks` before `mid_block`.
    assert_eq!(
        names[8 * 6],
        "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    );
    assert_eq!(
        names.last().unwrap(),
        "mid_block.attentions.0.transformer_blocks.1.attn2.to_out.0"
    );
    for n in &names {
        assert!(
            ["to_q", "to_k", "to_v", "to_out.0"]
                .iter()
                .any(|s| n.ends_with(&format!(".{s}"))),
            "{n}"
        );
    }
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len());
}
