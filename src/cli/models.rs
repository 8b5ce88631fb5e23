//! Hugging Face ids among the models and encoders a command is given: found in the cache, or
//! downloaded there (with progress) before the work starts. The library then finds them in
//! the cache by the same id (`moslora::hub::locate`), so settings keep the id.

use std::path::Path;

use tch::Kind;

use moslora::config::RunConfig;
use moslora::hub::{self, Want};
use moslora::Result;

use super::progress::Bar;

/// An SDXL model (`model:`, --model), with the weight variant that `dtype` reads: the
/// `.fp16` files for half precision, the full ones for f32.
pub fn fetch_model(spec: &Path, dtype: Kind) -> Result<()> {
    let variant = (dtype != Kind::Float).then(|| "fp16".to_string());
    fetch(spec, &Want::Pipeline { variant })
}

/// A CLIP or DINO encoder (`metrics.clip`, `metrics.dino`, --clip, --dino).
pub fn fetch_encoder(spec: &Path) -> Result<()> {
    fetch(spec, &Want::Encoder)
}

/// A run's model, and its encoders when the command scores (`compare`, a sweep). The dtype
/// is read from the settings without asking for the device (a Slurm login node that submits
/// a sweep has no GPU).
pub fn fetch_run(cfg: &RunConfig, encoders: bool) -> Result<()> {
    let dtype = match &cfg.dtype {
        Some(d) => moslora::runtime::parse_dtype(d)?,
        None if cfg.device.starts_with("cuda") => Kind::BFloat16,
        None => Kind::Float,
    };
    fetch_model(&cfg.model, dtype)?;
    if !encoders {
        return Ok(());
    }
    for enc in [&cfg.metrics.clip, &cfg.metrics.dino].into_iter().flatten() {
        fetch_encoder(enc)?;
    }
    Ok(())
}

fn fetch(spec: &Path, want: &Want) -> Result<()> {
    let mut bar = Bar::new();
    hub::fetch(spec, want, &mut bar)?;
    bar.end();
    Ok(())
}
