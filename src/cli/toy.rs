//! `moslora pretrain`: the toy world's base model, with one progress bar per stage.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use moslora::runtime::parse_dtype;
use moslora::toyworld::pretrain::{pretrain, PretrainOptions, PretrainProgress, Recipe};
use moslora::Result;

#[derive(Args)]
pub struct PretrainArgs {
    /// Folder for the pretrained model (diffusers layout); must not exist yet
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the world, the initial weights and every draw
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// VAE training steps
    #[arg(long)]
    pub vae_steps: Option<u64>,
    /// UNet training steps
    #[arg(long)]
    pub unet_steps: Option<u64>,
    /// Pictures in the UNet's training set
    #[arg(long)]
    pub pictures: Option<u64>,
    /// Steps between checkpoints and preview grids
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// dtype of the written weights: f32 or f16
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

struct StageBar {
    bar: Option<ProgressBar>,
    /// Exponential moving average of the loss (steps are noisy).
    smoothed: Option<f64>,
}

impl PretrainProgress for StageBar {
    fn stage(&mut self, name: &str, total: u64, done: u64) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>7} [{bar:30}] {pos}/{len} {msg} {per_sec} {elapsed} elapsed, {eta} left",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        self.smoothed = None;
        bar.set_position(done);
        bar.reset_eta();
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bar = Some(bar);
    }
    fn step(&mut self, step: u64, loss: f64) {
        if let Some(b) = &self.bar {
            b.set_position(step);
            if loss > 0.0 {
                let s = self.smoothed.map_or(loss, |m| 0.98 * m + 0.02 * loss);
                self.smoothed = Some(s);
                b.set_message(format!("loss {s:.4}"));
            }
        }
    }
    fn note(&mut self, msg: &str) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(msg),
            _ => eprintln!("{msg}"),
        }
    }
}

pub fn run_pretrain(a: PretrainArgs) -> Result<()> {
    let mut recipe = Recipe {
        seed: a.seed,
        ..Recipe::default()
    };
    if let Some(s) = a.vae_steps {
        recipe.vae_steps = s;
    }
    if let Some(s) = a.unet_steps {
        recipe.unet_steps = s;
    }
    if let Some(n) = a.pictures {
        recipe.pictures = n;
    }
    let o = PretrainOptions {
        out: a.out,
        recipe,
        checkpoint_every: a.checkpoint_every.max(1),
        dtype: parse_dtype(&a.dtype)?,
        preview: true,
    };
    let mut bar = StageBar {
        bar: None,
        smoothed: None,
    };
    pretrain(&o, &mut bar)?;
    if let Some(b) = bar.bar.take() {
        b.finish();
    }
    Ok(())
}

#[derive(Args)]
pub struct WorldArgs {
    /// Contact sheet to write (PNG); the captions go beside it as .txt
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the world
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of pictures
    #[arg(long, default_value_t = 48)]
    pub count: u64,
}

pub fn run_world(a: WorldArgs) -> Result<()> {
    let (sheet, captions) = moslora::toyworld::contact_sheet(a.seed, a.count, 8, 2);
    moslora::render::picture::write_png(&a.out, &sheet, &[])?;
    let text: String = captions
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{i:>4}  {c}\n"))
        .collect();
    moslora::fsutil::write_bytes(&a.out.with_extension("txt"), text.as_bytes())?;
    println!("{} pictures -> {}", a.count, a.out.display());
    Ok(())
}

#[derive(Args)]
pub struct JudgeArgs {
    /// The toy model folder (its tokenizer is the judge's)
    #[arg(long)]
    pub model: PathBuf,
    /// Folder for the judge (a transformers CLIPModel folder)
    #[arg(long)]
    pub out: PathBuf,
    /// Training steps
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run_judge(a: JudgeArgs) -> Result<()> {
    use moslora::toyworld::judge;
    let mut recipe = judge::JudgeRecipe {
        seed: a.seed,
        ..Default::default()
    };
    if let Some(s) = a.steps {
        recipe.steps = s;
    }
    let mut bar = StageBar {
        bar: None,
        smoothed: None,
    };
    bar.stage("judge", recipe.steps, 0);
    let tok_dir = a.model.join("tokenizer");
    let model = judge::train(&a.out, &tok_dir, &recipe, |s, l| bar.step(s, l))?;
    if let Some(b) = bar.bar.take() {
        b.finish();
    }
    let tok = moslora::sdxl::tokenizer::ClipTokenizer::from_dir(&tok_dir)?;
    let report = judge::evaluate(&model, &tok, a.seed)?;
    let text = serde_json::to_string_pretty(&report).expect("report serialises");
    moslora::fsutil::write_bytes(&a.out.join("report.json"), text.as_bytes())?;
    println!("{text}");
    Ok(())
}
