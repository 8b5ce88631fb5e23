//! The SDXL text-to-image pipeline, step for step as diffusers' `StableDiffusionXLPipeline`:
//! prompt encoding with both encoders, micro-conditioning, classifier-free guidance with the
//! conditional and unconditional passes in one batch, sampling with the chosen sampler (Euler
//! by default), VAE decode.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::clip::ClipTextModel;
use super::config::{UNetConfig, VaeConfig};
use super::model_dir::{check_all_used, ModelDir};
use super::tokenizer::ClipTokenizer;
use super::unet::UNet2DConditionModel;
use super::vae::AutoencoderKL;
use super::weights::Weights;
use crate::error::{Error, Result};
use crate::schedule::config::SchedulerConfig;
use crate::schedule::sampler::SamplerKind;

/// Where and in which precision to run.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub device: Device,
    /// dtype of the UNet and text encoders (the VAE always runs in f32).
    pub dtype: Kind,
}

impl RunOptions {
    /// From the user's words: `cpu`/`cuda[:N]` and `f32`/`bf16`/`f16` (default: f32 on the
    /// CPU, bf16 on CUDA), given as flags or RUN.yaml fields (`given`, for the advice).
    pub fn from_names(
        device: &str,
        dtype: Option<&str>,
        given: crate::runtime::Given,
    ) -> Result<Self> {
        let device = crate::runtime::parse_device(device, given)?;
        let dtype = match dtype {
            Some(d) => crate::runtime::parse_dtype(d)?,
            None if device.is_cuda() => Kind::BFloat16,
            None => Kind::Float,
        };
        crate::runtime::check_dtype_for_device(dtype, device, given)?;
        Ok(RunOptions { device, dtype })
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            device: Device::Cpu,
            dtype: Kind::Float,
        }
    }
}

/// Both text encoders and their tokenizers.
#[derive(Debug)]
pub struct TextEncoders {
    pub tokenizer: ClipTokenizer,
    pub tokenizer_2: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub text_encoder_2: ClipTextModel,
    pub device: Device,
}

/// A prompt as the UNet consumes it.
#[derive(Debug)]
pub struct PromptEmbeds {
    /// (B, 77, 2048): penultimate hidden states of both encoders, concatenated.
    pub hidden: Tensor,
    /// (B, 1280): text_encoder_2's projected pooled output.
    pub pooled: Tensor,
}

impl PromptEmbeds {
    pub fn zeros_like(&self) -> PromptEmbeds {
        PromptEmbeds {
            hidden: self.hidden.zeros_like(),
            pooled: self.pooled.zeros_like(),
        }
    }

    /// Concatenate along the batch (e.g. unconditional then conditional).
    pub fn cat(parts: &[&PromptEmbeds]) -> PromptEmbeds {
        let hidden: Vec<&Tensor> = parts.iter().map(|p| &p.hidden).collect();
        let pooled: Vec<&Tensor> = parts.iter().map(|p| &p.pooled).collect();
        PromptEmbeds {
            hidden: Tensor::cat(&hidden, 0),
            pooled: Tensor::cat(&pooled, 0),
        }
    }
}

impl TextEncoders {
    pub fn load(dir: &ModelDir, opts: RunOptions) -> Result<Self> {
        let tokenizer = dir.tokenizer("tokenizer")?;
        let tokenizer_2 = dir.tokenizer("tokenizer_2")?;
        let mut encoders = Vec::new();
        for (name, projection) in [("text_encoder", false), ("text_encoder_2", true)] {
            let cfg = dir.text_encoder_config(name)?;
            let w = dir.weights(name, opts.dtype, opts.device)?;
            let model = ClipTextModel::new(&w, &cfg, projection)?;
            check_all_used(&w)?;
            encoders.push(model);
        }
        let text_encoder_2 = encoders.pop().expect("two encoders");
        let text_encoder = encoders.pop().expect("two encoders");
        Ok(TextEncoders {
            tokenizer,
            tokenizer_2,
            text_encoder,
            text_encoder_2,
            device: opts.device,
        })
    }

    /// The warning diffusers gives when `prompt` is longer than the tokenizers keep, naming
    /// the words cut off; None when it fits. Both tokenizers share SDXL's vocabulary and
    /// length, so the first one speaks for both.
    pub fn truncation_warning(&self, prompt: &str) -> Result<Option<String>> {
        Ok(self.tokenizer.truncated_part(prompt)?.map(|cut| {
            format!(
                "warning: prompt {prompt:?}: the following part of your input was truncated \
                 because CLIP can only handle sequences up to {} tokens: {cut:?}",
                self.tokenizer.max_len()
            )
        }))
    }

    /// diffusers `encode_prompt` for one prompt (no clip-skip): `hidden_states[-2]` of both
    /// encoders side by side, and text_encoder_2's projected pooled output.
    pub fn encode(&self, prompt: &str) -> Result<PromptEmbeds> {
        let _guard = tch::no_grad_guard();
        self.embed(&self.token_ids(prompt)?)
    }

