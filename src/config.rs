//! RUN.yaml: one file per subject run. Every field has a default; unknown fields are refused
//! with the nearest valid name suggested. Relative paths are relative to the file's folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::adapter::AdapterConfig;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// SDXL model: a diffusers folder, a single-file checkpoint, or a Hugging Face id
    /// (`org/name`, `org/name@revision`) when no path of that name exists.
    #[serde(default = "default_model")]
    pub model: PathBuf,
    /// Where adapters, logs and renders go.
    #[serde(default = "default_output")]
    pub output: PathBuf,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_device")]
    pub device: String,
    /// dtype of the frozen UNet and text encoders: f32 (CPU), bf16/f16 (CUDA); default by device.
    #[serde(default)]
    pub dtype: Option<String>,
    /// libtorch's intra-op threads: `auto` (by the model's size; see `runtime::choose_threads`)
    /// or a count. `MOSLORA_THREADS` overrides it; `OMP_NUM_THREADS` caps it.
    #[serde(default, skip_serializing_if = "crate::runtime::Threads::is_auto")]
    pub threads: crate::runtime::Threads,
    #[serde(default)]
    pub subject: Subject,
    #[serde(default)]
    pub train: Train,
    #[serde(default)]
    pub adapter: AdapterConfig,
    /// The adapters `train` and `compare` make, and the comparison's columns in this order:
    /// any of lora, moslora, dora, loha, lokr. Default: lora and moslora.
    #[serde(
        default = "default_adapters",
        skip_serializing_if = "is_default_adapters"
    )]
    pub adapters: Vec<String>,
    /// Give each adapter the rank whose trainable UNet parameters come nearest LoRA's at
    /// `adapter.rank` (a comparison at equal size); false: every adapter has `adapter.rank`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub same_parameters: bool,
    #[serde(default)]
    pub render: Render,
    /// Encoders for the automatic metrics; `compare` scores its renders when one is given.
    #[serde(default)]
    pub metrics: Metrics,
}

/// `metrics: {clip: DIR, dino: DIR}`: transformers folders (or Hugging Face ids) of a
/// CLIPModel (CLIP-I, CLIP-T) and a DINO ViTModel. Neither given: no scoring.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    #[serde(default)]
    pub clip: Option<PathBuf>,
    #[serde(default)]
    pub dino: Option<PathBuf>,
}

impl Metrics {
    pub fn any(&self) -> bool {
        self.clip.is_some() || self.dino.is_some()
    }
}

/// How `render` and `compare` draw the comparison.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Render {
    /// A prompt-set file (YAML); default: the bundled 8-prompt study set.
    #[serde(default)]
    pub prompts: Option<PathBuf>,
    /// The named list in the prompt-set file (e.g. `object` or `live`).
    #[serde(default)]
    pub set: Option<String>,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    #[serde(default = "default_render_steps")]
    pub steps: usize,
    #[serde(default = "default_guidance")]
    pub guidance: f64,
    #[serde(default = "default_scheduler")]
    pub scheduler: String,
    /// Image size; default: the model's native size.
    #[serde(default)]
    pub width: Option<i64>,
    #[serde(default)]
    pub height: Option<i64>,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// Add the base model without adapter as a reference column.
    #[serde(default)]
    pub include_base: bool,
    /// Output folder; default: `<output>/renders`.
    #[serde(default)]
    pub out: Option<PathBuf>,
}

fn default_seeds() -> Vec<u64> {
    vec![0, 1, 2, 3]
}
fn default_render_steps() -> usize {
    50
}
fn default_guidance() -> f64 {
    5.0
}
fn default_scheduler() -> String {
    "euler".into()
}

impl Default for Render {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every field has a default")
    }
}

fn default_adapters() -> Vec<String> {
    vec!["lora".into(), "moslora".into()]
}
fn is_default_adapters(a: &[String]) -> bool {
    a == default_adapters().as_slice()
}

fn default_model() -> PathBuf {
    PathBuf::from("stable-diffusion-xl-base-1.0")
}
fn default_output() -> PathBuf {
    PathBuf::from("output")
}
fn default_device() -> String {
    "cpu".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// A name for people (galleries, studies); default: the photo folder's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Folder of the subject's photos (JPEG, PNG, WebP).
    #[serde(default = "default_images")]
    pub images: PathBuf,
    /// The rare token that comes to mean the subject ("[V]" in prompts).
    #[serde(default = "default_identifier")]
    pub identifier: String,
    /// The class noun ("{class}" in prompts).
    #[serde(default = "default_class", rename = "class")]
    pub class_noun: String,
    /// The training prompt.
    #[serde(default = "default_prompt")]
    pub prompt: String,
}

