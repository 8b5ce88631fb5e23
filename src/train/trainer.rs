//! The training loop: a [`TrainJob`] per adapter, its optimizer steps, checkpoints, sample
//! renders and progress, and the whole `train` command ([`train`]) that prepares the data
//! once and trains each requested adapter in turn.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::data::{prepare_data_and_text, Sampler, TrainData};
use super::optimizer::AdamW;
use super::run::{model_identity, training_settings, AdapterKind, RunPaths};
use super::tensorboard::EventWriter;
use super::text::TextTraining;
use super::validation::{BestValidation, ValidationSet};
use super::{
    batch::make_batch, checkpoint, loss::loss_backward, loss_log, lr_schedule::learning_rate,
};
use crate::adapter;
use crate::adapter::file::{AdapterMeta, ModelIdentity, FORMAT_VERSION};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::fsutil::write_png;
use crate::schedule::ddpm::DdpmSchedule;
use crate::sdxl::image_processing::rgb_image;
use crate::sdxl::model_dir::ModelDir;
use crate::sdxl::pipeline::{
    load_unet, sample_latents, seeded_randn, to_rgb8, GenerateOptions, Guided, RunOptions,
};
use crate::sdxl::unet::UNet2DConditionModel;

/// Set by the Ctrl-C handler: the loop writes a checkpoint and stops cleanly.
pub use crate::runtime::INTERRUPTED;

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

/// What a finished (or stopped) run reports.
#[derive(Debug)]
pub struct TrainOutcome {
    pub kind: AdapterKind,
    pub adapter: PathBuf,
    pub steps_done: u64,
    pub interrupted: bool,
    pub losses: Vec<f32>,
    pub seconds: f64,
    pub layers: usize,
    pub parameters: i64,
    /// The lowest-validation step and the adapter saved nearest to it (`train.validate_every`).
    pub best_validation: Option<BestValidation>,
}

/// Hooks for progress display.
pub trait Progress {
    fn start(&mut self, _kind: AdapterKind, _total: u64, _done: u64) {}
    fn step(&mut self, _step: u64, _loss: f32, _smoothed: f64) {}
    fn note(&mut self, _msg: &str) {}
    fn finish(&mut self) {}
    /// A phase before the steps begins (`load`, `cache`, `class`): `total` units of `unit`.
    fn phase(&mut self, _name: &str, _unit: &'static str, _total: u64) {}
    /// `done` units of the current phase are done.
    fn phase_step(&mut self, _done: u64) {}
    /// The validation loss after `step` steps (`train.validate_every`; step 0: the base model).
    fn validation(&mut self, _step: u64, _loss: f32) {}
    /// A finished run's lowest-validation step and the adapter saved nearest to it.
    fn best_validation(&mut self, kind: AdapterKind, best: &BestValidation) {
        self.note(&best.sentence(kind.label()));
    }
    /// Checked before each step: stop cleanly (checkpoint written) when true.
    fn should_stop(&self) -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}

/// No display (tests).
pub struct Quiet;
impl Progress for Quiet {}

/// One adapter's training run: which adapter, on which prepared data, for which base model.
#[derive(Debug)]
pub struct TrainJob<'a> {
    pub cfg: &'a RunConfig,
    pub kind: AdapterKind,
    pub data: &'a TrainData,
    pub identity: &'a ModelIdentity,
    pub opts: RunOptions,
    /// Continue from the run's checkpoint when its settings match; otherwise (and when there
    /// is none) start at step 0, removing any older checkpoint.
    pub resume: bool,
}

