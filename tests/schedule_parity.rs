//! The samplers' schedules and the training noise process against diffusers
//! (tests/reference/ref_schedule.py): `EulerDiscreteScheduler` timesteps, sigmas,
//! init_noise_sigma, scale_model_input, step and a whole sampling loop; `DDPMScheduler`
//! alphas_cumprod and add_noise; `compute_snr` and min-SNR weights. Tolerance 1e-4 max abs
//! error throughout (most agree exactly: the same float32 operations in the same order).

mod common;

use std::collections::HashMap;

use common::{assert_close, reference, tiny_model};
use moslora::schedule::config::SchedulerConfig;
use moslora::schedule::ddpm::DdpmSchedule;
use moslora::schedule::euler::EulerDiscrete;
use moslora::schedule::sampler::Scheduler;
use moslora::sdxl::config::read_json;
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;
const STEPS: [usize; 7] = [50, 20, 30, 1, 7, 61, 1000];
const SPACINGS: [&str; 3] = ["leading", "trailing", "linspace"];
const STEP_INDICES: [usize; 4] = [0, 1, 25, 49];

fn config() -> SchedulerConfig {
    read_json(&tiny_model().join("scheduler/scheduler_config.json")).unwrap()
}

fn with_spacing(spacing: &str) -> SchedulerConfig {
    SchedulerConfig {
        timestep_spacing: spacing.into(),
        ..config()
    }
}

fn get<'a>(r: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    r.get(name)
        .unwrap_or_else(|| panic!("reference tensor {name} missing"))
}

#[test]
fn sdxl_config_is_what_the_sampler_expects() {
    let cfg = config();
    assert_eq!(cfg.beta_schedule, "scaled_linear");
    assert_eq!(cfg.timestep_spacing, "leading");
    assert_eq!(cfg.steps_offset, 1);
    assert_eq!(cfg.prediction_type, "epsilon");
}

#[test]
fn euler_timesteps_sigmas_and_init_noise_sigma_match_diffusers() {
    let r = reference("schedule");
    let fresh = EulerDiscrete::new(&config()).unwrap();
    assert_close(
        "euler: sigmas before set_timesteps",
        &Tensor::from_slice(fresh.sigmas()),
        get(&r, "euler.train_sigmas"),
        TOL,
    );
    for spacing in SPACINGS {
        for n in STEPS {
            let mut s = EulerDiscrete::new(&with_spacing(spacing)).unwrap();
            s.set_timesteps(n).unwrap();
            let key = format!("euler.{spacing}.{n}");
            let want_t = get(&r, &format!("{key}.timesteps"));
            let got_t = Tensor::from_slice(s.timesteps());
            assert_eq!(got_t.size(), want_t.size(), "{key}: number of timesteps");
            // Timesteps are what the UNet sees: they must agree exactly.
            assert!(got_t.equal(want_t), "{key}: timesteps {got_t} != {want_t}");
            assert_close(
                &format!("{key}: sigmas"),
                &Tensor::from_slice(s.sigmas()),
                get(&r, &format!("{key}.sigmas")),
                TOL,
            );
            let want = get(&r, &format!("{key}.init_noise_sigma")).double_value(&[0]);
            let err = (s.init_noise_sigma() - want).abs();
            println!("{key}: init_noise_sigma max abs error {err:.3e} (tolerance {TOL:.0e})");
            assert!(
                err <= TOL,
                "{key}: init_noise_sigma {} != {want}",
                s.init_noise_sigma()
            );
        }
    }
}

#[test]
fn euler_scale_and_step_match_diffusers() {
    let r = reference("schedule");
    let sample = get(&r, "euler.sample");
    let model_output = get(&r, "euler.model_output");
    let mut eps = EulerDiscrete::new(&config()).unwrap();
    eps.set_timesteps(50).unwrap();
    let v_cfg = SchedulerConfig {
        prediction_type: "v_prediction".into(),
        ..config()
    };
    let mut v = EulerDiscrete::new(&v_cfg).unwrap();
    v.set_timesteps(50).unwrap();
    for i in STEP_INDICES {
        let scaled = eps.scale_model_input(sample, i);
        assert_close(
            &format!("euler: scale_model_input {i}"),
            &scaled,
            get(&r, &format!("euler.scale.{i}")),
            TOL,
        );
        let prev = eps.step(model_output, i, sample);
        assert_close(
            &format!("euler: step {i}"),
            &prev,
            get(&r, &format!("euler.step.{i}")),
            TOL,
        );
        let prev = v.step(model_output, i, sample);
        assert_close(
            &format!("euler: v-prediction step {i}"),
            &prev,
            get(&r, &format!("euler.v.step.{i}")),
            TOL,
        );
    }
}

