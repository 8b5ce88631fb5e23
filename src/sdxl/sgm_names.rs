//! The original Stability (SGM, "generative-models") names of SDXL's tensors, from diffusers'
//! names. Single-file checkpoints (what artists download) and kohya LoRA files (what ComfyUI,
//! AUTOMATIC1111 and Forge load) use them.
//!
//! diffusers' own converter (`loaders/single_file_utils.py`: `convert_ldm_unet_checkpoint`,
//! `convert_ldm_vae_checkpoint`, `convert_open_clip_checkpoint`) is the specification; this is
//! its inverse, written per name so that a model asking for a diffusers tensor can be served
//! from a single file without converting the whole file first.
//!
//! A single file holds four components under four prefixes:
//! * `model.diffusion_model.`: the UNet, blocks numbered flat (`input_blocks.N`,
//!   `middle_block.N`, `output_blocks.N`), resnets spelled `in_layers`/`emb_layers`/`out_layers`;
//! * `first_stage_model.`: the VAE (`encoder.down.N.block.M`, up blocks in reverse order,
//!   mid-block attention as 1x1 convolutions);
//! * `conditioner.embedders.0.transformer.`: CLIP ViT-L, already in transformers' names;
//! * `conditioner.embedders.1.model.`: OpenCLIP ViT-bigG in OpenCLIP's names (fused q/k/v,
//!   `text_projection` applied as `x @ P`, so stored transposed).

use tch::Tensor;

use super::config::{UNetConfig, VaeConfig};

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const CLIP_L_PREFIX: &str = "conditioner.embedders.0.transformer.";
pub const CLIP_G_PREFIX: &str = "conditioner.embedders.1.model.";

/// The single-file prefix of each diffusers component.
pub fn prefix(component: &str) -> Option<&'static str> {
    Some(match component {
        "unet" => UNET_PREFIX,
        "vae" => VAE_PREFIX,
        "text_encoder" => CLIP_L_PREFIX,
        "text_encoder_2" => CLIP_G_PREFIX,
        _ => return None,
    })
}

/// How a diffusers tensor sits inside its single-file tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Same values, same shape.
    Whole,
    /// Part `index` of `of` equal slices along the first axis of a fused tensor (OpenCLIP's
    /// `in_proj_weight`/`in_proj_bias` hold q, k and v one after the other).
    Chunk { index: i64, of: i64 },
    /// The transpose (OpenCLIP's `text_projection`).
    Transposed,
    /// A linear weight (out, in) stored as a 1x1 convolution (out, in, 1, 1) (the VAE's
    /// mid-block attention); a plain (out, in) matrix is accepted too, as some files have it.
    Conv1x1,
}

impl Part {
    /// The diffusers tensor, cut out of the stored one.
    pub fn extract(self, stored: &Tensor) -> Tensor {
        match self {
            Part::Whole => stored.shallow_clone(),
            Part::Chunk { index, of } => {
                let n = stored.size()[0] / of;
                stored.narrow(0, index * n, n)
            }
            Part::Transposed => stored.tr(),
            Part::Conv1x1 => {
                let s = stored.size();
                if s.len() == 4 {
                    stored.reshape([s[0], s[1]])
                } else {
                    stored.shallow_clone()
                }
            }
        }
    }

    /// The stored tensor from its diffusers pieces, in `index` order for chunks.
    pub fn assemble(self, pieces: &[Tensor]) -> Tensor {
        match self {
            Part::Whole => pieces[0].shallow_clone(),
            Part::Chunk { .. } => Tensor::cat(pieces, 0),
            Part::Transposed => pieces[0].tr().contiguous(),
            Part::Conv1x1 => {
                let s = pieces[0].size();
                pieces[0].reshape([s[0], s[1], 1, 1])
            }
        }
    }

    /// The stored shape, from the diffusers shape of one piece.
    pub fn stored_shape(self, piece: &[i64]) -> Vec<i64> {
        match self {
            Part::Whole => piece.to_vec(),
            Part::Chunk { of, .. } => {
                let mut s = piece.to_vec();
                s[0] *= of;
                s
            }
            Part::Transposed => piece.iter().rev().copied().collect(),
            Part::Conv1x1 => vec![piece[0], piece[1], 1, 1],
        }
    }
}

