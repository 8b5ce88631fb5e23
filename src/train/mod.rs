//! DreamBooth training of LoRA and MoSLoRA adapters on the frozen SDXL UNet (and optionally
//! on both text encoders, [`text`]).
//!
//! Epsilon prediction on the DDPM forward process, MSE loss, AdamW, gradient clipping. Prompt
//! embeddings (unless the text encoders are adapted) and VAE latents are computed once before
//! the first step. Every random draw of step `s` comes from a generator seeded with (seed, s),
//! so a run is reproducible on the CPU and a resumed run continues exactly where the
//! interrupted one would have gone.

pub mod checkpoint;
pub mod dataset;
pub mod loss_log;
pub mod optimizer;
pub mod recompute;
pub mod text;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::adapter::file::{
    architecture_hash, weights_fingerprint, AdapterMeta, ModelIdentity, FORMAT_VERSION,
};
use crate::adapter::{self, AdapterConfig, MixerInit};
use crate::config::{LrSchedule, RunConfig};
use crate::error::{Error, Result};
use crate::schedule::ddpm::DdpmSchedule;
use crate::sdxl::model_dir::ModelDir;
use crate::sdxl::pipeline::{PromptEmbeds, RunOptions, TextEncoders};
use crate::sdxl::unet::UNet2DConditionModel;
use crate::sdxl::vae::AutoencoderKL;
use dataset::Example;
use optimizer::AdamW;
use text::TextTraining;

/// Set by the Ctrl-C handler: the loop writes a checkpoint and stops cleanly.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The two adapters the app compares. They share every setting but the mixer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    Lora,
    Moslora,
}

impl AdapterKind {
    pub const BOTH: [AdapterKind; 2] = [AdapterKind::Lora, AdapterKind::Moslora];

    pub fn name(self) -> &'static str {
        match self {
            AdapterKind::Lora => "lora",
            AdapterKind::Moslora => "moslora",
        }
    }

    /// The label people see.
    pub fn label(self) -> &'static str {
        match self {
            AdapterKind::Lora => "LoRA",
            AdapterKind::Moslora => "MoSLoRA",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "lora" => Ok(AdapterKind::Lora),
            "moslora" => Ok(AdapterKind::Moslora),
            _ => Err(Error::msg(format!(
                "unknown adapter {s:?}: expected `lora` or `moslora`"
            ))),
        }
    }

    /// The run's adapter settings for this kind: LoRA drops the mixer, MoSLoRA keeps the
    /// configured one (orthogonal by default).
    pub fn adapter_config(self, cfg: &RunConfig) -> AdapterConfig {
        let mut a = cfg.adapter.clone();
        if self == AdapterKind::Lora {
            a.mixer = MixerInit::None;
        } else if a.mixer == MixerInit::None {
            a.mixer = MixerInit::Orthogonal;
        }
        a
    }
}

/// Where one adapter's run writes.
pub struct RunPaths {
    pub dir: PathBuf,
}

impl RunPaths {
    pub fn new(cfg: &RunConfig, kind: AdapterKind) -> Self {
        RunPaths {
            dir: cfg.output.join(kind.name()),
        }
    }
    pub fn adapter(&self) -> PathBuf {
        self.dir.join("adapter.safetensors")
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }
    pub fn loss_csv(&self) -> PathBuf {
        self.dir.join("loss.csv")
    }
    pub fn loss_png(&self) -> PathBuf {
        self.dir.join("loss.png")
    }
    pub fn samples(&self) -> PathBuf {
        self.dir.join("samples")
    }
}