    /// The prompt's token ids for each encoder's tokenizer, (1, 77) each.
    pub fn token_ids(&self, prompt: &str) -> Result<(Tensor, Tensor)> {
        let ids = |t: &ClipTokenizer| -> Result<Tensor> {
            Ok(Tensor::from_slice(&t.encode(prompt)?)
                .unsqueeze(0)
                .to_device(self.device))
        };
        Ok((ids(&self.tokenizer)?, ids(&self.tokenizer_2)?))
    }

    /// `encode` from token ids, recording gradients unless the caller disabled them: with
    /// trained text-encoder adapters the embeddings are part of the training graph.
    pub fn embed(&self, ids: &(Tensor, Tensor)) -> Result<PromptEmbeds> {
        let out1 = self.text_encoder.forward(&ids.0);
        let out2 = self.text_encoder_2.forward(&ids.1);
        let penultimate = |hs: &[Tensor]| hs[hs.len() - 2].shallow_clone();
        let hidden = Tensor::cat(
            &[
                penultimate(&out1.hidden_states),
                penultimate(&out2.hidden_states),
            ],
            -1,
        );
        let pooled = out2
            .text_embeds
            .ok_or_else(|| Error::msg("text_encoder_2 has no projection"))?;
        Ok(PromptEmbeds {
            hidden: hidden.to_kind(Kind::Float),
            pooled: pooled.to_kind(Kind::Float),
        })
    }

    /// The unconditional embedding: zeros for an absent negative prompt (SDXL base sets
    /// `force_zeros_for_empty_prompt`), else the encoded negative prompt.
    pub fn encode_negative(
        &self,
        negative: Option<&str>,
        like: &PromptEmbeds,
    ) -> Result<PromptEmbeds> {
        match negative {
            None => Ok(like.zeros_like()),
            Some(n) => self.encode(n),
        }
    }
}

/// SDXL micro-conditioning: (original size, crop top-left, target size), each (h, w).
pub fn add_time_ids(original: (i64, i64), crop: (i64, i64), target: (i64, i64)) -> Tensor {
    Tensor::from_slice(&[
        original.0 as f32,
        original.1 as f32,
        crop.0 as f32,
        crop.1 as f32,
        target.0 as f32,
        target.1 as f32,
    ])
    .unsqueeze(0)
}

/// What to render.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub steps: usize,
    pub guidance: f64,
    pub width: i64,
    pub height: i64,
    pub seed: u64,
    /// The sampler (diffusers scheduler class) to denoise with.
    pub sampler: SamplerKind,
}

/// The UNet, the VAE and the sampler settings: everything but the text encoders, which can
/// be dropped once the prompts are embedded.
#[derive(Debug)]
pub struct Denoiser {
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub vae_config: VaeConfig,
    pub scheduler: SchedulerConfig,
    pub opts: RunOptions,
}

impl Denoiser {
    pub fn load(dir: &ModelDir, opts: RunOptions) -> Result<Self> {
        let unet = load_unet(dir, opts)?;
        let vae_cfg = dir.vae_config()?;
        // The SDXL VAE overflows in fp16: it always runs in f32.
        let w = dir.weights("vae", Kind::Float, opts.device)?;
        let vae = AutoencoderKL::new(&w, &vae_cfg)?;
        check_all_used(&w)?;
        Ok(Denoiser {
            unet,
            vae,
            vae_config: vae_cfg,
            scheduler: dir.scheduler_config()?,
            opts,
        })
    }

    /// The initial latents diffusers draws: `torch.randn` from a CPU generator seeded with
    /// `seed`, shape (1, 4, H/8, W/8), before scaling by the sampler's initial sigma.
    pub fn initial_noise(&self, seed: u64, width: i64, height: i64) -> Result<Tensor> {
        let f = self.vae_config.scale_factor();
        if width % f != 0 || height % f != 0 {
            return Err(Error::msg(format!(
                "width and height must be multiples of {f} (got {width}x{height})"
            )));
        }
        let c = self.unet.config().in_channels;
        Ok(seeded_randn(seed, &[1, c, height / f, width / f]))
    }

    /// Denoise from `noise` (unscaled N(0, 1)) with classifier-free guidance, returning the
    /// final latents (f32). `on_step` is called after each step.
    pub fn sample(
        &self,
        cond: &PromptEmbeds,
        uncond: &PromptEmbeds,
        noise: &Tensor,
        o: &GenerateOptions,
        on_step: impl FnMut(usize),
    ) -> Result<Tensor> {
        sample_latents(
            &self.unet,
            &self.scheduler,
            self.opts,
            Guided { cond, uncond },
            noise,
            o,
            on_step,
        )
    }

    /// Latents to an RGB8 image tensor (3, H, W), as diffusers' image processor rounds it.
    pub fn decode(&self, latents: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let z = latents.to_kind(Kind::Float) / self.vae.scaling_factor();
        let image = self.vae.decode(&z);
        to_rgb8(&image.get(0))
    }
}

/// A prompt and its negative (or empty) prompt, for classifier-free guidance.
#[derive(Debug, Clone, Copy)]
pub struct Guided<'a> {
    pub cond: &'a PromptEmbeds,
    pub uncond: &'a PromptEmbeds,
}

