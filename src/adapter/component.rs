//! The parts of SDXL that carry adapters: the UNet and, optionally, the two CLIP text
//! encoders. One trait lists a part's adaptable layers, so that injection, merging, saving
//! and loading are written once for all of them.

use crate::sdxl::clip::ClipTextModel;
use crate::sdxl::nn::Linear;
use crate::sdxl::pipeline::TextEncoders;
use crate::sdxl::unet::UNet2DConditionModel;

/// A model part that adapters can be injected into.
pub trait Adaptable {
    /// Every linear layer an adapter target may select, in module order (the order in which
    /// fresh adapters draw their random A).
    fn adaptable_linears_mut(&mut self) -> Vec<&mut Linear>;
}

impl Adaptable for UNet2DConditionModel {
    fn adaptable_linears_mut(&mut self) -> Vec<&mut Linear> {
        self.attention_linears_mut()
    }
}

impl Adaptable for ClipTextModel {
    fn adaptable_linears_mut(&mut self) -> Vec<&mut Linear> {
        self.attention_linears_mut()
    }
}

/// Which part an adapter layer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Unet,
    /// CLIP ViT-L (`text_encoder/`).
    TextEncoder,
    /// OpenCLIP ViT-bigG (`text_encoder_2/`).
    TextEncoder2,
}

impl Component {
    pub const ALL: [Component; 3] = [
        Component::Unet,
        Component::TextEncoder,
        Component::TextEncoder2,
    ];
    pub const TEXT_ENCODERS: [Component; 2] = [Component::TextEncoder, Component::TextEncoder2];

    /// The part's folder in a diffusers model, which is also its key prefix in adapter files
    /// and in diffusers' LoRA format (`text_encoder.<module>.lora_A.weight`).
    pub fn prefix(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
        }
    }

    /// kohya's key prefix (`lora_unet_`, `lora_te1_`, `lora_te2_`).
    pub fn kohya_prefix(self) -> &'static str {
        match self {
            Component::Unet => "lora_unet_",
            Component::TextEncoder => "lora_te1_",
            Component::TextEncoder2 => "lora_te2_",
        }
    }

    /// `text_encoder_2.text_model.x` -> (TextEncoder2, `text_model.x`).
    pub fn split(name: &str) -> Option<(Component, &str)> {
        Component::ALL.into_iter().find_map(|c| {
            name.strip_prefix(c.prefix())
                .and_then(|rest| rest.strip_prefix('.'))
                .map(|rest| (c, rest))
        })
    }

    /// Added to the run's seed for this part's random streams. The UNet's is 0, so a
    /// UNet-only adapter starts exactly as it did before text encoders could be adapted.
    pub fn seed_offset(self) -> u64 {
        match self {
            Component::Unet => 0,
            Component::TextEncoder => 0x7465_3100,
            Component::TextEncoder2 => 0x7465_3200,
        }
    }
}

/// Both text encoders with their component names.
pub fn text_encoder_parts(text: &mut TextEncoders) -> [(Component, &mut ClipTextModel); 2] {
    [
        (Component::TextEncoder, &mut text.text_encoder),
        (Component::TextEncoder2, &mut text.text_encoder_2),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_split_back() {
        for c in Component::ALL {
            let name = format!(
                "{}.text_model.encoder.layers.0.self_attn.q_proj",
                c.prefix()
            );
            assert_eq!(
                Component::split(&name),
                Some((c, "text_model.encoder.layers.0.self_attn.q_proj"))
            );
        }
        assert_eq!(Component::split("vae.decoder"), None);
        assert_eq!(Component::split("text_encoder_3.x"), None);
    }
}
