//! DoRA, LoHa and LoKr against peft itself: tests/reference/ref_families.py injects peft's
//! `LoraConfig(use_dora=True)`, `LoHaConfig` and `LoKrConfig` into every attention projection
//! of the tiny UNet and trains two AdamW steps with gradient clipping. On the same starting
//! factors and batch: the forward pass, the loss and the gradients of every factor in both
//! steps, the clipped norms, the factors after the two steps, and the weights merged from
//! them; DoRA's starting magnitude (the rows' norms of W0) as peft computes it, and LoHa's and
//! LoKr's starting factors as peft draws them on the same seed.

mod common;

use std::collections::HashMap;
use std::rc::Rc;

use common::{assert_close, reference, tiny_model};
use moslora::adapter::family::{self, Family};
use moslora::adapter::{self, AdapterConfig, MixerInit};
use moslora::config::Adam;
use moslora::schedule::config::SchedulerConfig;
use moslora::schedule::ddpm::DdpmSchedule;
use moslora::sdxl::config::{read_json, UNetConfig};
use moslora::sdxl::unet::UNet2DConditionModel;
use moslora::sdxl::weights::{SafetensorsSource, Weights};
use moslora::train::optimizer::AdamW;
use moslora::train::{loss, Batch};
use tch::{Device, Kind, Tensor};

const FAMILIES: [(&str, Family); 3] = [
    ("dora", Family::Dora),
    ("loha", Family::Loha),
    ("lokr", Family::Lokr),
];

fn unet() -> UNet2DConditionModel {
    let dir = tiny_model().join("unet");
    let cfg: UNetConfig = read_json(&dir.join("config.json")).unwrap();
    let src = SafetensorsSource::open(&[dir.join("diffusion_pytorch_model.safetensors")]).unwrap();
    let w = Weights::new(Rc::new(src), "unet", Kind::Float, Device::Cpu);
    UNet2DConditionModel::new(&w, &cfg).unwrap()
}

fn batch(r: &HashMap<String, Tensor>) -> Batch {
    Batch {
        mask: None,
        noisy: r["noisy"].shallow_clone(),
        target: r["target"].shallow_clone(),
        timesteps: r["timesteps"].shallow_clone(),
        hidden: r["hidden"].shallow_clone(),
        pooled: r["pooled"].shallow_clone(),
        time_ids: r["time_ids"].shallow_clone(),
        n_instance: 2,
        captions: Vec::new(),
    }
}

/// Largest absolute difference relative to the reference's largest magnitude.
fn rel_err(ours: &Tensor, theirs: &Tensor) -> f64 {
    let scale = theirs.abs().max().double_value(&[]).max(1e-12);
    common::max_abs_diff(ours, theirs) / scale
}

fn config(r: &HashMap<String, Tensor>, family: Family) -> AdapterConfig {
    AdapterConfig {
        rank: r["rank"].double_value(&[]) as i64,
        alpha: Some(r["alpha"].double_value(&[])),
        mixer: MixerInit::None,
        family,
        ..AdapterConfig::default()
    }
}

/// Attach the reference's starting factors to every targeted layer, through the same reader
/// adapter files go through (names and shapes checked).
fn attach(u: &mut UNet2DConditionModel, r: &HashMap<String, Tensor>, name: &str, f: Family) {
    let cfg = config(r, f);
    let layers = adapter::targeted(u, &cfg.targets);
    assert_eq!(layers.len(), 136, "tiny UNet attention projections");
    for l in layers {
        let prefix = format!("{name}.{}.", l.name);
        let parts: HashMap<String, Tensor> = r
            .iter()
            .filter_map(|(k, t)| {
                let part = k.strip_prefix(&prefix)?.strip_suffix(".initial")?;
                Some((part.to_string(), t.shallow_clone()))
            })
            .collect();
        let dims = Some((l.in_dim(), l.out_dim()));
        let mut a = family::from_parts(&cfg, parts, dims, &l.name).unwrap();
        a.set_trainable(true);
        family::install_boxed(l, a);
    }
}