/// One diffusers tensor's place in a single file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Full name in the single file, prefix included.
    pub name: String,
    pub part: Part,
}

/// What the name mapping needs to know about the models' block structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// UNet resnets per down block (up blocks have one more).
    pub layers_per_block: i64,
    /// Per UNet up block: does it hold attentions? (It decides where its upsampler sits.)
    pub up_attention: Vec<bool>,
    /// Number of VAE blocks (the decoder numbers its up blocks in reverse).
    pub vae_blocks: i64,
}

impl Layout {
    pub fn new(unet: &UNetConfig, vae: &VaeConfig) -> Self {
        Layout {
            vae_blocks: vae.block_out_channels.len() as i64,
            ..Layout::unet(unet)
        }
    }

    /// The UNet part alone (enough for LoRA key names).
    pub fn unet(unet: &UNetConfig) -> Self {
        Layout {
            layers_per_block: unet.layers_per_block,
            up_attention: unet
                .up_block_types
                .iter()
                .map(|t| t.starts_with("CrossAttn"))
                .collect(),
            vae_blocks: 0,
        }
    }

    /// SDXL base 1.0's UNet: 2 resnets per down block, attention in the first two up blocks.
    pub fn sdxl() -> Self {
        Layout {
            layers_per_block: 2,
            up_attention: vec![true, true, false],
            vae_blocks: 4,
        }
    }
}

/// The single-file name of the diffusers tensor `name` of `component`, with how to cut it out.
/// None for a name that has no place there.
pub fn to_single_file(component: &str, name: &str, layout: &Layout) -> Option<Stored> {
    let (local, part) = match component {
        "unet" => (unet_path(name, layout)?, Part::Whole),
        "vae" => vae_tensor(name, layout.vae_blocks)?,
        "text_encoder" => (
            name.starts_with("text_model.").then(|| name.to_string())?,
            Part::Whole,
        ),
        "text_encoder_2" => open_clip_tensor(name)?,
        _ => return None,
    };
    Some(Stored {
        name: format!("{}{local}", prefix(component)?),
        part,
    })
}

fn num(s: &str) -> Option<i64> {
    s.parse().ok()
}

fn join(head: String, rest: &[&str]) -> String {
    if rest.is_empty() {
        head
    } else {
        format!("{head}.{}", rest.join("."))
    }
}

