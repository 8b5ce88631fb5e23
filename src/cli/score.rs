//! `moslora score`: DINO, CLIP-I and CLIP-T tables of a render folder.

use std::path::{Path, PathBuf};

use clap::Args;

use moslora::metrics::ScoreOptions;
use moslora::Result;

use super::progress::Bar;

#[derive(Args)]
pub struct ScoreArgs {
    /// A render folder (`moslora render` or `compare`)
    renders: PathBuf,
    /// A transformers CLIPModel folder, or a Hugging Face id such as
    /// openai/clip-vit-base-patch32 (CLIP-I, CLIP-T)
    #[arg(long)]
    clip: Option<PathBuf>,
    /// A transformers ViTModel DINO folder, or a Hugging Face id such as facebook/dino-vits16
    /// (DINO)
    #[arg(long)]
    dino: Option<PathBuf>,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    for enc in [&a.clip, &a.dino].into_iter().flatten() {
        super::models::fetch_encoder(enc)?;
    }
    let device = moslora::runtime::parse_device(&a.device, moslora::runtime::Given::Flag)?;
    // Not measured per encoder size: every core, waiting passively.
    moslora::runtime::apply_threads(moslora::runtime::Threads::Auto, device, None)?;
    let o = ScoreOptions {
        clip: a.clip,
        dino: a.dino,
        device,
        dino_eps: None,
    };
    score(&a.renders, &o)
}

/// Scores a render folder and prints the tables.
pub fn score(dir: &Path, opts: &ScoreOptions) -> Result<()> {
    let s = moslora::metrics::score(dir, opts, &mut Bar::new())?;
    print!("{}", moslora::metrics::report::text(&s.manifest));
    let names: Vec<String> = s.files.iter().map(|f| f.display().to_string()).collect();
    println!("wrote {}", names.join(", "));
    Ok(())
}
