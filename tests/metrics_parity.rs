//! The automatic metrics against transformers and PIL (tests/reference/make_metric_fixtures.py):
//!
//! * preprocessing against `CLIPImageProcessorPil` and the DINO protocol (torchvision on PIL)
//!   on non-square, up-scaled, down-scaled, odd-sized and transparent pictures: tolerance
//!   1e-6 on the normalised values (PIL's resampling is reproduced bit for bit, so what is left
//!   is float rounding of the normalisation);
//! * CLIP image and text embeddings and DINO features of random tiny models saved in the real
//!   layout: 1e-4 max abs;
//! * the scores (mean cosines, ceiling) through `moslora score`'s own path: 1e-5;
//! * the full-size encoders (openai ViT-B/32 and ViT-L/14, DINO ViT-S/16 and ViT-B/16) built
//!   name by name from their tensor tables, without allocating;
//! * a CLIP folder written by `write_clip_folder` loads in transformers with the same outputs,
//!   and gradients reach weights that require grad.
//!
//! Measured errors are printed (`cargo test --release --test metrics_parity -- --nocapture`).

mod common;
mod metrics_support;

use common::{repo, scratch};
use metrics_support::{case, fx, photo, renders_folder};

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use moslora::metrics::{self, ScoreOptions};
use moslora::render::manifest::Manifest;
use moslora::sdxl::clip_model::{write_clip_folder, ClipConfig, ClipModel};
use moslora::sdxl::encoders::{load_clip, load_dino};
use moslora::sdxl::image_processing::Preprocess;
use moslora::sdxl::vit::{VitConfig, VitModel};
use moslora::sdxl::weights::{Init, ShapeSource, TensorSource, Weights};
use tch::{Device, Kind, Tensor};

const EMB_TOL: f64 = 1e-4;
const SCORE_TOL: f64 = 1e-5;
const PIXEL_TOL: f64 = 1e-6;

const NAMES: [&str; 8] = [
    "wide",
    "tall",
    "small",
    "tiny_tall",
    "odd",
    "odd_wide",
    "big",
    "alpha",
];

#[test]
fn preprocessing_matches_the_python_processors() {
    let r = common::reference("metrics");
    for (which, pre) in [
        ("clip", Preprocess::clip(224)),
        ("dino", Preprocess::dino()),
    ] {
        let mut worst = 0.0f64;
        for name in NAMES {
            let img = metrics::read_image(&photo(name)).unwrap();
            let ours = pre.pixel_values(&img);
            let theirs = &r[&format!("{which}.pixel_values.{name}")];
            let err = common::max_abs_diff(&ours, theirs);
            println!(
                "{which} {name} {}x{}: max abs error {err:.2e}",
                img.width(),
                img.height()
            );
            worst = worst.max(err);
        }
        assert!(
            worst <= PIXEL_TOL,
            "{which}: preprocessing error {worst:.2e} exceeds {PIXEL_TOL:.0e}"
        );
    }
}

/// JPEG decoders differ (PIL: libjpeg-turbo; here: the `image` crate), so a JPEG photo's
/// pixels may differ slightly before any preprocessing; measured and bounded here.
#[test]
fn jpeg_decoding_difference_is_small() {
    let r = common::reference("metrics");
    let path = fx().join("metric-photos/wide.jpg");
    let img = metrics::read_image(&path).unwrap().to_rgb8();
    let ours = Tensor::from_slice(img.as_raw()).view([img.height() as i64, img.width() as i64, 3]);
    let theirs = &r["jpeg.decoded"];
    let diff = (ours.to_kind(Kind::Int) - theirs.to_kind(Kind::Int)).abs();
    let max = diff.max().int64_value(&[]);
    let share = diff
        .gt(0)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    let px = Preprocess::clip(224).pixel_values(&metrics::read_image(&path).unwrap());
    let err = common::max_abs_diff(&px, &r["clip.pixel_values.jpeg"]);
    println!(
        "JPEG: decoded pixels differ by at most {max} levels ({:.2} % of values differ); \
         CLIP pixel values by {err:.2e}",
        100.0 * share
    );
    // A bound, not a parity claim: the two JPEG decoders upsample chroma differently.
    assert!(max <= 32, "JPEG decoders differ by {max} levels");
}

