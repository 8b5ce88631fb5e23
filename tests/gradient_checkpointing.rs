//! Gradient checkpointing (`train.gradient_checkpointing`) recomputes the UNet segment by
//! segment in the backward pass: the adapters' gradients must equal those of the plain
//! backward pass, on the tiny model, through every skip connection.

mod common;

use moslora::adapter::{self, AdapterConfig, MixerInit};
use moslora::schedule::config::SchedulerConfig;
use moslora::schedule::ddpm::DdpmSchedule;
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::{load_unet, RunOptions};
use moslora::sdxl::unet::UNet2DConditionModel;
use moslora::train::{self, Batch};
use tch::{Device, Kind, Tensor};

/// Only the order of floating-point additions differs (skip gradients are summed in another
/// order): relative to the largest gradient of each tensor.
const REL_TOL: f64 = 1e-5;

fn unet_with(mixer: MixerInit) -> UNet2DConditionModel {
    let dir = ModelDir::open(&common::tiny_model()).unwrap();
    let mut unet = load_unet(&dir, RunOptions::default()).unwrap();
    let cfg = AdapterConfig {
        mixer,
        ..AdapterConfig::default()
    };
    adapter::inject(&mut unet, &cfg, 7).unwrap();
    // B starts at zero, which would leave A and the mixer without gradient: give it values.
    // The global generator is locked while this test draws: see moslora::runtime::seeded.
    let _rng = moslora::runtime::seeded(3);
    for l in adapter::adapted(&mut unet) {
        let a = adapter::lowrank_mut(l).unwrap();
        tch::no_grad(|| {
            a.b.copy_(&(Tensor::randn_like(&a.b) * 0.1));
        });
    }
    unet
}

/// A batch of `n` latents of `h` x `w` (with `prior` class rows after the instance rows).
fn batch(n: i64, prior: i64, h: i64, w: i64) -> Batch {
    // The global generator is locked while this test draws: see moslora::runtime::seeded.
    let _rng = moslora::runtime::seeded(11);
    let total = n + prior;
    let f = (Kind::Float, Device::Cpu);
    Batch {
        noisy: Tensor::randn([total, 4, h, w], f),
        target: Tensor::randn([total, 4, h, w], f),
        timesteps: Tensor::from_slice(&[10i64, 400, 999, 250][..total as usize]),
        hidden: Tensor::randn([total, 77, 64], f),
        pooled: Tensor::randn([total, 32], f),
        time_ids: Tensor::from_slice(&[64f32, 64., 0., 0., 64., 64.])
            .unsqueeze(0)
            .repeat([total, 1]),
        n_instance: n,
        captions: Vec::new(),
        mask: None,
    }
}

fn gradients(
    unet: &mut UNet2DConditionModel,
    b: &Batch,
    snr: Option<f64>,
    checkpointing: bool,
) -> (f64, Vec<(String, Tensor)>) {
    let sched = DdpmSchedule::new(&SchedulerConfig::default()).unwrap();
    let params = adapter::trained_parameters(unet);
    for (_, p) in &params {
        let mut p = p.shallow_clone();
        p.zero_grad();
    }
    let loss = train::loss_backward(unet, b, &sched, snr, 0.5, checkpointing);
    let grads = params
        .iter()
        .map(|(n, p)| (n.clone(), p.grad().copy()))
        .collect();
    (loss.double_value(&[]), grads)
}

fn assert_same_gradients(mixer: MixerInit, b: &Batch, snr: Option<f64>) {
    let mut unet = unet_with(mixer);
    let (loss_plain, plain) = gradients(&mut unet, b, snr, false);
    let (loss_ckpt, ckpt) = gradients(&mut unet, b, snr, true);
    assert_eq!(loss_plain, loss_ckpt, "the loss itself must not change");
    assert_eq!(plain.len(), ckpt.len());
    let mut worst = 0f64;
    for ((name, g), (_, c)) in plain.iter().zip(&ckpt) {
        let scale = g.abs().max().double_value(&[]);
        assert!(scale > 0.0, "{name}: no gradient in the plain pass");
        let err = common::max_abs_diff(g, c) / scale;
        worst = worst.max(err);
        assert!(
            err <= REL_TOL,
            "{name}: relative gradient error {err:.2e} with checkpointing"
        );
    }
    println!(
        "{mixer:?}: {} gradients, worst relative error {worst:.2e}",
        plain.len()
    );
}

#[test]
fn checkpointed_gradients_equal_plain_ones_lora() {
    assert_same_gradients(MixerInit::None, &batch(2, 0, 8, 8), None);
}

#[test]
fn checkpointed_gradients_equal_plain_ones_moslora() {
    assert_same_gradients(MixerInit::Orthogonal, &batch(2, 0, 16, 16), None);
}

/// A latent that is not a multiple of the total stride (upsamplers resize to their skip),
/// prior-preservation rows and min-SNR weighting: the loss function is the training one.
#[test]
fn checkpointed_gradients_equal_plain_ones_odd_size_with_prior() {
    assert_same_gradients(MixerInit::Orthogonal, &batch(2, 2, 10, 14), Some(5.0));
}

/// A masked batch (`train.masked_loss`): the weights reach the recomputed backward pass too.
#[test]
fn checkpointed_gradients_equal_plain_ones_masked() {
    let mut b = batch(2, 2, 10, 14);
    b.mask = Some({
        // Held only while drawing: the adapters' initialisation takes the generator too.
        let _rng = moslora::runtime::seeded(12);
        Tensor::rand([4, 1, 10, 14], (Kind::Float, Device::Cpu))
    });
    assert_same_gradients(MixerInit::Orthogonal, &b, Some(5.0));
}

/// Adapters on the cross-attention only: the segments before the first adapted block get
/// no gradient and are skipped, the others still match.
#[test]
fn checkpointed_gradients_equal_plain_ones_partial_targets() {
    let dir = ModelDir::open(&common::tiny_model()).unwrap();
    let mut unet = load_unet(&dir, RunOptions::default()).unwrap();
    let cfg = AdapterConfig {
        targets: vec!["up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k".into()],
        ..AdapterConfig::default()
    };
    assert_eq!(adapter::inject(&mut unet, &cfg, 7).unwrap(), 1);
    let b = batch(2, 0, 8, 8);
    let (_, plain) = gradients(&mut unet, &b, None, false);
    let (_, ckpt) = gradients(&mut unet, &b, None, true);
    for ((name, g), (_, c)) in plain.iter().zip(&ckpt) {
        let scale = g.abs().max().double_value(&[]).max(1e-30);
        let err = common::max_abs_diff(g, c) / scale;
        assert!(err <= REL_TOL, "{name}: relative error {err:.2e}");
    }
}
