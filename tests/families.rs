//! LoRA's relatives in the comparison, through the command line as people run it: `compare`
//! with `adapters: [lora, dora, loha, lokr]` and `same_parameters: true` trains each, renders
//! them as columns in that order, states each column's trained parameters, and picks each
//! family's rank to match LoRA's parameters.

mod common;

use std::path::Path;
use std::process::Command;

use common::{repo, scratch, tiny_model};
use moslora::adapter::file::AdapterFile;
use moslora::render::manifest::Manifest;

fn moslora(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(args)
        .env("MOSLORA_THREADS", "1")
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write_run(dir: &Path, extra: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let prompts = dir.join("prompts.yaml");
    std::fs::write(&prompts, "prompts:\n  - \"a [V] {class} in the snow\"\n").unwrap();
    let yaml = format!(
        "model: {}\noutput: {}\nsubject:\n  images: {}\n  class: robot\ntrain:\n  steps: 2\n  \
         resolution: 64\n  batch_size: 1\n  crops_per_image: 1\nrender:\n  prompts: {}\n  \
         seeds: [0]\n  steps: 2\n{extra}",
        tiny_model().display(),
        dir.join("out").display(),
        repo().join("assets/subject").display(),
        prompts.display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn compare_takes_any_list_of_families_at_matched_parameters() {
    let root = scratch("families-compare");
    let run = write_run(
        &root,
        "adapters: [lora, dora, loha, lokr]\nsame_parameters: true\n",
    );
    let (code, err) = moslora(&["compare", run.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let out = root.join("out");
    let m = Manifest::read(&out.join("renders")).unwrap();
    let names: Vec<&str> = m.adapters.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["lora", "dora", "loha", "lokr"]);
    let count = |name: &str| {
        let f = AdapterFile::read(&out.join(name).join("adapter.safetensors")).unwrap();
        (f.meta.adapter.rank, f.trained_parameters())
    };
    let (lora_rank, budget) = count("lora");
    assert_eq!(lora_rank, 4);
    // LoHa's two pairs at half the rank are exactly LoRA's size.
    assert_eq!(count("loha"), (2, budget));
    // DoRA adds one magnitude per output channel: rank 4 is over the budget by every layer's
    // outputs, rank 3 under it by every layer's inputs, fewer (cross-attention's keys and
    // values read the 64-wide text, into up to 128 channels): rank 3.
    let (dora_rank, dora) = count("dora");
    assert_eq!(dora_rank, 3);
    assert!(dora < budget);
    // LoKr split near the square root tops out under the budget once its larger factor is
    // whole (rank 8 makes the 16 x 16 factors of the 128-wide layers whole): it gets that.
    let (lokr_rank, lokr) = count("lokr");
    println!(
        "parameters: lora {budget}, dora {dora} (rank {dora_rank}), loha {budget} (rank 2), \
         lokr {lokr} (rank {lokr_rank})"
    );
    assert_eq!((lokr_rank, lokr), (8, 32768));
    // One loss chart with every run's curve.
    assert!(out.join("loss.png").is_file());
    // Every column's count is in the manifest and on the gallery's column heads.
    let gallery = std::fs::read_to_string(out.join("renders").join(&m.gallery)).unwrap();
    for a in &m.adapters {
        let n = a.parameters.expect("a parameter count");
        assert_eq!(n, count(&a.name).1, "{}", a.name);
        assert!(
            gallery.contains(&format!("<th>{}<small>", a.label)),
            "{}: no count on its column head",
            a.name
        );
        assert!(
            m.images.iter().any(|i| i.adapter == a.name),
            "{}: no picture",
            a.name
        );
    }
    // A name that is no adapter is refused before any work, with the list.
    let bad = write_run(&root.join("bad"), "adapters: [lora, lohx]\n");
    let (code, err) = moslora(&["compare", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("expected one of lora, moslora, dora, loha, lokr"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// `same_parameters` cannot match ranks without the UNet's layer shapes: refused at the start,
/// naming the setting and the model, not trained as if it were off.
#[test]
fn same_parameters_without_a_readable_unet_config_is_refused() {
    let root = scratch("families-unreadable");
    let model = root.join("model");
    common::copy_dir(&tiny_model(), &model);
    std::fs::write(model.join("unet/config.json"), "{").unwrap();
    let run = write_run(&root, "adapters: [lora, loha]\nsame_parameters: true\n");
    let yaml = std::fs::read_to_string(&run).unwrap().replace(
        &tiny_model().display().to_string(),
        &model.display().to_string(),
    );
    std::fs::write(&run, yaml).unwrap();
    let (code, err) = moslora(&["train", run.to_str().unwrap()]);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("same_parameters") && err.contains(&model.display().to_string()),
        "{err}"
    );
    assert!(!root.join("out/lora/adapter.safetensors").exists());
}