/// The settings that determine an adapter's values: if they change, the adapter is stale.
pub fn training_fingerprint(cfg: &RunConfig, kind: AdapterKind) -> String {
    let mut train = cfg.train.clone();
    // Bookkeeping settings do not change the result.
    train.checkpoint_every = 0;
    train.sample_every = 0;
    let v = serde_json::json!({
        "model": cfg.model, "seed": cfg.seed, "subject": cfg.subject, "train": train,
        "adapter": kind.adapter_config(cfg), "device": cfg.device, "dtype": cfg.dtype,
    });
    let mut h = Sha256::new();
    h.update(v.to_string().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Prompt embeddings and cached latents: everything the steps need besides the UNet.
pub struct TrainData {
    pub instance: Vec<Example>,
    pub instance_prompt: PromptEmbeds,
    /// Class images for prior preservation, their prompt, and the loss weight.
    pub class: Option<(Vec<Example>, PromptEmbeds, f64)>,
    pub scaling_factor: f64,
    /// Kept only when `train.sample_every` asks for sample renders during training.
    pub sampler: Option<Sampler>,
}

/// What sample renders during training need besides the UNet.
pub struct Sampler {
    pub vae: AutoencoderKL,
    pub uncond: PromptEmbeds,
    pub scheduler: crate::schedule::config::SchedulerConfig,
}

/// Make class images with the base model until `class_images` holds `generate` of them
/// (prior preservation), as diffusers' DreamBooth script does.
fn generate_class_images(
    cfg: &RunConfig,
    dir: &ModelDir,
    text: &TextEncoders,
    opts: RunOptions,
    note: &mut impl FnMut(&str),
) -> Result<()> {
    let Some(pp) = &cfg.train.prior_preservation else {
        return Ok(());
    };
    std::fs::create_dir_all(&pp.class_images).map_err(|e| Error::io(&pp.class_images, e))?;
    let have = std::fs::read_dir(&pp.class_images)
        .map_err(|e| Error::io(&pp.class_images, e))?
        .flatten()
        .filter(|e| {
            e.path()
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| dataset::PHOTO_EXTENSIONS.contains(&x.to_lowercase().as_str()))
        })
        .count();
    if have >= pp.generate {
        return Ok(());
    }
    let prompt = cfg.subject.fill(&pp.prompt);
    note(&format!(
        "prior preservation: making {} class images of {prompt:?} with the base model in {}",
        pp.generate - have,
        pp.class_images.display()
    ));
    let cond = text.encode(&prompt)?;
    let uncond = text.encode_negative(None, &cond)?;
    let den = crate::sdxl::pipeline::Denoiser::load(dir, opts)?;
    let size = cfg.train.resolution;
    for i in have..pp.generate {
        let o = crate::sdxl::pipeline::GenerateOptions {
            steps: cfg.render.steps,
            guidance: cfg.render.guidance,
            width: size,
            height: size,
            seed: cfg.seed.wrapping_add(i as u64),
        };
        let noise = den.initial_noise(o.seed, size, size)?;
        let latents = den.sample(&cond, &uncond, &noise, &o, |_| {})?;
        let img = crate::sdxl::image_processing::rgb_image(&den.decode(&latents))?;
        let path = pp.class_images.join(format!("class_{i:04}.png"));
        crate::fsutil::write_png(&path, &img, &[("prompt", prompt.clone())])?;
    }
    Ok(())
}

/// Load the photos, embed the prompts and encode the latents. The text encoders and the VAE
/// are freed before training starts.
pub fn prepare_data(
    cfg: &RunConfig,
    dir: &ModelDir,
    opts: RunOptions,
    note: impl FnMut(&str),
) -> Result<TrainData> {
    prepare_data_and_text(cfg, dir, opts, note).map(|(data, _)| data)
}

/// `prepare_data`, keeping the text encoders when the run adapts them
/// (`adapter.text_encoder_targets`).
pub fn prepare_data_and_text(
    cfg: &RunConfig,
    dir: &ModelDir,
    opts: RunOptions,
    mut note: impl FnMut(&str),
) -> Result<(TrainData, Option<TextEncoders>)> {
    let photos = dataset::load_photos(&cfg.subject.images)?;
    note(&format!(
        "{} photos in {}",
        photos.len(),
        cfg.subject.images.display()
    ));
    let text = TextEncoders::load(dir, opts)?;
    let prompt = cfg.instance_prompt();
    warn_if_truncated(&text, &prompt, &mut note);
    let instance_prompt = text.encode(&prompt)?;
    let class_prompt = match &cfg.train.prior_preservation {
        Some(pp) => Some(text.encode(&cfg.subject.fill(&pp.prompt))?),
        None => None,
    };
    generate_class_images(cfg, dir, &text, opts, &mut note)?;
    let uncond = text.encode_negative(None, &instance_prompt)?;
    let text = (!cfg.adapter.text_encoder_targets.is_empty()).then_some(text);

    let w = dir.weights("vae", Kind::Float, opts.device)?;
    let vae = AutoencoderKL::new(&w, &dir.vae_config()?)?;
    crate::sdxl::model_dir::check_all_used(&w)?;
    let t = &cfg.train;
    let rng = crate::runtime::seeded(cfg.seed as i64);
    let instance = dataset::encode_examples(
        &photos,
        &vae,
        t.resolution,
        t.center_crop,
        t.random_flip,
        t.crops_per_image,
        opts.device,
        || {},
    )?;
    note(&format!(
        "{} cached latent variants (crops x flips)",
        instance.len()
    ));
    let class = match (&cfg.train.prior_preservation, class_prompt) {
        (Some(pp), Some(embeds)) => {
            let photos = dataset::load_photos(&pp.class_images)?;
            let ex = dataset::encode_examples(
                &photos,
                &vae,
                t.resolution,
                t.center_crop,
                t.random_flip,
                1,
                opts.device,
                || {},
            )?;
            Some((ex, embeds, pp.weight))
        }
        _ => None,
    };
    // The crop offsets of both sets are drawn; the generator is free again.
    drop(rng);
    let scaling_factor = vae.scaling_factor();
    let sampler = if cfg.train.sample_every > 0 {
        Some(Sampler {
            vae,
            uncond,
            scheduler: dir.scheduler_config()?,
        })
    } else {
        None
    };
    let data = TrainData {
        instance,
        instance_prompt,
        class,
        scaling_factor,
        sampler,
    };
    Ok((data, text))
}

fn warn_if_truncated(text: &TextEncoders, prompt: &str, note: &mut impl FnMut(&str)) {
    if let Ok(ids) = text.tokenizer.encode_unpadded(prompt) {
        if ids.len() > text.tokenizer.max_len() {
            note(&format!(
                "warning: the prompt {prompt:?} is {} tokens long; CLIP keeps the first {}",
                ids.len(),
                text.tokenizer.max_len()
            ));
        }
    }
}

/// One training batch, ready for the UNet.
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

/// The DreamBooth loss of one batch: MSE between predicted and true noise (f32), optionally
/// min-SNR weighted, plus `prior_weight` times the class-image loss.
pub fn loss(
    unet: &UNet2DConditionModel,
    batch: &Batch,
    sched: &DdpmSchedule,
    snr_gamma: Option<f64>,
    prior_weight: f64,
) -> Tensor {
    let t = batch.timesteps.to_kind(Kind::Float);
    let pred = unet.forward(
        &batch.noisy,
        &t,
        &batch.hidden,
        &batch.pooled,
        &batch.time_ids,
    );
    prediction_loss(&pred, batch, sched, snr_gamma, prior_weight)
}

/// [`loss`] from the UNet's prediction for the batch.
pub fn prediction_loss(
    pred: &Tensor,
    batch: &Batch,
    sched: &DdpmSchedule,
    snr_gamma: Option<f64>,
    prior_weight: f64,
) -> Tensor {
    let pred = pred.to_kind(Kind::Float);
    let target = batch.target.to_kind(Kind::Float);
    let n = batch.n_instance;
    let total = pred.size()[0];
    let mse = |p: &Tensor, y: &Tensor, ts: &Tensor| -> Tensor {
        match snr_gamma {
            None => p.mse_loss(y, tch::Reduction::Mean),
            Some(gamma) => {
                // diffusers: per-sample mean, weighted by min(SNR, gamma) / SNR (epsilon target).
                let w = sched.min_snr_weights(ts, gamma).to_device(p.device());
                let per = (p - y)
                    .square()
                    .mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
                (per * w).mean(Kind::Float)
            }
        }
    };
    if n < total {
        let inst = mse(
            &pred.narrow(0, 0, n),
            &target.narrow(0, 0, n),
            &batch.timesteps.narrow(0, 0, n),
        );
        let prior = pred
            .narrow(0, n, total - n)
            .mse_loss(&target.narrow(0, n, total - n), tch::Reduction::Mean);
        inst + prior * prior_weight
    } else {
        mse(&pred, &target, &batch.timesteps)
    }
}

/// The loss of one batch with its gradients accumulated into the trained adapter tensors.
/// With `checkpointing` only segment inputs are kept through the forward pass and each
/// segment is recomputed in the backward pass ([`recompute`]): less memory, more arithmetic,
/// the same gradients. Returns the loss, detached.
pub fn loss_backward(
    unet: &UNet2DConditionModel,
    batch: &Batch,
    sched: &DdpmSchedule,
    snr_gamma: Option<f64>,
    prior_weight: f64,
    checkpointing: bool,
) -> Tensor {
    if checkpointing {
        let t = batch.timesteps.to_kind(Kind::Float);
        let inputs = recompute::UNetInputs {
            sample: &batch.noisy,
            timesteps: &t,
            encoder_hidden_states: &batch.hidden,
            text_embeds: &batch.pooled,
            time_ids: &batch.time_ids,
        };
        recompute::loss_backward(unet, &inputs, |pred| {
            prediction_loss(pred, batch, sched, snr_gamma, prior_weight)
        })
    } else {
        let l = loss(unet, batch, sched, snr_gamma, prior_weight);
        l.backward();
        l.detach()
    }
}

/// One optimizer step of a run: the batch of step `opt.step + 1`, its loss and gradients,
/// clipping, and the AdamW update at the scheduled learning rate. Returns the loss before
/// the update and the learning rate; a non-finite loss leaves the adapters as they were.
pub fn train_step(
    cfg: &RunConfig,
    data: &TrainData,
    sched: &DdpmSchedule,
    unet: &UNet2DConditionModel,
    opt: &mut AdamW,
    opts: RunOptions,
) -> (f32, f64) {
    train_step_with(cfg, data, None, sched, unet, opt, opts)
}

/// [`train_step`] of a run that may also train text-encoder adapters (`text`): the batch's
/// prompt embeddings are then computed afresh, with gradients.
pub fn train_step_with(
    cfg: &RunConfig,
    data: &TrainData,
    text: Option<&TextTraining>,
    sched: &DdpmSchedule,
    unet: &UNet2DConditionModel,
    opt: &mut AdamW,
    opts: RunOptions,
) -> (f32, f64) {
    let step = opt.step + 1;
    let mut batch = make_batch(data, sched, cfg, step, opts.device, opts.dtype);
    if let Some(t) = text {
        t.condition(&mut batch, opts.dtype);
    }
    let prior_weight = data.class.as_ref().map(|c| c.2).unwrap_or(0.0);
    opt.zero_grad();
    let l = loss_backward(
        unet,
        &batch,
        sched,
        cfg.train.snr_gamma,
        prior_weight,
        cfg.train.gradient_checkpointing,
    );
    let value = l.double_value(&[]) as f32;
    if !value.is_finite() {
        return (value, 0.0);
    }
    opt.clip_grad_norm(cfg.train.max_grad_norm);
    let lr = learning_rate(cfg, step);
    opt.step(lr);
    (value, lr)
}

/// The learning rate at optimizer step `step` (1-based), as diffusers' `get_scheduler`.
pub fn learning_rate(cfg: &RunConfig, step: u64) -> f64 {
    let t = &cfg.train;
    let s = (step - 1) as f64; // schedulers see the number of steps already taken
    let warm = t.warmup_steps as f64;
    let total = t.steps as f64;
    let factor = match t.lr_schedule {
        LrSchedule::Constant => 1.0,
        _ if s < warm => s / warm.max(1.0),
        LrSchedule::ConstantWithWarmup => 1.0,
        LrSchedule::Linear => ((total - s) / (total - warm).max(1.0)).max(0.0),
        LrSchedule::Cosine => {
            let progress = (s - warm) / (total - warm).max(1.0);
            (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
    };
    t.learning_rate * factor
}

/// What a finished (or stopped) run reports.
pub struct TrainOutcome {
    pub kind: AdapterKind,
    pub adapter: PathBuf,
    pub steps_done: u64,
    pub interrupted: bool,
    pub losses: Vec<f32>,
    pub seconds: f64,
    pub layers: usize,
    pub parameters: i64,
}

/// Hooks for progress display.
pub trait Progress {
    fn start(&mut self, _kind: AdapterKind, _total: u64, _done: u64) {}
    fn step(&mut self, _step: u64, _loss: f32, _smoothed: f64) {}
    fn note(&mut self, _msg: &str) {}
    fn finish(&mut self) {}
    /// Checked before each step: stop cleanly (checkpoint written) when true.
    fn should_stop(&self) -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}

/// No display (tests).
pub struct Quiet;
impl Progress for Quiet {}

/// The identity of the model an adapter is trained on.
pub fn model_identity(
    dir: &ModelDir,
    unet: &mut UNet2DConditionModel,
    kind: Kind,
) -> Result<ModelIdentity> {
    let name = dir
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.root.display().to_string());
    Ok(ModelIdentity {
        name,
        architecture: architecture_hash(unet),
        weights: weights_fingerprint(&dir.weight_files("unet", kind)?)?,
    })
}

/// Train one adapter on a UNet that has none yet. Writes checkpoints, the loss log and curve,
/// and finally the adapter file (atomically).
#[allow(clippy::too_many_arguments)]
pub fn train_adapter(
    cfg: &RunConfig,
    kind: AdapterKind,
    data: &TrainData,
    unet: &mut UNet2DConditionModel,
    identity: &ModelIdentity,
    opts: RunOptions,
    resume: bool,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome> {
    train_adapter_with(
        cfg, kind, data, unet, None, identity, opts, resume, progress,
    )
}

/// [`train_adapter`], with the text encoders (without adapters yet) when the run adapts them
/// too: their adapters then train, checkpoint and save beside the UNet's.
#[allow(clippy::too_many_arguments)]
pub fn train_adapter_with(
    cfg: &RunConfig,
    kind: AdapterKind,
    data: &TrainData,
    unet: &mut UNet2DConditionModel,
    mut text: Option<&mut TextTraining>,
    identity: &ModelIdentity,
    opts: RunOptions,
    resume: bool,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome> {
    let paths = RunPaths::new(cfg, kind);
    let acfg = kind.adapter_config(cfg);
    if text.is_none() && !acfg.text_encoder_targets.is_empty() {
        return Err(Error::msg(
            "adapter.text_encoder_targets is set but the text encoders were not given: \
             train with train::train or train_adapter_with",
        ));
    }
    let mut layers = adapter::inject(unet, &acfg, cfg.seed)?;
    let mut params = adapter::trained_parameters(unet);
    if let Some(t) = text.as_deref_mut() {
        layers += adapter::inject_text_encoders(&mut t.encoders, &acfg, cfg.seed)?;
        params.extend(adapter::text_encoder_parameters(&mut t.encoders));
    }
    let n_params: i64 = params.iter().map(|(_, t)| t.numel() as i64).sum();
    let mut opt = AdamW::new(params, cfg.train.adam.clone());
    let sched = DdpmSchedule::new(&ModelDir::open(&cfg.model)?.scheduler_config()?)?;
    let fingerprint = training_fingerprint(cfg, kind);

    let mut losses: Vec<f32> = Vec::new();
    let mut lrs: Vec<f64> = Vec::new();
    if resume {
        // No checkpoint (a first run, or `compare` starting afresh): train from step 0.
        let encoders = text.as_deref_mut().map(|t| &mut t.encoders);
        if let Some(state) =
            checkpoint::load(&paths.checkpoint(), &fingerprint, unet, encoders, &mut opt)?
        {
            losses = state.losses;
            lrs = state.learning_rates;
            progress.note(&format!("{}: resuming at step {}", kind.label(), opt.step));
        }
    } else {
        // A fresh run must not leave an older run's checkpoint to be resumed later.
        let _ = std::fs::remove_dir_all(paths.checkpoint());
    }
    std::fs::create_dir_all(&paths.dir).map_err(|e| Error::io(&paths.dir, e))?;

    let meta = |steps: u64| AdapterMeta {
        format_version: FORMAT_VERSION,
        name: kind.name().to_string(),
        adapter: acfg.clone(),
        base_model: identity.clone(),
        training: serde_json::json!({
            "fingerprint": fingerprint, "seed": cfg.seed, "subject": cfg.subject,
            "train": cfg.train, "dtype": crate::runtime::dtype_name(opts.dtype),
        }),
        steps,
        layers,
    };

    let total = cfg.train.steps;
    progress.start(kind, total, opt.step);
    let started = Instant::now();
    let mut smoothed = loss_log::smooth(&losses, 0.9)
        .last()
        .copied()
        .unwrap_or(0.0);
    let mut interrupted = false;
    while opt.step < total {
        if progress.should_stop() {
            interrupted = true;
            break;
        }
        let step = opt.step + 1;
        let (value, lr) = train_step_with(cfg, data, text.as_deref(), &sched, unet, &mut opt, opts);
        if !value.is_finite() {
            let kept = if paths.checkpoint().exists() {
                format!(
                    "the last good checkpoint is kept in {}",
                    paths.checkpoint().display()
                )
            } else {
                "no checkpoint had been written yet".to_string()
            };
            return Err(Error::msg(format!(
                "{}: the loss became {value} at step {step}; {kept}. Try a lower \
                 train.learning_rate or f32 instead of f16",
                kind.label()
            )));
        }
        losses.push(value);
        lrs.push(lr);
        smoothed = loss_log::smooth(&losses, 0.9)
            .last()
            .copied()
            .unwrap_or(value as f64);
        progress.step(step, value, smoothed);
        if let Some(s) = &data.sampler {
            if step.is_multiple_of(cfg.train.sample_every) || step == total {
                write_sample(
                    cfg,
                    data,
                    text.as_deref(),
                    s,
                    unet,
                    opts,
                    &paths.samples().join(format!("step_{step:06}.png")),
                )?;
            }
        }
        let every = cfg.train.checkpoint_every;
        if every > 0 && step.is_multiple_of(every) && step < total {
            checkpoint::save(
                &paths.checkpoint(),
                &fingerprint,
                unet,
                text.as_deref_mut().map(|t| &mut t.encoders),
                &opt,
                &meta(step),
                &losses,
                &lrs,
            )?;
        }
    }
    let _ = smoothed;
    progress.finish();
    // Always leave a checkpoint of where the run stopped, so `--resume` can continue it.
    checkpoint::save(
        &paths.checkpoint(),
        &fingerprint,
        unet,
        text.as_deref_mut().map(|t| &mut t.encoders),
        &opt,
        &meta(opt.step),
        &losses,
        &lrs,
    )?;
    loss_log::write_csv(&paths.loss_csv(), &losses, &lrs)?;
    loss_log::plot(
        &paths.loss_png(),
        &format!("{} training loss", kind.label()),
        &[(kind.label(), &losses)],
    )?;
    if !interrupted {
        let encoders = text.map(|t| &mut t.encoders);
        adapter::file::save_with_text(unet, encoders, &meta(opt.step), &paths.adapter())?;
    }
    Ok(TrainOutcome {
        kind,
        adapter: paths.adapter(),
        steps_done: opt.step,
        interrupted,
        losses,
        seconds: started.elapsed().as_secs_f64(),
        layers,
        parameters: n_params,
    })
}

/// A sample render of the training prompt with the adapter as it is now (seed 0, unmerged).
fn write_sample(
    cfg: &RunConfig,
    data: &TrainData,
    text: Option<&TextTraining>,
    s: &Sampler,
    unet: &UNet2DConditionModel,
    opts: RunOptions,
    path: &Path,
) -> Result<()> {
    let size = cfg.train.resolution;
    let o = crate::sdxl::pipeline::GenerateOptions {
        steps: cfg.render.steps.min(30),
        guidance: cfg.render.guidance,
        width: size,
        height: size,
        seed: 0,
    };
    let noise = crate::sdxl::pipeline::seeded_randn(0, &[1, 4, size / 8, size / 8]);
    // With text-encoder adapters the prompt reads as the adapters make it read now.
    let adapted_prompt = match text {
        Some(t) => Some(tch::no_grad(|| t.instance_embeds())?),
        None => None,
    };
    let latents = crate::sdxl::pipeline::sample_latents(
        unet,
        &s.scheduler,
        opts,
        adapted_prompt.as_ref().unwrap_or(&data.instance_prompt),
        &s.uncond,
        &noise,
        &o,
        |_| {},
    )?;
    let _guard = tch::no_grad_guard();
    let rgb =
        crate::sdxl::pipeline::to_rgb8(&s.vae.decode(&(latents / data.scaling_factor)).get(0));
    let img = crate::sdxl::image_processing::rgb_image(&rgb)?;
    crate::fsutil::write_png(path, &img, &[("prompt", cfg.instance_prompt())])
}

/// Is the adapter at `path` finished and trained with exactly these settings?
pub fn is_current(cfg: &RunConfig, kind: AdapterKind, path: &Path) -> bool {
    let Ok(f) = adapter::file::AdapterFile::read(path) else {
        return false;
    };
    f.meta.steps == cfg.train.steps
        && f.meta.training.get("fingerprint").and_then(|v| v.as_str())
            == Some(training_fingerprint(cfg, kind).as_str())
}

/// The whole `train` command: load once, prepare the data once, train each requested kind.
pub fn train(
    cfg: &RunConfig,
    kinds: &[AdapterKind],
    opts: RunOptions,
    resume: bool,
    progress: &mut dyn Progress,
) -> Result<Vec<TrainOutcome>> {
    let dir = ModelDir::open(&cfg.model)?;
    let (data, text) = prepare_data_and_text(cfg, &dir, opts, |m| progress.note(m))?;
    let mut text = text.map(|t| TextTraining::new(t, cfg)).transpose()?;
    let mut unet = crate::sdxl::pipeline::load_unet(&dir, opts)?;
    let identity = model_identity(&dir, &mut unet, opts.dtype)?;
    let mut out = Vec::new();
    for &kind in kinds {
        adapter::remove_all(&mut unet);
        if let Some(t) = text.as_mut() {
            adapter::remove_text_encoders(&mut t.encoders);
        }
        let o = train_adapter_with(
            cfg,
            kind,
            &data,
            &mut unet,
            text.as_mut(),
            &identity,
            opts,
            resume,
            progress,
        )?;
        let stop = o.interrupted;
        out.push(o);
        if stop {
            break;
        }
    }
    adapter::remove_all(&mut unet);
    // Both curves on one chart when both runs exist.
    let runs: Vec<(AdapterKind, Vec<f32>)> = AdapterKind::BOTH
        .iter()
        .filter_map(|&k| {
            loss_log::read_csv(&RunPaths::new(cfg, k).loss_csv())
                .ok()
                .map(|l| (k, l))
        })
        .collect();
    if runs.len() == 2 {
        let named: Vec<(&str, &[f32])> = runs
            .iter()
            .map(|(k, l)| (k.label(), l.as_slice()))
            .collect();
        loss_log::plot(
            &cfg.output.join("loss.png"),
            "Training loss: LoRA vs MoSLoRA",
            &named,
        )?;
    }
    Ok(out)
}
