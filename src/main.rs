//! The `moslora` command line: parse, call the library, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use moslora::runtime::{check_dtype_for_device, parse_device, parse_dtype};
use moslora::sdxl::init_model::{init_model, InitOptions};
use moslora::sdxl::pipeline::{self, GenerateOptions, RunOptions};
use moslora::Result;

#[derive(Parser)]
#[command(
    name = "moslora",
    version,
    about = "Personalise Stable Diffusion XL on a few photos with LoRA and MoSLoRA, and compare them",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a random SDXL-architecture model in the diffusers folder layout
    InitModel(InitModelArgs),
    /// Render one image from a prompt
    Generate(GenerateArgs),
}

#[derive(Args)]
struct InitModelArgs {
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

#[derive(Args)]
struct DeviceArgs {
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
    /// dtype of the UNet and text encoders: f32 (CPU), bf16 or f16 (CUDA); the VAE stays f32
    #[arg(long)]
    dtype: Option<String>,
}

impl DeviceArgs {
    fn options(&self) -> Result<RunOptions> {
        let device = parse_device(&self.device)?;
        let dtype = match &self.dtype {
            Some(d) => parse_dtype(d)?,
            None if device.is_cuda() => tch::Kind::BFloat16,
            None => tch::Kind::Float,
        };
        check_dtype_for_device(dtype, device)?;
        Ok(RunOptions { device, dtype })
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// SDXL model folder (diffusers layout)
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
    /// Output PNG file
    #[arg(long)]
    out: PathBuf,
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} steps, {per_sec}, {elapsed} elapsed, {eta} left",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::InitModel(a) => {
            let dtype = parse_dtype(&a.dtype)?;
            init_model(
                &a.out,
                &InitOptions { preset: &a.preset, seed: a.seed, dtype, force: a.force },
            )?;
            println!("wrote a random `{}` SDXL model to {}", a.preset, a.out.display());
            Ok(())
        }
        Command::Generate(a) => {
            let opts = a.device.options()?;
            let dir = moslora::sdxl::model_dir::ModelDir::open(&a.model)?;
            let native = dir.unet_config()?.sample_size * dir.vae_config()?.scale_factor();
            let o = GenerateOptions {
                steps: a.steps,
                guidance: a.guidance,
                width: a.width.unwrap_or(native),
                height: a.height.unwrap_or(native),
                seed: a.seed,
            };
            let bar = progress(a.steps as u64, "generating");
            let image = pipeline::generate(
                &a.model,
                &a.prompt,
                a.negative_prompt.as_deref(),
                &o,
                opts,
                |_| bar.inc(1),
            )?;
            bar.finish_and_clear();
            pipeline::save_png(&image, &a.out)?;
            println!("wrote {}", a.out.display());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
