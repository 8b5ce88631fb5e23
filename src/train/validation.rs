//! The validation loss (`train.validate_every`): a fixed set of (photo crop, timestep, noise)
//! triples drawn once from the run's seed, measured without gradients every N steps. With
//! `train.validation_split` some photos are held out of training for it ([`split`]); without
//! one (or with too few photos) it is measured on the training photos at fixed timesteps, as
//! sd-scripts does. It draws from its own seeded stream, never from a step's, so a run with
//! validation trains the very adapters a run without it trains.

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

use super::batch::{step_seed, Batch};
use super::data::TrainData;
use super::dataset::{Example, Photo};
use super::loss::loss;
use super::text::TextTraining;
use crate::config::RunConfig;
use crate::schedule::ddpm::DdpmSchedule;
use crate::sdxl::unet::UNet2DConditionModel;

/// sd-scripts' fixed validation timesteps, on a 1000-step schedule (scaled to others).
pub const TIMESTEPS: [i64; 5] = [10, 350, 500, 650, 990];

/// At most this many crops are measured (evenly spread over the set): the validation costs
/// about `MAX_EXAMPLES * TIMESTEPS.len()` forward passes, whatever the number of photos.
pub const MAX_EXAMPLES: usize = 8;

/// The fewest photos training keeps when some are held out for validation.
pub const MIN_TRAINING_PHOTOS: usize = 2;

/// The generator stream of the validation draws: a "step" no run reaches.
const STREAM: u64 = u64::MAX;