#[test]
fn dora_loha_and_lokr_match_peft() {
    common::reference_threads();
    let r = reference("families");
    let sched = DdpmSchedule::new(
        &read_json::<SchedulerConfig>(&tiny_model().join("scheduler/scheduler_config.json"))
            .unwrap(),
    )
    .unwrap();
    let max_norm = r["max_grad_norm"].double_value(&[]);
    let lr = r["lr"].double_value(&[]);
    let hp = Adam {
        beta1: 0.9,
        beta2: 0.999,
        weight_decay: r["weight_decay"].double_value(&[]),
        eps: 1e-8,
    };
    let b = batch(&r);
    let bare = tch::no_grad(|| {
        unet().forward(
            &b.noisy,
            &b.timesteps.to_kind(Kind::Float),
            &b.hidden,
            &b.pooled,
            &b.time_ids,
        )
    });
    for (name, f) in FAMILIES {
        // The reference's adapters change the output, so that matching it means something.
        let changed = common::max_abs_diff(&bare, &r[&format!("{name}.forward")]);
        assert!(
            changed > 1e-3,
            "{name}: peft's adapters leave the output as it was"
        );
        let mut u = unet();
        attach(&mut u, &r, name, f);
        // Forward. Tolerance 1e-4 max abs error, as for every model part (f32 through the
        // whole UNet, outputs of order 1).
        let fwd = tch::no_grad(|| {
            u.forward(
                &b.noisy,
                &b.timesteps.to_kind(Kind::Float),
                &b.hidden,
                &b.pooled,
                &b.time_ids,
            )
        });
        assert_close(
            &format!("{name}: UNet forward vs peft"),
            &fwd,
            &r[&format!("{name}.forward")],
            1e-4,
        );
        let params = adapter::trained_parameters(&mut u);
        let mut opt = AdamW::new(params, hp.clone());
        let mut worst_grad = 0.0f64;
        for step in 0..2i64 {
            opt.zero_grad();
            let l = loss(&u, &b, &sched, None, 0.0);
            let ours = l.double_value(&[]);
            let theirs = r[&format!("{name}.losses")].double_value(&[step]);
            // Tolerance: 1e-5 relative, as the LoRA and MoSLoRA tests (losses of order 1).
            assert!(
                ((ours - theirs) / theirs).abs() < 1e-5,
                "{name}: loss at step {step}: {ours} vs {theirs}"
            );
            l.backward();
            let mut n = 0;
            for (pname, t) in adapter::trained_parameters(&mut u) {
                let key = format!("{name}.{}.grad{step}", pname.trim_end_matches(".weight"));
                let want = &r[&key];
                let e = rel_err(&t.grad(), want);
                worst_grad = worst_grad.max(e);
                // Tolerance: 1e-4 relative to the tensor's largest gradient, as for MoSLoRA:
                // the gradients run back through the whole f32 UNet, summed in another
                // order than torch's.
                assert!(
                    e < 1e-4,
                    "{name}: gradient of {pname} at step {step}: {e:.2e}"
                );
                n += 1;
            }
            let per_layer: usize = match f {
                Family::Dora => 3,
                Family::Loha => 4,
                _ => 0,
            };
            if per_layer > 0 {
                assert_eq!(n, 136 * per_layer, "{name}: trained tensors");
            }
            let norm = opt.clip_grad_norm(max_norm);
            let ref_norm = r[&format!("{name}.grad_norms")].double_value(&[step]);
            assert!(norm > max_norm, "{name}: clipping must act");
            // Tolerance: 1e-4 relative (a sum of squares over every factor).
            assert!(
                ((norm - ref_norm) / ref_norm).abs() < 1e-4,
                "{name}: grad norm {norm} vs {ref_norm}"
            );
            opt.step(lr);
        }
        // What two steps moved each tensor. Tolerance: 1e-3 of the tensor's largest move, as
        // for MoSLoRA. AdamW's first move of an element is lr g / (|g| + eps): where the
        // clipped gradient is near eps (1e-8) the move turns on the gradient's last digits
        // (LoKr's W1 has elements at 1.6e-8), so elements whose clipped gradient in either
        // step is under 10 eps are left out (beyond it the move errs by at most lr δ / (121 eps), δ the
        // gradient's error), and counted: at most 5 % of them (here DoRA 2.3 %, LoHa 3.2 %,
        // LoKr 0.9 %).
        let clip: Vec<f64> = (0..2)
            .map(|s| max_norm / r[&format!("{name}.grad_norms")].double_value(&[s]))
            .collect();
        let (mut worst, mut skipped, mut total) = (0.0f64, 0i64, 0i64);
        for (pname, t) in adapter::trained_parameters(&mut u) {
            let key = |what: &str| format!("{name}.{}.{what}", pname.trim_end_matches(".weight"));
            let (want, start) = (&r[&key("updated")], &r[&key("initial")]);
            let steady = (r[&key("grad0")].abs() * clip[0])
                .ge(10.0 * hp.eps)
                .logical_and(&(r[&key("grad1")].abs() * clip[1]).ge(10.0 * hp.eps));
            let moved = want - start;
            let ours = (t.detach() - start) * &steady;
            let e = rel_err(&ours, &(&moved * &steady));
            total += moved.numel() as i64;
            skipped += moved.numel() as i64 - steady.sum(Kind::Int64).int64_value(&[]);
            worst = worst.max(e);
            assert!(e < 1e-3, "{name}: {pname} after two AdamW steps: {e:.2e}");
        }
        assert!(
            skipped * 100 <= total * 5,
            "{name}: {skipped} of {total} elements have gradients near eps"
        );
        // peft's merged weights. Tolerance: 1e-5 relative to the weight's largest value (one
        // f32 product and sum per element, DoRA's norms included).
        let mut worst_merged = 0.0f64;
        adapter::merge_all(&mut u);
        for l in adapter::adapted(&mut u) {
            let want = &r[&format!("{name}.merged.{}", l.name)];
            let e = rel_err(&l.weight, want);
            worst_merged = worst_merged.max(e);
            assert!(e < 1e-5, "{name}: merged {}: {e:.2e}", l.name);
        }
        // Unmerging returns to the frozen weights.
        let mut fresh = unet();
        adapter::unmerge_all(&mut u);
        let before: HashMap<String, Tensor> = adapter::targeted(&mut fresh, &config(&r, f).targets)
            .into_iter()
            .map(|l| (l.name.clone(), l.weight.shallow_clone()))
            .collect();
        for l in adapter::adapted(&mut u) {
            let e = rel_err(&l.weight, &before[&l.name]);
            assert!(e < 1e-6, "{name}: unmerged {}: {e:.2e}", l.name);
        }
        println!(
            "{name}: worst gradient error {worst_grad:.1e} (tolerance 1e-4); moves of two AdamW \
             steps within {worst:.1e} (tolerance 1e-3; {skipped} of {total} elements with \
             gradients near eps left out); merged weights within {worst_merged:.1e} \
             (tolerance 1e-5)"
        );
    }
}