/// The sampling loop of `StableDiffusionXLPipeline.__call__` with `o.sampler` as its
/// scheduler, over any UNet (with or without adapters). A stochastic sampler's step noise
/// comes from the generator seeded with `o.seed`, drawn after the initial latents (which
/// `noise` is), one draw of the latents' shape per step, as diffusers draws it.
pub fn sample_latents(
    unet: &UNet2DConditionModel,
    scheduler: &SchedulerConfig,
    opts: RunOptions,
    prompt: Guided,
    noise: &Tensor,
    o: &GenerateOptions,
    mut on_step: impl FnMut(usize),
) -> Result<Tensor> {
    let Guided { cond, uncond } = prompt;
    let _guard = tch::no_grad_guard();
    let mut sched = o.sampler.build(scheduler)?;
    sched.set_timesteps(o.steps)?;
    let step_noise = if sched.stochastic() {
        step_noise(o.seed, &noise.size(), sched.timesteps().len())
    } else {
        Vec::new()
    };
    let dev = opts.device;
    let kind = opts.dtype;
    let cfg_on = o.guidance > 1.0;
    // Unconditional and conditional passes in one batch, as diffusers does.
    let embeds = if cfg_on {
        PromptEmbeds::cat(&[uncond, cond])
    } else {
        PromptEmbeds::cat(&[cond])
    };
    let batch = embeds.hidden.size()[0];
    let hidden = embeds.hidden.to_device(dev).to_kind(kind);
    let pooled = embeds.pooled.to_device(dev).to_kind(kind);
    let time_ids = add_time_ids((o.height, o.width), (0, 0), (o.height, o.width))
        .repeat([batch, 1])
        .to_device(dev)
        .to_kind(kind);
    let mut latents = noise.to_device(dev).to_kind(Kind::Float) * sched.init_noise_sigma();
    for i in 0..sched.timesteps().len() {
        let input = if cfg_on {
            Tensor::cat(&[&latents, &latents], 0)
        } else {
            latents.shallow_clone()
        };
        let input = sched.scale_model_input(&input, i).to_kind(kind);
        let t = Tensor::from_slice(&[sched.timesteps()[i]]).to_device(dev);
        let eps = unet
            .forward(&input, &t, &hidden, &pooled, &time_ids)
            .to_kind(Kind::Float);
        let eps = if cfg_on {
            let parts = eps.chunk(2, 0);
            &parts[0] + (&parts[1] - &parts[0]) * o.guidance
        } else {
            eps
        };
        latents = sched.step(&eps, i, &latents, step_noise.get(i));
        on_step(i);
    }
    Ok(latents)
}

pub fn load_unet(dir: &ModelDir, opts: RunOptions) -> Result<UNet2DConditionModel> {
    let cfg: UNetConfig = dir.unet_config()?;
    let w: Weights = dir.weights("unet", opts.dtype, opts.device)?;
    let unet = UNet2DConditionModel::new(&w, &cfg)?;
    check_all_used(&w)?;
    Ok(unet)
}

/// `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`: libtorch's CPU
/// generator is the same in Python and here, so the numbers are the same.
pub fn seeded_randn(seed: u64, shape: &[i64]) -> Tensor {
    let _rng = crate::runtime::seeded(seed as i64);
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

/// The noise a stochastic sampler adds at each of `steps` steps: `torch.randn` from the CPU
/// generator seeded with `seed`, after the initial latents' draw of the same `shape`, as
/// diffusers' `randn_tensor(..., generator=generator)` takes them one step after another.
pub fn step_noise(seed: u64, shape: &[i64], steps: usize) -> Vec<Tensor> {
    let _rng = crate::runtime::seeded(seed as i64);
    let _initial = Tensor::randn(shape, (Kind::Float, Device::Cpu));
    (0..steps)
        .map(|_| Tensor::randn(shape, (Kind::Float, Device::Cpu)))
        .collect()
}

/// (3, H, W) in [-1, 1] to (3, H, W) u8: `(x / 2 + 0.5).clamp(0, 1) * 255`, rounded half to
/// even as numpy rounds.
pub fn to_rgb8(image: &Tensor) -> Tensor {
    let x = (image.to_kind(Kind::Float).to_device(Device::Cpu) / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
    x.round().to_kind(Kind::Uint8)
}

/// Text-to-image from a model folder: the whole pipeline with a progress callback.
pub fn generate(
    dir: &Path,
    prompt: &str,
    negative: Option<&str>,
    o: &GenerateOptions,
    opts: RunOptions,
    on_step: impl FnMut(usize),
) -> Result<Tensor> {
    let dir = ModelDir::open(dir)?;
    let text = TextEncoders::load(&dir, opts)?;
    let cond = text.encode(prompt)?;
    let uncond = text.encode_negative(negative, &cond)?;
    drop(text);
    let den = Denoiser::load(&dir, opts)?;
    let noise = den.initial_noise(o.seed, o.width, o.height)?;
    let latents = den.sample(&cond, &uncond, &noise, o, on_step)?;
    Ok(den.decode(&latents))
}