#[test]
fn euler_sampling_loop_matches_diffusers() {
    let r = reference("schedule");
    let noise = get(&r, "euler.loop.noise");
    for spacing in SPACINGS {
        // Through the trait, as a sampling loop that takes any sampler drives it.
        let mut euler = EulerDiscrete::new(&with_spacing(spacing)).unwrap();
        let s: &mut dyn Scheduler = &mut euler;
        s.set_timesteps(7).unwrap();
        let mut latents = noise * s.init_noise_sigma();
        let timesteps = s.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = s.scale_model_input(&latents, i);
            // The stand-in model of ref_schedule.py: eps(x, t) = tanh(x) * t / 1000.
            let eps = input.tanh() * (Tensor::from(t) / 1000.0);
            latents = s.step(&eps, i, &latents, None);
        }
        assert_close(
            &format!("euler: 7-step loop, {spacing}"),
            &latents,
            get(&r, &format!("euler.loop.{spacing}")),
            TOL,
        );
    }
}

#[test]
fn ddpm_add_noise_and_snr_match_diffusers() {
    let r = reference("schedule");
    let ddpm = DdpmSchedule::new(&config()).unwrap();
    assert_close(
        "ddpm: alphas_cumprod",
        &ddpm.alphas_cumprod,
        get(&r, "ddpm.alphas_cumprod"),
        TOL,
    );
    assert!(
        ddpm.alphas_cumprod.equal(get(&r, "ddpm.alphas_cumprod")),
        "alphas_cumprod not bit-identical"
    );
    let noisy = ddpm.add_noise(
        get(&r, "ddpm.x0"),
        get(&r, "ddpm.noise"),
        get(&r, "ddpm.timesteps"),
    );
    assert_close("ddpm: add_noise", &noisy, get(&r, "ddpm.add_noise"), TOL);
    let t = get(&r, "ddpm.snr_timesteps");
    assert_close("ddpm: snr", &ddpm.snr(t), get(&r, "ddpm.snr"), TOL);
    // SNR spans 1e-4..1e2: compare the weights, which are in [0, 1], absolutely too.
    assert_close(
        "ddpm: min-SNR weights (gamma 5)",
        &ddpm.min_snr_weights(t, 5.0),
        get(&r, "ddpm.min_snr_weights"),
        TOL,
    );
}

#[test]
fn ddpm_add_noise_takes_int32_timesteps_and_keeps_dtype() {
    let r = reference("schedule");
    let ddpm = DdpmSchedule::new(&config()).unwrap();
    let t32 = get(&r, "ddpm.timesteps").to_kind(Kind::Int);
    let x0 = get(&r, "ddpm.x0").to_kind(Kind::Double);
    let noisy = ddpm.add_noise(&x0, get(&r, "ddpm.noise"), &t32);
    assert_eq!(noisy.kind(), Kind::Double);
    assert_close(
        "ddpm: add_noise (f64, int32 t)",
        &noisy,
        get(&r, "ddpm.add_noise"),
        TOL,
    );
}

#[test]
fn bad_settings_are_refused() {
    for (field, cfg) in [
        (
            "beta_schedule",
            SchedulerConfig {
                beta_schedule: "cosine".into(),
                ..config()
            },
        ),
        (
            "timestep_spacing",
            SchedulerConfig {
                timestep_spacing: "uniform".into(),
                ..config()
            },
        ),
        (
            "prediction_type",
            SchedulerConfig {
                prediction_type: "flow".into(),
                ..config()
            },
        ),
    ] {
        let err = EulerDiscrete::new(&cfg)
            .err()
            .unwrap_or_else(|| panic!("{field} accepted"));
        assert!(err.to_string().contains(field), "{err}");
    }
    let mut s = EulerDiscrete::new(&config()).unwrap();
    assert!(s.set_timesteps(0).is_err());
    assert!(s.set_timesteps(1001).is_err());
}
