//! DoRA, LoHa and LoKr files for other tools, through the command line: `moslora export
//! --format kohya` (LyCORIS keys with `ss_*` metadata) for each, `--format diffusers` for DoRA
//! (the format peft and diffusers read), and `moslora merge` into a full model. The exports
//! are merged by tests/reference/check_family_export.py with the loaders' own math (LyCORIS /
//! ComfyUI for kohya keys, diffusers and peft for the DoRA file) and held against the merged
//! model, within 1e-5.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo, run_reference, scratch, tiny_model};
use moslora::adapter::export::kohya_component_name;
use moslora::adapter::file::AdapterFile;
use moslora::adapter::Component;
use moslora::config::RunConfig;
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::RunOptions;
use moslora::sdxl::sgm_names::Layout;
use moslora::train::{self, AdapterKind, Quiet, RunPaths};

fn moslora(args: &[&Path]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(args)
        .env("MOSLORA_THREADS", "1")
        .output()
        .unwrap();
    (
        o.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn trained(out: &Path, kind: AdapterKind) -> PathBuf {
    let mut c = RunConfig {
        model: tiny_model(),
        output: out.to_path_buf(),
        ..RunConfig::default()
    };
    c.subject.images = repo().join("assets/subject");
    c.subject.class_noun = "toy".into();
    c.train.steps = 3;
    c.train.learning_rate = 1e-2;
    c.train.resolution = 64;
    c.train.batch_size = 1;
    c.train.crops_per_image = 1;
    c.train.checkpoint_every = 0;
    c.adapter.alpha = Some(8.0);
    train::train(&c, &[kind], RunOptions::default(), false, &mut Quiet).unwrap();
    RunPaths::new(&c, kind).adapter()
}

fn metadata(path: &Path) -> std::collections::HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

#[test]
fn dora_loha_and_lokr_exports_merge_like_moslora_merge() {
    let dir = scratch("families-export");
    let layout = Layout::unet(
        &ModelDir::open(&tiny_model())
            .unwrap()
            .unet_config()
            .unwrap(),
    );
    let p = |s: &str| PathBuf::from(s);
    let mut jobs = Vec::new();
    for kind in [AdapterKind::Dora, AdapterKind::Loha, AdapterKind::Lokr] {
        let name = kind.name();
        let adapter = trained(&dir.join(name), kind);
        let merged = dir.join(format!("merged-{name}"));
        let (code, err) = moslora(&[
            &p("merge"),
            &p("--model"),
            &tiny_model(),
            &p("--adapter"),
            &adapter,
            &p("--out"),
            &merged,
        ]);
        assert_eq!(code, Some(0), "merge {name}: {err}");
        let kohya = dir.join(format!("{name}-kohya.safetensors"));
        let (code, err) = moslora(&[
            &p("export"),
            &adapter,
            &p("--format"),
            &p("kohya"),
            &p("--out"),
            &kohya,
        ]);
        assert_eq!(code, Some(0), "export {name}: {err}");
        let md = metadata(&kohya);
        assert_eq!(md["ss_network_module"], "lycoris.kohya", "{name}");
        let args: serde_json::Value = serde_json::from_str(&md["ss_network_args"]).unwrap();
        let algo = if kind == AdapterKind::Dora {
            "lora"
        } else {
            name
        };
        assert_eq!(args["algo"], algo, "{name}");
        assert_eq!(md["ss_network_dim"], "4", "{name}");
        assert_eq!(md["ss_network_alpha"], "8.0", "{name}");
        let diffusers = dir.join(format!("{name}-diffusers.safetensors"));
        let (code, err) = moslora(&[
            &p("export"),
            &adapter,
            &p("--format"),
            &p("diffusers"),
            &p("--out"),
            &diffusers,
        ]);
        if kind == AdapterKind::Dora {
            assert_eq!(code, Some(0), "export {name}: {err}");
        } else {
            // diffusers has no loader for these: refused, pointing to the kohya format.
            assert_eq!(code, Some(2), "{name}: {err}");
            assert!(err.contains("--format kohya"), "{err}");
            assert!(!diffusers.exists());
        }
        let f = AdapterFile::read(&adapter).unwrap();
        let names: serde_json::Map<String, serde_json::Value> = f
            .layers
            .keys()
            .map(|m| {
                let k = kohya_component_name(Component::Unet, m, &layout).unwrap();
                (k, serde_json::Value::from(m.as_str()))
            })
            .collect();
        assert_eq!(names.len(), 136);
        jobs.push(serde_json::json!({
            "family": name, "base": tiny_model(), "merged": merged, "kohya": kohya,
            "diffusers": (kind == AdapterKind::Dora).then_some(&diffusers), "names": names,
        }));
    }
    let spec = dir.join("jobs.json");
    std::fs::write(&spec, serde_json::to_vec(&jobs).unwrap()).unwrap();
    run_reference("check_family_export.py", &[&spec]);
    std::fs::remove_dir_all(&dir).unwrap();
}
