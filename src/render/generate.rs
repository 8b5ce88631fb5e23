//! One picture from a prompt: the model's own pipeline, with an adapter file merged in.

use std::path::Path;

use tch::Tensor;

use crate::adapter::{self, file::AdapterFile};
use crate::error::Result;
use crate::sdxl::model_dir::ModelDir;
use crate::sdxl::pipeline::{Denoiser, GenerateOptions, RunOptions, TextEncoders};

/// What [`generate`] reports while it works: warnings, and each finished sampling step.
pub trait GenerateProgress {
    fn note(&mut self, _msg: &str) {}
    fn step(&mut self, _done: usize) {}
}

/// Reports nothing.
pub struct Silent;
impl GenerateProgress for Silent {}

/// `sdxl::pipeline::generate` with an optional adapter file and strength, merged into the weights of the UNet
/// (and of the text encoders when it adapts them).
pub fn generate(
    dir: &Path,
    prompt: &str,
    negative: Option<&str>,
    adapter: Option<(&Path, f64)>,
    o: &GenerateOptions,
    opts: RunOptions,
    progress: &mut dyn GenerateProgress,
) -> Result<Tensor> {
    let dir = ModelDir::open(dir)?;
    // Read the adapter first: a wrong file fails before minutes of loading.
    let adapter = match adapter {
        Some((p, s)) => Some((AdapterFile::read(p)?, p, s)),
        None => None,
    };
    let mut text = TextEncoders::load(&dir, opts)?;
    // Text-encoder adapters change the prompt embeddings: they go in (merged) before encoding.
    if let Some((file, path, scale)) = &adapter {
        file.apply_text_encoders(&mut text, *scale, path)?;
        adapter::merge_text_encoders(&mut text);
    }
    // diffusers' warning when the prompt is longer than CLIP keeps, naming the cut words.
    if let Some(warning) = text.truncation_warning(prompt)? {
        progress.note(&warning);
    }
    let cond = text.encode(prompt)?;
    let uncond = text.encode_negative(negative, &cond)?;
    drop(text);
    let mut den = Denoiser::load(&dir, opts)?;
    if let Some((file, path, scale)) = adapter {
        file.apply(&mut den.unet, scale, path)?;
        adapter::merge_all(&mut den.unet);
    }
    let noise = den.initial_noise(o.seed, o.width, o.height)?;
    let latents = den.sample(&cond, &uncond, &noise, o, |i| progress.step(i))?;
    Ok(den.decode(&latents))
}