#[test]
fn dora_starts_at_peft_s_magnitude() {
    // peft sets the magnitude to the rows' norms of W0 + s B A while B is zero: W0's norms.
    let r = reference("families");
    let mut u = unet();
    let cfg = config(&r, Family::Dora);
    adapter::inject(&mut u, &cfg, 0).unwrap();
    let mut worst = 0.0f64;
    for l in adapter::adapted(&mut u) {
        let a = adapter::layer_adapter(l).unwrap();
        let m = a
            .tensors()
            .into_iter()
            .find(|(p, _)| *p == "lora_magnitude_vector")
            .unwrap()
            .1;
        let want = &r[&format!("dora.{}.lora_magnitude_vector.initial", l.name)];
        let e = rel_err(&m, want);
        worst = worst.max(e);
        // Tolerance: 1e-6 relative (a norm of up to 128 f32 values).
        assert!(e < 1e-6, "{}: magnitude {e:.2e}", l.name);
    }
    println!("DoRA starting magnitude vs peft: {worst:.1e} (tolerance 1e-6)");
}

#[test]
fn loha_and_lokr_start_as_peft_draws_them() {
    // ref_families.py seeds torch with 21 before peft injects its adapters; the factors peft
    // draws (all but the one it zeroes, made random there) are Kaiming-uniform draws of the
    // one stream, layer by layer in module order. moslora on seed 21 draws the same.
    let r = reference("families");
    let mut worst = 0.0f64;
    let mut checked = 0;
    for (name, f, drawn) in [
        (
            "loha",
            Family::Loha,
            &["hada_w1_a", "hada_w1_b", "hada_w2_a"][..],
        ),
        (
            "lokr",
            Family::Lokr,
            &["lokr_w2", "lokr_w2_a", "lokr_w2_b"][..],
        ),
    ] {
        let mut u = unet();
        adapter::inject(&mut u, &config(&r, f), 21).unwrap();
        for l in adapter::adapted(&mut u) {
            let a = adapter::layer_adapter(l).unwrap();
            for (part, t) in a.tensors() {
                if !drawn.contains(&part) {
                    continue;
                }
                let want = &r[&format!("{name}.{}.{part}.initial", l.name)];
                let e = common::max_abs_diff(&t, want);
                worst = worst.max(e);
                // Tolerance: 1e-6 absolute: the same generator stream, scaled by libtorch
                // either way (as the MoSLoRA initialisations are checked).
                assert!(
                    e < 1e-6,
                    "{name}: {}.{part} starts {e:.2e} from peft's",
                    l.name
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 136 * 3 + 136 + 96, "factors compared");
    println!("LoHa and LoKr starting factors vs peft's draws: {worst:.1e} (tolerance 1e-6)");
}