/// diffusers UNet path (a module or a tensor) -> SGM path, without the prefix:
/// `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` ->
/// `input_blocks.4.1.transformer_blocks.0.attn1.to_q`.
pub fn unet_path(name: &str, layout: &Layout) -> Option<String> {
    let s: Vec<&str> = name.split('.').collect();
    let per = layout.layers_per_block + 1;
    let top = |sgm: &str, rest: &[&str]| Some(join(sgm.to_string(), rest));
    match s.as_slice() {
        ["time_embedding", "linear_1", rest @ ..] => top("time_embed.0", rest),
        ["time_embedding", "linear_2", rest @ ..] => top("time_embed.2", rest),
        ["add_embedding", "linear_1", rest @ ..] => top("label_emb.0.0", rest),
        ["add_embedding", "linear_2", rest @ ..] => top("label_emb.0.2", rest),
        ["conv_in", rest @ ..] => top("input_blocks.0.0", rest),
        ["conv_norm_out", rest @ ..] => top("out.0", rest),
        ["conv_out", rest @ ..] => top("out.2", rest),
        ["down_blocks", b, kind, i, rest @ ..] => {
            let (b, i) = (num(b)?, num(i)?);
            // input_blocks.0 is conv_in; each down block then has `layers_per_block` layers
            // and, but for the last, a downsampler as one more input block.
            match *kind {
                "resnets" => Some(join(
                    format!("input_blocks.{}.0", 1 + b * per + i),
                    &resnet_rest(rest)?,
                )),
                "attentions" => Some(join(format!("input_blocks.{}.1", 1 + b * per + i), rest)),
                "downsamplers" if i == 0 => match rest {
                    ["conv", tail @ ..] => {
                        Some(join(format!("input_blocks.{}.0.op", (b + 1) * per), tail))
                    }
                    _ => None,
                },
                _ => None,
            }
        }
        ["mid_block", kind, i, rest @ ..] => {
            let block = match (*kind, num(i)?) {
                ("resnets", 0) => 0,
                ("attentions", 0) => 1,
                ("resnets", 1) => 2,
                _ => return None,
            };
            let rest = if *kind == "resnets" {
                resnet_rest(rest)?
            } else {
                rest.to_vec()
            };
            Some(join(format!("middle_block.{block}"), &rest))
        }
        ["up_blocks", b, kind, i, rest @ ..] => {
            let (b, i) = (num(b)?, num(i)?);
            match *kind {
                "resnets" => Some(join(
                    format!("output_blocks.{}.0", b * per + i),
                    &resnet_rest(rest)?,
                )),
                "attentions" => Some(join(format!("output_blocks.{}.1", b * per + i), rest)),
                // The upsampler follows the block's last layer: after its attention (`.2`) in
                // a cross-attention block, after its resnet (`.1`) otherwise.
                "upsamplers" if i == 0 => {
                    let slot = if *layout.up_attention.get(b as usize)? {
                        2
                    } else {
                        1
                    };
                    match rest {
                        ["conv", tail @ ..] => Some(join(
                            format!("output_blocks.{}.{slot}.conv", b * per + per - 1),
                            tail,
                        )),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// A UNet resnet's layers in SGM names (`ResBlock`: in_layers = [norm, SiLU, conv], emb_layers
/// = [SiLU, linear], out_layers = [norm, SiLU, dropout, conv]).
fn resnet_rest<'a>(rest: &[&'a str]) -> Option<Vec<&'a str>> {
    let (first, tail) = rest.split_first()?;
    let mut out: Vec<&str> = match *first {
        "norm1" => vec!["in_layers", "0"],
        "conv1" => vec!["in_layers", "2"],
        "time_emb_proj" => vec!["emb_layers", "1"],
        "norm2" => vec!["out_layers", "0"],
        "conv2" => vec!["out_layers", "3"],
        "conv_shortcut" => vec!["skip_connection"],
        _ => return None,
    };
    out.extend_from_slice(tail);
    Some(out)
}

/// diffusers VAE tensor -> SGM VAE tensor (without the prefix).
fn vae_tensor(name: &str, blocks: i64) -> Option<(String, Part)> {
    let s: Vec<&str> = name.split('.').collect();
    let whole = |n: String| Some((n, Part::Whole));
    match s.as_slice() {
        [coder @ ("encoder" | "decoder"), "conv_norm_out", rest @ ..] => {
            whole(join(format!("{coder}.norm_out"), rest))
        }
        [coder @ ("encoder" | "decoder"), layer @ ("conv_in" | "conv_out"), rest @ ..] => {
            whole(join(format!("{coder}.{layer}"), rest))
        }
        [conv @ ("quant_conv" | "post_quant_conv"), rest @ ..] => {
            whole(join(conv.to_string(), rest))
        }
        ["encoder", "down_blocks", i, "resnets", j, rest @ ..] => whole(join(
            format!("encoder.down.{}.block.{}", num(i)?, num(j)?),
            &vae_resnet_rest(rest)?,
        )),
        ["encoder", "down_blocks", i, "downsamplers", "0", "conv", rest @ ..] => whole(join(
            format!("encoder.down.{}.downsample.conv", num(i)?),
            rest,
        )),
        // The decoder's up blocks run from the smallest resolution; SGM numbers them from the
        // largest.
        ["decoder", "up_blocks", i, "resnets", j, rest @ ..] => whole(join(
            format!("decoder.up.{}.block.{}", blocks - 1 - num(i)?, num(j)?),
            &vae_resnet_rest(rest)?,
        )),
        ["decoder", "up_blocks", i, "upsamplers", "0", "conv", rest @ ..] => whole(join(
            format!("decoder.up.{}.upsample.conv", blocks - 1 - num(i)?),
            rest,
        )),
        [coder @ ("encoder" | "decoder"), "mid_block", "resnets", k, rest @ ..] => whole(join(
            format!("{coder}.mid.block_{}", num(k)? + 1),
            &vae_resnet_rest(rest)?,
        )),
        [coder @ ("encoder" | "decoder"), "mid_block", "attentions", "0", rest @ ..] => {
            let (layer, tail) = match rest {
                ["group_norm", tail @ ..] => ("norm", tail),
                ["to_q", tail @ ..] => ("q", tail),
                ["to_k", tail @ ..] => ("k", tail),
                ["to_v", tail @ ..] => ("v", tail),
                ["to_out", "0", tail @ ..] => ("proj_out", tail),
                _ => return None,
            };
            let part = if layer != "norm" && tail == ["weight"] {
                Part::Conv1x1
            } else {
                Part::Whole
            };
            Some((join(format!("{coder}.mid.attn_1.{layer}"), tail), part))
        }
        _ => None,
    }
}

fn vae_resnet_rest<'a>(rest: &[&'a str]) -> Option<Vec<&'a str>> {
    let (first, tail) = rest.split_first()?;
    let first = match *first {
        "conv_shortcut" => "nin_shortcut",
        l @ ("norm1" | "conv1" | "norm2" | "conv2") => l,
        _ => return None,
    };
    let mut out = vec![first];
    out.extend_from_slice(tail);
    Some(out)
}

