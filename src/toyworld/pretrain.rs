//! `moslora pretrain`: the toy world's base model, trained from scratch on 2 CPU cores.
//!
//! The model is an SDXL pipeline in miniature, in the diffusers folder layout, built by the
//! same model code as real SDXL (configs in `configs/toy/`):
//! 1. the folder is written with random weights and the reduced CLIP vocabulary; both text
//!    encoders stay frozen at their random values (the UNet's cross-attention learns to read
//!    them);
//! 2. the VAE (factor 4, 64 px pictures to 16 x 16 x 4 latents) is trained as an autoencoder
//!    with a small KL term; its `scaling_factor` is then set to bring latents to unit
//!    variance, as SD's was;
//! 3. the world's pictures are encoded once (posterior mean and std);
//! 4. the UNet is trained on them: epsilon prediction, min-SNR weighting, `text_time`
//!    conditioning, 10 % of captions dropped to zeros (the unconditional embedding that
//!    classifier-free guidance uses with `force_zeros_for_empty_prompt`), an EMA of the
//!    weights kept and shipped.
//!
//! Each stage checkpoints (weights, optimizer state, EMA, step) into a work folder beside the
//! output, so an interrupted run resumes where it stopped and gives the same result; the
//! output folder appears only when everything is written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::vocab;
use super::world::World;
use crate::config::Adam;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::schedule::ddpm::DdpmSchedule;
use crate::sdxl::init_model::{init_model_with, InitOptions, PipelineSpec};
use crate::sdxl::model_dir::ModelDir;
use crate::sdxl::pipeline::{
    add_time_ids, GenerateOptions, PromptEmbeds, RunOptions, TextEncoders,
};
use crate::sdxl::unet::UNet2DConditionModel;
use crate::sdxl::vae::AutoencoderKL;
use crate::sdxl::weights::{
    save_safetensors, MappedFile, SafetensorsSource, TensorSource, TrainableSource, Weights,
};
use crate::train::optimizer::AdamW;
use crate::train::INTERRUPTED;

/// The toy model's component configs (`vocab_size` is filled in when the folder is made).
pub const CONFIGS: [&str; 5] = [
    include_str!("../../configs/toy/unet/config.json"),
    include_str!("../../configs/toy/vae/config.json"),
    include_str!("../../configs/toy/text_encoder/config.json"),
    include_str!("../../configs/toy/text_encoder_2/config.json"),
    include_str!("../../configs/toy/scheduler/scheduler_config.json"),
];

/// The recipe. Everything that changes the weights is here and is written beside them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recipe {
    pub seed: u64,
    pub vae_steps: u64,
    pub vae_batch: i64,
    pub vae_lr: f64,
    /// Weight of the KL term against the per-pixel MSE (both means).
    pub vae_kl: f64,
    pub unet_steps: u64,
    pub unet_batch: i64,
    pub unet_lr: f64,
    pub unet_warmup: u64,
    /// Pictures in the UNet's training set (encoded once).
    pub pictures: u64,
    pub caption_dropout: f64,
    pub snr_gamma: f64,
    pub ema_decay: f64,
    pub max_grad_norm: f64,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            seed: 0,
            vae_steps: 600,
            vae_batch: 16,
            vae_lr: 1e-3,
            vae_kl: 1e-6,
            unet_steps: 7000,
            unet_batch: 16,
            unet_lr: 6e-4,
            unet_warmup: 200,
            pictures: 10000,
            caption_dropout: 0.1,
            snr_gamma: 5.0,
            ema_decay: 0.999,
            max_grad_norm: 1.0,
        }
    }
}

/// What pretraining shows while it runs.
pub trait PretrainProgress {
    fn stage(&mut self, _name: &str, _total: u64, _done: u64) {}
    fn step(&mut self, _step: u64, _loss: f64) {}
    fn note(&mut self, _msg: &str) {}
    fn should_stop(&self) -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}

pub struct PretrainOptions {
    pub out: PathBuf,
    pub recipe: Recipe,
    /// Steps between checkpoints (and preview grids) of each stage.
    pub checkpoint_every: u64,
    /// dtype of the shipped weights.
    pub dtype: Kind,
    /// Render preview grids (every 2,000 UNet steps, and one shipped with the model).
    pub preview: bool,
}

