//! The training objective, the batches and the learning-rate schedules against diffusers
//! (tests/reference/ref_training.py): min-SNR weighting, the prior-preservation loss and their
//! gradients as `train_dreambooth_lora_sdxl.py` computes them; the forward process and
//! `noise_offset` as diffusers' SDXL DreamBooth scripts make a batch; every step's learning
//! rate as `diffusers.optimization.get_scheduler` gives it.

mod common;

use std::collections::HashMap;
use std::rc::Rc;

use common::{assert_close, reference, tiny_model};
use moslora::adapter::{self, AdapterConfig, LowRankAdapter};
use moslora::config::RunConfig;
use moslora::schedule::config::SchedulerConfig;
use moslora::schedule::ddpm::DdpmSchedule;
use moslora::sdxl::config::{read_json, UNetConfig};
use moslora::sdxl::pipeline::PromptEmbeds;
use moslora::sdxl::unet::UNet2DConditionModel;
use moslora::sdxl::weights::{SafetensorsSource, Weights};
use moslora::train::dataset::Example;
use moslora::train::masks;
use moslora::train::{self, Batch, TrainData};
use tch::{Device, Kind, Tensor};

fn schedule() -> DdpmSchedule {
    let cfg: SchedulerConfig =
        read_json(&tiny_model().join("scheduler/scheduler_config.json")).unwrap();
    DdpmSchedule::new(&cfg).unwrap()
}

fn unet_with_reference_lora(r: &HashMap<String, Tensor>, prefix: &str) -> UNet2DConditionModel {
    let dir = tiny_model().join("unet");
    let cfg: UNetConfig = read_json(&dir.join("config.json")).unwrap();
    let src = SafetensorsSource::open(&[dir.join("diffusion_pytorch_model.safetensors")]).unwrap();
    let w = Weights::new(Rc::new(src), "unet", Kind::Float, Device::Cpu);
    let mut u = UNet2DConditionModel::new(&w, &cfg).unwrap();
    let layers = adapter::targeted(&mut u, &AdapterConfig::default().targets);
    assert_eq!(layers.len(), 136);
    for l in layers {
        let a = r[&format!("{prefix}.lora_A.{}", l.name)].shallow_clone();
        let b = r[&format!("{prefix}.lora_B.{}", l.name)].shallow_clone();
        let mut ad = LowRankAdapter::from_tensors(a, b, None, false, 4.0);
        ad.set_trainable(true);
        adapter::install(l, ad);
    }
    u
}

