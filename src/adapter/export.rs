//! Adapters as the plain LoRA files other tools load: kohya's format (ComfyUI, AUTOMATIC1111,
//! Forge, and diffusers) and diffusers' own PEFT format.
//!
//! No loader knows MoSLoRA's mixer: an unknown tensor is skipped, at most with a warning, and
//! the picture silently comes out wrong. The mixer is therefore folded into the down
//! projection, `down = M A` (r x in), which is exact: `B (M A) x = B M (A x)`, with the same
//! rank and alpha. A plain LoRA is exported as it is.
//!
//! Text-encoder adapters go under `lora_te1_`/`lora_te2_` (kohya) or `text_encoder.`/
//! `text_encoder_2.` (diffusers), with their module paths as in the real SDXL download
//! (`text_model.encoder.layers.0.self_attn.q_proj`), the names both kohya and diffusers use.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::file::{AdapterFile, UnetBlocks};
use super::{Component, Family, LowRankAdapter};
use crate::error::{Error, Result};
use crate::sdxl::sgm_names::{unet_path, Layout};
use crate::sdxl::weights::save_safetensors;

/// The LoRA file layouts moslora writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// `lora_unet_<SGM module path>.lora_down.weight` / `.lora_up.weight` / `.alpha`, and
    /// `lora_te1_`/`lora_te2_<module path>` for the text encoders.
    Kohya,
    /// `unet.<diffusers module path>.lora_A.weight` / `.lora_B.weight` (PEFT), and
    /// `text_encoder.`/`text_encoder_2.<module path>`, as
    /// `StableDiffusionXLPipeline.load_lora_weights` reads natively.
    Diffusers,
}

