//! Everything the steps need besides the UNet, prepared once: the subject's cached latents,
//! the prompt embeddings, the class images of prior preservation (made with the base model
//! when missing), and what sample renders need.

use tch::Kind;

use super::dataset::{self, Example};
use super::trainer::Progress;
use super::{buckets, captions, masks};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::schedule::config::SchedulerConfig;
use crate::schedule::sampler::SamplerKind;
use crate::sdxl::model_dir::ModelDir;
use crate::sdxl::pipeline::{PromptEmbeds, RunOptions, TextEncoders};
use crate::sdxl::vae::AutoencoderKL;

/// Prompt embeddings and cached latents: everything the steps need besides the UNet.
#[derive(Debug)]
pub struct TrainData {
    pub instance: Vec<Example>,
    pub instance_prompt: PromptEmbeds,
    /// The photos' own prompts from their caption files (filled in) and their embeddings;
    /// `Example::caption` indexes them.
    pub captions: Vec<(String, PromptEmbeds)>,
    /// Class images for prior preservation, their prompt, and the loss weight.
    pub class: Option<(Vec<Example>, PromptEmbeds, f64)>,
    pub scaling_factor: f64,
    /// Kept only when `train.sample_every` asks for sample renders during training.
    pub sampler: Option<Sampler>,
    /// The photos held out of training for the validation loss (`train.validation_split`):
    /// one centre crop each, unflipped.
    pub validation: Vec<Example>,
}

/// What sample renders during training need besides the UNet.
#[derive(Debug)]
pub struct Sampler {
    pub vae: AutoencoderKL,
    pub uncond: PromptEmbeds,
    pub scheduler: SchedulerConfig,
    /// `render.scheduler`: samples are drawn with the renders' sampler.
    pub kind: SamplerKind,
    /// The VAE's downscaling (8 for SDXL, 4 for the toy world) and the UNet's latent channels:
    /// the shape of a sample's starting noise.
    pub vae_factor: i64,
    pub latent_channels: i64,
}

/// Make class images with the base model until `class_images` holds `generate` of them
/// (prior preservation), as diffusers' DreamBooth script does.
fn generate_class_images(
    cfg: &RunConfig,
    dir: &ModelDir,
    text: &TextEncoders,
    opts: RunOptions,
    progress: &mut dyn Progress,
) -> Result<()> {
    let Some(pp) = &cfg.train.prior_preservation else {
        return Ok(());
    };
    std::fs::create_dir_all(&pp.class_images).map_err(|e| Error::io(&pp.class_images, e))?;
    let have = std::fs::read_dir(&pp.class_images)
        .map_err(|e| Error::io(&pp.class_images, e))?
        .flatten()
        .filter(|e| dataset::is_photo(&e.path()))
        .count();
    if have >= pp.generate {
        return Ok(());
    }
    let prompt = cfg.subject.fill(&pp.prompt);
    progress.note(&format!(
        "prior preservation: making {} class images of {prompt:?} with the base model in {}",
        pp.generate - have,
        pp.class_images.display()
    ));
    let cond = text.encode(&prompt)?;
    let uncond = text.encode_negative(None, &cond)?;
    let den = {
        let _quiet = crate::runtime::nothing_to_save();
        crate::sdxl::pipeline::Denoiser::load(dir, opts)?
    };
    let size = cfg.train.resolution;
    let sampler = SamplerKind::parse_setting("render.scheduler", &cfg.render.scheduler)?;
    progress.phase("class", "image", (pp.generate - have) as u64);
    for i in have..pp.generate {
        // Sampling writes nothing: a stop ends it at once. The picture is written whole.
        let quiet = crate::runtime::nothing_to_save();
        let o = crate::sdxl::pipeline::GenerateOptions {
            steps: cfg.render.steps,
            guidance: cfg.render.guidance,
            width: size,
            height: size,
            seed: cfg.seed.wrapping_add(i as u64),
            sampler,
        };
        let noise = den.initial_noise(o.seed, size, size)?;
        let latents = den.sample(&cond, &uncond, &noise, &o, |_| {})?;
        let img = crate::sdxl::image_processing::rgb_image(&den.decode(&latents))?;
        drop(quiet);
        let path = pp.class_images.join(format!("class_{i:04}.png"));
        crate::fsutil::write_png(&path, &img, &[("prompt", prompt.clone())])?;
        progress.phase_step((i + 1 - have) as u64);
        crate::runtime::check_interrupted("while making class images")?;
    }
    Ok(())
}

