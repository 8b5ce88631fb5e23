//! `moslora init-model` and `moslora generate`: a random model, one image from a prompt.

use std::path::PathBuf;

use clap::Args;

use moslora::render::generate::GenerateProgress;
use moslora::runtime::{parse_dtype, Given};
use moslora::schedule::sampler::SamplerKind;
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
    /// SDXL model: a diffusers folder, a single-file .safetensors checkpoint, or a Hugging
    /// Face id (org/name[@revision]) when no path of that name exists
    #[arg(long)]
    model: PathBuf,
    /// What to draw, e.g. "a photo of a sks dog on the beach"
    #[arg(long)]
    prompt: String,
    /// Negative prompt (absent: SDXL's zero unconditional embedding)
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Seed of the initial noise: the same seed gives the same picture
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Denoising steps
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Sampler: euler, euler_a, heun, ddim, dpmpp_2m, dpmpp_2m_karras, dpmpp_2m_sde_karras or
    /// unipc (A1111's names, "DPM++ 2M Karras", and diffusers' class names work too)
    #[arg(long, default_value = "euler")]
    scheduler: String,
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
    let sampler = SamplerKind::parse_setting("--scheduler", &a.scheduler)?;
    let opts = RunOptions::from_names(&a.device.device, a.device.dtype.as_deref(), Given::Flag)?;
    super::models::fetch_model(&a.model, opts.dtype)?;
    super::set_threads(
        &a.model,
        moslora::runtime::Threads::Auto,
        opts.device,
        &[(a.width, a.height)],
    )?;
    let dir = moslora::sdxl::model_dir::ModelDir::open(&a.model)?;
    let native_size = dir.native_size()?;
    let native = native_size.pixels();
    let o = GenerateOptions {
        steps: a.steps,
        guidance: a.guidance,
        width: a.width.unwrap_or(native),
        height: a.height.unwrap_or(native),
        seed: a.seed,
        sampler,
    };
    let mut bar = Bar::new();
    let size = format!("--width {} --height {}", o.width, o.height);
    if let Some(warning) = native_size.warning(&size, o.width, o.height) {
        bar.note(&warning);
    }
    // Heun evaluates the UNet twice per step: the bar counts evaluations.
    let evaluations = {
        let mut s = sampler.build(&dir.scheduler_config()?)?;
        s.set_timesteps(a.steps)?;
        s.timesteps().len()
    };
    bar.begin("generating", "step", evaluations as u64, 0, false);
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