/// The corpus the reduced vocabulary covers: the world's captions and the prompt lists.
fn corpus() -> Vec<String> {
    let mut c = super::world_vocabulary();
    c.extend(
        crate::render::prompts::BUNDLED
            .iter()
            .map(|(_, text)| text.to_string()),
    );
    c
}

/// Where the work of a run lives until the output is complete.
struct Work {
    dir: PathBuf,
}

impl Work {
    fn model(&self) -> PathBuf {
        self.dir.join("model")
    }
    fn checkpoint(&self, stage: &str) -> PathBuf {
        self.dir.join(format!("{stage}-checkpoint.safetensors"))
    }
    fn done(&self, stage: &str) -> PathBuf {
        self.dir.join(format!("{stage}.done"))
    }
    fn latents(&self) -> PathBuf {
        self.dir.join("latents.safetensors")
    }
}

/// Run (or resume) the whole pretraining; the model folder lands at `o.out`.
pub fn pretrain(o: &PretrainOptions, p: &mut dyn PretrainProgress) -> Result<()> {
    if o.out.exists() {
        return Err(Error::OutputExists {
            path: o.out.clone(),
            hint: "pretraining writes a new model folder; choose another --out".into(),
        });
    }
    let mut name = o.out.file_name().unwrap_or_default().to_os_string();
    name.push(".pretrain-work");
    let work = Work {
        dir: o.out.with_file_name(name),
    };
    std::fs::create_dir_all(&work.dir).map_err(|e| Error::io(&work.dir, e))?;
    let recipe_path = work.dir.join("recipe.json");
    if recipe_path.exists() {
        let old: Recipe = serde_json::from_str(&fsutil::read_to_string(&recipe_path)?)
            .map_err(|e| Error::config(&recipe_path, e.to_string()))?;
        if old != o.recipe {
            return Err(Error::msg(format!(
                "{} holds a run with another recipe: delete it to start over",
                work.dir.display()
            )));
        }
        p.note(&format!("resuming the run in {}", work.dir.display()));
    } else {
        let text = serde_json::to_string_pretty(&o.recipe).expect("recipe serialises");
        fsutil::write_bytes(&recipe_path, text.as_bytes())?;
    }
    let started = Instant::now();
    if !work.model().join("model_index.json").exists() {
        make_skeleton(&work.model(), &o.recipe)?;
    }
    if !work.done("vae").exists() {
        train_vae(o, &work, p)?;
        if p.should_stop() {
            return Ok(());
        }
    }
    if !work.latents().exists() {
        encode_world(o, &work, p)?;
    }
    if !work.done("unet").exists() {
        train_unet(o, &work, p)?;
        if p.should_stop() {
            return Ok(());
        }
    }
    let text = serde_json::to_string_pretty(&o.recipe).expect("recipe serialises");
    fsutil::write_bytes(&work.model().join("recipe.json"), text.as_bytes())?;
    std::fs::rename(work.model(), &o.out).map_err(|e| Error::io(&o.out, e))?;
    p.note(&format!(
        "pretraining finished in {:.1} min this session: {}",
        started.elapsed().as_secs_f64() / 60.0,
        o.out.display()
    ));
    let _ = std::fs::remove_dir_all(&work.dir);
    Ok(())
}

/// The folder with random weights, the toy configs and the reduced vocabulary.
fn make_skeleton(dir: &Path, r: &Recipe) -> Result<()> {
    let v = vocab::reduced(&corpus())?;
    let mut configs = CONFIGS.map(str::to_string);
    for c in &mut configs[2..4] {
        let mut j: serde_json::Value =
            serde_json::from_str(c).map_err(|e| Error::msg(format!("toy config: {e}")))?;
        j["vocab_size"] = serde_json::Value::from(v.size);
        j["bos_token_id"] = serde_json::Value::from(v.size - 2);
        j["eos_token_id"] = serde_json::Value::from(2);
        *c = serde_json::to_string_pretty(&j).expect("json serialises");
    }
    let spec = PipelineSpec {
        configs,
        vocab: &v.vocab_json,
        merges: &v.merges_txt,
    };
    let o = InitOptions {
        preset: "toy",
        seed: r.seed,
        dtype: Kind::Float,
        force: true,
    };
    init_model_with(dir, &o, &spec)?;
    spread_token_embeddings(dir, r.seed)
}

