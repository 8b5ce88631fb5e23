//! MoSLoRA against an independent reference: tests/reference/ref_moslora.py, a torch module
//! written from the paper and the authors' patched peft (an `nn.Linear(r, r, bias=False)`
//! between `lora_A` and `lora_B`), put in every attention projection of the tiny UNet. For each
//! mixer initialisation: the forward pass, the gradients of A, M and B in two steps, the
//! clipped gradient norms and the factors after two AdamW steps. And the initialisations
//! themselves against `torch.nn.init` on the same seeds.

mod common;

use std::collections::HashMap;
use std::rc::Rc;

use common::{assert_close, reference, tiny_model};
use moslora::adapter::{self, lowrank, AInit, AdapterConfig, LowRankAdapter, MixerInit};
use moslora::config::Adam;
use moslora::schedule::config::SchedulerConfig;
use moslora::schedule::ddpm::DdpmSchedule;
use moslora::sdxl::config::{read_json, UNetConfig};
use moslora::sdxl::unet::UNet2DConditionModel;
use moslora::sdxl::weights::{SafetensorsSource, Weights};
use moslora::train::optimizer::AdamW;
use moslora::train::{loss, Batch};
use tch::{Device, Kind, Tensor};

const INITS: [(&str, MixerInit); 6] = [
    ("zero", MixerInit::Zero),
    ("identity", MixerInit::Identity),
    ("kaiming", MixerInit::Kaiming),
    ("orthogonal", MixerInit::Orthogonal),
    ("normal", MixerInit::Normal),
    ("butterfly", MixerInit::Butterfly),
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
        noisy: r["noisy"].shallow_clone(),
        target: r["target"].shallow_clone(),
        timesteps: r["timesteps"].shallow_clone(),
        hidden: r["hidden"].shallow_clone(),
        pooled: r["pooled"].shallow_clone(),
        time_ids: r["time_ids"].shallow_clone(),
        n_instance: 2,
        captions: Vec::new(),
        mask: None,
    }
}

/// Largest absolute difference relative to the reference's largest magnitude.
fn rel_err(ours: &Tensor, theirs: &Tensor) -> f64 {
    let scale = theirs.abs().max().double_value(&[]).max(1e-12);
    common::max_abs_diff(ours, theirs) / scale
}

/// Our name of a trained tensor (`<module>.lora_A.weight`) as the reference's key part.
fn reference_key(init: &str, name: &str, what: &str) -> String {
    format!("{init}.{}.{what}", name.trim_end_matches(".weight"))
}

/// Attach the reference's starting factors (A, mixer, B) to every targeted layer.
fn attach(u: &mut UNet2DConditionModel, r: &HashMap<String, Tensor>, init: &str) -> usize {
    let layers = adapter::targeted(u, &AdapterConfig::default().targets);
    let n = layers.len();
    for l in layers {
        let get = |part: &str| r[&format!("{init}.{}.{part}.initial", l.name)].shallow_clone();
        let mut ad = LowRankAdapter::from_tensors(
            get("lora_A"),
            get("lora_B"),
            Some(get("lora_AB")),
            init != "butterfly",
            4.0,
        );
        ad.set_trainable(true);
        adapter::install(l, ad);
    }
    n
}

