//! Loading SDXL folders: both spellings of the text encoders and tokenizers, and clear errors
//! for folders that are not (complete) SDXL.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, fixtures, scratch, tiny_model};
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::{load_unet, Denoiser, RunOptions, TextEncoders};
use moslora::sdxl::weights::save_safetensors;
use tch::Tensor;

/// A scratch copy of the tiny model: components linked, except those the test replaces.
fn model_copy(name: &str, replace: &[&str]) -> PathBuf {
    let dir = scratch(name);
    for entry in std::fs::read_dir(tiny_model()).unwrap() {
        let entry = entry.unwrap();
        let file_name = entry.file_name();
        let component = file_name.to_str().unwrap();
        if replace.contains(&component) {
            copy_dir(&entry.path(), &dir.join(component));
        } else {
            std::os::unix::fs::symlink(entry.path(), dir.join(component)).unwrap();
        }
    }
    dir
}

fn error_text<T>(r: moslora::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn saved_layout_and_download_layout_encode_alike() {
    // tiny-sdxl-saved: transformers 5 names (no `text_model.` prefix), tokenizer.json.
    let opts = RunOptions::default();
    let a = TextEncoders::load(&ModelDir::open(&tiny_model()).unwrap(), opts).unwrap();
    let saved = fixtures().join("tiny-sdxl-saved");
    let b = TextEncoders::load(&ModelDir::open(&saved).unwrap(), opts).unwrap();
    for prompt in ["a photo of sks dog", "A [V] teapot, on a TABLE!!  4k", ""] {
        let (x, y) = (a.encode(prompt).unwrap(), b.encode(prompt).unwrap());
        assert!(
            x.hidden.equal(&y.hidden),
            "hidden states differ for {prompt:?}"
        );
        assert!(x.pooled.equal(&y.pooled), "pooled differs for {prompt:?}");
    }
}

#[test]
fn missing_model_folder() {
    let e = error_text(ModelDir::open(Path::new("/nonexistent/sdxl")));
    assert!(
        e.contains("/nonexistent/sdxl") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn missing_component() {
    let dir = model_copy("missing", &[]);
    std::fs::remove_file(dir.join("vae")).unwrap();
    let e = error_text(ModelDir::open(&dir));
    assert!(e.contains("component `vae` is missing"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_weights_file() {
    let dir = model_copy("noweights", &["unet"]);
    std::fs::remove_file(dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let e = error_text(load_unet(
        &ModelDir::open(&dir).unwrap(),
        RunOptions::default(),
    ));
    assert!(
        e.contains("`unet` has no weights") && e.contains("diffusion_pytorch_model.safetensors"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_safetensors() {
    let dir = model_copy("truncated", &["unet"]);
    let file = dir.join("unet/diffusion_pytorch_model.safetensors");
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 2).unwrap();
    let e = error_text(load_unet(
        &ModelDir::open(&dir).unwrap(),
        RunOptions::default(),
    ));
    assert!(
        e.contains(file.to_str().unwrap()) && e.contains("not a valid safetensors"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_shaped_tensor() {
    let dir = model_copy("wrongshape", &["unet"]);
    let file = dir.join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors = Tensor::read_safetensors(&file).unwrap();
    for (name, t) in tensors.iter_mut() {
        if name == "conv_in.weight" {
            *t = t.narrow(0, 0, 16).contiguous();
        }
    }
    save_safetensors(&tensors, None, &file).unwrap();
    let e = error_text(load_unet(
        &ModelDir::open(&dir).unwrap(),
        RunOptions::default(),
    ));
    assert!(
        e.contains("unet")
            && e.contains("conv_in.weight")
            && e.contains("[16, 4, 3, 3]")
            && e.contains("expected [32, 4, 3, 3]"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unexpected_tensor_is_refused() {
    let dir = model_copy("extra", &["vae"]);
    let file = dir.join("vae/diffusion_pytorch_model.safetensors");
    let mut tensors = Tensor::read_safetensors(&file).unwrap();
    tensors.push((
        "encoder.extra_layer.weight".into(),
        Tensor::zeros([3], tch::kind::FLOAT_CPU),
    ));
    save_safetensors(&tensors, None, &file).unwrap();
    let e = error_text(Denoiser::load(
        &ModelDir::open(&dir).unwrap(),
        RunOptions::default(),
    ));
    assert!(
        e.contains("vae") && e.contains("encoder.extra_layer.weight"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sd15_unet_is_refused() {
    let dir = model_copy("sd15", &["unet"]);
    let path = dir.join("unet/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // An SD 1.5 UNet: no added conditioning, cross-attention from one CLIP encoder.
    cfg["addition_embed_type"] = serde_json::Value::Null;
    cfg["cross_attention_dim"] = 768.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let e = error_text(load_unet(
        &ModelDir::open(&dir).unwrap(),
        RunOptions::default(),
    ));
    assert!(
        e.contains("not an SDXL UNet") && e.contains("config.json"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