impl ExportFormat {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "kohya" | "comfyui" | "a1111" => Ok(ExportFormat::Kohya),
            "diffusers" | "peft" => Ok(ExportFormat::Diffusers),
            _ => Err(Error::setting(
                "--format",
                format!(
                    "unknown export format {s:?}: expected `kohya` (ComfyUI, AUTOMATIC1111, \
                     Forge) or `diffusers`"
                ),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Kohya => "kohya",
            ExportFormat::Diffusers => "diffusers",
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub layers: usize,
    pub rank: i64,
    pub alpha: f64,
    /// A mixer was folded into the down projections.
    pub mixer_folded: bool,
    /// The adapter's family (a kohya file of LoHa or LoKr is a LyCORIS one).
    pub family: super::Family,
}

/// kohya's name of a UNet module: `lora_unet_` and the SGM module path with `.` -> `_`
/// (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` ->
/// `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`).
pub fn kohya_name(module: &str, layout: &Layout) -> Option<String> {
    unet_path(module, layout).map(|p| format!("lora_unet_{}", p.replace('.', "_")))
}

/// kohya's name of a module of `component`: the UNet's SGM path (see [`kohya_name`]), or the
/// text encoder's module path with `.` -> `_` after `lora_te1_`/`lora_te2_`
/// (`text_model.encoder.layers.0.self_attn.q_proj` ->
/// `lora_te1_text_model_encoder_layers_0_self_attn_q_proj`).
pub fn kohya_component_name(component: Component, module: &str, layout: &Layout) -> Option<String> {
    match component {
        Component::Unet => kohya_name(module, layout),
        c => Some(format!("{}{}", c.kohya_prefix(), module.replace('.', "_"))),
    }
}

/// The block structure to name the adapter at `adapter` by, and where it came from: its own
/// model's, as its metadata records it (or, in files from before that was recorded, as its
/// UNet layer names show). `model` is a `--model` given for it (its name and structure): it
/// must be the adapter's own, else the export is refused naming both; it also serves an
/// adapter whose structure is unknown. Neither known: SDXL's.
pub fn naming_layout(adapter: &Path, model: Option<(&str, &Layout)>) -> Result<(Layout, String)> {
    let file = AdapterFile::read(adapter)?;
    let meta = &file.meta;
    let own = match &meta.unet_blocks {
        Some(b) => Some((b.clone(), "the adapter's metadata")),
        None => UnetBlocks::from_names(file.layers.keys().map(String::as_str))
            .map(|b| (b, "the adapter's layer names")),
    };
    let trained_on = if meta.base_model.name.is_empty() {
        "an unnamed model".to_string()
    } else {
        format!("`{}`", meta.base_model.name)
    };
    match (own, model) {
        (Some((own, from)), Some((name, layout))) => {
            let theirs = UnetBlocks::from_layout(layout);
            // Only the layers' numbering matters to their names.
            if own.layers_per_block != theirs.layers_per_block
                || (own.up_attention.len() == theirs.up_attention.len()
                    && own.up_attention != theirs.up_attention)
            {
                return Err(Error::AdapterMismatch {
                    adapter: adapter.to_path_buf(),
                    model: name.to_string(),
                    what: format!(
                        "the adapter's UNet has {} (from {from}), {name}'s has {}: leave out \
                         --model to name its layers as its own model does, or give the model it \
                         was trained on",
                        own.describe(),
                        theirs.describe()
                    ),
                    trained_on: meta.base_model.name.clone(),
                });
            }
            Ok((
                own.layout(),
                format!("{trained_on} (from {from}; --model agrees)"),
            ))
        }
        (Some((own, from)), None) => Ok((own.layout(), format!("{trained_on} (from {from})"))),
        (None, Some((name, layout))) => Ok((layout.clone(), format!("--model {name}"))),
        (None, None) => Ok((
            Layout::sdxl(),
            "SDXL base 1.0 (the adapter does not say)".into(),
        )),
    }
}

/// Write the adapter at `adapter` as a plain LoRA in `format` to `out` (atomically). `layout`
/// is the UNet's block structure (SDXL's unless the model says otherwise): kohya names
/// depend on it.
pub fn export(
    adapter: &Path,
    format: ExportFormat,
    out: &Path,
    layout: &Layout,
) -> Result<Exported> {
    let file = AdapterFile::read(adapter)?;
    let meta = &file.meta;
    let family = meta.adapter.family;
    if matches!(family, Family::Loha | Family::Lokr) && format == ExportFormat::Diffusers {
        return Err(Error::setting(
            "--format",
            format!(
                "{}: diffusers loads no {} file: export it with --format kohya (LyCORIS keys, \
                 for ComfyUI, AUTOMATIC1111 and Forge)",
                adapter.display(),
                family.name()
            ),
        ));
    }
    let rank = meta.adapter.rank;
    let alpha = meta.adapter.alpha();
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let f32cpu = |t: Tensor| t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
    let layers = Component::ALL
        .into_iter()
        .flat_map(|c| file.component_layers(c).iter().map(move |(m, t)| (c, m, t)));
    for (component, module, t) in layers {
        if family != Family::Lora {
            let key = match format {
                ExportFormat::Kohya => {
                    kohya_component_name(component, module, layout).ok_or_else(|| {
                        Error::msg(format!(
                            "{}: layer `{module}` has no kohya (SGM) name",
                            adapter.display()
                        ))
                    })?
                }
                ExportFormat::Diffusers => format!("{}.{module}", component.prefix()),
            };
            for (name, t) in family_tensors(family, format, t, rank, alpha) {
                tensors.push((format!("{key}.{name}"), f32cpu(t)));
            }
            continue;
        }
        let a = LowRankAdapter::from_tensors(
            t.a().shallow_clone(),
            t.b().shallow_clone(),
            t.mixer().map(Tensor::shallow_clone),
            meta.adapter.mixer.trained(),
            alpha,
        );
        let (down, up) = a.folded();
        match format {
            ExportFormat::Kohya => {
                let key = kohya_component_name(component, module, layout).ok_or_else(|| {
                    Error::msg(format!(
                        "{}: layer `{module}` has no kohya (SGM) name",
                        adapter.display()
                    ))
                })?;
                tensors.push((format!("{key}.lora_down.weight"), f32cpu(down)));
                tensors.push((format!("{key}.lora_up.weight"), f32cpu(up)));
                // A 0-dimensional tensor, as kohya's `LoRAModule` registers it.
                tensors.push((format!("{key}.alpha"), Tensor::from(alpha as f32)));
            }
            ExportFormat::Diffusers => {
                // The PEFT layout has no alpha: diffusers then takes alpha = rank, a scale of
                // 1. For alpha != rank the scale alpha/r is folded into B (up), which keeps the
                // product scale * B (M A) exact up to one rounding of B.
                let up = if alpha == rank as f64 {
                    up
                } else {
                    up * (alpha / rank as f64)
                };
                let prefix = component.prefix();
                tensors.push((format!("{prefix}.{module}.lora_A.weight"), f32cpu(down)));
                tensors.push((format!("{prefix}.{module}.lora_B.weight"), f32cpu(up)));
            }
        }
    }
    let mut md = HashMap::new();
    md.insert("format".to_string(), "pt".to_string());
    let named = Naming::of(meta, out);
    let provenance = serde_json::json!({
        "adapter": meta.name, "family": family.name(), "mixer": meta.adapter.mixer.name(), "mixer_folded":
        meta.adapter.mixer != super::MixerInit::None, "rank": rank, "alpha": alpha,
        "steps": meta.steps, "base_model": meta.base_model.name,
    });
    md.insert("moslora_export".to_string(), provenance.to_string());
    if format == ExportFormat::Kohya {
        md.insert("ss_network_module".into(), "networks.lora".into());
        if family != Family::Lora {
            // LyCORIS' network, as kohya's scripts record a LyCORIS training.
            md.insert("ss_network_module".into(), "lycoris.kohya".into());
            let args = match family {
                Family::Dora => serde_json::json!({"algo": "lora", "dora_wd": "True"}),
                f => serde_json::json!({"algo": f.name()}),
            };
            md.insert("ss_network_args".into(), args.to_string());
        }
        md.insert("ss_network_dim".into(), rank.to_string());
        md.insert("ss_network_alpha".into(), format_alpha(alpha));
        md.insert("ss_base_model_version".into(), "sdxl_base_v1-0".into());
        md.insert("ss_v2".into(), "False".into());
        md.insert("ss_output_name".into(), named.output_name);
        md.insert("ss_steps".into(), meta.steps.to_string());
        md.insert("modelspec.sai_model_spec".into(), "1.0.0".into());
        md.insert(
            "modelspec.architecture".into(),
            "stable-diffusion-xl-v1-base/lora".into(),
        );
        md.insert(
            "modelspec.implementation".into(),
            "https://github.com/Stability-AI/generative-models".into(),
        );
        md.insert("modelspec.title".into(), named.title);
        if let Some(trigger) = named.trigger {
            md.insert("modelspec.trigger_phrase".into(), trigger);
        }
        md.insert("modelspec.date".into(), crate::runtime::iso_date_now());
        if let Some(r) = meta
            .training
            .get("train")
            .and_then(|t| t.get("resolution"))
            .and_then(|r| r.as_i64())
        {
            md.insert("modelspec.resolution".into(), format!("{r}x{r}"));
        }
    }
    save_safetensors(&tensors, Some(md), out)?;
    Ok(Exported {
        layers: file.layer_count(),
        rank,
        alpha,
        mixer_folded: meta.adapter.mixer != super::MixerInit::None,
        family: meta.adapter.family,
    })
}

/// One layer of a DoRA, LoHa or LoKr adapter as `format` names its tensors (after the layer's
/// key), all in f32:
/// - kohya (LyCORIS, as ComfyUI and AUTOMATIC1111 read it): DoRA as `lora_down`, `lora_up`,
///   `alpha` and `dora_scale` (out x 1, the magnitude); LoHa as `hada_w1_a`..`hada_w2_b` and
///   `alpha`; LoKr as `lokr_w1` and `lokr_w2` or `lokr_w2_a`/`lokr_w2_b`, and `alpha`. The
///   loaders scale by alpha over the rank they read off the low-rank factor, and by 1 when
///   every factor is whole: LoKr's scale is then folded into `lokr_w1`.
/// - diffusers (PEFT): DoRA as `lora_A.weight`, `lora_B.weight` (alpha / r folded in, since
///   the format has no alpha) and `lora_magnitude_vector.weight`.
fn family_tensors(
    family: Family,
    format: ExportFormat,
    t: &super::file::LayerTensors,
    rank: i64,
    alpha: f64,
) -> Vec<(String, Tensor)> {
    let part = |name: &str| t.parts[name].shallow_clone();
    let scale = alpha / rank as f64;
    let alpha_t = || ("alpha".to_string(), Tensor::from(alpha as f32));
    let mut v: Vec<(String, Tensor)> = Vec::new();
    match (family, format) {
        (Family::Dora, ExportFormat::Kohya) => {
            v.push(("lora_down.weight".into(), part("lora_A")));
            v.push(("lora_up.weight".into(), part("lora_B")));
            v.push(alpha_t());
            let m = part("lora_magnitude_vector");
            let out = m.size()[0];
            v.push(("dora_scale".into(), m.reshape([out, 1])));
        }
        (Family::Dora, ExportFormat::Diffusers) => {
            v.push(("lora_A.weight".into(), part("lora_A")));
            v.push(("lora_B.weight".into(), part("lora_B") * scale));
            v.push((
                "lora_magnitude_vector.weight".into(),
                part("lora_magnitude_vector"),
            ));
        }
        (Family::Loha, _) => {
            for p in ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"] {
                v.push((p.into(), part(p)));
            }
            v.push(alpha_t());
        }
        (Family::Lokr, _) => {
            let low_rank = t.parts.contains_key("lokr_w2_a");
            let w1 = part("lokr_w1");
            v.push(("lokr_w1".into(), if low_rank { w1 } else { w1 * scale }));
            if low_rank {
                v.push(("lokr_w2_a".into(), part("lokr_w2_a")));
                v.push(("lokr_w2_b".into(), part("lokr_w2_b")));
            } else {
                v.push(("lokr_w2".into(), part("lokr_w2")));
            }
            v.push(alpha_t());
        }
        (Family::Lora, _) => unreachable!("LoRA layers are exported as plain LoRA"),
    }
    v
}

/// How an export names itself to model sites and AUTOMATIC1111: the subject (from the run's
/// `subject` in the adapter's training metadata) rather than whatever the file is called, and
/// the words that call the subject up. An adapter without that metadata (made outside
/// `moslora train`) is named after the output file's stem and has no trigger phrase.
struct Naming {
    /// `ss_output_name`: the subject's name.
    output_name: String,
    /// `modelspec.title`: the subject's name and the adapter kind.
    title: String,
    /// `modelspec.trigger_phrase`: the identifier and the class noun ("sks dog").
    trigger: Option<String>,
}

impl Naming {
    fn of(meta: &super::file::AdapterMeta, out: &Path) -> Self {
        let subject = meta.training.get("subject");
        let text = |key: &str| {
            subject
                .and_then(|s| s.get(key))
                .and_then(|v| v.as_str())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        // The name people gave the subject, else its photo folder's name (as
        // `Subject::display_name` says it), else the file's stem.
        let folder = text("images").and_then(|p| {
            Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        });
        let stem = out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| meta.name.clone());
        let Some(name) = text("name").or(folder) else {
            return Naming {
                output_name: stem.clone(),
                title: stem,
                trigger: None,
            };
        };
        let kind = match meta.name.as_str() {
            "lora" => "LoRA",
            "moslora" => "MoSLoRA",
            "dora" => "DoRA",
            "loha" => "LoHa",
            "lokr" => "LoKr",
            other => other,
        };
        let trigger = match (text("identifier"), text("class")) {
            (Some(id), Some(class)) => Some(format!("{id} {class}")),
            (Some(id), None) => Some(id),
            _ => None,
        };
        Naming {
            title: format!("{name} ({kind})"),
            output_name: name,
            trigger,
        }
    }
}

/// kohya writes alphas as Python floats (`4.0`), or integers for whole numbers in older files;
/// readers parse either.
fn format_alpha(alpha: f64) -> String {
    if alpha.fract() == 0.0 {
        format!("{alpha:.1}")
    } else {
        alpha.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kohya_names_use_sgm_blocks() {
        let l = Layout::sdxl();
        assert_eq!(
            kohya_name(
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                &l
            )
            .as_deref(),
            Some("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q")
        );
        assert_eq!(
            kohya_name(
                "mid_block.attentions.0.transformer_blocks.9.attn2.to_out.0",
                &l
            )
            .as_deref(),
            Some("lora_unet_middle_block_1_transformer_blocks_9_attn2_to_out_0")
        );
        assert_eq!(
            kohya_name(
                "up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_k",
                &l
            )
            .as_deref(),
            Some("lora_unet_output_blocks_5_1_transformer_blocks_1_attn2_to_k")
        );
    }

    #[test]
    fn kohya_names_of_text_encoders_keep_hf_paths() {
        let (l, m) = (
            Layout::sdxl(),
            "text_model.encoder.layers.0.self_attn.q_proj",
        );
        assert_eq!(
            kohya_component_name(Component::TextEncoder, m, &l).as_deref(),
            Some("lora_te1_text_model_encoder_layers_0_self_attn_q_proj")
        );
        assert_eq!(
            kohya_component_name(Component::TextEncoder2, m, &l).as_deref(),
            Some("lora_te2_text_model_encoder_layers_0_self_attn_q_proj")
        );
    }

    #[test]
    fn iso_date_has_the_iso_shape() {
        let d = crate::runtime::iso_date_now();
        assert_eq!(d.len(), 19, "{d}");
        assert_eq!(&d[4..5], "-");
        assert_eq!(&d[10..11], "T");
        assert!(d.as_str() > "2024-01-01");
    }
}