#[test]
fn min_snr_and_prior_preservation_losses_and_gradients_match_diffusers() {
    let r = reference("training");
    let mut u = unet_with_reference_lora(&r, "loss");
    let sched = schedule();
    let gamma = r["loss.snr_gamma"].double_value(&[]);
    let prior = r["loss.prior_weight"].double_value(&[]);
    let get = |k: &str| r[&format!("loss.{k}")].shallow_clone();
    let cases = [
        ("plain", None, 0.0, 4),
        ("snr", Some(gamma), 0.0, 4),
        ("prior", None, prior, 2),
        ("prior_snr", Some(gamma), prior, 2),
    ];
    let mut losses = Vec::new();
    for (case, snr, prior_weight, n_instance) in cases {
        let batch = Batch {
            noisy: get("noisy"),
            target: get("target"),
            timesteps: get("timesteps"),
            hidden: get("hidden"),
            pooled: get("pooled"),
            time_ids: get("time_ids"),
            n_instance,
            captions: Vec::new(),
            mask: None,
        };
        for (_, t) in adapter::trained_parameters(&mut u) {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let l = train::loss(&u, &batch, &sched, snr, prior_weight);
        let (ours, theirs) = (
            l.double_value(&[]),
            r[&format!("loss.{case}")].double_value(&[]),
        );
        let rel = ((ours - theirs) / theirs).abs();
        // Tolerance: 1e-5 relative (f32 losses of order 1 through the whole UNet).
        println!("{case}: loss {ours:.8} vs diffusers {theirs:.8} (relative error {rel:.1e}, tolerance 1e-5)");
        assert!(rel < 1e-5, "{case}: loss {ours} vs {theirs}");
        l.backward();
        let mut worst = 0.0f64;
        for (name, t) in adapter::trained_parameters(&mut u) {
            let key = format!("loss.{case}.{}.grad", name.trim_end_matches(".weight"));
            let want = &r[&key];
            let e = common::max_abs_diff(&t.grad(), want)
                / want.abs().max().double_value(&[]).max(1e-12);
            worst = worst.max(e);
            // Tolerance: 1e-4 relative to the tensor's largest gradient (backward through the
            // f32 UNet, summed in another order).
            assert!(
                e < 1e-4,
                "{case}: gradient of {name}: relative error {e:.2e}"
            );
        }
        println!("{case}: gradients of all 272 LoRA tensors within {worst:.1e} (tolerance 1e-4)");
        losses.push(ours);
    }
    // The four cases are four different objectives on this batch: a loss that ignored a
    // setting would equal another case's.
    for i in 0..losses.len() {
        for j in 0..i {
            assert!(
                ((losses[i] - losses[j]) / losses[j]).abs() > 1e-3,
                "cases {i} and {j} give the same loss"
            );
        }
    }
}

/// Masked loss (`train.masked_loss`) against tests/reference/masked_loss.py, which applies
/// sd-scripts' `apply_masked_loss` (background weight in pixel space, area interpolation to
/// the latent size, element-wise weights before the means) on the same batch and LoRA: our
/// latent weights from the same pixel masks, the loss and every gradient, with and without
/// min-SNR and prior preservation.
#[test]
fn masked_loss_and_gradients_match_the_python_reference() {
    let out = common::scratch("masked-loss").join("masked_loss.safetensors");
    common::run_reference("masked_loss.py", &[&common::fixtures(), &out]);
    let r = common::tensors(&out);
    let mut u = unet_with_reference_lora(&r, "masked");
    let sched = schedule();
    let get = |k: &str| r[&format!("masked.{k}")].shallow_clone();
    let background = get("background_weight").double_value(&[]);
    let gamma = get("snr_gamma").double_value(&[]);
    let prior = get("prior_weight").double_value(&[]);
    let pixels = get("pixel_mask");
    let weights = masks::weights(&masks::latent_mask(&pixels, (8, 8)), background);
    // Tolerance: 1e-6 absolute (means of 64 pixels in f32).
    assert_close(
        "latent mask weights",
        &weights,
        &get("latent_weights"),
        1e-6,
    );
    let cases = [
        ("plain", None, 0.0, 4),
        ("snr", Some(gamma), 0.0, 4),
        ("prior", None, prior, 2),
        ("prior_snr", Some(gamma), prior, 2),
    ];
    for (case, snr, prior_weight, n_instance) in cases {
        let mut batch = Batch {
            noisy: get("noisy"),
            target: get("target"),
            timesteps: get("timesteps"),
            hidden: get("hidden"),
            pooled: get("pooled"),
            time_ids: get("time_ids"),
            n_instance,
            captions: Vec::new(),
            mask: Some(weights.shallow_clone()),
        };
        for (_, t) in adapter::trained_parameters(&mut u) {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let l = train::loss(&u, &batch, &sched, snr, prior_weight);
        let (ours, theirs) = (l.double_value(&[]), get(case).double_value(&[]));
        let rel = ((ours - theirs) / theirs).abs();
        // Tolerance: 1e-5 relative, as the unmasked losses (f32 through the whole UNet).
        println!(
            "masked {case}: loss {ours:.8} vs reference {theirs:.8} (relative error {rel:.1e}, \
             tolerance 1e-5)"
        );
        assert!(rel < 1e-5, "masked {case}: loss {ours} vs {theirs}");
        l.backward();
        let mut worst = 0.0f64;
        for (name, t) in adapter::trained_parameters(&mut u) {
            let key = format!("masked.{case}.{}.grad", name.trim_end_matches(".weight"));
            let want = &r[&key];
            let e = common::max_abs_diff(&t.grad(), want)
                / want.abs().max().double_value(&[]).max(1e-12);
            worst = worst.max(e);
            // Tolerance: 1e-4 relative to the tensor's largest gradient, as unmasked.
            assert!(
                e < 1e-4,
                "masked {case}: gradient of {name}: relative error {e:.2e}"
            );
        }
        println!(
            "masked {case}: gradients of all 272 LoRA tensors within {worst:.1e} (tolerance 1e-4)"
        );
        // The mask changes the objective: unmasked, the same batch has another loss.
        batch.mask = None;
        let plain = train::loss(&u, &batch, &sched, snr, prior_weight).double_value(&[]);
        assert!(
            ((plain - ours) / ours).abs() > 1e-3,
            "masked {case}: the mask did not change the loss ({plain} vs {ours})"
        );
    }
}

fn examples(r: &HashMap<String, Tensor>, which: &str) -> Vec<Example> {
    let mean = &r[&format!("batch.{which}_mean")];
    let std = &r[&format!("batch.{which}_std")];
    let ids = &r[&format!("batch.{which}_ids")];
    (0..mean.size()[0])
        .map(|i| {
            let v: Vec<f32> = Vec::try_from(ids.get(i)).unwrap();
            Example {
                mean: mean.get(i),
                std: std.get(i),
                time_ids: v.try_into().unwrap(),
                caption: None,
                mask: None,
            }
        })
        .collect()
}

#[test]
fn batches_and_noise_offset_match_diffusers() {
    let r = reference("training");
    let embeds = |n: i64| PromptEmbeds {
        hidden: Tensor::full([1, 77, 64], n as f64, (Kind::Float, Device::Cpu)),
        pooled: Tensor::full([1, 32], n as f64, (Kind::Float, Device::Cpu)),
    };
    let data = TrainData {
        instance: examples(&r, "inst"),
        captions: Vec::new(),
        instance_prompt: embeds(1),
        class: Some((examples(&r, "cls"), embeds(2), 1.0)),
        scaling_factor: 0.13025,
        sampler: None,
        validation: Vec::new(),
    };
    let mut cfg = RunConfig {
        seed: 42,
        ..RunConfig::default()
    };
    cfg.train.batch_size = 2;
    let step = 3;
    assert_eq!(
        train::step_seed(cfg.seed, step),
        r["batch.step_seed"].int64_value(&[]),
        "the reference seeds step 3 of a run seeded 42 as moslora does"
    );
    let sched = schedule();
    let mut targets = Vec::new();
    for offset in ["0.0", "0.1"] {
        cfg.train.noise_offset = offset.parse().unwrap();
        let b = train::make_batch(&data, &sched, &cfg, step, Device::Cpu, Kind::Float);
        let want = |k: &str| &r[&format!("batch.{offset}.{k}")];
        assert!(
            b.timesteps.equal(want("timesteps")),
            "offset {offset}: timesteps"
        );
        assert!(
            b.time_ids.equal(want("time_ids")),
            "offset {offset}: time_ids"
        );
        // The same draws, combined the same way: the noise is exact; the noisy latents go
        // through sqrt(abar_t), which diffusers takes of float32 alphas_cumprod.
        // Tolerance: 1e-6 absolute on values of order 1.
        assert_close(
            &format!("offset {offset}: target noise"),
            &b.target,
            want("target"),
            0.0,
        );
        assert_close(
            &format!("offset {offset}: noisy latents"),
            &b.noisy,
            want("noisy"),
            1e-6,
        );
        assert_eq!(b.n_instance, 2);
        // Instance rows carry the instance prompt, class rows the class prompt.
        let rows: Vec<f64> = (0..4).map(|i| b.pooled.double_value(&[i, 0])).collect();
        assert_eq!(rows, [1.0, 1.0, 2.0, 2.0]);
        targets.push(b.target);
    }
    // The offset is one value per image and channel, of the size asked for.
    let shift = &targets[1] - &targets[0];
    let spread = (&shift - shift.mean_dim(&[2i64, 3][..], true, Kind::Float))
        .abs()
        .max()
        .double_value(&[]);
    assert!(spread < 1e-6, "offset varies over the image: {spread}");
    let size = shift.abs().max().double_value(&[]);
    assert!(
        size > 0.01 && size < 0.5,
        "offset of size {size} for noise_offset 0.1"
    );
}

#[test]
fn learning_rate_schedules_match_diffusers_get_scheduler() {
    let r = reference("training");
    let base = r["lr.base"].double_value(&[]);
    let mut runs = 0;
    let mut worst = 0.0f64;
    for (key, want) in &r {
        let Some(rest) = key.strip_prefix("lr.") else {
            continue;
        };
        if rest == "base" {
            continue;
        }
        let parts: Vec<&str> = rest.split('.').collect();
        let (name, steps, warmup) = (
            parts[0],
            parts[1].parse().unwrap(),
            parts[2].parse().unwrap(),
        );
        let mut cfg = RunConfig::default();
        cfg.train.lr_schedule = serde_json::from_value(serde_json::json!(name)).unwrap();
        cfg.train.steps = steps;
        cfg.train.warmup_steps = warmup;
        cfg.train.learning_rate = base;
        assert_eq!(want.size(), [steps as i64]);
        for step in 1..=steps {
            let ours = train::learning_rate(&cfg, step);
            let theirs = want.double_value(&[step as i64 - 1]);
            let e = (ours - theirs).abs() / base;
            worst = worst.max(e);
            // Tolerance: 1e-12 relative to the base rate: both are float64 arithmetic on the
            // same formula.
            assert!(
                e < 1e-12,
                "{name}, {steps} steps, {warmup} warm-up: step {step}: {ours} vs {theirs}"
            );
        }
        runs += 1;
    }
    // 4 schedules x 6 (steps, warm-up) pairs.
    assert_eq!(runs, 24, "schedule runs in the reference");
    println!("24 schedule runs, every step within {worst:.1e} of get_scheduler (tolerance 1e-12)");
}