/// The text encoders stay frozen at random values, so their outputs must tell words apart.
/// With CLIP's own initialisation (embeddings N(0, 0.02)) the layers' random biases swamp
/// the tokens: two different captions come out with cosine 0.998 and the UNet cannot learn
/// to read them. Token embeddings N(0, 1) (PyTorch's default for `nn.Embedding`) and
/// position embeddings N(0, 0.3) make the token the largest part of the residual stream.
fn spread_token_embeddings(dir: &Path, seed: u64) -> Result<()> {
    for (i, component) in ["text_encoder", "text_encoder_2"].iter().enumerate() {
        let path = dir.join(component).join("model.safetensors");
        let mut tensors = Tensor::read_safetensors(&path).map_err(Error::from)?;
        tch::manual_seed((seed.wrapping_mul(1000) + 500 + i as u64) as i64);
        for (name, t) in tensors.iter_mut() {
            let std = if name.ends_with("token_embedding.weight") {
                1.0
            } else if name.ends_with("position_embedding.weight") {
                0.3
            } else {
                continue;
            };
            *t = Tensor::randn(t.size().as_slice(), (Kind::Float, Device::Cpu)) * std;
        }
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        save_safetensors(&tensors, Some(meta), &path)?;
    }
    Ok(())
}

fn weight_file(dir: &Path, component: &str) -> PathBuf {
    dir.join(component)
        .join("diffusion_pytorch_model.safetensors")
}

/// A component's parameters, from its last checkpoint or from the folder.
fn trainable(
    dir: &Path,
    work: &Work,
    component: &str,
) -> Result<(Rc<TrainableSource>, Weights, Option<MappedFile>)> {
    let ckpt = work.checkpoint(component);
    let (path, ckpt_file) = if ckpt.exists() {
        (ckpt.clone(), Some(MappedFile::open(&ckpt)?))
    } else {
        (weight_file(dir, component), None)
    };
    let inner = SafetensorsSource::open(&[path])?;
    let src = Rc::new(TrainableSource::new(Rc::new(inner)));
    let w = Weights::new(
        src.clone() as Rc<dyn TensorSource>,
        component,
        Kind::Float,
        Device::Cpu,
    );
    Ok((src, w, ckpt_file))
}

/// Restore optimizer state (and EMA) from a checkpoint; returns the step it was at.
fn restore(
    opt: &mut AdamW,
    ema: Option<&mut [(String, Tensor)]>,
    ckpt: &MappedFile,
) -> Result<u64> {
    let meta = ckpt.metadata()?;
    let step: u64 = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::BadFile {
            path: ckpt.path.clone(),
            what: "checkpoint lacks its `step`".into(),
        })?;
    let mut state = HashMap::new();
    for (name, _) in opt.params.iter() {
        for k in ["exp_avg", "exp_avg_sq"] {
            let full = format!("{k}.{name}");
            state.insert(full.clone(), ckpt.load(&full)?);
        }
    }
    opt.load_state(&state, step)?;
    if let Some(ema) = ema {
        let _g = tch::no_grad_guard();
        for (name, t) in ema.iter_mut() {
            t.copy_(&ckpt.load(&format!("ema.{name}"))?);
        }
    }
    Ok(step)
}

/// Write weights + optimizer state (+ EMA) of step `step`, atomically.
fn save_checkpoint(
    path: &Path,
    opt: &AdamW,
    ema: Option<&[(String, Tensor)]>,
    step: u64,
) -> Result<()> {
    let mut all: Vec<(String, Tensor)> = opt
        .params
        .iter()
        .map(|(n, t)| (n.clone(), t.detach()))
        .collect();
    all.extend(opt.state());
    if let Some(ema) = ema {
        all.extend(
            ema.iter()
                .map(|(n, t)| (format!("ema.{n}"), t.shallow_clone())),
        );
    }
    let mut meta = HashMap::new();
    meta.insert("step".to_string(), step.to_string());
    save_safetensors(&all, Some(meta), path)
}

fn save_weights(path: &Path, params: &[(String, Tensor)], kind: Kind) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = params
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_kind(kind)))
        .collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_safetensors(&tensors, Some(meta), path)
}