fn stack_ref(r: &HashMap<String, Tensor>, which: &str) -> Tensor {
    let v: Vec<Tensor> = NAMES
        .iter()
        .map(|n| r[&format!("{which}.pixel_values.{n}")].shallow_clone())
        .collect();
    Tensor::stack(&v, 0)
}

#[test]
fn clip_embeddings_match_transformers() {
    let r = common::reference("metrics");
    for folder in ["tiny-clip", "tiny-clip-legacy"] {
        let clip = load_clip(&fx().join(folder), Device::Cpu).unwrap();
        let px = stack_ref(&r, "clip");
        let img = tch::no_grad(|| clip.model.image_embeds(&px));
        common::assert_close(
            &format!("{folder} image_embeds"),
            &img,
            &r["clip.image_embeds"],
            EMB_TOL,
        );
        // The whole path from files: our decoding and preprocessing, batched.
        let pics: Vec<_> = NAMES
            .iter()
            .map(|n| metrics::read_image(&photo(n)).unwrap())
            .collect();
        common::assert_close(
            &format!("{folder} image_embeds from files"),
            &metrics::clip_image_embeds(&clip, &pics),
            &r["clip.image_embeds"],
            EMB_TOL,
        );
        let ids = &r["clip.input_ids"];
        let txt = tch::no_grad(|| clip.model.text_embeds(ids));
        common::assert_close(
            &format!("{folder} text_embeds"),
            &txt,
            &r["clip.text_embeds"],
            EMB_TOL,
        );
        let prompts = case().prompts;
        common::assert_close(
            &format!("{folder} text_embeds from prompts"),
            &metrics::clip_text_embeds(&clip, &prompts).unwrap(),
            &r["clip.text_embeds"],
            EMB_TOL,
        );
        for (i, p) in prompts.iter().enumerate() {
            let ours = clip.tokenizer.encode(p).unwrap();
            let theirs = Vec::<i64>::try_from(ids.get(i as i64)).unwrap();
            assert_eq!(ours, theirs, "token ids of {p:?}");
        }
        assert_eq!(
            clip.model.logit_scale().double_value(&[]),
            r["clip.logit_scale"].double_value(&[])
        );
    }
}

#[test]
fn dino_features_match_transformers_and_eps_is_reported() {
    let r = common::reference("metrics");
    let px = stack_ref(&r, "dino");
    let dino = load_dino(&fx().join("tiny-dino"), Device::Cpu, None).unwrap();
    assert_eq!(
        dino.config.layer_norm_eps, 1e-12,
        "the config file is followed"
    );
    let f = tch::no_grad(|| dino.model.cls_features(&px));
    common::assert_close("dino features", &f, &r["dino.features"], EMB_TOL);
    let d6 = load_dino(&fx().join("tiny-dino"), Device::Cpu, Some(1e-6)).unwrap();
    let f6 = tch::no_grad(|| d6.model.cls_features(&px));
    common::assert_close(
        "dino features (eps 1e-6)",
        &f6,
        &r["dino.features_eps1e-6"],
        EMB_TOL,
    );
    let c = case();
    let idx = |names: &[String]| {
        let i: Vec<i64> = names
            .iter()
            .map(|n| NAMES.iter().position(|m| m == n).unwrap() as i64)
            .collect();
        Tensor::from_slice(&i)
    };
    let (ri, pi) = (idx(&c.renders), idx(&c.photos));
    let s12 = metrics::mean_cosine(&f.index_select(0, &ri), &f.index_select(0, &pi));
    let s6 = metrics::mean_cosine(&f6.index_select(0, &ri), &f6.index_select(0, &pi));
    let moved = s12
        .iter()
        .zip(&s6)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("DINO score moved by at most {moved:.2e} between layer-norm eps 1e-12 and 1e-6");
    let want = Vec::<f64>::try_from(r["scores.dino_eps1e-6"].to_kind(Kind::Double)).unwrap();
    for (a, b) in s6.iter().zip(&want) {
        assert!((a - b).abs() <= SCORE_TOL, "eps 1e-6 DINO score {a} vs {b}");
    }
}

fn options() -> ScoreOptions {
    ScoreOptions {
        clip: Some(fx().join("tiny-clip")),
        dino: Some(fx().join("tiny-dino")),
        device: Device::Cpu,
        dino_eps: None,
    }
}

