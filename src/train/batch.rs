//! One step's batch: examples, posterior samples, noise and timesteps, every draw from a
//! generator seeded with (run seed, step), so a resumed run draws what the uninterrupted one
//! would have. A batch holds pictures of one bucket (one size), and each photo comes with its
//! own caption when it has one.

use tch::{Device, Kind, Tensor};

use super::data::TrainData;
use super::dataset::Example;
use crate::config::RunConfig;
use crate::schedule::ddpm::DdpmSchedule;
use crate::sdxl::pipeline::PromptEmbeds;

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
    /// The caption of each subject row (`TrainData::captions`; None: the run's prompt).
    pub captions: Vec<Option<usize>>,
    /// (B, 1, h, w) f32: the loss weight of each latent pixel of each row (masked loss,
    /// [`super::masks`]): 1 on the subject, `train.mask_background_weight` on the background,
    /// 1 on rows without a mask and on class rows. None: no row is masked.
    pub mask: Option<Tensor>,
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
    // Draw `n` of `examples` among the indices `among` (uniformly, with replacement).
    let pick = |examples: &[Example], among: &[usize], n: i64| -> (Tensor, Tensor, Vec<usize>) {
        let idx = Tensor::randint(among.len() as i64, [n], (Kind::Int64, Device::Cpu));
        let mut lat = Vec::new();
        let mut ids = Vec::new();
        let mut picked = Vec::new();
        for i in 0..n {
            let k = among[idx.int64_value(&[i]) as usize];
            let e = &examples[k];
            // Sample the cached posterior afresh each step, as diffusers does with cached latents.
            let eps = Tensor::randn_like(&e.mean);
            lat.push(&e.mean + &e.std * eps);
            ids.push(Tensor::from_slice(&e.time_ids));
            picked.push(k);
        }
        (
            Tensor::cat(&lat, 0) * data.scaling_factor,
            Tensor::stack(&ids, 0),
            picked,
        )
    };
    // One bucket per batch: with several, the step first draws an example of the whole set
    // (so a bucket comes up as often as it has pictures) and takes the batch from its bucket.
    // With one (square crops) nothing extra is drawn, so those runs draw what they always did.
    let groups = super::buckets::groups(&data.instance);
    let bucket = if groups.len() > 1 {
        let first = Tensor::randint(data.instance.len() as i64, [1], (Kind::Int64, Device::Cpu));
        let first = first.int64_value(&[0]) as usize;
        groups
            .iter()
            .position(|g| g.contains(&first))
            .expect("in a group")
    } else {
        0
    };
    let (mut x0, mut time_ids, picked) = pick(&data.instance, &groups[bucket], b);
    let (mut hidden, mut pooled) = if data.captions.is_empty() {
        (
            data.instance_prompt.hidden.repeat([b, 1, 1]),
            data.instance_prompt.pooled.repeat([b, 1]),
        )
    } else {
        let embeds: Vec<&PromptEmbeds> = picked
            .iter()
            .map(|&k| prompt_of(data, data.instance[k].caption))
            .collect();
        (
            Tensor::cat(&embeds.iter().map(|e| &e.hidden).collect::<Vec<_>>(), 0),
            Tensor::cat(&embeds.iter().map(|e| &e.pooled).collect::<Vec<_>>(), 0),
        )
    };
    let captions = picked.iter().map(|&k| data.instance[k].caption).collect();
    // Nothing is drawn for the masks: a run draws the same with masks as without.
    let masked = picked.iter().any(|&k| data.instance[k].mask.is_some());
    let mut mask = (cfg.train.masked_loss && masked).then(|| {
        let rows: Vec<Tensor> = picked
            .iter()
            .map(|&k| {
                let e = &data.instance[k];
                match &e.mask {
                    Some(m) => super::masks::weights(m, cfg.train.mask_background_weight),
                    None => e.mean.ones_like().narrow(1, 0, 1),
                }
            })
            .collect();
        Tensor::cat(&rows, 0)
    });
    if let Some((class, embeds, _)) = &data.class {
        // The class pictures of the batch's bucket (all of them when there are no buckets).
        let size = super::buckets::latent_size(&data.instance[picked[0]]);
        let among: Vec<usize> = (0..class.len())
            .filter(|&k| super::buckets::latent_size(&class[k]) == size)
            .collect();
        let (cx, cids, _) = pick(class, &among, b);
        x0 = Tensor::cat(&[x0, cx], 0);
        time_ids = Tensor::cat(&[time_ids, cids], 0);
        hidden = Tensor::cat(&[hidden, embeds.hidden.repeat([b, 1, 1])], 0);
        pooled = Tensor::cat(&[pooled, embeds.pooled.repeat([b, 1])], 0);
        mask = mask.map(|m| Tensor::cat(&[&m, &m.ones_like()], 0));
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
        captions,
        mask: mask.map(|m| m.to_device(device)),
    }
}

/// The embeddings of a photo's prompt: its caption's, or the run's.
fn prompt_of(data: &TrainData, caption: Option<usize>) -> &PromptEmbeds {
    caption.map_or(&data.instance_prompt, |c| &data.captions[c].1)
}
