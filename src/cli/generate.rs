//! `moslora init-model` and `moslora generate`: a random model, one image from a prompt.

use std::path::PathBuf;

use clap::Args;

use moslora::runtime::parse_dtype;
use moslora::sdxl::init_model::{init_model, InitOptions};
use moslora::sdxl::pipeline::{GenerateOptions, RunOptions};
use moslora::Result;

use super::progress::Bar;

#[derive(Args)]
pub struct InitModelArgs {
    /// `tiny` (a few MB, for tests and the demo) or `sdxl-base` (the full SDXL base 1.0 sizes)
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Seed of the random weights
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (must not exist, or be empty, unless --force)
    #[arg(long)]
    out: PathBuf,
    /// dtype of the written weights: f32 or f16
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Replace an existing folder
    #[arg(long)]
    force: bool,
}

pub fn run_init_model(a: InitModelArgs) -> Result<()> {
    let dtype = parse_dtype(&a.dtype)?;
    init_model(
        &a.out,
        &InitOptions {
            preset: &a.preset,
            seed: a.seed,
            dtype,
            force: a.force,
        },
    )?;
    println!(
        "wrote a random `{}` SDXL model to {}",
        a.preset,
        a.out.display()
    );
    Ok(())
}

#[derive(Args)]
struct DeviceArgs {
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
    /// dtype of the UNet and text encoders: f32 (CPU), bf16 or f16 (CUDA); the VAE stays f32
    #[arg(long)]
    dtype: Option<String>,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// SDXL model: a diffusers folder or a single-file .safetensors checkpoint
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    /// Negative prompt (absent: SDXL's zero unconditional embedding)
    #[arg(long)]
    negative_prompt: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale (1 or less disables the unconditional pass)
    #[arg(long, default_value_t = 5.0)]
    guidance: f64,
    /// Image width in pixels (default: the model's native size)
    #[arg(long)]
    width: Option<i64>,
    /// Image height in pixels (default: the model's native size)
    #[arg(long)]
    height: Option<i64>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Apply a trained adapter file (merged into the weights for speed)
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Strength of the adapter (1.0 = as trained)
    #[arg(long, default_value_t = 1.0)]
    adapter_scale: f64,
    /// Output PNG file
    #[arg(long)]
    out: PathBuf,
}

pub fn run_generate(a: GenerateArgs) -> Result<()> {
    let opts = RunOptions::from_names(&a.device.device, a.device.dtype.as_deref())?;
    let threads = moslora::runtime::Threads::Auto;
    super::set_threads(&a.model, threads, opts.device, &[(a.width, a.height)])?;
    let dir = moslora::sdxl::model_dir::ModelDir::open(&a.model)?;
    let native = dir.unet_config()?.sample_size * dir.vae_config()?.scale_factor();
    let o = GenerateOptions {
        steps: a.steps,
        guidance: a.guidance,
        width: a.width.unwrap_or(native),
        height: a.height.unwrap_or(native),
        seed: a.seed,
    };
    let mut bar = Bar::new();
    bar.begin("generating", "step", a.steps as u64, 0, false);
    let adapter = a.adapter.as_ref().map(|p| (p.as_path(), a.adapter_scale));
    let image = moslora::render::generate::generate(
        &a.model,
        &a.prompt,
        a.negative_prompt.as_deref(),
        adapter,
        &o,
        opts,
        &mut bar,
    )?;
    bar.clear();
    let img = moslora::sdxl::image_processing::rgb_image(&image)?;
    moslora::fsutil::write_png(&a.out, &img, &[])?;
    println!("wrote {}", a.out.display());
    Ok(())
}
