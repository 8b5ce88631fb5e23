//! `init-model`: a random SDXL-architecture pipeline in the diffusers layout of a real
//! download, loadable by moslora and by diffusers alike (tests, the demo, benchmarks).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tch::{Device, Kind};

use super::clip::ClipTextModel;
use super::config::{presets, ClipTextConfig, UNetConfig, VaeConfig};
use super::model_folder::{self, CLIP_MERGES, CLIP_VOCAB};
use super::unet::UNet2DConditionModel;
use super::vae::AutoencoderKL;
use super::weights::{save_safetensors, RandomSource, TensorSource, Weights};
use crate::error::{Error, Result};
use crate::fsutil;

#[derive(Debug)]
pub struct InitOptions<'a> {
    pub preset: &'a str,
    pub seed: u64,
    /// dtype of the written weights (f32, or f16 to halve a full-size model's files).
    pub dtype: Kind,
    pub force: bool,
}

/// Write a random pipeline to `out` (built in a sibling temporary folder, then renamed, so an
/// interrupted run leaves nothing that looks like a model).
pub fn init_model(out: &Path, o: &InitOptions) -> Result<()> {
    let texts = presets::texts(o.preset).ok_or_else(|| {
        Error::msg(format!(
            "unknown preset {:?}: expected one of {}",
            o.preset,
            presets::NAMES.join(", ")
        ))
    })?;
    let spec = PipelineSpec {
        configs: texts.map(str::to_string),
        vocab: CLIP_VOCAB,
        merges: CLIP_MERGES,
    };
    init_model_with(out, o, &spec)
}

/// What a random pipeline is made of: the five config texts (unet, vae, text_encoder,
/// text_encoder_2, scheduler) and the tokenizers' vocabulary and merges.
#[derive(Debug)]
pub struct PipelineSpec<'a> {
    pub configs: [String; 5],
    pub vocab: &'a str,
    pub merges: &'a str,
}

/// [`init_model`] from explicit configs and vocabulary (`o.preset` is not read).
pub fn init_model_with(out: &Path, o: &InitOptions, spec: &PipelineSpec) -> Result<()> {
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty && !o.force {
            return Err(Error::OutputExists {
                path: out.to_path_buf(),
                hint: "choose another --out or pass --force to replace it".into(),
            });
        }
    }
    let tmp = fsutil::temp_path(out);
    let _ = std::fs::remove_dir_all(&tmp);
    let result = write_all(&tmp, o, spec);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}

fn write_all(dir: &Path, o: &InitOptions, spec: &PipelineSpec) -> Result<()> {
    let [unet_json, vae_json, te_json, te2_json, sched_json] =
        spec.configs.each_ref().map(String::as_str);
    let parse = |name: &str, text: &str| -> Result<serde_json::Value> {
        serde_json::from_str(text).map_err(|e| Error::msg(format!("preset {name}: {e}")))
    };
    // Each component gets its own seed stream, so changing one never changes another.
    let unet_cfg: UNetConfig = serde_json::from_value(parse("unet", unet_json)?)
        .map_err(|e| Error::msg(format!("preset unet: {e}")))?;
    write_component(
        dir,
        "unet",
        "diffusion_pytorch_model",
        unet_json,
        o,
        0,
        |w| UNet2DConditionModel::new(w, &unet_cfg).map(drop),
    )?;
    let vae_cfg: VaeConfig = serde_json::from_value(parse("vae", vae_json)?)
        .map_err(|e| Error::msg(format!("preset vae: {e}")))?;
    write_component(dir, "vae", "diffusion_pytorch_model", vae_json, o, 1, |w| {
        AutoencoderKL::new(w, &vae_cfg).map(drop)
    })?;
    for (i, (name, text, proj)) in [
        ("text_encoder", te_json, false),
        ("text_encoder_2", te2_json, true),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg: ClipTextConfig = serde_json::from_value(parse(name, text)?)
            .map_err(|e| Error::msg(format!("preset {name}: {e}")))?;
        write_component(dir, name, "model", text, o, 2 + i as u64, |w| {
            ClipTextModel::new(w, &cfg, proj).map(drop)
        })?;
    }
    model_folder::write_tokenizers(dir, spec.vocab, spec.merges)?;
    model_folder::write_scheduler(dir, sched_json)?;
    model_folder::write_model_index(dir)
}

fn write_component(
    dir: &Path,
    name: &str,
    stem: &str,
    config_json: &str,
    o: &InitOptions,
    stream: u64,
    build: impl FnOnce(&Weights) -> Result<()>,
) -> Result<()> {
    let _rng = crate::runtime::seeded((o.seed.wrapping_mul(1000).wrapping_add(stream)) as i64);
    let src = Rc::new(RandomSource::new());
    let w = Weights::new(
        src.clone() as Rc<dyn TensorSource>,
        name,
        Kind::Float,
        Device::Cpu,
    );
    build(&w)?;
    let tensors: Vec<(String, tch::Tensor)> = src
        .take()
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(o.dtype)))
        .collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let sub: PathBuf = dir.join(name);
    save_safetensors(
        &tensors,
        Some(meta),
        &sub.join(format!("{stem}.safetensors")),
    )?;
    model_folder::write_config(dir, name, config_json)
}