/// A caller's note function as a [`Progress`] (no bars).
struct Notes<F>(F);

impl<F: FnMut(&str)> Progress for Notes<F> {
    fn note(&mut self, msg: &str) {
        (self.0)(msg)
    }
}

/// Load the photos, embed the prompts and encode the latents. The text encoders and the VAE
/// are freed before training starts.
pub fn prepare_data(
    cfg: &RunConfig,
    dir: &ModelDir,
    opts: RunOptions,
    note: impl FnMut(&str),
) -> Result<TrainData> {
    prepare_data_and_text(cfg, dir, opts, &mut Notes(note)).map(|(data, _)| data)
}

/// `prepare_data`, keeping the text encoders when the run adapts them
/// (`adapter.text_encoder_targets`). Loading, caching latents and making class images show as
/// phases on `progress`; a stop signal meanwhile ends the process at once (nothing is written
/// but whole class images).
pub fn prepare_data_and_text(
    cfg: &RunConfig,
    dir: &ModelDir,
    opts: RunOptions,
    progress: &mut dyn Progress,
) -> Result<(TrainData, Option<TextEncoders>)> {
    let r = cfg.train.resolution;
    let size = format!("train.resolution {r}");
    let mut note = |m: &str| progress.note(m);
    if let Some(w) = dir.native_size()?.warning(&size, r, r) {
        note(&w);
    }
    let photos =
        dataset::load_subject_photos(&cfg.subject.images, cfg.train.resolution, &mut note)?;
    note(&format!(
        "{} photos in {}",
        photos.len(),
        cfg.subject.images.display()
    ));
    let (caption_texts, photo_captions) = captions::captions(&photos, &cfg.subject, &mut note)?;
    let (photos, photo_captions, held_out) =
        super::validation::split(cfg, photos, photo_captions, &mut note);
    let photo_masks = if cfg.train.masked_loss {
        masks::load_masks(&photos, &mut note)?
    } else {
        Vec::new()
    };
    let placements = if cfg.train.buckets.is_none() {
        None
    } else {
        let unet = dir.unet_config()?;
        let factor = dir.vae_config()?.scale_factor() << (unet.block_out_channels.len() - 1);
        // The settings again, now that the model's own downscaling is known.
        cfg.train
            .check_buckets(factor)
            .map_err(|e| Error::setting("train.buckets", e))?;
        let buckets = buckets::for_settings(&cfg.train, factor);
        buckets::check_fit(&buckets, factor)?;
        Some(buckets::place_all(&photos, &buckets, &mut note)?)
    };
    // Loading and caching write nothing: a stop signal meanwhile ends the run at once.
    let quiet = crate::runtime::nothing_to_save();
    progress.phase("load", "model part", 2);
    let text = TextEncoders::load(dir, opts)?;
    progress.phase_step(1);
    let w = dir.weights("vae", Kind::Float, opts.device)?;
    let vae = AutoencoderKL::new(&w, &dir.vae_config()?)?;
    crate::sdxl::model_dir::check_all_used(&w)?;
    drop(w);
    progress.phase_step(2);
    let mut note = |m: &str| progress.note(m);
    let prompt = cfg.instance_prompt();
    warn_if_truncated(&text, &prompt, &mut note);
    let instance_prompt = text.encode(&prompt)?;
    let mut captions = Vec::new();
    for c in caption_texts {
        warn_if_truncated(&text, &c, &mut note);
        let embeds = text.encode(&c)?;
        captions.push((c, embeds));
    }
    if !captions.is_empty() {
        let n = photo_captions.iter().flatten().count();
        note(&format!(
            "{n} of {} {} own caption ({} distinct)",
            crate::words::count(photos.len(), "photo"),
            crate::words::verb(n, "has its", "have their"),
            captions.len()
        ));
    }
    let class_prompt = match &cfg.train.prior_preservation {
        Some(pp) => Some(text.encode(&cfg.subject.fill(&pp.prompt))?),
        None => None,
    };
    drop(quiet);
    generate_class_images(cfg, dir, &text, opts, progress)?;
    let _quiet = crate::runtime::nothing_to_save();
    // A stop that came in between found nothing to end at once.
    crate::runtime::check_interrupted("before caching latents")?;
    let uncond = text.encode_negative(None, &instance_prompt)?;
    let text = (!cfg.adapter.text_encoder_targets.is_empty()).then_some(text);

    let t = &cfg.train;
    let rng = crate::runtime::seeded(cfg.seed as i64);
    let variants = dataset::Variants {
        resolution: t.resolution,
        center_crop: t.center_crop,
        random_flip: t.random_flip,
        crops: t.crops_per_image,
    };
    let class_photos = match &cfg.train.prior_preservation {
        Some(pp) if class_prompt.is_some() => Some(dataset::load_photos(&pp.class_images)?),
        _ => None,
    };
    let one_crop = dataset::Variants {
        crops: 1,
        ..variants
    };
    // Every bucket the subject's photos use, in a fixed order (class images go into each).
    let used: Vec<buckets::Bucket> = placements.as_ref().map_or(Vec::new(), |placed| {
        let mut used: Vec<buckets::Bucket> = placed.iter().map(|p| p.bucket).collect();
        used.sort();
        used.dedup();
        used
    });
    let total = photos.len() * variants.per_photo()
        + class_photos
            .as_ref()
            .map_or(0, |c| c.len() * one_crop.per_photo() * used.len().max(1))
        + held_out.len();
    if let Some(placed) = &placements {
        progress.note(&format!("buckets: {}", buckets::summary(placed)));
    }
    progress.phase("cache", "latent", total as u64);
    let mut done = 0u64;
    let mut tick = || {
        done += 1;
        progress.phase_step(done);
    };
    let instance = match &placements {
        None => dataset::encode_examples(
            &photos,
            &photo_captions,
            &photo_masks,
            &vae,
            variants,
            opts.device,
            &mut tick,
        )?,
        Some(placed) => buckets::encode_examples(
            &photos,
            placed,
            &photo_captions,
            &photo_masks,
            &vae,
            variants,
            opts.device,
            &mut tick,
        )?,
    };
    let class = match (&cfg.train.prior_preservation, class_prompt, class_photos) {
        (Some(pp), Some(embeds), Some(photos)) => {
            let ex = match &placements {
                None => dataset::encode_examples(
                    &photos,
                    &[],
                    &[],
                    &vae,
                    one_crop,
                    opts.device,
                    &mut tick,
                )?,
                Some(_) => buckets::encode_into_each(
                    &photos,
                    &used,
                    &vae,
                    one_crop,
                    opts.device,
                    &mut tick,
                )?,
            };
            Some((ex, embeds, pp.weight))
        }
        _ => None,
    };
    // Held-out photos: a centre crop each, unflipped (nothing drawn).
    let (held_photos, held_captions): (Vec<_>, Vec<_>) = held_out.into_iter().unzip();
    let centre = dataset::Variants {
        resolution: t.resolution,
        center_crop: true,
        random_flip: false,
        crops: 1,
    };
    // Held-out photos are measured with their masks too, the loss training minimises (their
    // missing masks were not counted in the run's notice: they are not trained on).
    let held_masks = if t.masked_loss {
        masks::load_masks(&held_photos, &mut |_| {})?
    } else {
        Vec::new()
    };
    let validation = dataset::encode_examples(
        &held_photos,
        &held_captions,
        &held_masks,
        &vae,
        centre,
        opts.device,
        &mut tick,
    )?;
    progress.note(&format!(
        "{} cached latent variants (crops x flips)",
        instance.len()
    ));
    // The crop offsets of both sets are drawn; the generator is free again.
    drop(rng);
    let scaling_factor = vae.scaling_factor();
    let sampler = if cfg.train.sample_every > 0 {
        Some(Sampler {
            vae,
            uncond,
            scheduler: dir.scheduler_config()?,
            kind: SamplerKind::parse_setting("render.scheduler", &cfg.render.scheduler)?,
            vae_factor: dir.vae_config()?.scale_factor(),
            latent_channels: dir.unet_config()?.in_channels,
        })
    } else {
        None
    };
    let data = TrainData {
        instance,
        instance_prompt,
        captions,
        class,
        scaling_factor,
        sampler,
        validation,
    };
    Ok((data, text))
}

fn warn_if_truncated(text: &TextEncoders, prompt: &str, note: &mut impl FnMut(&str)) {
    if let Ok(Some(warning)) = text.truncation_warning(prompt) {
        note(&warning);
    }
}