#[test]
fn scores_match_transformers_and_are_written_everywhere() {
    let r = common::reference("metrics");
    let dir = scratch("score");
    renders_folder(&dir);
    let scored = metrics::score(&dir, &options(), &mut metrics::Quiet).unwrap();
    let m = Manifest::read(&dir).unwrap();
    assert_eq!(m.images.len(), scored.manifest.images.len());
    for (a, b) in m.images.iter().zip(&scored.manifest.images) {
        // JSON keeps 17 significant digits; serde_json's parser may differ in the last one.
        let (a, b) = (a.scores.unwrap(), b.scores.unwrap());
        assert!(
            (a.dino.unwrap() - b.dino.unwrap()).abs() < 1e-14,
            "manifest on disk"
        );
    }
    let want = |k: &str| Vec::<f64>::try_from(r[k].to_kind(Kind::Double)).unwrap();
    let mut worst = 0.0f64;
    for (metric, key) in [
        ("dino", "scores.dino"),
        ("clip_i", "scores.clip_i"),
        ("clip_t", "scores.clip_t"),
    ] {
        let theirs = want(key);
        for img in &m.images {
            let k: usize = img.prompt_id[1..].parse().unwrap();
            let ours = img.scores.unwrap().get(metric).unwrap();
            let err = (ours - theirs[k]).abs();
            worst = worst.max(err);
            assert!(
                err <= SCORE_TOL,
                "{metric} of {}: {ours} vs {}",
                img.file,
                theirs[k]
            );
        }
    }
    let s = m.metrics.as_ref().unwrap();
    for (ours, key) in [
        (s.ceiling.dino, "scores.ceiling_dino"),
        (s.ceiling.clip_i, "scores.ceiling_clip_i"),
    ] {
        let err = (ours.unwrap() - r[key].double_value(&[])).abs();
        worst = worst.max(err);
        assert!(err <= SCORE_TOL, "{key}: {ours:?}");
    }
    println!("scores: max abs error {worst:.2e} (tolerance {SCORE_TOL:.0e})");
    assert!(s.ceiling.clip_t.is_none());
    // Per adapter: the mean of its three images, with an interval around it.
    let lora = &s.adapters[0];
    let dino = lora.dino.unwrap();
    let mean3 = want("scores.dino").iter().sum::<f64>() / 3.0;
    assert!((dino.mean - mean3).abs() <= SCORE_TOL && dino.lo <= dino.mean && dino.mean <= dino.hi);
    assert_eq!(dino.n, 3);
    // Paired: identical pictures tie everywhere.
    assert_eq!(s.paired.len(), 3);
    for p in &s.paired {
        assert_eq!((p.a.as_str(), p.b.as_str()), ("lora", "moslora"));
        assert_eq!((p.wins, p.ties, p.losses), (0, 3, 0));
        // Equal up to float rounding (a picture's place in its batch changes the last bits).
        assert!(p.diff.mean.abs() < 1e-6);
        assert_eq!(p.sign_test_p, None);
    }
    // The other outputs.
    let csv = std::fs::read_to_string(dir.join("scores.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 6);
    assert!(csv.contains("a dog on the beach"), "{csv}");
    let md = std::fs::read_to_string(dir.join("scores.md")).unwrap();
    assert!(
        md.contains("| LoRA |") && md.contains("real photos (ceiling)"),
        "{md}"
    );
    assert!(md.contains("MoSLoRA − LoRA"), "{md}");
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(
        html.contains("automatic metrics")
            && html.contains("DINO 0.")
            && html.contains(" · CLIP-T "),
        "gallery"
    );
    let text = metrics::report::text(&m);
    println!("{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

type Shapes = BTreeMap<String, Vec<i64>>;

fn table(name: &str) -> Shapes {
    #[derive(serde::Deserialize)]
    struct T {
        tensors: Shapes,
        count: usize,
    }
    let path = repo()
        .join("configs/encoders")
        .join(name)
        .join("tensor_shapes.json");
    let t: T = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(t.tensors.len(), t.count);
    t.tensors
}

fn built(build: impl FnOnce(&Weights)) -> Shapes {
    let src = Rc::new(ShapeSource::new());
    let w = Weights::new(
        src.clone() as Rc<dyn TensorSource>,
        "encoder",
        Kind::Float,
        Device::Cpu,
    );
    build(&w);
    let seen = src.seen();
    let shapes: Shapes = seen.iter().cloned().collect();
    assert_eq!(shapes.len(), seen.len(), "a name was requested twice");
    shapes
}

fn same(name: &str, ours: &Shapes, theirs: &Shapes) {
    let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(missing.is_empty(), "{name}: not built: {missing:?}");
    assert!(extra.is_empty(), "{name}: not in the checkpoint: {extra:?}");
    for (k, s) in theirs {
        assert_eq!(&ours[k], s, "{name}: shape of {k}");
    }
    let params: i64 = ours.values().map(|s| s.iter().product::<i64>()).sum();
    println!("{name}: {} tensors, {params} parameters", ours.len());
}

#[test]
fn full_size_encoders_load_name_by_name() {
    for name in ["clip-vit-base-patch32", "clip-vit-large-patch14"] {
        let cfg = ClipConfig::from_file(
            &repo()
                .join("configs/encoders")
                .join(name)
                .join("config.json"),
        )
        .unwrap();
        let ours = built(|w| {
            ClipModel::new(w, &cfg).unwrap();
        });
        same(name, &ours, &table(name));
    }
    for name in ["dino-vits16", "dino-vitb16"] {
        let cfg = VitConfig::from_file(
            &repo()
                .join("configs/encoders")
                .join(name)
                .join("config.json"),
        )
        .unwrap();
        let ours = built(|w| {
            VitModel::new(w, &cfg).unwrap();
        });
        same(name, &ours, &table(name));
    }
}

/// Weights created as leaf tensors that require grad (what a trainer's source would give).
struct Trainable {
    made: std::cell::RefCell<Vec<Tensor>>,
}

impl TensorSource for Trainable {
    fn tensor(
        &self,
        _name: &str,
        shape: &[i64],
        init: Init,
        kind: Kind,
        device: Device,
    ) -> moslora::Result<Tensor> {
        let t = match init {
            Init::Ones => Tensor::ones(shape, (kind, device)),
            Init::Zeros => Tensor::zeros(shape, (kind, device)),
            Init::Constant(v) => Tensor::full(shape, v, (kind, device)),
            _ => Tensor::randn(shape, (kind, device)) * 0.05,
        }
        .set_requires_grad(true);
        self.made.borrow_mut().push(t.shallow_clone());
        Ok(t)
    }
}

#[test]
fn gradients_reach_the_weights_and_written_folders_load_in_transformers() {
    tch::manual_seed(0);
    let cfg = ClipConfig::from_file(&fx().join("tiny-clip/config.json")).unwrap();
    let src = Rc::new(Trainable {
        made: Default::default(),
    });
    let w = Weights::new(
        src.clone() as Rc<dyn TensorSource>,
        "judge",
        Kind::Float,
        Device::Cpu,
    );
    let model = ClipModel::new(&w, &cfg).unwrap();
    assert!((model.logit_scale().double_value(&[]) - 2.6592).abs() < 1e-6);
    let r = common::reference("metrics");
    let px = stack_ref(&r, "clip").narrow(0, 0, 3);
    let ids = &r["clip.input_ids"];
    let logits = model.logits(&model.image_embeds(&px), &model.text_embeds(ids));
    let loss = logits.cross_entropy_for_logits(&Tensor::arange(3, (Kind::Int64, Device::Cpu)));
    loss.backward();
    let made = src.made.borrow();
    let with_grad = made.iter().filter(|t| t.grad().defined()).count();
    // Every weight is on the path to the loss except the unused rows of nothing: all of them.
    assert_eq!(with_grad, made.len(), "every weight receives a gradient");

    // Written, then read by transformers (and by us) with the same outputs.
    let dir = scratch("judge");
    write_clip_folder(&dir, &model, &fx().join("tiny-clip")).unwrap();
    let (img, txt) = tch::no_grad(|| (model.image_embeds(&px), model.text_embeds(ids)));
    let back = load_clip(&dir, Device::Cpu).unwrap();
    let img2 = tch::no_grad(|| back.model.image_embeds(&px));
    common::assert_close("written folder, read back", &img2, &img, 1e-6);
    let out = dir.join("expected.safetensors");
    Tensor::write_safetensors(
        &[
            ("pixel_values", &px),
            ("input_ids", ids),
            ("image_embeds", &img),
            ("text_embeds", &txt),
        ],
        &out,
    )
    .unwrap();
    common::run_reference("check_clip_folder.py", &[&dir, &out]);
    let _ = std::fs::remove_dir_all(&dir);
}