/// Seed libtorch's generator for step `step` of stage `stage`.
fn seed_step(seed: u64, stage: u64, step: u64) {
    let s = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stage.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(step.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    tch::manual_seed((s >> 1) as i64);
}

/// World pictures `indices` as a (B, 3, 64, 64) tensor in [-1, 1].
pub fn pictures(world: &World, indices: impl Iterator<Item = u64>) -> Tensor {
    let imgs: Vec<Tensor> = indices
        .map(|i| crate::train::dataset::to_tensor(&world.picture(i).image))
        .collect();
    Tensor::cat(&imgs, 0)
}

fn lr_at(base: f64, warmup: u64, step: u64) -> f64 {
    if step <= warmup {
        base * step as f64 / warmup.max(1) as f64
    } else {
        base
    }
}

fn train_vae(o: &PretrainOptions, work: &Work, p: &mut dyn PretrainProgress) -> Result<()> {
    let r = &o.recipe;
    let dir = work.model();
    let md = ModelDir::open(&dir)?;
    let cfg = md.vae_config()?;
    let (src, w, ckpt) = trainable(&dir, work, "vae")?;
    let vae = AutoencoderKL::new(&w, &cfg)?;
    let mut opt = AdamW::new(src.parameters(), adam());
    let mut step = match &ckpt {
        Some(c) => restore(&mut opt, None, c)?,
        None => 0,
    };
    drop(ckpt);
    // Pictures for the VAE come from their own range of indices, apart from the UNet's.
    let world = World::new(r.seed.wrapping_add(1));
    let clock = Instant::now();
    let first = step;
    p.stage("VAE", r.vae_steps, step);
    while step < r.vae_steps {
        if p.should_stop() {
            save_checkpoint(&work.checkpoint("vae"), &opt, None, step)?;
            p.note(&format!("stopped at VAE step {step}; run again to resume"));
            return Ok(());
        }
        step += 1;
        seed_step(r.seed, 1, step);
        let b = r.vae_batch as u64;
        let x = pictures(&world, (step - 1) * b..step * b);
        opt.zero_grad();
        let post = vae.encode(&x);
        let z = post.sample(&Tensor::randn_like(&post.mean));
        let recon = vae.decode(&z);
        let mse = (&recon - &x).square().mean(Kind::Float);
        let kl =
            (post.mean.square() + post.logvar.exp() - 1.0 - &post.logvar).mean(Kind::Float) * 0.5;
        let loss = &mse + kl * r.vae_kl;
        loss.backward();
        let value = mse.double_value(&[]);
        if !value.is_finite() {
            return Err(Error::msg(format!("VAE loss is {value} at step {step}")));
        }
        opt.clip_grad_norm(r.max_grad_norm);
        opt.step(lr_at(r.vae_lr, 100, step));
        p.step(step, value);
        if step % o.checkpoint_every == 0 && step < r.vae_steps {
            save_checkpoint(&work.checkpoint("vae"), &opt, None, step)?;
        }
    }
    // Latents at unit variance: the scaling factor is 1 / std of the posterior means.
    let std = {
        let _g = tch::no_grad_guard();
        let x = pictures(&world, 1_000_000..1_000_256);
        vae.encode(&x).mean.std(true).double_value(&[])
    };
    let mut vcfg: serde_json::Value =
        serde_json::from_str(&fsutil::read_to_string(&dir.join("vae/config.json"))?)
            .map_err(|e| Error::msg(format!("vae config: {e}")))?;
    vcfg["scaling_factor"] = serde_json::Value::from(round_sig(1.0 / std));
    fsutil::write_bytes(
        &dir.join("vae/config.json"),
        serde_json::to_string_pretty(&vcfg)
            .expect("json serialises")
            .as_bytes(),
    )?;
    save_weights(&weight_file(&dir, "vae"), &opt.params, o.dtype)?;
    p.note(&format!(
        "VAE trained: {step} steps ({:.2} s/step this session), latent std {std:.4}, \
         scaling factor {:.5}",
        clock.elapsed().as_secs_f64() / (step - first).max(1) as f64,
        round_sig(1.0 / std)
    ));
    fsutil::write_bytes(&work.done("vae"), b"")?;
    let _ = std::fs::remove_file(work.checkpoint("vae"));
    Ok(())
}

/// Five significant digits, as configs are read by people.
fn round_sig(x: f64) -> f64 {
    let mag = 10f64.powi(4 - x.abs().log10().floor() as i32);
    (x * mag).round() / mag
}

fn adam() -> Adam {
    Adam {
        weight_decay: 0.0,
        ..Adam::default()
    }
}

/// The UNet's training set: posterior means and stds of `recipe.pictures` world pictures.
fn encode_world(o: &PretrainOptions, work: &Work, p: &mut dyn PretrainProgress) -> Result<()> {
    let _g = tch::no_grad_guard();
    let r = &o.recipe;
    let md = ModelDir::open(&work.model())?;
    let w = md.weights("vae", Kind::Float, Device::Cpu)?;
    let vae = AutoencoderKL::new(&w, &md.vae_config()?)?;
    let world = World::new(r.seed);
    let chunk = 64u64;
    let (mut means, mut stds) = (Vec::new(), Vec::new());
    p.stage("encode", r.pictures.div_ceil(chunk), 0);
    for (k, start) in (0..r.pictures).step_by(chunk as usize).enumerate() {
        let x = pictures(&world, start..(start + chunk).min(r.pictures));
        let post = vae.encode(&x);
        means.push(post.mean.shallow_clone());
        stds.push(post.std());
        p.step(k as u64 + 1, 0.0);
    }
    let all = vec![
        ("mean".to_string(), Tensor::cat(&means, 0)),
        ("std".to_string(), Tensor::cat(&stds, 0)),
    ];
    save_safetensors(&all, None, &work.latents())
}

fn train_unet(o: &PretrainOptions, work: &Work, p: &mut dyn PretrainProgress) -> Result<()> {
    let r = &o.recipe;
    let dir = work.model();
    let md = ModelDir::open(&dir)?;
    let opts = RunOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
    };
    let text = TextEncoders::load(&md, opts)?;
    let scaling = md.vae_config()?.scaling_factor;
    let sched = DdpmSchedule::new(&md.scheduler_config()?)?;
    let (src, w, ckpt) = trainable(&dir, work, "unet")?;
    let unet = UNet2DConditionModel::new(&w, &md.unet_config()?)?;
    let mut opt = AdamW::new(src.parameters(), adam());
    let mut ema: Vec<(String, Tensor)> = opt
        .params
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().copy()))
        .collect();
    let mut step = match &ckpt {
        Some(c) => restore(&mut opt, Some(&mut ema), c)?,
        None => 0,
    };
    drop(ckpt);
    let lat = MappedFile::open(&work.latents())?;
    let (means, stds) = (lat.load("mean")?, lat.load("std")?);
    let n = means.size()[0];
    let world = World::new(r.seed);
    let captions: Vec<String> = (0..n as u64).map(|i| world.content(i).caption()).collect();
    let size = super::world::SIZE as i64;
    let time_ids = add_time_ids((size, size), (0, 0), (size, size)).repeat([r.unet_batch, 1]);
    let mut smoothed = None::<f64>;
    let clock = Instant::now();
    let first = step;
    p.stage("UNet", r.unet_steps, step);
    while step < r.unet_steps {
        if p.should_stop() {
            save_checkpoint(&work.checkpoint("unet"), &opt, Some(&ema), step)?;
            p.note(&format!("stopped at UNet step {step}; run again to resume"));
            return Ok(());
        }
        step += 1;
        seed_step(r.seed, 2, step);
        let idx = Tensor::randint(n, [r.unet_batch], (Kind::Int64, Device::Cpu));
        let x0 = (means.index_select(0, &idx)
            + stds.index_select(0, &idx)
                * Tensor::randn([r.unet_batch, 4, 16, 16], (Kind::Float, Device::Cpu)))
            * scaling;
        let drop_mask =
            Tensor::rand([r.unet_batch], (Kind::Float, Device::Cpu)).lt(r.caption_dropout);
        let noise = Tensor::randn_like(&x0);
        let t = Tensor::randint(1000, [r.unet_batch], (Kind::Int64, Device::Cpu));
        let embeds = {
            let _g = tch::no_grad_guard();
            // One batched pass through each encoder.
            let ids: Vec<(Tensor, Tensor)> = (0..r.unet_batch)
                .map(|i| text.token_ids(&captions[idx.int64_value(&[i]) as usize]))
                .collect::<Result<_>>()?;
            let first: Vec<&Tensor> = ids.iter().map(|p| &p.0).collect();
            let second: Vec<&Tensor> = ids.iter().map(|p| &p.1).collect();
            let e = text.embed(&(Tensor::cat(&first, 0), Tensor::cat(&second, 0)))?;
            let keep = drop_mask.logical_not().to_kind(Kind::Float);
            PromptEmbeds {
                hidden: e.hidden * keep.view([-1, 1, 1]),
                pooled: e.pooled * keep.view([-1, 1]),
            }
        };
        let noisy = sched.add_noise(&x0, &noise, &t);
        opt.zero_grad();
        let pred = unet.forward(&noisy, &t, &embeds.hidden, &embeds.pooled, &time_ids);
        let per = (pred - &noise)
            .square()
            .mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
        let weights = sched.min_snr_weights(&t, r.snr_gamma);
        let loss = (&per * weights).mean(Kind::Float);
        loss.backward();
        let value = per.mean(Kind::Float).double_value(&[]);
        if !value.is_finite() {
            return Err(Error::msg(format!("UNet loss is {value} at step {step}")));
        }
        opt.clip_grad_norm(r.max_grad_norm);
        opt.step(lr_at(r.unet_lr, r.unet_warmup, step));
        {
            let _g = tch::no_grad_guard();
            // Early on the average would mostly remember the random start: warm the decay up.
            let d = r.ema_decay.min((1.0 + step as f64) / (10.0 + step as f64));
            for ((_, e), (_, w)) in ema.iter_mut().zip(&opt.params) {
                let _ = e.lerp_(w, 1.0 - d);
            }
        }
        let s = smoothed.map_or(value, |m| 0.98 * m + 0.02 * value);
        smoothed = Some(s);
        p.step(step, value);
        if step % o.checkpoint_every == 0 && step < r.unet_steps {
            p.note(&format!(
                "UNet step {step}: loss {s:.4}, {:.2} s/step",
                clock.elapsed().as_secs_f64() / (step - first) as f64
            ));
            save_checkpoint(&work.checkpoint("unet"), &opt, Some(&ema), step)?;
            save_weights(&weight_file(&dir, "unet"), &ema, o.dtype)?;
            if !o.preview || step % PREVIEW_EVERY != 0 {
                continue;
            }
            if let Err(e) = preview(&dir, &work.dir.join(format!("preview-{step:06}.png"))) {
                p.note(&format!("preview failed: {e}"));
            }
        }
    }
    p.note(&format!(
        "UNet trained: {step} steps, {:.2} s/step this session",
        clock.elapsed().as_secs_f64() / (step - first).max(1) as f64
    ));
    save_weights(&weight_file(&dir, "unet"), &ema, o.dtype)?;
    // The last preview ships with the model: what it draws, at a glance.
    if o.preview {
        preview(&dir, &dir.join("preview.png"))?;
    }
    fsutil::write_bytes(&work.done("unet"), b"")?;
    let _ = std::fs::remove_file(work.checkpoint("unet"));
    Ok(())
}

