//! `moslora pretrain`, `world` and `judge`: the toy world's model, pictures and judge.

use std::path::PathBuf;

use clap::Args;

use moslora::runtime::parse_dtype;
use moslora::runtime::Threads;
use moslora::toyworld::pretrain::{pretrain, PretrainOptions, PretrainProgress, Recipe};
use moslora::Result;

use super::progress::Bar;

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

pub fn run_pretrain(a: PretrainArgs) -> Result<()> {
    // Not measured for pretraining's batches: every core, waiting passively.
    moslora::runtime::apply_threads(Threads::Auto, tch::Device::Cpu, None)?;
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
    let mut bar = Bar::new();
    pretrain(&o, &mut bar)?;
    bar.end();
    Ok(())
}

#[derive(Args)]
pub struct WorldArgs {
    /// Contact sheet to write (PNG); the captions go beside it as .txt
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the world
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of pictures
    #[arg(long, default_value_t = 48)]
    pub count: u64,
    /// Also write the photos of the subjects the world does not contain, one folder each
    /// (`DIR/<subject>/01.png`...), with `DIR/subjects.txt` naming each one's class and kind
    #[arg(long)]
    pub subjects: Option<PathBuf>,
    /// Photos per subject
    #[arg(long, default_value_t = 5)]
    pub photos: u64,
}

pub fn run_world(a: WorldArgs) -> Result<()> {
    if a.out.is_none() && a.subjects.is_none() {
        return Err(moslora::Error::msg(
            "nothing to write: give --out SHEET.png, --subjects DIR, or both",
        ));
    }
    if let Some(out) = &a.out {
        let (sheet, captions) = moslora::toyworld::contact_sheet(a.seed, a.count, 8, 2);
        moslora::fsutil::write_png(out, &sheet, &[])?;
        let text: String = captions
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i:>4}  {c}\n"))
            .collect();
        moslora::fsutil::write_bytes(&out.with_extension("txt"), text.as_bytes())?;
        println!("{} pictures -> {}", a.count, out.display());
    }
    if let Some(dir) = &a.subjects {
        use moslora::toyworld::subjects;
        let mut list = String::from("# subject  class  kind (the DreamBench object/live split)\n");
        for s in &subjects::SUBJECTS {
            subjects::write_photos(s, &dir.join(s.name), a.photos)?;
            list += &format!("{} {} {}\n", s.name, s.class, s.kind.name());
        }
        moslora::fsutil::write_bytes(&dir.join("subjects.txt"), list.as_bytes())?;
        println!(
            "{} subjects x {} photos -> {}",
            subjects::SUBJECTS.len(),
            a.photos,
            dir.display()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct JudgeArgs {
    /// The toy model folder (its tokenizer is the judge's; its renders are checked)
    #[arg(long)]
    pub model: PathBuf,
    /// Folder for the judge (a transformers CLIPModel folder)
    #[arg(long)]
    pub out: PathBuf,
    /// Training steps
    #[arg(long)]
    pub steps: Option<u64>,
    /// Seed of the judge's initial weights and of its training batches
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Measure the judge already at --out instead of training one
    #[arg(long)]
    pub evaluate: bool,
    /// A subject given as photos, measured beside the generated ones (the demo's robot)
    #[arg(long, default_value = "assets/subject")]
    pub photos: PathBuf,
    /// The world class of the --photos subject
    #[arg(long, default_value = "robot")]
    pub photos_class: String,
    /// World prompts the base model renders for the judge to read (0 skips the check)
    #[arg(long, default_value_t = 40)]
    pub base_renders: usize,
}

pub fn run_judge(a: JudgeArgs) -> Result<()> {
    moslora::runtime::apply_threads(Threads::Auto, tch::Device::Cpu, None)?;
    use moslora::toyworld::judge;
    let tok_dir = a.model.join("tokenizer");
    let model = if a.evaluate {
        moslora::sdxl::encoders::load_clip(&a.out, tch::Device::Cpu)?.model
    } else {
        let mut recipe = judge::JudgeRecipe {
            seed: a.seed,
            ..Default::default()
        };
        if let Some(s) = a.steps {
            recipe.steps = s;
        }
        let mut bar = Bar::new();
        bar.stage("judge", recipe.steps, 0);
        let model = judge::train(&a.out, &tok_dir, &recipe, |s, l| bar.step(s, l))?;
        bar.end();
        model
    };
    let tok = moslora::sdxl::tokenizer::ClipTokenizer::from_dir(&tok_dir)?;
    let mut extra = Vec::new();
    if a.photos.is_dir() {
        let photos = moslora::train::dataset::load_photos(&a.photos)?
            .into_iter()
            .map(|p| p.image)
            .collect();
        let name = a
            .photos
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        extra.push(judge::PhotoSubject {
            name,
            class: a.photos_class.clone(),
            photos,
        });
    }
    let mut report = judge::evaluate(&model, &tok, a.seed, &extra)?;
    if a.base_renders > 0 {
        eprintln!(
            "rendering {} world prompts with {} for the judge to read",
            a.base_renders,
            a.model.display()
        );
        report.base_renders = Some(judge::check_base_renders(
            &a.model,
            &model,
            &tok,
            a.base_renders,
            20,
        )?);
    }
    let text = serde_json::to_string_pretty(&report).expect("report serialises");
    moslora::fsutil::write_bytes(&a.out.join("report.json"), text.as_bytes())?;
    println!("{text}");
    Ok(())
}