impl TrainJob<'_> {
    /// Train on a UNet that has no adapter yet, and on the text encoders (also without
    /// adapters) when the run adapts them: their adapters then train, checkpoint and save
    /// beside the UNet's. Writes checkpoints, the loss log and curve, and finally the adapter
    /// file (atomically).
    pub fn run(
        &self,
        unet: &mut UNet2DConditionModel,
        mut text: Option<&mut TextTraining>,
        progress: &mut dyn Progress,
    ) -> Result<TrainOutcome> {
        let (cfg, kind, opts) = (self.cfg, self.kind, self.opts);
        let paths = RunPaths::new(cfg, kind);
        let acfg = kind.adapter_config(cfg);
        if text.is_none() && !acfg.text_encoder_targets.is_empty() {
            return Err(Error::msg(
                "adapter.text_encoder_targets is set but the text encoders were not given: \
                 train with train::train, or give TrainJob::run the text encoders",
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
        let settings = training_settings(cfg, kind);
        let fingerprint = super::run::fingerprint_of(&settings);

        let mut losses: Vec<f32> = Vec::new();
        let mut lrs: Vec<f64> = Vec::new();
        let mut grad_norms: Vec<f32> = Vec::new();
        let mut validation: Vec<(u64, f32)> = Vec::new();
        let mut resumed = false;
        if self.resume {
            // No checkpoint (a first run, or `compare` starting afresh): train from step 0.
            let encoders = text.as_deref_mut().map(|t| &mut t.encoders);
            if let Some(state) =
                checkpoint::load(&paths.checkpoint(), &fingerprint, unet, encoders, &mut opt)?
            {
                losses = state.losses;
                lrs = state.learning_rates;
                grad_norms = state.grad_norms;
                // Steps of a checkpoint made before gradient norms were kept have none.
                grad_norms.resize(losses.len(), f32::NAN);
                validation = state.validation;
                resumed = true;
                progress.note(&format!("{}: resuming at step {}", kind.label(), opt.step));
            }
        } else {
            // A fresh run must not leave an older run's checkpoint to be resumed later.
            let _ = std::fs::remove_dir_all(paths.checkpoint());
        }
        if !resumed {
            // Nor an older run's adapters along the way, to be mistaken for this run's.
            let _ = std::fs::remove_dir_all(paths.step_adapters());
        }
        std::fs::create_dir_all(&paths.dir).map_err(|e| Error::io(&paths.dir, e))?;
        // TensorBoard: a fresh run starts a fresh folder; a resumed one a new file that drops
        // what a killed run logged past the checkpoint.
        if !resumed {
            let _ = std::fs::remove_dir_all(paths.tensorboard());
        }
        let mut tb = EventWriter::new(&paths.tensorboard(), resumed.then_some(opt.step + 1));

        let blocks = crate::adapter::file::UnetBlocks::of(unet.config());
        let meta = |steps: u64| AdapterMeta {
            format_version: FORMAT_VERSION,
            name: kind.name().to_string(),
            adapter: acfg.clone(),
            base_model: self.identity.clone(),
            training: serde_json::json!({
                "fingerprint": fingerprint, "seed": cfg.seed, "subject": cfg.subject,
                "train": cfg.train, "dtype": crate::runtime::dtype_name(opts.dtype),
                "settings": settings,
            }),
            steps,
            layers,
            unet_blocks: Some(blocks.clone()),
        };

        let total = cfg.train.steps;
        // Drawn from a stream of its own: the steps draw what they would draw without it.
        let mut val_set = (cfg.train.validate_every > 0)
            .then(|| ValidationSet::new(self.data, &sched, cfg, opts.device, opts.dtype));
        let mut validate = |step: u64,
                            unet: &UNet2DConditionModel,
                            text: Option<&TextTraining>,
                            validation: &mut Vec<(u64, f32)>,
                            progress: &mut dyn Progress,
                            tb: &mut EventWriter|
         -> Result<()> {
            if let Some(v) = val_set.as_mut() {
                let l = v.loss(unet, text, &sched, cfg, opts.dtype);
                validation.push((step, l));
                progress.validation(step, l);
                tb.scalars(step, &[("loss/validation", l)])?;
            }
            Ok(())
        };
        progress.start(kind, total, opt.step);
        if opt.step == 0 && !validation.iter().any(|(s, _)| *s == 0) {
            // The base model's, where every curve starts.
            validate(0, unet, text.as_deref(), &mut validation, progress, &mut tb)?;
        }
        let started = Instant::now();
        let mut interrupted = false;
        while opt.step < total {
            if progress.should_stop() {
                interrupted = true;
                break;
            }
            let step = opt.step + 1;
            let (value, lr) = train_step_with(
                cfg,
                self.data,
                text.as_deref(),
                &sched,
                unet,
                &mut opt,
                opts,
            );
            if !value.is_finite() {
                return Err(diverged(kind, value, step, &paths));
            }
            losses.push(value);
            lrs.push(lr);
            // An f32 norm (of f32 gradients), kept as one: it goes through JSON exactly.
            grad_norms.push(opt.last_grad_norm as f32);
            tb.scalars(
                step,
                &[
                    ("loss/train", value),
                    ("learning_rate", lr as f32),
                    ("grad_norm", opt.last_grad_norm as f32),
                ],
            )?;
            let smoothed = loss_log::smooth(&losses, 0.9)
                .last()
                .copied()
                .unwrap_or(value as f64);
            progress.step(step, value, smoothed);
            let every = cfg.train.validate_every;
            if every > 0 && (step.is_multiple_of(every) || step == total) {
                validate(
                    step,
                    unet,
                    text.as_deref(),
                    &mut validation,
                    progress,
                    &mut tb,
                )?;
            }
            if let Some(s) = &self.data.sampler {
                let asked = paths.take_sample_request();
                if asked || step.is_multiple_of(cfg.train.sample_every) || step == total {
                    let path = paths.samples().join(format!("step_{step:06}.png"));
                    write_sample(cfg, self.data, text.as_deref(), s, unet, opts, &path)?;
                    let png = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                    let side = cfg.train.resolution as u32;
                    tb.image(step, "sample", &png, side, side)?;
                }
            }
            let keep = cfg.train.save_adapter_every;
            if keep > 0 && step.is_multiple_of(keep) {
                let encoders = text.as_deref_mut().map(|t| &mut t.encoders);
                adapter::file::save_with_text(
                    unet,
                    encoders,
                    &meta(step),
                    &paths.step_adapter(step),
                )?;
            }
            let every = cfg.train.checkpoint_every;
            if every > 0 && step.is_multiple_of(every) && step < total {
                let encoders = text.as_deref_mut().map(|t| &mut t.encoders);
                let run = checkpoint::RunState {
                    fingerprint: &fingerprint,
                    opt: &opt,
                    meta: &meta(step),
                    losses: &losses,
                    learning_rates: &lrs,
                    grad_norms: &grad_norms,
                    validation: &validation,
                };
                checkpoint::save(&paths.checkpoint(), unet, encoders, &run)?;
                tb.sync()?;
            }
        }
        progress.finish();
        // Always leave a checkpoint of where the run stopped, so `--resume` can continue it.
        let encoders = text.as_deref_mut().map(|t| &mut t.encoders);
        let run = checkpoint::RunState {
            fingerprint: &fingerprint,
            opt: &opt,
            meta: &meta(opt.step),
            losses: &losses,
            learning_rates: &lrs,
            grad_norms: &grad_norms,
            validation: &validation,
        };
        checkpoint::save(&paths.checkpoint(), unet, encoders, &run)?;
        tb.sync()?;
        loss_log::write_csv(&paths.loss_csv(), &losses, &lrs, &grad_norms)?;
        if validation.is_empty() {
            let _ = std::fs::remove_file(paths.validation_csv());
        } else {
            loss_log::write_validation_csv(&paths.validation_csv(), &validation)?;
        }
        let title = if validation.is_empty() {
            format!("{} training loss", kind.label())
        } else {
            format!("{} training and validation loss", kind.label())
        };
        loss_log::plot_with_validation(
            &paths.loss_png(),
            &title,
            &[(kind.label(), &losses)],
            &[&validation],
        )?;
        let mut best_validation = None;
        if !interrupted {
            let encoders = text.map(|t| &mut t.encoders);
            adapter::file::save_with_text(unet, encoders, &meta(opt.step), &paths.adapter())?;
            best_validation =
                BestValidation::find(&validation, &saved_adapters(cfg, &paths, opt.step));
            if let Some(b) = &best_validation {
                progress.best_validation(kind, b);
            }
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
            best_validation,
        })
    }
}

/// The adapters a finished run of `steps` steps has on disk: those kept along the way
/// (`train.save_adapter_every`) and the final one.
fn saved_adapters(cfg: &RunConfig, paths: &RunPaths, steps: u64) -> Vec<(u64, PathBuf)> {
    let keep = cfg.train.save_adapter_every;
    let mut out: Vec<(u64, PathBuf)> = match steps.checked_div(keep) {
        Some(n) => (1..=n)
            .map(|k| (k * keep, paths.step_adapter(k * keep)))
            .filter(|(_, p)| p.exists())
            .collect(),
        None => Vec::new(),
    };
    out.push((steps, paths.adapter()));
    out
}

/// The error of a run whose loss stopped being finite, naming the checkpoint kept.
fn diverged(kind: AdapterKind, value: f32, step: u64, paths: &RunPaths) -> Error {
    Error::Diverged {
        adapter: kind.label().to_string(),
        step,
        value,
        checkpoint: paths.checkpoint().exists().then(|| paths.checkpoint()),
    }
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
    let o = GenerateOptions {
        steps: cfg.render.steps.min(30),
        guidance: cfg.render.guidance,
        width: size,
        height: size,
        seed: 0,
        sampler: s.kind,
    };
    let latent = size / s.vae_factor;
    let noise = seeded_randn(0, &[1, s.latent_channels, latent, latent]);
    // With text-encoder adapters the prompt reads as the adapters make it read now.
    let adapted_prompt = match text {
        Some(t) => Some(tch::no_grad(|| t.instance_embeds())?),
        None => None,
    };
    let latents = sample_latents(
        unet,
        &s.scheduler,
        opts,
        Guided {
            cond: adapted_prompt.as_ref().unwrap_or(&data.instance_prompt),
            uncond: &s.uncond,
        },
        &noise,
        &o,
        |_| {},
    )?;
    let _guard = tch::no_grad_guard();
    let rgb = to_rgb8(&s.vae.decode(&(latents / data.scaling_factor)).get(0));
    let img = rgb_image(&rgb)?;
    write_png(path, &img, &[("prompt", cfg.instance_prompt())])
}

/// The whole `train` command: load once, prepare the data once, train each requested kind.
pub fn train(
    cfg: &RunConfig,
    kinds: &[AdapterKind],
    opts: RunOptions,
    resume: bool,
    progress: &mut dyn Progress,
) -> Result<Vec<TrainOutcome>> {
    // The renders that follow (compare, sweeps) and the samples use it: a misspelt sampler
    // fails now, not after the training.
    crate::schedule::sampler::SamplerKind::parse_setting(
        "render.scheduler",
        &cfg.render.scheduler,
    )?;
    let dir = ModelDir::open(&cfg.model)?;
    super::run::check_same_parameters(cfg)?;
    let (data, text) = prepare_data_and_text(cfg, &dir, opts, progress)?;
    let captions: Vec<String> = data.captions.iter().map(|(c, _)| c.clone()).collect();
    let mut text = text
        .map(|t| TextTraining::new(t, cfg, &captions))
        .transpose()?;
    let quiet = crate::runtime::nothing_to_save();
    crate::runtime::check_interrupted("before loading the UNet")?;
    progress.phase("load", "model part", 1);
    let mut unet = load_unet(&dir, opts)?;
    let identity = model_identity(&dir, &mut unet, opts.dtype)?;
    progress.phase_step(1);
    drop(quiet);
    let mut out = Vec::new();
    for &kind in kinds {
        adapter::remove_all(&mut unet);
        if let Some(t) = text.as_mut() {
            adapter::remove_text_encoders(&mut t.encoders);
        }
        let job = TrainJob {
            cfg,
            kind,
            data: &data,
            identity: &identity,
            opts,
            resume,
        };
        let o = job.run(&mut unet, text.as_mut(), progress)?;
        let stop = o.interrupted;
        out.push(o);
        if stop {
            break;
        }
    }
    adapter::remove_all(&mut unet);
    // The run's curves on one chart when two or more exist.
    type Logs = (AdapterKind, Vec<f32>, Vec<(u64, f32)>);
    let runs: Vec<Logs> = AdapterKind::of_run(cfg)
        .iter()
        .filter_map(|&k| {
            let paths = RunPaths::new(cfg, k);
            let validation = loss_log::read_validation_csv(&paths.validation_csv());
            loss_log::read_csv(&paths.loss_csv())
                .ok()
                .map(|l| (k, l, validation.unwrap_or_default()))
        })
        .collect();
    if runs.len() >= 2 {
        let named: Vec<(&str, &[f32])> = runs
            .iter()
            .map(|(k, l, _)| (k.label(), l.as_slice()))
            .collect();
        let validation: Vec<&[(u64, f32)]> = runs.iter().map(|(_, _, v)| v.as_slice()).collect();
        let labels: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
        loss_log::plot_with_validation(
            &cfg.output.join("loss.png"),
            &format!("Training loss: {}", labels.join(" vs ")),
            &named,
            &validation,
        )?;
    }
    Ok(out)
}