/// Split the photos (with their captions) into those trained on and those held out for the
/// validation loss: `round(validation_split x photos)` of them, chosen by the run's seed.
/// None are held out when that rounds to none or would leave fewer than
/// [`MIN_TRAINING_PHOTOS`] to train on (said once through `note`).
#[allow(clippy::type_complexity)]
pub fn split(
    cfg: &RunConfig,
    photos: Vec<Photo>,
    captions: Vec<Option<usize>>,
    note: &mut dyn FnMut(&str),
) -> (Vec<Photo>, Vec<Option<usize>>, Vec<(Photo, Option<usize>)>) {
    let share = cfg.train.validation_split;
    if share <= 0.0 || cfg.train.validate_every == 0 {
        return (photos, captions, Vec::new());
    }
    let n = photos.len();
    let held = (share * n as f64).round() as usize;
    if held == 0 || n < held + MIN_TRAINING_PHOTOS {
        note(&format!(
            "train.validation_split {share} of {} holds out {held}, leaving too few to train \
             on (at least {MIN_TRAINING_PHOTOS}): the validation loss is measured on the \
             training photos at fixed timesteps",
            crate::words::count(n, "photo")
        ));
        return (photos, captions, Vec::new());
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed));
    let mut out: Vec<usize> = order[..held].to_vec();
    out.sort_unstable();
    let names: Vec<String> = out
        .iter()
        .map(|&i| {
            photos[i]
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    note(&format!(
        "validation: {} held out of training ({})",
        crate::words::count(held, "photo"),
        names.join(", ")
    ));
    let mut train = Vec::new();
    let mut train_captions = Vec::new();
    let mut validation = Vec::new();
    for (i, p) in photos.into_iter().enumerate() {
        let c = captions.get(i).copied().flatten();
        if out.contains(&i) {
            validation.push((p, c));
        } else {
            train.push(p);
            train_captions.push(c);
        }
    }
    (train, train_captions, validation)
}

/// The fixed validation batches of a run: one per measured crop, its rows the fixed
/// timesteps, each with its own noise.
#[derive(Debug)]
pub struct ValidationSet {
    batches: Vec<Batch>,
    /// Measured on photos held out of training (else on training photos).
    pub held_out: bool,
}

impl ValidationSet {
    /// Draw the set once from the run's seed: the held-out crops (`data.validation`), or the
    /// training crops, at most [`MAX_EXAMPLES`] of them, evenly spread.
    pub fn new(
        data: &TrainData,
        sched: &DdpmSchedule,
        cfg: &RunConfig,
        device: Device,
        kind: Kind,
    ) -> ValidationSet {
        let held_out = !data.validation.is_empty();
        let pool: &[Example] = if held_out {
            &data.validation
        } else {
            &data.instance
        };
        let m = pool.len().min(MAX_EXAMPLES);
        let chosen: Vec<&Example> = (0..m).map(|k| &pool[k * pool.len() / m]).collect();
        let steps = sched.num_train_timesteps;
        let timesteps: Vec<i64> = TIMESTEPS
            .iter()
            .map(|&t| (t * steps / 1000).clamp(0, steps - 1))
            .collect();
        let rows = timesteps.len() as i64;
        let _rng = crate::runtime::seeded(step_seed(cfg.seed, STREAM));
        let _guard = tch::no_grad_guard();
        let batches = chosen
            .into_iter()
            .map(|e| {
                let x0 = (&e.mean + &e.std * Tensor::randn_like(&e.mean)) * data.scaling_factor;
                let x0 = x0.repeat([rows, 1, 1, 1]);
                let noise = Tensor::randn_like(&x0);
                let t = Tensor::from_slice(&timesteps);
                let noisy = sched.add_noise(&x0, &noise, &t);
                let prompt = e
                    .caption
                    .map_or(&data.instance_prompt, |c| &data.captions[c].1);
                // The same weighting as training (masked loss), on every row of the crop.
                let mask = e.mask.as_ref().filter(|_| cfg.train.masked_loss).map(|m| {
                    super::masks::weights(m, cfg.train.mask_background_weight)
                        .repeat([rows, 1, 1, 1])
                        .to_device(device)
                });
                Batch {
                    mask,
                    noisy: noisy.to_device(device).to_kind(kind),
                    target: noise.to_device(device),
                    timesteps: t.to_device(device),
                    hidden: prompt
                        .hidden
                        .repeat([rows, 1, 1])
                        .to_device(device)
                        .to_kind(kind),
                    pooled: prompt
                        .pooled
                        .repeat([rows, 1])
                        .to_device(device)
                        .to_kind(kind),
                    time_ids: Tensor::from_slice(&e.time_ids)
                        .unsqueeze(0)
                        .repeat([rows, 1])
                        .to_device(device)
                        .to_kind(kind),
                    n_instance: rows,
                    captions: vec![e.caption; rows as usize],
                }
            })
            .collect();
        ValidationSet { batches, held_out }
    }

    /// How many (crop, timestep, noise) triples are measured.
    pub fn len(&self) -> usize {
        self.batches.len() * TIMESTEPS.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The mean loss over the set with the adapters as they are now, without gradients (the
    /// run's loss: MSE, min-SNR weighted when `train.snr_gamma` is set). With text-encoder
    /// adapters the prompts are read as the adapters make them read now.
    pub fn loss(
        &mut self,
        unet: &UNet2DConditionModel,
        text: Option<&TextTraining>,
        sched: &DdpmSchedule,
        cfg: &RunConfig,
        kind: Kind,
    ) -> f32 {
        let _guard = tch::no_grad_guard();
        let mut total = 0.0;
        for b in &mut self.batches {
            if let Some(t) = text {
                t.condition(b, kind);
            }
            total += loss(unet, b, sched, cfg.train.snr_gamma, 0.0).double_value(&[]);
        }
        (total / self.batches.len().max(1) as f64) as f32
    }
}

/// The step with the lowest validation loss (past step 0), and the adapter file saved nearest
/// to it.
#[derive(Debug, Clone, PartialEq)]
pub struct BestValidation {
    pub step: u64,
    pub loss: f32,
    /// The step of the nearest adapter saved, and its file.
    pub adapter_step: u64,
    pub adapter: PathBuf,
}

impl BestValidation {
    /// From the run's validation losses (step, loss) and the adapters it saved (step, file):
    /// the lowest loss (the earliest of equal ones) and the adapter nearest to its step (the
    /// earlier of two as near). None when nothing past step 0 was measured or saved.
    pub fn find(validation: &[(u64, f32)], saved: &[(u64, PathBuf)]) -> Option<BestValidation> {
        let (step, loss) = validation
            .iter()
            .filter(|(s, l)| *s > 0 && l.is_finite())
            .fold(None, |best: Option<(u64, f32)>, &(s, l)| match best {
                Some((_, bl)) if bl <= l => best,
                _ => Some((s, l)),
            })?;
        let (adapter_step, adapter) = saved
            .iter()
            .min_by_key(|(s, _)| (s.abs_diff(step), *s))?
            .clone();
        Some(BestValidation {
            step,
            loss,
            adapter_step,
            adapter,
        })
    }

    /// The finding in words, for the terminal.
    pub fn sentence(&self, label: &str) -> String {
        let nearest = if self.adapter_step == self.step {
            format!("its adapter: {}", self.adapter.display())
        } else {
            format!(
                "the adapter saved nearest to it is step {}'s: {}",
                self.adapter_step,
                self.adapter.display()
            )
        };
        format!(
            "{label}: lowest validation loss {:.5} at step {}; {nearest}",
            self.loss, self.step
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_step_and_the_nearest_adapter() {
        let v = [(0, 0.1), (10, 0.5), (20, 0.3), (30, 0.3), (40, 0.4)];
        let saved = [
            (15, PathBuf::from("a15")),
            (25, PathBuf::from("a25")),
            (40, "f".into()),
        ];
        let b = BestValidation::find(&v, &saved).unwrap();
        // Step 0 (the base model) is not a trained step; of the equal 20 and 30 the earlier.
        assert_eq!((b.step, b.loss), (20, 0.3));
        // 15 and 25 are as near: the earlier.
        assert_eq!(b.adapter_step, 15);
        assert!(b.sentence("LoRA").contains("nearest to it is step 15's"));
        let b = BestValidation::find(&v, &saved[2..]).unwrap();
        assert_eq!(b.adapter_step, 40);
        assert!(BestValidation::find(&[(0, 0.1)], &saved).is_none());
        assert!(BestValidation::find(&v, &[]).is_none());
    }
}
