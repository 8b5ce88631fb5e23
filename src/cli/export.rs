//! `moslora export`, `merge` and `convert`: adapters and models written for other tools.

use std::path::PathBuf;

use clap::Args;

use moslora::runtime::parse_dtype;
use moslora::Result;

#[derive(Args)]
pub struct ExportArgs {
    /// The adapter file (adapter.safetensors from `moslora train`)
    adapter: PathBuf,
    /// kohya (ComfyUI, AUTOMATIC1111, Forge; diffusers reads it too) or diffusers (PEFT)
    #[arg(long)]
    format: String,
    /// The model the adapter belongs to (default: the one its metadata names); refused if
    /// its UNet blocks are not the adapter's model's
    #[arg(long)]
    model: Option<PathBuf>,
    /// Configs folder for a single-file --model that is not SDXL base sized
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output .safetensors file
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing output file
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ModelWriteArgs {
    /// dtype of the written weights: f32, f16 or bf16 (default: as the source model)
    #[arg(long)]
    dtype: Option<String>,
    /// Configs (and tokenizers) folder for a single-file --model that is not SDXL base sized
    #[arg(long)]
    config: Option<PathBuf>,
    /// Replace an existing output
    #[arg(long)]
    force: bool,
}

impl ModelWriteArgs {
    fn options(&self) -> Result<moslora::sdxl::convert::WriteOptions> {
        Ok(moslora::sdxl::convert::WriteOptions {
            dtype: self.dtype.as_deref().map(parse_dtype).transpose()?,
            force: self.force,
        })
    }
}

#[derive(Args)]
pub struct MergeArgs {
    /// SDXL model: a diffusers folder, a single-file .safetensors checkpoint, or a Hugging
    /// Face id (org/name[@revision]) when no path of that name exists
    #[arg(long)]
    model: PathBuf,
    /// The adapter file to merge
    #[arg(long)]
    adapter: PathBuf,
    /// Strength of the adapter (1.0 = as trained)
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Output: a folder, or a single file if it ends in .safetensors
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    write: ModelWriteArgs,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// SDXL model: a diffusers folder, a single-file .safetensors checkpoint, or a Hugging
    /// Face id (org/name[@revision]) when no path of that name exists
    #[arg(long)]
    model: PathBuf,
    /// Output: a single file if it ends in .safetensors, else a diffusers folder
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    write: ModelWriteArgs,
}

pub fn run_export(a: ExportArgs) -> Result<()> {
    use moslora::adapter::export::{self, ExportFormat};
    use moslora::sdxl::sgm_names::Layout;
    let format = ExportFormat::parse(&a.format)?;
    if a.out.exists() && !a.force {
        return Err(moslora::Error::OutputExists {
            path: a.out.clone(),
            hint: "choose another --out or pass --force to replace it".into(),
        });
    }
    let model = match &a.model {
        Some(m) => {
            super::models::fetch_model(m, tch::Kind::Float)?;
            let dir = moslora::sdxl::convert::open_model(m, a.config.as_deref())?;
            Some((m.display().to_string(), Layout::unet(&dir.unet_config()?)))
        }
        None => None,
    };
    let (layout, named_for) =
        export::naming_layout(&a.adapter, model.as_ref().map(|(n, l)| (n.as_str(), l)))?;
    let e = export::export(&a.adapter, format, &a.out, &layout)?;
    let folded = if e.mixer_folded {
        ", mixer folded into lora_down"
    } else {
        ""
    };
    println!(
        "wrote {} ({} {}, {} layers, rank {}, alpha {}{folded}; layers named for {named_for})",
        a.out.display(),
        format.name(),
        e.family.label(),
        e.layers,
        e.rank,
        e.alpha
    );
    Ok(())
}

pub fn run_merge(a: MergeArgs) -> Result<()> {
    super::models::fetch_model(&a.model, write_kind(&a.write)?)?;
    let model = moslora::sdxl::convert::open_model(&a.model, a.write.config.as_deref())?;
    let w = moslora::adapter::merged_model::merge(
        &model,
        &a.adapter,
        a.scale,
        &a.out,
        &a.write.options()?,
    )?;
    println!(
        "wrote {} ({}, {}, {} adapted layers merged at scale {})",
        w.path.display(),
        if w.single_file {
            "single file"
        } else {
            "diffusers folder"
        },
        moslora::runtime::dtype_name(w.dtype),
        w.merged_layers,
        a.scale
    );
    Ok(())
}

pub fn run_convert(a: ConvertArgs) -> Result<()> {
    super::models::fetch_model(&a.model, write_kind(&a.write)?)?;
    let model = moslora::sdxl::convert::open_model(&a.model, a.write.config.as_deref())?;
    let w = moslora::sdxl::convert::convert(&model, &a.out, &a.write.options()?)?;
    println!(
        "wrote {} ({}, {}, {} tensors)",
        w.path.display(),
        if w.single_file {
            "single file"
        } else {
            "diffusers folder"
        },
        moslora::runtime::dtype_name(w.dtype),
        w.tensors
    );
    Ok(())
}

/// The weights a written model wants read: the half-precision variant for f16 or bf16, else
/// the full one.
fn write_kind(w: &ModelWriteArgs) -> Result<tch::Kind> {
    Ok(w.dtype
        .as_deref()
        .map(parse_dtype)
        .transpose()?
        .unwrap_or(tch::Kind::Float))
}