/// transformers CLIP names of text_encoder_2 -> OpenCLIP names (without the prefix).
fn open_clip_tensor(name: &str) -> Option<(String, Part)> {
    let s: Vec<&str> = name.split('.').collect();
    let whole = |n: String| Some((n, Part::Whole));
    match s.as_slice() {
        ["text_projection", "weight"] => Some(("text_projection".into(), Part::Transposed)),
        ["text_model", "embeddings", "token_embedding", "weight"] => {
            whole("token_embedding.weight".into())
        }
        ["text_model", "embeddings", "position_embedding", "weight"] => {
            whole("positional_embedding".into())
        }
        ["text_model", "final_layer_norm", rest @ ..] => whole(join("ln_final".into(), rest)),
        ["text_model", "encoder", "layers", n, rest @ ..] => {
            let block = format!("transformer.resblocks.{}", num(n)?);
            match rest {
                ["self_attn", proj @ ("q_proj" | "k_proj" | "v_proj"), leaf @ ("weight" | "bias")] =>
                {
                    let index = match *proj {
                        "q_proj" => 0,
                        "k_proj" => 1,
                        _ => 2,
                    };
                    Some((
                        format!("{block}.attn.in_proj_{leaf}"),
                        Part::Chunk { index, of: 3 },
                    ))
                }
                ["self_attn", "out_proj", tail @ ..] => {
                    whole(join(format!("{block}.attn.out_proj"), tail))
                }
                ["layer_norm1", tail @ ..] => whole(join(format!("{block}.ln_1"), tail)),
                ["layer_norm2", tail @ ..] => whole(join(format!("{block}.ln_2"), tail)),
                ["mlp", "fc1", tail @ ..] => whole(join(format!("{block}.mlp.c_fc"), tail)),
                ["mlp", "fc2", tail @ ..] => whole(join(format!("{block}.mlp.c_proj"), tail)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Tensors real single files carry that no SDXL component uses: CLIP's `position_ids` buffer,
/// OpenCLIP's `logit_scale` (a contrastive-training temperature).
pub fn ignorable(name: &str) -> bool {
    name.ends_with("position_ids") || name.ends_with("logit_scale")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_blocks_follow_diffusers_converter() {
        let l = Layout::sdxl();
        let cases = [
            ("conv_in.weight", "input_blocks.0.0.weight"),
            ("time_embedding.linear_2.bias", "time_embed.2.bias"),
            ("add_embedding.linear_1.weight", "label_emb.0.0.weight"),
            ("conv_norm_out.bias", "out.0.bias"),
            ("conv_out.weight", "out.2.weight"),
            (
                "down_blocks.0.resnets.1.norm1.weight",
                "input_blocks.2.0.in_layers.0.weight",
            ),
            (
                "down_blocks.0.downsamplers.0.conv.weight",
                "input_blocks.3.0.op.weight",
            ),
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
            ),
            (
                "down_blocks.1.resnets.0.conv_shortcut.bias",
                "input_blocks.4.0.skip_connection.bias",
            ),
            (
                "down_blocks.2.attentions.1.proj_in.weight",
                "input_blocks.8.1.proj_in.weight",
            ),
            (
                "mid_block.resnets.1.time_emb_proj.weight",
                "middle_block.2.emb_layers.1.weight",
            ),
            (
                "mid_block.attentions.0.norm.bias",
                "middle_block.1.norm.bias",
            ),
            (
                "up_blocks.0.resnets.2.conv2.weight",
                "output_blocks.2.0.out_layers.3.weight",
            ),
            (
                "up_blocks.0.upsamplers.0.conv.weight",
                "output_blocks.2.2.conv.weight",
            ),
            (
                "up_blocks.1.attentions.2.proj_out.bias",
                "output_blocks.5.1.proj_out.bias",
            ),
            (
                "up_blocks.2.resnets.0.norm2.weight",
                "output_blocks.6.0.out_layers.0.weight",
            ),
        ];
        for (d, sgm) in cases {
            assert_eq!(unet_path(d, &l).as_deref(), Some(sgm), "{d}");
        }
        // A block without attention puts its upsampler in slot 1.
        let l2 = Layout {
            up_attention: vec![false, true, false],
            ..Layout::sdxl()
        };
        assert_eq!(
            unet_path("up_blocks.0.upsamplers.0.conv.bias", &l2).as_deref(),
            Some("output_blocks.2.1.conv.bias")
        );
    }

    #[test]
    fn vae_and_open_clip_names() {
        let l = Layout::sdxl();
        let s = |c: &str, n: &str| to_single_file(c, n, &l).unwrap();
        assert_eq!(
            s("vae", "decoder.up_blocks.0.resnets.1.conv_shortcut.weight").name,
            "first_stage_model.decoder.up.3.block.1.nin_shortcut.weight"
        );
        let q = s("vae", "encoder.mid_block.attentions.0.to_q.weight");
        assert_eq!(q.name, "first_stage_model.encoder.mid.attn_1.q.weight");
        assert_eq!(q.part, Part::Conv1x1);
        assert_eq!(
            s("vae", "encoder.mid_block.attentions.0.to_out.0.bias").part,
            Part::Whole
        );
        let k = s(
            "text_encoder_2",
            "text_model.encoder.layers.3.self_attn.k_proj.bias",
        );
        assert_eq!(
            k.name,
            "conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_bias"
        );
        assert_eq!(k.part, Part::Chunk { index: 1, of: 3 });
        assert_eq!(
            s("text_encoder_2", "text_projection.weight").part,
            Part::Transposed
        );
        assert_eq!(
            s("text_encoder", "text_model.final_layer_norm.weight").name,
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"
        );
    }

    #[test]
    fn parts_round_trip() {
        let q = Tensor::randn([4, 3], (tch::Kind::Float, tch::Device::Cpu));
        let k = Tensor::randn([4, 3], (tch::Kind::Float, tch::Device::Cpu));
        let v = Tensor::randn([4, 3], (tch::Kind::Float, tch::Device::Cpu));
        let fused = Part::Chunk { index: 0, of: 3 }.assemble(&[
            q.shallow_clone(),
            k.shallow_clone(),
            v.shallow_clone(),
        ]);
        assert!(Part::Chunk { index: 1, of: 3 }.extract(&fused).equal(&k));
        let conv = Part::Conv1x1.assemble(std::slice::from_ref(&q));
        assert_eq!(conv.size(), [4, 3, 1, 1]);
        assert!(Part::Conv1x1.extract(&conv).equal(&q));
        let t = Part::Transposed.assemble(std::slice::from_ref(&q));
        assert!(Part::Transposed.extract(&t).equal(&q));
    }
}
