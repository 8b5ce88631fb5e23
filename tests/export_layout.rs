//! `moslora export` names an adapter's layers for the model it was trained on: kohya's (SGM's)
//! block numbering depends on the UNet's resnets per block, and the toy model (one per block)
//! numbers `input_blocks_3_1` what SDXL-shaped models (two) number `input_blocks_4_1`. Without
//! `--model` the adapter's own metadata decides (older files: its layer names); a `--model` of
//! another structure is refused, naming both. Each exported name is checked against the
//! model's own single file (`moslora convert`), where every layer has its real SGM name.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{repo, scratch, tiny_model, Failures};

fn moslora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{what} failed: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One LoRA step on `model` (the bundled robot's photos, 64 pixels): the adapter file.
fn train_one_step(model: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let run = dir.join("run.yaml");
    std::fs::write(
        &run,
        format!(
            "model: {}\noutput: {}\nsubject:\n  images: {}\ntrain:\n  steps: 1\n  resolution: 64\n  \
             batch_size: 1\n  crops_per_image: 1\n  random_flip: false\n",
            model.display(),
            dir.join("out").display(),
            repo().join("assets/subject").display()
        ),
    )
    .unwrap();
    ok(
        &moslora(&["train", run.to_str().unwrap(), "--adapter", "lora"]),
        "train",
    );
    dir.join("out/lora/adapter.safetensors")
}

/// The UNet layer names of `model` as its single file has them (`moslora convert`), written
/// the kohya way: `input_blocks_3_1_transformer_blocks_0_attn1_to_q`.
fn sgm_layers(model: &Path, dir: &Path) -> BTreeSet<String> {
    let single = dir.join("single.safetensors");
    ok(
        &moslora(&[
            "convert",
            "--model",
            model.to_str().unwrap(),
            "--out",
            single.to_str().unwrap(),
        ]),
        "convert",
    );
    let bytes = std::fs::read(&single).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.names()
        .iter()
        .filter_map(|n| n.strip_prefix("model.diffusion_model."))
        .filter_map(|n| n.strip_suffix(".weight"))
        .map(|n| n.replace('.', "_"))
        .collect()
}

/// The layers of a kohya export: `lora_unet_X.lora_down.weight` -> `X`.
fn exported_layers(file: &Path) -> BTreeSet<String> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.names()
        .iter()
        .filter_map(|n| n.strip_suffix(".lora_down.weight"))
        .map(|n| n.strip_prefix("lora_unet_").unwrap_or(n).to_string())
        .collect()
}

fn export(adapter: &Path, out: &Path, model: Option<&Path>) -> Output {
    let mut args = vec![
        "export",
        adapter.to_str().unwrap(),
        "--format",
        "kohya",
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(m) = model {
        args.extend(["--model", m.to_str().unwrap()]);
    }
    moslora(&args)
}

/// The adapter file with the block structure taken out of its metadata, as files written
/// before it was recorded are.
fn without_recorded_blocks(adapter: &Path, out: &Path) {
    let bytes = std::fs::read(adapter).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut md: HashMap<String, String> = header.metadata().clone().unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&md["moslora"]).unwrap();
    assert!(
        meta.get("unet_blocks").is_some(),
        "a new adapter records its blocks"
    );
    meta.as_object_mut().unwrap().remove("unet_blocks");
    md.insert("moslora".into(), meta.to_string());
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .names()
        .into_iter()
        .map(|n| (n.to_string(), st.tensor(n).unwrap()))
        .collect();
    safetensors::serialize_to_file(tensors, Some(md), out).unwrap();
}

#[test]
fn exports_are_named_for_the_adapters_own_model_and_a_foreign_model_is_refused() {
    let dir = scratch("layout");
    let toy = repo().join("assets/toy-model");
    let tiny = tiny_model();
    let mut f = Failures::new();
    let mut adapters = Vec::new();
    for (name, model, expect) in [
        (
            "toy",
            &toy,
            "input_blocks_3_1_transformer_blocks_0_attn1_to_q",
        ),
        (
            "tiny",
            &tiny,
            "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        ),
    ] {
        let d = dir.join(name);
        let adapter = train_one_step(model, &d);
        let layers = sgm_layers(model, &d);
        let out = d.join("kohya.safetensors");
        let said = ok(&export(&adapter, &out, None), "export");
        println!("{name}: {said}");
        let got = exported_layers(&out);
        f.check(name, got.contains(expect), || {
            format!(
                "no {expect} among {:?}",
                got.iter().take(4).collect::<Vec<_>>()
            )
        });
        let foreign: Vec<&String> = got.difference(&layers).collect();
        f.check(name, !got.is_empty() && foreign.is_empty(), || {
            format!(
                "{} exported layer(s) the model does not have: {foreign:?}",
                foreign.len()
            )
        });
        // The same with its own model named.
        let named = d.join("named.safetensors");
        ok(&export(&adapter, &named, Some(model)), "export --model");
        f.check(name, exported_layers(&named) == got, || {
            "--model of its own model named the layers otherwise".into()
        });
        // A file from before the structure was recorded: its layer names tell it.
        let old = d.join("old.safetensors");
        without_recorded_blocks(&adapter, &old);
        let old_out = d.join("old-kohya.safetensors");
        let said = ok(&export(&old, &old_out, None), "export (old file)");
        f.contains_all(name, &said, &["the adapter's layer names"]);
        f.check(name, exported_layers(&old_out) == got, || {
            "an older file was named otherwise".into()
        });
        adapters.push(adapter);
    }
    // The toy model's adapter with the tiny SDXL model named: refused, exit 2, both named.
    let o = export(&adapters[0], &dir.join("mixed.safetensors"), Some(&tiny));
    let err = String::from_utf8_lossy(&o.stderr);
    println!("toy adapter, --model tiny: {err}");
    f.check("mismatch", o.status.code() == Some(2), || {
        format!("exit {:?}", o.status)
    });
    f.contains_all(
        "mismatch",
        &err,
        &[
            "toy-model",
            tiny.to_str().unwrap(),
            "1 resnet(s) per block",
            "2 resnet(s) per block",
        ],
    );
    f.check("mismatch", !dir.join("mixed.safetensors").exists(), || {
        "a refused export wrote its file".into()
    });
    f.assert_none();
}
