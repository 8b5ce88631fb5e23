//! Single-file SDXL checkpoints: the tiny model written as one file by moslora loads in
//! diffusers' `from_single_file` (with the tiny configs) and renders the folder's image;
//! moslora reads it back (as a model everywhere, training included) and renders the same;
//! the conversion back to a folder is lossless; merged models render as the adapter does;
//! truncated, corrupt and non-SDXL files are refused saying what they are.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    adapter_meta, mean_pixel_diff, randomize_b, read_png, repo, run_reference, scratch, tensors,
    tiny_model,
};
use moslora::adapter::export::{export, ExportFormat};
use moslora::adapter::file;
use moslora::adapter::{self, merged_model, AdapterConfig, MixerInit};
use moslora::config::RunConfig;
use moslora::schedule::sampler::SamplerKind;
use moslora::sdxl::convert::{self, WriteOptions};
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::{load_unet, GenerateOptions, RunOptions, TextEncoders};
use moslora::sdxl::sgm_names::Layout;
use moslora::train::{self, AdapterKind, Quiet, RunPaths};
use tch::{Device, Kind, Tensor};

const PROMPT: &str = "a photo of sks toy";
const SEED: u64 = 7;
const STEPS: usize = 10;
const SIZE: i64 = 64;

/// moslora's render, (H, W, 3) in 0..255.
fn render(model: &Path, adapter: Option<&Path>) -> Tensor {
    let o = GenerateOptions {
        steps: STEPS,
        guidance: 5.0,
        width: SIZE,
        height: SIZE,
        seed: SEED,
        sampler: SamplerKind::Euler,
    };
    let image = moslora::render::generate::generate(
        model,
        PROMPT,
        None,
        adapter.map(|p| (p, 1.0)),
        &o,
        RunOptions::default(),
        &mut moslora::render::generate::Silent,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    image.permute([1, 2, 0]).to_kind(Kind::Float)
}

fn assert_same_image(what: &str, a: &Tensor, b: &Tensor) {
    let diff = mean_pixel_diff(a, b);
    println!("{what}: mean abs pixel difference {diff:.4} (tolerance 1 level of 255)");
    assert!(
        diff < 1.0,
        "{what}: mean abs pixel difference {diff} >= 1/255"
    );
}

fn moslora(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(args)
        .output()
        .unwrap()
}

/// Write the tiny model as one file.
fn tiny_single_file(dir: &Path, dtype: Option<Kind>) -> PathBuf {
    let name = match dtype {
        Some(k) => format!("tiny-{}.safetensors", moslora::runtime::dtype_name(k)),
        None => "tiny.safetensors".to_string(),
    };
    let out = dir.join(name);
    let model = ModelDir::open(&tiny_model()).unwrap();
    convert::convert(
        &model,
        &out,
        &WriteOptions {
            dtype,
            force: false,
        },
    )
    .unwrap();
    out
}

#[test]
fn single_file_renders_like_the_folder_in_diffusers_and_moslora() {
    let dir = scratch("render");
    let file = tiny_single_file(&dir, None);

    // The original (SGM) layout, as diffusers' converter expects it.
    let t = tensors(&file);
    let prefixes = [
        "model.diffusion_model.",
        "first_stage_model.",
        "conditioner.embedders.0.transformer.text_model.",
        "conditioner.embedders.1.model.",
    ];
    assert!(t.keys().all(|k| prefixes.iter().any(|p| k.starts_with(p))));
    for (name, shape) in [
        (
            "model.diffusion_model.input_blocks.0.0.weight",
            vec![32, 4, 3, 3],
        ),
        ("model.diffusion_model.label_emb.0.0.weight", vec![128, 80]),
        (
            "model.diffusion_model.output_blocks.2.2.conv.weight",
            vec![128, 128, 3, 3],
        ),
        ("model.diffusion_model.out.2.weight", vec![4, 32, 3, 3]),
        (
            "first_stage_model.encoder.mid.attn_1.q.weight",
            vec![64, 64, 1, 1],
        ),
        (
            "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
            vec![32, 64, 1, 1],
        ),
        (
            "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
            vec![96, 32],
        ),
        (
            "conditioner.embedders.1.model.text_projection",
            vec![32, 32],
        ),
    ] {
        assert_eq!(t.get(name).map(|x| x.size()), Some(shape), "{name}");
    }
    // text_projection is stored transposed (OpenCLIP applies it as x @ P).
    let te2 = tensors(&tiny_model().join("text_encoder_2/model.safetensors"));
    assert!(t["conditioner.embedders.1.model.text_projection"]
        .equal(&te2["text_projection.weight"].tr()));

    let folder = render(&tiny_model(), None);
    let png = dir.join("diffusers-single-file.png");
    let (seed, steps, size) = (
        PathBuf::from(SEED.to_string()),
        PathBuf::from(STEPS.to_string()),
        PathBuf::from(SIZE.to_string()),
    );
    run_reference(
        "check_single_file.py",
        &[
            &file,
            &tiny_model(),
            Path::new(PROMPT),
            &seed,
            &steps,
            &size,
            &size,
            &png,
        ],
    );
    assert_same_image(
        "diffusers from_single_file vs the folder",
        &read_png(&png),
        &folder,
    );
    assert_same_image(
        "moslora single file vs the folder",
        &render(&file, None),
        &folder,
    );

    // Back to a folder with the command line: the same tensors, bit for bit, and a folder
    // diffusers and transformers read with exactly their names.
    let back = dir.join("back");
    let out = moslora(&[
        "convert".as_ref(),
        "--model".as_ref(),
        file.as_os_str(),
        "--out".as_ref(),
        back.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (c, stem) in moslora::sdxl::model_dir::COMPONENTS {
        let ours = tensors(&back.join(c).join(format!("{stem}.safetensors")));
        let orig = tensors(&tiny_model().join(c).join(format!("{stem}.safetensors")));
        let orig: HashMap<&String, &Tensor> = orig
            .iter()
            .filter(|(k, _)| !k.ends_with("position_ids"))
            .collect();
        assert_eq!(ours.len(), orig.len(), "{c}: tensor count");
        for (name, x) in &ours {
            assert!(x.equal(orig[name]), "{c}: {name} changed in the round trip");
        }
    }
    run_reference("check_pipeline_dir.py", &[&back]);
    assert_same_image(
        "folder from the single file vs the folder",
        &render(&back, None),
        &folder,
    );

    // An existing output is kept unless --force.
    let again = moslora(&[
        "convert".as_ref(),
        "--model".as_ref(),
        file.as_os_str(),
        "--out".as_ref(),
        back.as_os_str(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn half_precision_single_files() {
    let dir = scratch("half");
    let folder = render(&tiny_model(), None);
    for kind in [Kind::Half, Kind::BFloat16] {
        let file = tiny_single_file(&dir, Some(kind));
        let bytes = std::fs::read(&file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let want = if kind == Kind::Half {
            safetensors::Dtype::F16
        } else {
            safetensors::Dtype::BF16
        };
        assert!(
            st.tensors().iter().all(|(_, v)| v.dtype() == want),
            "{kind:?} everywhere"
        );
        let ours = render(&file, None);
        let diff = mean_pixel_diff(&ours, &folder);
        println!("{kind:?} single file vs the f32 folder: mean abs pixel difference {diff:.3}");
        // Rounding the weights moves the picture a little, no more.
        assert!(diff < 4.0, "{kind:?}: {diff}");
        // Converting keeps the stored precision unless told otherwise.
        let back = dir.join(format!("back-{kind:?}"));
        let w = convert::convert(
            &ModelDir::open(&file).unwrap(),
            &back,
            &WriteOptions::default(),
        )
        .unwrap();
        assert_eq!(w.dtype, kind);
    }
}

/// A MoSLoRA with random B (so that it moves the picture), in the UNet and in both text
/// encoders (whose fused OpenCLIP projections a single file stores as one tensor), saved as
/// training saves one.
fn random_moslora(dir: &Path) -> PathBuf {
    let model = ModelDir::open(&tiny_model()).unwrap();
    let mut unet = load_unet(&model, RunOptions::default()).unwrap();
    let mut text = TextEncoders::load(&model, RunOptions::default()).unwrap();
    let cfg = AdapterConfig {
        mixer: MixerInit::Orthogonal,
        alpha: Some(2.0),
        text_encoder_targets: vec!["q_proj".into(), "v_proj".into(), "out_proj".into()],
        ..AdapterConfig::default()
    };
    let mut layers = adapter::inject(&mut unet, &cfg, 5).unwrap();
    layers += adapter::inject_text_encoders(&mut text, &cfg, 5).unwrap();
    randomize_b(&mut unet, Some(&mut text), 13);
    let meta = adapter_meta("moslora", cfg, "tiny-sdxl", layers);
    let path = dir.join("adapter.safetensors");
    file::save_with_text(&mut unet, Some(&mut text), &meta, &path).unwrap();
    path
}

#[test]
fn merged_models_render_like_the_adapter() {
    let dir = scratch("merge");
    let adapter = random_moslora(&dir);
    let with_adapter = render(&tiny_model(), Some(&adapter));
    let base = render(&tiny_model(), None);
    let moved = mean_pixel_diff(&with_adapter, &base);
    println!("the adapter changes the picture by {moved:.2} levels on average");
    assert!(
        moved > 1.0,
        "the adapter barely changes the picture: the test would prove nothing"
    );

    let file = tiny_single_file(&dir, None);
    let single_out = dir.join("merged.safetensors");
    let folder_out = dir.join("merged-folder");
    let from_file_out = dir.join("merged-from-file");
    // Folder -> single file, by the command line.
    let out = moslora(&[
        "merge".as_ref(),
        "--model".as_ref(),
        tiny_model().as_os_str(),
        "--adapter".as_ref(),
        adapter.as_os_str(),
        "--out".as_ref(),
        single_out.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Folder -> folder and single file -> folder, by the library.
    let w = merged_model::merge(
        &ModelDir::open(&tiny_model()).unwrap(),
        &adapter,
        1.0,
        &folder_out,
        &WriteOptions::default(),
    )
    .unwrap();
    let layers = moslora::adapter::file::AdapterFile::read(&adapter)
        .unwrap()
        .layer_count();
    assert_eq!(w.merged_layers, layers, "every adapted layer");
    assert_eq!(layers, 136 + 2 * 5 * 3, "UNet and text-encoder layers");
    merged_model::merge(
        &ModelDir::open(&file).unwrap(),
        &adapter,
        1.0,
        &from_file_out,
        &WriteOptions::default(),
    )
    .unwrap();
    for merged in [&single_out, &folder_out, &from_file_out] {
        assert_same_image(
            &format!(
                "{} vs the adapter render",
                merged.file_name().unwrap().to_string_lossy()
            ),
            &render(merged, None),
            &with_adapter,
        );
    }
    // Strength 0 is the base model.
    let zero = dir.join("zero.safetensors");
    merged_model::merge(
        &ModelDir::open(&tiny_model()).unwrap(),
        &adapter,
        0.0,
        &zero,
        &WriteOptions::default(),
    )
    .unwrap();
    assert_same_image("merged at scale 0 vs the base", &render(&zero, None), &base);
}

#[test]
fn training_reads_a_single_file_as_the_folder() {
    let dir = scratch("train");
    let file = tiny_single_file(&dir, None);
    let mut adapters = Vec::new();
    for (name, model) in [("folder", tiny_model()), ("file", file)] {
        let mut c = RunConfig {
            model,
            output: dir.join(name),
            ..RunConfig::default()
        };
        c.subject.images = repo().join("assets/subject");
        c.subject.class_noun = "toy".into();
        c.train.steps = 2;
        c.train.resolution = 64;
        c.train.batch_size = 1;
        c.train.checkpoint_every = 0;
        train::train(
            &c,
            &[AdapterKind::Moslora],
            RunOptions::default(),
            false,
            &mut Quiet,
        )
        .unwrap();
        adapters.push(tensors(&RunPaths::new(&c, AdapterKind::Moslora).adapter()));
    }
    assert_eq!(adapters[0].len(), adapters[1].len());
    for (name, t) in &adapters[0] {
        assert!(
            t.equal(&adapters[1][name]),
            "{name}: trained differently from the single file"
        );
    }
}

/// A small safetensors file with the given tensors (zeros) and metadata.
fn fake(path: &Path, tensors: &[(&str, &[i64])], meta: &[(&str, &str)]) {
    let t: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, s)| (n.to_string(), Tensor::zeros(*s, (Kind::Half, Device::Cpu))))
        .collect();
    let md: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    moslora::sdxl::weights::save_safetensors(&t, Some(md), path).unwrap();
}

fn open_error(path: &Path) -> String {
    match ModelDir::open(path) {
        Ok(_) => panic!("{} opened as a model", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_single_files_are_refused_clearly() {
    let dir = scratch("bad");
    let good = tiny_single_file(&dir, None);
    let bytes = std::fs::read(&good).unwrap();
    let adapter = random_moslora(&dir);
    let kohya = dir.join("kohya.safetensors");
    export(&adapter, ExportFormat::Kohya, &kohya, &Layout::sdxl()).unwrap();
    let peft = dir.join("peft.safetensors");
    export(&adapter, ExportFormat::Diffusers, &peft, &Layout::sdxl()).unwrap();

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let cut_header = dir.join("cut-header.safetensors");
    std::fs::write(&cut_header, &bytes[..100]).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"<html>Rate limit exceeded</html>").unwrap();
    let bad_json = dir.join("bad-json.safetensors");
    let mut b = bytes.clone();
    b[8] = b'#';
    std::fs::write(&bad_json, &b).unwrap();
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let pickle = dir.join("model.ckpt");
    std::fs::write(&pickle, b"PK\x03\x04").unwrap();

    let sd15 = dir.join("sd15.safetensors");
    fake(
        &sd15,
        &[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 4, 3, 3],
            ),
            (
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
                &[77, 768],
            ),
            ("first_stage_model.decoder.conv_in.weight", &[8, 4, 3, 3]),
        ],
        &[],
    );
    let sd2 = dir.join("sd2.safetensors");
    fake(
        &sd2,
        &[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 4, 3, 3],
            ),
            ("cond_stage_model.model.token_embedding.weight", &[8, 1024]),
        ],
        &[],
    );
    let refiner = dir.join("refiner.safetensors");
    fake(
        &refiner,
        &[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[384, 4, 3, 3],
            ),
            ("conditioner.embedders.0.model.text_projection", &[8, 8]),
        ],
        &[],
    );
    let unet_only = dir.join("unet-only.safetensors");
    fake(
        &unet_only,
        &[(
            "model.diffusion_model.input_blocks.0.0.weight",
            &[320, 4, 3, 3],
        )],
        &[],
    );
    let flux = dir.join("flux.safetensors");
    fake(
        &flux,
        &[("double_blocks.0.img_attn.norm.key_norm.scale", &[8])],
        &[],
    );
    let inpaint = dir.join("inpaint.safetensors");
    fake(
        &inpaint,
        &[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[32, 9, 3, 3],
            ),
            (
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                &[8],
            ),
            ("conditioner.embedders.1.model.ln_final.weight", &[8]),
            ("first_stage_model.decoder.conv_in.weight", &[8, 4, 3, 3]),
        ],
        &[(
            moslora::sdxl::single_file::CONFIGS_KEY,
            &single_configs(&good),
        )],
    );

    let component = tiny_model().join("unet/diffusion_pytorch_model.safetensors");
    let cases: Vec<(&Path, &str)> = vec![
        (&truncated, "truncated"),
        (&cut_header, "truncated"),
        (&garbage, "not a safetensors file"),
        (&bad_json, "not valid JSON"),
        (&empty, "empty or truncated"),
        (&pickle, "pickle"),
        (&sd15, "Stable Diffusion 1.x"),
        (&sd2, "Stable Diffusion 2.x"),
        (&refiner, "SDXL refiner"),
        (&unet_only, "not a complete SDXL checkpoint"),
        (&flux, "not a Stable Diffusion XL checkpoint"),
        (&inpaint, "inpainting"),
        (&kohya, "kohya LoRA"),
        (&peft, "diffusers/PEFT"),
        (&adapter, "moslora adapter"),
        (&component, "one component of a diffusers model"),
        (
            Path::new("/nonexistent/model.safetensors"),
            "does not exist",
        ),
    ];
    for (path, want) in cases {
        let err = open_error(path);
        println!("{}: {err}", path.file_name().unwrap().to_string_lossy());
        assert!(
            err.contains(want),
            "{}: expected `{want}` in: {err}",
            path.display()
        );
        assert!(
            err.contains(&path.display().to_string()),
            "the error names the file: {err}"
        );
    }
    // Configs that do not describe the file.
    let err = ModelDir::open_with_configs(&good, Some(&repo().join("configs/sdxl-base-1.0")))
        .expect_err("full-size configs on the tiny file")
        .to_string();
    println!("{err}");
    assert!(
        err.contains("does not match") && err.contains("--config"),
        "{err}"
    );

    // The command line says the same and fails.
    let out = dir.join("x.png");
    let run = moslora(&[
        "generate".as_ref(),
        "--model".as_ref(),
        sd15.as_os_str(),
        "--prompt".as_ref(),
        "x".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("Stable Diffusion 1.x"), "{stderr}");
    assert!(!out.exists());
}

/// The configs moslora embedded in a file it wrote.
fn single_configs(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().as_ref().unwrap()[moslora::sdxl::single_file::CONFIGS_KEY].clone()
}

/// For full-size SDXL base (and the tiny model), every tensor's single-file name, put through
/// diffusers' own converters, comes back as exactly the diffusers name and shape: the whole
/// SGM mapping agrees with the specification, not only the parts the tiny render exercises.
#[test]
fn sgm_names_invert_diffusers_converters() {
    use moslora::sdxl::single_file::ModelConfigs;
    let dir = scratch("names");
    for preset in ["sdxl-base", "tiny"] {
        let configs = ModelConfigs::preset(preset).unwrap();
        let layout = configs.layout().unwrap();
        let mut cfg = serde_json::Map::new();
        let mut table = serde_json::Map::new();
        let mut count = 0;
        for c in ["unet", "vae", "text_encoder", "text_encoder_2"] {
            let text = configs.text(c);
            cfg.insert(c.into(), serde_json::from_str(text).unwrap());
            let rows: Vec<serde_json::Value> = convert::listing(c, &configs)
                .unwrap()
                .into_iter()
                .map(|(name, shape)| {
                    let s = moslora::sdxl::sgm_names::to_single_file(c, &name, &layout)
                        .unwrap_or_else(|| panic!("{c}: {name} has no single-file name"));
                    serde_json::json!([name, shape, s.name, s.part.stored_shape(&shape)])
                })
                .collect();
            count += rows.len();
            table.insert(c.into(), rows.into());
        }
        if preset == "sdxl-base" {
            assert_eq!(count, 1680 + 248 + 196 + 517, "every full-size tensor");
        }
        let path = dir.join(format!("{preset}.json"));
        let doc = serde_json::json!({"configs": cfg, "tensors": table});
        std::fs::write(&path, doc.to_string()).unwrap();
        run_reference("check_single_file.py", &[Path::new("--names"), &path]);
    }
}