/// UNet steps between preview grids (at checkpoints).
const PREVIEW_EVERY: u64 = 2000;

/// The prompts of the preview grid: one per row.
pub const PREVIEW_PROMPTS: [&str; 6] = [
    "a photo of a red ball on the beach",
    "a photo of a blue house in the snow",
    "a photo of a yellow robot at night",
    "a photo of a green tree on top of green grass",
    "a photo of a brown dog with a city in the background",
    "a photo of a white cat floating on top of water",
];

/// A grid of renders of the folder's current weights: rows are prompts, columns seeds.
pub fn preview(dir: &Path, out: &Path) -> Result<()> {
    let md = ModelDir::open(dir)?;
    let opts = RunOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
    };
    let text = TextEncoders::load(&md, opts)?;
    let den = crate::sdxl::pipeline::Denoiser::load(&md, opts)?;
    let size = super::world::SIZE as i64;
    let mut rows = Vec::new();
    for prompt in PREVIEW_PROMPTS {
        let cond = text.encode(prompt)?;
        let uncond = cond.zeros_like();
        let mut cells = Vec::new();
        for seed in 0..4u64 {
            let g = GenerateOptions {
                steps: 20,
                guidance: 4.0,
                width: size,
                height: size,
                seed,
                sampler: crate::schedule::sampler::SamplerKind::Euler,
            };
            let noise = den.initial_noise(seed, size, size)?;
            let lat = den.sample(&cond, &uncond, &noise, &g, |_| {})?;
            cells.push(den.decode(&lat));
        }
        rows.push(Tensor::cat(&cells, 2));
    }
    let grid = Tensor::cat(&rows, 1);
    let img = crate::sdxl::image_processing::rgb_image(&grid)?;
    crate::fsutil::write_png(out, &img, &[])
}
