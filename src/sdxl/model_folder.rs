//! The one writer of diffusers-layout model folders (what `ModelDir` reads): each component's
//! `config.json`, the scheduler config, both tokenizer folders and `model_index.json`.
//! `init-model` and `convert`/`merge` write their folders through it; the weight files are
//! theirs (random draws, or tensors streamed from a source).

use std::path::Path;

use serde_json::json;

use crate::error::Result;
use crate::fsutil;

/// The real 49,408-token CLIP vocabulary (built from the BPE merges OpenAI published).
pub const CLIP_VOCAB: &str = include_str!("../../assets/clip/vocab.json");
pub const CLIP_MERGES: &str = include_str!("../../assets/clip/merges.txt");

/// SDXL's two tokenizer folders and their pad tokens, as the download ships them.
pub const TOKENIZERS: [(&str, &str); 2] = [("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")];

/// `model_index.json` of an SDXL pipeline (diffusers reads the component classes from it).
pub fn write_model_index(dir: &Path) -> Result<()> {
    let index = json!({
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [null, null],
        "force_zeros_for_empty_prompt": true,
        "image_encoder": [null, null],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    });
    write_json(&dir.join("model_index.json"), &index)
}

/// `<component>/config.json`, as given.
pub fn write_config(dir: &Path, component: &str, json_text: &str) -> Result<()> {
    fsutil::write_bytes(
        &dir.join(component).join("config.json"),
        json_text.as_bytes(),
    )
}

/// `scheduler/scheduler_config.json`, as given.
pub fn write_scheduler(dir: &Path, json_text: &str) -> Result<()> {
    fsutil::write_bytes(
        &dir.join("scheduler/scheduler_config.json"),
        json_text.as_bytes(),
    )
}

/// Both tokenizer folders with this vocabulary and these merges.
pub fn write_tokenizers(dir: &Path, vocab: &str, merges: &str) -> Result<()> {
    for (name, pad) in TOKENIZERS {
        write_tokenizer_files(&dir.join(name), pad, vocab, merges)?;
    }
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("json values serialise");
    fsutil::write_bytes(path, text.as_bytes())
}

/// A tokenizer folder as the SDXL download ships it: vocab.json, merges.txt,
/// special_tokens_map.json and tokenizer_config.json (whose pad token differs per folder).
pub fn write_tokenizer(dir: &Path, pad: &str) -> Result<()> {
    write_tokenizer_files(dir, pad, CLIP_VOCAB, CLIP_MERGES)
}

/// [`write_tokenizer`] with another vocabulary and merges (the toy world's reduced CLIP BPE).
pub fn write_tokenizer_files(dir: &Path, pad: &str, vocab: &str, merges: &str) -> Result<()> {
    let token = |c: &str| {
        json!({"__type": "AddedToken", "content": c, "lstrip": false, "normalized": true,
               "rstrip": false, "single_word": false})
    };
    fsutil::write_bytes(&dir.join("vocab.json"), vocab.as_bytes())?;
    fsutil::write_bytes(&dir.join("merges.txt"), merges.as_bytes())?;
    let special = json!({
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad,
        "unk_token": "<|endoftext|>",
    });
    write_json(&dir.join("special_tokens_map.json"), &special)?;
    let config = json!({
        "add_prefix_space": false,
        "bos_token": token("<|startoftext|>"),
        "clean_up_tokenization_spaces": true,
        "do_lower_case": true,
        "eos_token": token("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": if pad == "!" { json!(pad) } else { token(pad) },
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": token("<|endoftext|>"),
    });
    write_json(&dir.join("tokenizer_config.json"), &config)
}
