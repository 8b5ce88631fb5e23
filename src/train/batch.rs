//! One step's batch: examples, posterior samples, noise and timesteps, every draw from a
//! generator seeded with (run seed, step), so a resumed run draws what the uninterrupted one
//! would have.

use tch::{Device, Kind, Tensor};

use super::data::TrainData;
use super::dataset::Example;
use crate::config::RunConfig;
use crate::schedule::ddpm::DdpmSchedule;

/// One training batch, ready for the UNet.
#[derive(Debug)]
pub struct Batch {
    /// x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    pub noisy: Tensor,
    /// eps
    pub target: Tensor,
    /// (B,) int64
    pub timesteps: Tensor,
    pub hidden: Tensor,
    pub pooled: Tensor,
    pub time_ids: Tensor,
    /// The first `n_instance` rows are subject photos; the rest class images.
    pub n_instance: i64,
}

/// The seed of step `step` of a run seeded `seed`.
pub fn step_seed(seed: u64, step: u64) -> i64 {
    let s = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(step.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    (s >> 1) as i64
}

/// Draw the examples, latent samples, noise and timesteps of one step.
pub fn make_batch(
    data: &TrainData,
    sched: &DdpmSchedule,
    cfg: &RunConfig,
    step: u64,
    device: Device,
    kind: Kind,
) -> Batch {
    let _rng = crate::runtime::seeded(step_seed(cfg.seed, step));
    let b = cfg.train.batch_size;
    let pick = |examples: &[Example], n: i64| -> (Tensor, Tensor) {
        let idx = Tensor::randint(examples.len() as i64, [n], (Kind::Int64, Device::Cpu));
        let mut lat = Vec::new();
        let mut ids = Vec::new();
        for i in 0..n {
            let e = &examples[idx.int64_value(&[i]) as usize];
            // Sample the cached posterior afresh each step, as diffusers does with cached latents.
            let eps = Tensor::randn_like(&e.mean);
            lat.push(&e.mean + &e.std * eps);
            ids.push(Tensor::from_slice(&e.time_ids));
        }
        (
            Tensor::cat(&lat, 0) * data.scaling_factor,
            Tensor::stack(&ids, 0),
        )
    };
    let (mut x0, mut time_ids) = pick(&data.instance, b);
    let mut hidden = data.instance_prompt.hidden.repeat([b, 1, 1]);
    let mut pooled = data.instance_prompt.pooled.repeat([b, 1]);
    if let Some((class, embeds, _)) = &data.class {
        let (cx, cids) = pick(class, b);
        x0 = Tensor::cat(&[x0, cx], 0);
        time_ids = Tensor::cat(&[time_ids, cids], 0);
        hidden = Tensor::cat(&[hidden, embeds.hidden.repeat([b, 1, 1])], 0);
        pooled = Tensor::cat(&[pooled, embeds.pooled.repeat([b, 1])], 0);
    }
    let n = x0.size()[0];
    let mut noise = Tensor::randn_like(&x0);
    if cfg.train.noise_offset != 0.0 {
        let shape = [n, x0.size()[1], 1, 1];
        noise += Tensor::randn(shape, (Kind::Float, Device::Cpu)) * cfg.train.noise_offset;
    }
    let timesteps = Tensor::randint(sched.num_train_timesteps, [n], (Kind::Int64, Device::Cpu));
    let noisy = sched.add_noise(&x0, &noise, &timesteps);
    Batch {
        noisy: noisy.to_device(device).to_kind(kind),
        target: noise.to_device(device),
        timesteps: timesteps.to_device(device),
        hidden: hidden.to_device(device).to_kind(kind),
        pooled: pooled.to_device(device).to_kind(kind),
        time_ids: time_ids.to_device(device).to_kind(kind),
        n_instance: b,
    }
}