#[test]
fn moslora_matches_the_reference_for_every_mixer_init() {
    common::reference_threads();
    let r = reference("moslora");
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
    for (init, how) in INITS {
        let mut u = unet();
        assert_eq!(
            attach(&mut u, &r, init),
            136,
            "tiny UNet attention projections"
        );
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
            &format!("{init}: MoSLoRA UNet forward vs reference"),
            &fwd,
            &r[&format!("{init}.forward")],
            1e-4,
        );
        let params = adapter::trained_parameters(&mut u);
        let per_layer = if how.trained() { 3 } else { 2 };
        assert_eq!(params.len(), 136 * per_layer, "{init}: trained tensors");
        let mut opt = AdamW::new(params, hp.clone());
        let mut worst_grad = [0.0f64; 3];
        for step in 0..2i64 {
            opt.zero_grad();
            let l = loss(&u, &b, &sched, None, 0.0);
            let ours = l.double_value(&[]);
            let theirs = r[&format!("{init}.losses")].double_value(&[step]);
            // Tolerance: 1e-5 relative, as the LoRA test (losses of order 1, f32).
            assert!(
                ((ours - theirs) / theirs).abs() < 1e-5,
                "{init}: loss at step {step}: {ours} vs {theirs}"
            );
            l.backward();
            for (name, t) in adapter::trained_parameters(&mut u) {
                let want = &r[&reference_key(init, &name, &format!("grad{step}"))];
                let got = t.grad();
                let e = rel_err(&got, want);
                let slot = ["lora_A", "lora_AB", "lora_B"]
                    .iter()
                    .position(|p| name.contains(&format!(".{p}.")))
                    .unwrap();
                worst_grad[slot] = worst_grad[slot].max(e);
                // Tolerance: 1e-4 relative to the tensor's largest gradient: the gradients run
                // back through the whole f32 UNet, summed in another order than torch's.
                assert!(
                    e < 1e-4,
                    "{init}: gradient of {name} at step {step}: {e:.2e}"
                );
                if init == "zero" && step == 0 && !name.contains(".lora_AB.") {
                    // While it is zero, the mixer blocks A's and B's gradients exactly (the
                    // first step moves it, since B is not zero here).
                    assert_eq!(want.abs().max().double_value(&[]), 0.0);
                    assert_eq!(got.abs().max().double_value(&[]), 0.0, "{name}");
                }
            }
            let norm = opt.clip_grad_norm(max_norm);
            let ref_norm = r[&format!("{init}.grad_norms")].double_value(&[step]);
            assert!(
                norm > max_norm,
                "{init}: the norm {norm} must exceed {max_norm} for clipping to act"
            );
            // Tolerance: 1e-4 relative (a sum of squares over 136 x 3 tensors).
            assert!(
                ((norm - ref_norm) / ref_norm).abs() < 1e-4,
                "{init}: grad norm {norm} vs {ref_norm}"
            );
            opt.step(lr);
        }
        // What two steps moved each tensor, ours against the reference's. Tolerance: 1e-3 of
        // the tensor's largest move. AdamW divides each gradient by its running RMS, so the
        // gradients' 1e-5 (relative to a tensor's largest) can grow in elements whose gradient
        // is small; the moves are of the order of the learning rate (2e-3 here), so 1e-3 of
        // them is about 2e-6 in absolute terms. The zero mixer's values are its moves alone.
        let mut worst = 0.0f64;
        for (name, t) in adapter::trained_parameters(&mut u) {
            let want = &r[&reference_key(init, &name, "updated")];
            let start = &r[&reference_key(init, &name, "initial")];
            let moved = want - start;
            assert!(
                moved.abs().max().double_value(&[]) > 0.1 * lr,
                "{init}: {name} did not move in the reference"
            );
            let e = rel_err(&(t.detach() - start), &moved);
            worst = worst.max(e);
            assert!(
                e < 1e-3,
                "{init}: {name} after two AdamW steps: {e:.2e} of its move"
            );
        }
        // A fixed mixer stays what it was.
        if !how.trained() {
            for l in adapter::adapted(&mut u) {
                let m = adapter::lowrank(l).unwrap().mixer.as_ref().unwrap();
                let want = &r[&format!("{init}.{}.lora_AB.initial", l.name)];
                assert!(m.equal(want), "{init}: the fixed mixer moved");
            }
        }
        println!(
            "{init}: worst gradient errors A {:.1e}, M {:.1e}, B {:.1e} (tolerance 1e-4); \
             moves of two AdamW steps within {worst:.1e} (tolerance 1e-3)",
            worst_grad[0], worst_grad[1], worst_grad[2]
        );
    }
}

#[test]
fn mixer_and_a_initialisations_are_torch_nn_init_draws() {
    let r = reference("moslora");
    let mut checked = 0;
    for r_ in [4i64, 8] {
        for (s, (name, how)) in [
            ("zero", MixerInit::Zero),
            ("identity", MixerInit::Identity),
            ("kaiming", MixerInit::Kaiming),
            ("orthogonal", MixerInit::Orthogonal),
            ("normal", MixerInit::Normal),
            ("butterfly", MixerInit::Butterfly),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 100 + 10 * r_ + s as i64;
            let want = &r[&format!("init.{name}.r{r_}.seed{seed}")];
            let got = {
                let _rng = moslora::runtime::seeded(seed);
                lowrank::init_mixer(r_, how).unwrap().unwrap()
            };
            // Tolerance: 1e-6 absolute: the same generator stream, with the scaling (and for
            // the orthogonal init the QR decomposition) computed by libtorch either way.
            assert_close(
                &format!("mixer init {name} (rank {r_}) vs torch.nn.init"),
                &got,
                want,
                1e-6,
            );
            checked += 1;
        }
        for (s, (name, how)) in [("kaiming", AInit::Kaiming), ("gaussian", AInit::Gaussian)]
            .into_iter()
            .enumerate()
        {
            let seed = 200 + 10 * r_ + s as i64;
            let want = &r[&format!("init.a_{name}.r{r_}.in24.seed{seed}")];
            let got = {
                let _rng = moslora::runtime::seeded(seed);
                lowrank::init_a(24, r_, how).unwrap()
            };
            assert_close(
                &format!("A init {name} (rank {r_}) vs torch.nn.init"),
                &got,
                want,
                1e-6,
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 16);
}