fn default_images() -> PathBuf {
    PathBuf::from("photos")
}
fn default_identifier() -> String {
    "sks".into()
}
fn default_class() -> String {
    "dog".into()
}
fn default_prompt() -> String {
    "a photo of [V] {class}".into()
}

impl Default for Subject {
    fn default() -> Self {
        Subject {
            name: None,
            images: default_images(),
            identifier: default_identifier(),
            class_noun: default_class(),
            prompt: default_prompt(),
        }
    }
}

impl Subject {
    /// The subject's name for people.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.images
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.class_noun.clone())
        })
    }

    /// "[V]" becomes the identifier, "{class}" the class noun.
    pub fn fill(&self, template: &str) -> String {
        template
            .replace("[V]", &self.identifier)
            .replace("{class}", &self.class_noun)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    Constant,
    ConstantWithWarmup,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Adam {
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_adam_eps")]
    pub eps: f64,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_wd() -> f64 {
    1e-4
}
fn default_adam_eps() -> f64 {
    1e-8
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            beta1: default_beta1(),
            beta2: default_beta2(),
            weight_decay: default_wd(),
            eps: default_adam_eps(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriorPreservation {
    /// Folder of class images; made with the base model if it holds fewer than `generate`.
    pub class_images: PathBuf,
    /// How many class images to have (generated as needed).
    #[serde(default = "default_class_count")]
    pub generate: usize,
    /// Prompt of the class images.
    #[serde(default = "default_class_prompt")]
    pub prompt: String,
    #[serde(default = "one")]
    pub weight: f64,
}

fn default_class_count() -> usize {
    100
}
fn default_class_prompt() -> String {
    "a photo of {class}".into()
}
fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Train {
    #[serde(default = "default_steps")]
    pub steps: u64,
    #[serde(default = "default_batch")]
    pub batch_size: i64,
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    #[serde(default = "default_schedule")]
    pub lr_schedule: LrSchedule,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_resolution")]
    pub resolution: i64,
    #[serde(default)]
    pub center_crop: bool,
    #[serde(default = "yes")]
    pub random_flip: bool,
    #[serde(default = "one")]
    pub max_grad_norm: f64,
    #[serde(default)]
    pub adam: Adam,
    #[serde(default)]
    pub prior_preservation: Option<PriorPreservation>,
    /// Min-SNR loss weighting gamma (5 is the usual value); none by default.
    #[serde(default)]
    pub snr_gamma: Option<f64>,
    #[serde(default)]
    pub noise_offset: f64,
    /// Write a resumable checkpoint every N steps (0: only at the end and on Ctrl-C).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Render a sample image every N steps (0: never).
    #[serde(default)]
    pub sample_every: u64,
    /// Crops per photo and flip side whose VAE latents are cached (random crops only).
    #[serde(default = "default_crops")]
    pub crops_per_image: usize,
    /// Recompute activations segment by segment in the backward pass (less memory, ~30 % slower).
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Aspect-ratio buckets: `none` (square crops of `resolution`), `sdxl` (SDXL's list of
    /// about 1024² pixels) or `kohya` (kohya's rule, sized by `resolution`). Left out of the
    /// saved settings while `none`, so that runs made before buckets keep their fingerprints.
    #[serde(default, skip_serializing_if = "Buckets::is_none")]
    pub buckets: Buckets,
    /// kohya buckets: sides step by this many pixels (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_step: Option<i64>,
    /// kohya buckets: the shortest side a bucket may have (default resolution / 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_min: Option<i64>,
    /// kohya buckets: the longest side a bucket may have (default resolution x 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_max: Option<i64>,
    /// Keep the adapter every N steps as `<kind>/adapters/step<N>.safetensors`, to pick the
    /// step that neither under- nor overfits (0: only the final adapter).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub save_adapter_every: u64,
    /// Measure the validation loss every N steps, and at the last (0: never). Bookkeeping:
    /// the adapters come out the same with or without it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub validate_every: u64,
    /// The share of the photos held out of training for the validation loss (0: validate on
    /// the training photos at fixed timesteps). Left out of the saved settings while 0.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub validation_split: f64,
    /// Weight the loss by each photo's mask (`photo.mask.png` beside it, or its alpha
    /// channel; white = subject), as sd-scripts' `--masked_loss`. Both mask fields are left
    /// out of the saved settings while off, so that earlier runs keep their fingerprints.
    #[serde(default, skip_serializing_if = "is_false")]
    pub masked_loss: bool,
    /// With `masked_loss`: the loss weight of the background (0: ignored, 1: as the subject).
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub mask_background_weight: f64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_f64(x: &f64) -> bool {
    *x == 0.0
}

/// How photos become training pictures: one square crop size, or buckets of about the same
/// area and several aspect ratios (each photo goes to the bucket closest to its own).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Buckets {
    /// Square crops of `train.resolution` (diffusers' DreamBooth script).
    #[default]
    None,
    /// The 40 buckets SDXL was trained with (its paper's list, 512x2048 to 2048x512).
    Sdxl,
    /// kohya's rule: sides in steps of `bucket_step` from `bucket_min` to `bucket_max`, area at
    /// most `resolution`².
    Kohya,
}

impl Buckets {
    pub fn is_none(&self) -> bool {
        *self == Buckets::None
    }
}

/// The model's downscaling assumed while only the RUN.yaml is known (the VAE's factor 8);
/// the data preparation checks again with the model's own.
pub const ASSUMED_FACTOR: i64 = 8;

impl Train {
    /// kohya's bucket sides (step, min, max) for a model whose sides must be multiples of
    /// `factor` pixels: the values set, and for those left out, defaults that follow
    /// `resolution` as kohya's do at 1024 (step 64 = resolution / 16, min resolution / 4, max
    /// resolution x 2), the step rounded up to a multiple of `factor`, min and max to
    /// multiples of the step, min at most the resolution.
    pub fn kohya_bucket_sides(&self, factor: i64) -> (i64, i64, i64) {
        let r = self.resolution;
        let up = |v: i64, m: i64| (v.max(1) + m - 1) / m * m;
        let step = self
            .bucket_step
            .unwrap_or_else(|| up(r / 16, factor.max(1)));
        let step_ok = step.max(1);
        let min = self
            .bucket_min
            .unwrap_or_else(|| up(r / 4, step_ok).min(r / step_ok * step_ok).max(step_ok));
        let max = self
            .bucket_max
            .unwrap_or_else(|| up((r * 2).max(min), step_ok));
        (step, min, max)
    }

    /// The bucket settings' own checks, for a model whose sides must be multiples of `factor`
    /// pixels (see [`ASSUMED_FACTOR`]; the buckets themselves are checked against the model
    /// when it is loaded). A value the user left out is never blamed: the defaults fit.
    pub fn check_buckets(&self, factor: i64) -> std::result::Result<(), String> {
        let r = self.resolution;
        match self.buckets {
            Buckets::None => {
                let set = [
                    ("bucket_step", self.bucket_step),
                    ("bucket_min", self.bucket_min),
                    ("bucket_max", self.bucket_max),
                ];
                if let Some((name, _)) = set.iter().find(|(_, v)| v.is_some()) {
                    return Err(format!(
                        "train.{name} is set but train.buckets is `none`: set train.buckets \
                         to `kohya` to use it"
                    ));
                }
            }
            Buckets::Sdxl => {
                if r != 1024 {
                    return Err(format!(
                        "train.buckets: `sdxl` is SDXL's list of buckets of about 1024x1024 \
                         pixels, but train.resolution is {r}: use `kohya` (sized by \
                         train.resolution) or train at 1024"
                    ));
                }
                if self
                    .bucket_step
                    .or(self.bucket_min)
                    .or(self.bucket_max)
                    .is_some()
                {
                    return Err("train.bucket_step/bucket_min/bucket_max shape `kohya` \
                                buckets; SDXL's list is fixed"
                        .into());
                }
            }
            Buckets::Kohya => {
                let (step, min, max) = self.kohya_bucket_sides(factor);
                // "train.bucket_min (48)", or "train.bucket_min (32, its default at
                // resolution 64)" for a value the user left out.
                let shown = |name: &str, v: i64, set: Option<i64>| match set {
                    Some(_) => format!("train.{name} ({v})"),
                    None => format!("train.{name} ({v}, its default at resolution {r})"),
                };
                let step_s = shown("bucket_step", step, self.bucket_step);
                let min_s = shown("bucket_min", min, self.bucket_min);
                let max_s = shown("bucket_max", max, self.bucket_max);
                if step < 8 || step % 8 != 0 {
                    return Err(format!(
                        "{step_s} must be a positive multiple of 8 (the VAE's factor)"
                    ));
                }
                if step > r {
                    return Err(format!("{step_s} must be at most train.resolution ({r})"));
                }
                for (v, s) in [(min, &min_s), (max, &max_s)] {
                    if v % step != 0 {
                        return Err(format!("{s} must be a multiple of {step_s}"));
                    }
                }
                if min < step || min > r {
                    return Err(format!(
                        "{min_s} must be at least {step_s} and at most train.resolution ({r})"
                    ));
                }
                if max < r {
                    return Err(format!("{max_s} must be at least train.resolution ({r})"));
                }
            }
        }
        Ok(())
    }
}

fn default_steps() -> u64 {
    500
}
fn default_batch() -> i64 {
    4
}
fn default_lr() -> f64 {
    1e-4
}
fn default_schedule() -> LrSchedule {
    LrSchedule::Constant
}
fn default_resolution() -> i64 {
    1024
}
fn yes() -> bool {
    true
}
fn default_checkpoint_every() -> u64 {
    100
}
fn default_crops() -> usize {
    4
}

impl Default for Train {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every field has a default")
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every field has a default")
    }
}

impl RunConfig {
    /// Read RUN.yaml, resolve its relative paths, and check its values.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_to_string(path)?;
        let mut cfg = Self::parse(&text).map_err(|e| Error::config(path, e))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate().map_err(|e| Error::config(path, e))?;
        Ok(cfg)
    }

    /// Parse YAML text; unknown fields get a "did you mean" hint.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|e| with_suggestion(&e.to_string()))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = normalize(&base.join(&*p));
            }
        };
        // A model or encoder that is no path beside the file but spells a Hugging Face id
        // stays that id.
        let abs_or_id = |p: &mut PathBuf| {
            if p.is_relative()
                && !base.join(&*p).exists()
                && crate::hub::HubId::from_path(p).is_some()
            {
                return;
            }
            abs(p);
        };
        abs_or_id(&mut self.model);
        abs(&mut self.output);
        abs(&mut self.subject.images);
        if let Some(pp) = &mut self.train.prior_preservation {
            abs(&mut pp.class_images);
        }
        if let Some(p) = &mut self.render.prompts {
            // A bare word ("toy", "dreambooth") names a bundled prompt set unless a file of
            // that name sits beside the RUN.yaml.
            let bare = p.is_relative() && p.components().count() == 1 && p.extension().is_none();
            if !bare || base.join(&*p).exists() {
                abs(p);
            }
        }
        if let Some(p) = &mut self.render.out {
            abs(p);
        }
        for p in [&mut self.metrics.clip, &mut self.metrics.dino]
            .into_iter()
            .flatten()
        {
            abs_or_id(p);
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        self.adapter.validate().map_err(|e| e.to_string())?;
        let kinds = crate::adapter::family::KINDS;
        if self.adapters.is_empty() {
            return Err(format!(
                "adapters is empty: name at least one of {}",
                kinds.join(", ")
            ));
        }
        for (i, a) in self.adapters.iter().enumerate() {
            if !kinds.contains(&a.as_str()) {
                return Err(format!(
                    "adapters: unknown adapter {a:?}: expected one of {}",
                    kinds.join(", ")
                ));
            }
            if self.adapters[..i].contains(a) {
                return Err(format!("adapters: `{a}` is named twice"));
            }
        }
        let t = &self.train;
        let checks = [
            (t.steps >= 1, "train.steps must be at least 1"),
            (t.batch_size >= 1, "train.batch_size must be at least 1"),
            (
                t.learning_rate > 0.0 && t.learning_rate.is_finite(),
                "train.learning_rate must be positive",
            ),
            (
                t.resolution >= 8 && t.resolution % 8 == 0,
                "train.resolution must be a multiple of 8",
            ),
            (
                t.max_grad_norm > 0.0,
                "train.max_grad_norm must be positive",
            ),
            (
                t.crops_per_image >= 1,
                "train.crops_per_image must be at least 1",
            ),
            (
                (0.0..1.0).contains(&t.adam.beta1) && (0.0..1.0).contains(&t.adam.beta2),
                "train.adam betas must be in [0, 1)",
            ),
            (
                t.snr_gamma.is_none_or(|g| g > 0.0),
                "train.snr_gamma must be positive",
            ),
            (
                (0.0..1.0).contains(&t.validation_split),
                "train.validation_split must be at least 0 and below 1",
            ),
            (
                t.validation_split == 0.0 || t.validate_every > 0,
                "train.validation_split is set but train.validate_every is 0: set \
                 train.validate_every to measure the validation loss every N steps",
            ),
            (
                (0.0..=1.0).contains(&t.mask_background_weight),
                "train.mask_background_weight must be from 0 (background ignored) to 1 (no mask)",
            ),
            (
                t.masked_loss || t.mask_background_weight == 0.0,
                "train.mask_background_weight is set but train.masked_loss is false: set \
                 train.masked_loss: true to use masks",
            ),
            (
                !self.subject.identifier.trim().is_empty(),
                "subject.identifier must not be empty",
            ),
            // Recomputed UNet segments take the prompt embeddings as constants, so no
            // gradient would reach text-encoder adapters.
            (
                !t.gradient_checkpointing || self.adapter.text_encoder_targets.is_empty(),
                "train.gradient_checkpointing cannot train text-encoder adapters: set it to \
                 false or empty adapter.text_encoder_targets",
            ),
        ];
        for (ok, what) in checks {
            if !ok {
                return Err(what.to_string());
            }
        }
        t.check_buckets(ASSUMED_FACTOR)
    }

    /// Refuse a `model:` that names nothing, before any work; `run_file` is the RUN.yaml.
    pub fn check_model_exists(&self, run_file: &Path) -> Result<()> {
        // A Hugging Face id counts as its cached snapshot (an id not cached is its own error).
        if crate::hub::locate(&self.model)?.exists() {
            return Ok(());
        }
        Err(Error::config(
            run_file,
            format!(
                "model: {} does not exist: point `model:` at a downloaded SDXL folder such as \
                 stable-diffusion-xl-base-1.0 (or a single-file .safetensors checkpoint), give a \
                 Hugging Face id such as stabilityai/stable-diffusion-xl-base-1.0, or make a tiny \
                 one with `moslora init-model --preset tiny --out DIR`",
                self.model.display()
            ),
        ))
    }

    /// Where renders go.
    pub fn render_dir(&self) -> PathBuf {
        self.render
            .out
            .clone()
            .unwrap_or_else(|| self.output.join("renders"))
    }

    /// The training prompt with "[V]" and "{class}" filled in.
    pub fn instance_prompt(&self) -> String {
        self.subject.fill(&self.subject.prompt)
    }
}

/// `a/b/../c` -> `a/c`, lexically (the path need not exist yet).
pub fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown variant", a mixer
/// or scheduler name) plus "did you mean `a`?".
fn with_suggestion(message: &str) -> String {
    let Some(rest) = message
        .split("unknown field `")
        .nth(1)
        .or_else(|| message.split("unknown variant `").nth(1))
    else {
        return message.to_string();
    };
    let Some((field, tail)) = rest.split_once('`') else {
        return message.to_string();
    };
    let candidates: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    let best = candidates
        .iter()
        .map(|c| (strsim::normalized_damerau_levenshtein(field, c), *c))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, name)) if score >= 0.5 => format!("{message} (did you mean `{name}`?)"),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers_recipe() {
        let c = RunConfig::parse("").unwrap();
        assert_eq!(c.train.steps, 500);
        assert_eq!(c.train.batch_size, 4);
        assert_eq!(c.train.learning_rate, 1e-4);
        assert_eq!(c.adapter.rank, 4);
        assert_eq!(c.adapter.alpha(), 4.0);
        assert_eq!(c.instance_prompt(), "a photo of sks dog");
    }

    #[test]
    fn threads_is_auto_or_a_count_and_auto_is_not_written() {
        use crate::runtime::Threads;
        let c = RunConfig::parse("").unwrap();
        assert_eq!(c.threads, Threads::Auto);
        // Absent from a written config when auto: older settings hashes stay the same.
        assert!(!serde_yaml::to_string(&c).unwrap().contains("threads"));
        assert_eq!(
            RunConfig::parse("threads: auto").unwrap().threads,
            Threads::Auto
        );
        let c = RunConfig::parse("threads: 3").unwrap();
        assert_eq!(c.threads, Threads::Fixed(3));
        assert!(serde_yaml::to_string(&c).unwrap().contains("threads: 3"));
        for bad in ["threads: 0", "threads: -2", "threads: many"] {
            let e = RunConfig::parse(bad).unwrap_err();
            assert!(
                e.contains("expected `auto` or a whole number"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn unknown_field_suggests_nearest() {
        let e = RunConfig::parse("train:\n  stpes: 10\n").unwrap_err();
        assert!(
            e.contains("stpes") && e.contains("did you mean `steps`?"),
            "{e}"
        );
        let e = RunConfig::parse("adapter:\n  mixr: kaiming\n").unwrap_err();
        assert!(e.contains("did you mean `mixer`?"), "{e}");
        // A wrong mixer name, too.
        let e = RunConfig::parse("adapter:\n  mixer: orthogonl\n").unwrap_err();
        assert!(e.contains("did you mean `orthogonal`?"), "{e}");
    }

    #[test]
    fn bundled_run_files_parse() {
        for (name, text) in [
            ("demo.yaml", include_str!("../configs/demo.yaml")),
            (
                "sdxl-dreambooth.yaml",
                include_str!("../configs/sdxl-dreambooth.yaml"),
            ),
        ] {
            let c = RunConfig::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.train.steps, 500, "{name}: the paper's recipe");
            assert_eq!(c.train.batch_size, 4);
        }
        // SDXL keeps the paper's rate; the toy model's was chosen by measurement (README).
        let sdxl = RunConfig::parse(include_str!("../configs/sdxl-dreambooth.yaml")).unwrap();
        assert_eq!(sdxl.train.learning_rate, 1e-4);
    }

    #[test]
    fn a_bare_prompt_set_name_stays_a_name() {
        let dir = std::env::temp_dir().join(format!("moslora-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = dir.join("run.yaml");
        for (value, expected) in [
            ("toy", PathBuf::from("toy")),
            ("sets/toy.yaml", dir.join("sets/toy.yaml")),
            ("mine.yaml", dir.join("mine.yaml")),
        ] {
            std::fs::write(&run, format!("render:\n  prompts: {value}\n")).unwrap();
            let c = RunConfig::load(&run).unwrap();
            assert_eq!(c.render.prompts, Some(expected), "{value}");
        }
        // A file of that name beside the RUN.yaml wins over the bundled set.
        std::fs::write(dir.join("toy"), "prompts: [\"a [V] {class}\"]\n").unwrap();
        std::fs::write(&run, "render:\n  prompts: toy\n").unwrap();
        let c = RunConfig::load(&run).unwrap();
        assert_eq!(c.render.prompts, Some(dir.join("toy")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hugging_face_ids_stay_ids_unless_a_folder_has_the_name() {
        let dir = std::env::temp_dir().join(format!("moslora-cfg-id-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("models/sdxl")).unwrap();
        let run = dir.join("run.yaml");
        let text = "model: stabilityai/stable-diffusion-xl-base-1.0@main\nmetrics:\n  \
                    clip: openai/clip-vit-base-patch32\n  dino: enc/dino\n";
        std::fs::write(&run, text).unwrap();
        let c = RunConfig::load(&run).unwrap();
        let id = PathBuf::from("stabilityai/stable-diffusion-xl-base-1.0@main");
        assert_eq!(c.model, id);
        assert_eq!(
            c.metrics.clip,
            Some(PathBuf::from("openai/clip-vit-base-patch32"))
        );
        // `enc/dino` could be an id too: with no folder of that name it stays one.
        assert_eq!(c.metrics.dino, Some(PathBuf::from("enc/dino")));
        // A folder beside the RUN.yaml wins; `./` and paths of other shapes are paths.
        for (value, expected) in [
            ("models/sdxl", dir.join("models/sdxl")),
            ("./org/name", dir.join("org/name")),
            (
                "weights/sdxl.safetensors",
                dir.join("weights/sdxl.safetensors"),
            ),
            ("a/b/c", dir.join("a/b/c")),
        ] {
            std::fs::write(&run, format!("model: {value}\n")).unwrap();
            assert_eq!(RunConfig::load(&run).unwrap().model, expected, "{value}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn metrics_section() {
        let c = RunConfig::parse("metrics:\n  clip: enc/clip\n  dino: enc/dino\n").unwrap();
        assert_eq!(c.metrics.clip, Some(PathBuf::from("enc/clip")));
        assert!(c.metrics.any());
        assert!(!RunConfig::parse("").unwrap().metrics.any());
        let e = RunConfig::parse("metrics:\n  clp: x\n").unwrap_err();
        assert!(e.contains("did you mean `clip`?"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let c = RunConfig::parse("adapter:\n  rank: 0\n").unwrap();
        assert!(c.validate().unwrap_err().contains("rank"));
        assert!(RunConfig::parse("adapter:\n  mixer: sideways\n").is_err());
    }
}
