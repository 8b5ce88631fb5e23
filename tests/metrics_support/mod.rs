//! Shared by the metrics tests: the fixture paths and a render folder made of fixture pictures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use moslora::metrics;
use moslora::render::manifest::{
    AdapterEntry, ImageEntry, Manifest, PromptEntry, Settings, Subject,
};

use super::common;

pub fn fx() -> PathBuf {
    let dir = common::fixtures();
    assert!(
        dir.join("tiny-clip").is_dir(),
        "metric fixtures missing at {}: run `make fixtures`",
        dir.display()
    );
    dir
}

#[derive(serde::Deserialize)]
pub struct Case {
    pub renders: Vec<String>,
    pub photos: Vec<String>,
    pub prompts: Vec<String>,
}

pub fn case() -> Case {
    serde_json::from_str(&std::fs::read_to_string(fx().join("ref/metrics.json")).unwrap()).unwrap()
}

pub fn photo(name: &str) -> PathBuf {
    fx().join("metric-photos").join(format!("{name}.png"))
}

/// A render folder of the fixture pictures: LoRA's images are the case's renders, MoSLoRA's
/// the same pictures (so every pair ties), the case's photos the subject photos.
pub fn renders_folder(dir: &Path) -> Manifest {
    let c = case();
    let _ = std::fs::remove_dir_all(dir);
    for sub in ["images", "photos"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let templates = [
        "a [V] {class} on the beach",
        "a red [V] {class}",
        "a photo of a [V] {class} in the snow at night",
    ];
    let prompts: Vec<PromptEntry> = templates
        .iter()
        .enumerate()
        .map(|(i, t)| PromptEntry {
            id: format!("p{i}"),
            template: t.to_string(),
            text: t.replace("[V]", "sks").replace("{class}", "dog"),
        })
        .collect();
    for (p, want) in prompts.iter().zip(&c.prompts) {
        assert_eq!(&metrics::clip_t_prompt(&p.template, "dog"), want);
    }
    let mut images = Vec::new();
    for adapter in ["lora", "moslora"] {
        for (i, name) in c.renders.iter().enumerate() {
            let file = format!("images/p{i}_s0_{adapter}.png");
            std::fs::copy(photo(name), dir.join(&file)).unwrap();
            images.push(ImageEntry {
                file,
                prompt_id: format!("p{i}"),
                prompt: prompts[i].text.clone(),
                seed: 0,
                adapter: adapter.into(),
                noise_sha256: format!("noise{i}"),
                width: 0,
                height: 0,
                key: format!("{adapter}{i}"),
                scores: None,
            });
        }
    }
    let photos: Vec<String> = c
        .photos
        .iter()
        .map(|n| {
            let rel = format!("photos/{n}.png");
            std::fs::copy(photo(n), dir.join(&rel)).unwrap();
            rel
        })
        .collect();
    let m = Manifest {
        format_version: 1,
        subject: Subject {
            name: "fixture".into(),
            identifier: "sks".into(),
            class: "dog".into(),
            photos,
        },
        model: moslora::adapter::file::ModelIdentity {
            name: "none".into(),
            architecture: String::new(),
            weights: String::new(),
        },
        settings: Settings {
            steps: 1,
            guidance: 1.0,
            scheduler: "euler".into(),
            width: 0,
            height: 0,
            negative_prompt: None,
            dtype: "f32".into(),
        },
        adapters: ["lora", "moslora"]
            .iter()
            .map(|n| AdapterEntry {
                name: n.to_string(),
                label: if *n == "lora" { "LoRA" } else { "MoSLoRA" }.into(),
                file: None,
                sha256: None,
                rank: None,
                mixer: None,
                steps: None,
                parameters: None,
            })
            .collect(),
        prompts,
        images,
        grids: Vec::new(),
        contact_sheet: "contact_sheet.png".into(),
        gallery: "index.html".into(),
        loss_curve: None,
        validation: Vec::new(),
        metrics: None,
    };
    m.write(dir).unwrap();
    m
}
