//! The toy world's judge: a small CLIP (transformers `CLIPModel` layout) trained from scratch
//! on the world's pictures and captions, independent of the diffusion model it judges.
//!
//! Two terms:
//! * CLIP's contrastive loss between pictures and captions, with every caption in the batch
//!   that is true of a picture counted as a positive ("a photo of a ball" describes every
//!   ball): the text side learns class, colour and scene;
//! * instance discrimination between two views of each picture (a shifted crop and a flip):
//!   the image embedding learns to tell one thing from another of the same class, as DINO's
//!   does, so that it can serve subject similarity.
//!
//! The judge is written as a CLIP folder, so `moslora score --clip` uses it exactly as it
//! uses OpenAI's CLIP on real renders.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use image::{imageops, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::subjects::{self, SUBJECTS};
use super::world::{Content, Scene, World, CLASSES, COLOURS, SIZE};
use crate::config::Adam;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::sdxl::clip_model::{normalize, write_clip_folder, ClipConfig, ClipModel};
use crate::sdxl::image_processing::Preprocess;
use crate::sdxl::tokenizer::ClipTokenizer;
use crate::sdxl::weights::{RandomSource, TensorSource, TrainableSource, Weights};
use crate::train::optimizer::AdamW;
use crate::train::INTERRUPTED;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JudgeRecipe {
    pub seed: u64,
    pub steps: u64,
    pub batch: i64,
    pub lr: f64,
    pub warmup: u64,
    /// Weight of the instance-discrimination term.
    pub instance_weight: f64,
    /// Temperature of the instance term.
    pub instance_temperature: f64,
}

impl Default for JudgeRecipe {
    fn default() -> Self {
        JudgeRecipe {
            seed: 0,
            steps: 3000,
            batch: 64,
            lr: 1e-3,
            warmup: 100,
            instance_weight: 0.5,
            instance_temperature: 0.1,
        }
    }
}

/// The judge's architecture: a ViT with 8-pixel patches on 64-pixel pictures and a 3-layer
/// text tower on the toy model's reduced CLIP vocabulary.
pub fn config(vocab_size: usize) -> Result<ClipConfig> {
    let v = json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": 64,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": vocab_size, "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 3,
            "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            "bos_token_id": vocab_size - 2, "eos_token_id": 2, "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": 96, "intermediate_size": 192,
            "num_attention_heads": 4, "num_hidden_layers": 3, "image_size": SIZE,
            "patch_size": 8, "num_channels": 3, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        },
    });
    let dir = std::env::temp_dir().join(format!("moslora-judge-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join("config.json");
    fsutil::write_bytes(&path, v.to_string().as_bytes())?;
    let cfg = ClipConfig::from_file(&path);
    let _ = std::fs::remove_dir_all(&dir);
    cfg
}

/// What a caption says about a picture.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Says {
    Everything,
    Class,
    ColourClass,
    Scene,
}

fn caption(c: &Content, says: Says) -> String {
    let class = c.class.map(|k| CLASSES[k].name).unwrap_or("");
    let colour = COLOURS[c.colour].0;
    let art = |w: &str| {
        if w.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        }
    };
    match says {
        Says::Everything => format!(
            "a photo of {} {colour} {class} {}",
            art(colour),
            c.scene.phrase()
        ),
        Says::Class => format!("a photo of {} {class}", art(class)),
        Says::ColourClass => format!("a photo of {} {colour} {class}", art(colour)),
        Says::Scene => format!("a photo of {}", c.scene.alone()),
    }
}

/// Whether a caption of `says` made from `of` is true of a picture showing `c`.
fn true_of(c: &Content, of: &Content, says: Says) -> bool {
    let class = c.class.is_some() && c.class == of.class;
    match says {
        Says::Everything => class && c.colour == of.colour && c.scene == of.scene,
        Says::Class => class,
        Says::ColourClass => class && c.colour == of.colour,
        Says::Scene => c.scene == of.scene,
    }
}

/// The second view for instance discrimination: a random crop of 80-100 % of the side,
/// resized back, flipped half of the time.
fn other_view(img: &RgbImage, rng: &mut ChaCha8Rng) -> RgbImage {
    let side = (SIZE as f32 * rng.random_range(0.8..1.0)) as u32;
    let x = rng.random_range(0..=SIZE - side);
    let y = rng.random_range(0..=SIZE - side);
    let crop = imageops::crop_imm(img, x, y, side, side).to_image();
    let out = imageops::resize(&crop, SIZE, SIZE, imageops::FilterType::Triangle);
    if rng.random_bool(0.5) {
        imageops::flip_horizontal(&out)
    } else {
        out
    }
}

struct Tokens<'a> {
    tokenizer: &'a ClipTokenizer,
    cache: HashMap<String, Tensor>,
}

impl Tokens<'_> {
    fn ids(&mut self, texts: &[String]) -> Result<Tensor> {
        let mut rows = Vec::with_capacity(texts.len());
        for t in texts {
            if !self.cache.contains_key(t) {
                let ids = Tensor::from_slice(&self.tokenizer.encode(t)?);
                self.cache.insert(t.clone(), ids);
            }
            rows.push(self.cache[t].shallow_clone());
        }
        Ok(Tensor::stack(&rows, 0))
    }
}

/// Cross-entropy against a row-normalised target matrix.
fn soft_ce(logits: &Tensor, targets: &Tensor) -> Tensor {
    let t = targets / targets.sum_dim_intlist(&[1i64][..], true, Kind::Float);
    -(t * logits.log_softmax(1, Kind::Float))
        .sum_dim_intlist(&[1i64][..], false, Kind::Float)
        .mean(Kind::Float)
}

/// Train the judge; the folder lands at `out`. `tokenizer_dir` holds the vocabulary (the toy
/// model's `tokenizer/`). Progress: `on_step(step, loss)`.
pub fn train(
    out: &Path,
    tokenizer_dir: &Path,
    r: &JudgeRecipe,
    mut on_step: impl FnMut(u64, f64),
) -> Result<ClipModel> {
    let tokenizer = ClipTokenizer::from_dir(tokenizer_dir)?;
    let cfg = config(tokenizer.vocab_size())?;
    tch::manual_seed(r.seed as i64 + 77);
    let src = Rc::new(TrainableSource::new(Rc::new(RandomSource::new())));
    let w = Weights::new(
        src.clone() as Rc<dyn TensorSource>,
        "judge",
        Kind::Float,
        Device::Cpu,
    );
    let model = ClipModel::new(&w, &cfg)?;
    let mut opt = AdamW::new(
        src.parameters(),
        Adam {
            weight_decay: 0.0,
            ..Adam::default()
        },
    );
    let pre = Preprocess::clip(SIZE);
    let world = World::new(r.seed.wrapping_add(2));
    let mut tokens = Tokens {
        tokenizer: &tokenizer,
        cache: HashMap::new(),
    };
    let b = r.batch as u64;
    for step in 1..=r.steps {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err(Error::msg(format!(
                "judge training interrupted at step {step}"
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(r.seed ^ 0x1d9e);
        rng.set_stream(step);
        let pics: Vec<_> = ((step - 1) * b..step * b)
            .map(|i| world.picture(i))
            .collect();
        let says: Vec<Says> = pics
            .iter()
            .map(|p| match (p.content.class, rng.random_range(0..10)) {
                // Class-only captions are the hardest to ground (the object is small): they
                // get the largest share.
                (None, _) => Says::Scene,
                (_, 0..3) => Says::Everything,
                (_, 3..6) => Says::Class,
                (_, 6..8) => Says::ColourClass,
                _ => Says::Scene,
            })
            .collect();
        let texts: Vec<String> = pics
            .iter()
            .zip(&says)
            .map(|(p, &s)| caption(&p.content, s))
            .collect();
        let truth: Vec<f32> = pics
            .iter()
            .flat_map(|pi| {
                pics.iter()
                    .zip(&says)
                    .map(|(pj, &s)| true_of(&pi.content, &pj.content, s) as u8 as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        let truth = Tensor::from_slice(&truth).view([r.batch, r.batch]);
        let view_a: Vec<Tensor> = pics
            .iter()
            .map(|p| pre.pixel_values_rgb(&p.image))
            .collect();
        let view_b: Vec<Tensor> = pics
            .iter()
            .map(|p| pre.pixel_values_rgb(&other_view(&p.image, &mut rng)))
            .collect();
        let pixels = Tensor::cat(&[Tensor::stack(&view_a, 0), Tensor::stack(&view_b, 0)], 0);
        opt.zero_grad();
        let img = model.image_embeds(&pixels);
        let (ea, eb) = (img.narrow(0, 0, r.batch), img.narrow(0, r.batch, r.batch));
        let txt = model.text_embeds(&tokens.ids(&texts)?);
        let logits = model.logits(&ea, &txt);
        let clip = (soft_ce(&logits, &truth) + soft_ce(&logits.tr(), &truth.tr())) * 0.5;
        let inst_logits = normalize(&ea).matmul(&normalize(&eb).tr()) / r.instance_temperature;
        let eye = Tensor::eye(r.batch, (Kind::Float, Device::Cpu));
        let inst = (soft_ce(&inst_logits, &eye) + soft_ce(&inst_logits.tr(), &eye)) * 0.5;
        let loss = &clip + inst * r.instance_weight;
        loss.backward();
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Err(Error::msg(format!("judge loss is {value} at step {step}")));
        }
        opt.clip_grad_norm(1.0);
        let lr = judge_lr(r, step);
        opt.step(lr);
        {
            // CLIP clamps the temperature so that logits stay below 100.
            let _g = tch::no_grad_guard();
            let _ = model.logit_scale.shallow_clone().clamp_(0.0, 100f64.ln());
        }
        on_step(step, value);
    }
    write_clip_folder(out, &model, tokenizer_dir)?;
    let text = serde_json::to_string_pretty(r).expect("recipe serialises");
    fsutil::write_bytes(&out.join("recipe.json"), text.as_bytes())?;
    Ok(model)
}

/// Linear warm-up, then a cosine decay to zero at the last step.
fn judge_lr(r: &JudgeRecipe, step: u64) -> f64 {
    if step <= r.warmup {
        return r.lr * step as f64 / r.warmup.max(1) as f64;
    }
    let t = (step - r.warmup) as f64 / (r.steps - r.warmup).max(1) as f64;
    r.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// How well the judge sees the world and the subjects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JudgeReport {
    /// Zero-shot accuracy on held-out world pictures: the class among all classes
    /// ("a photo of a {class}"), the colour among all colours given the class ("a photo of a
    /// {colour} {class}"), and the scene among all scenes ("a photo of {scene}").
    pub class_accuracy: f64,
    pub colour_accuracy: f64,
    pub scene_accuracy: f64,
    pub held_out: usize,
    /// Per subject: ROC AUC of the cosine to the mean embedding of 5 photos, for 10 further
    /// photos of the subject against 100 world pictures of its class; photo folders given to
    /// [`evaluate`] (the bundled robot) are measured leave-one-out.
    pub subject_auc: Vec<(String, f64)>,
    /// How the judge reads the base model's renders of world prompts, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_renders: Option<BaseRenderCheck>,
}

/// The judge's reading of the base model's renders of world prompts: the share whose class,
/// scene, and both, it names as the prompt does (zero-shot among all classes and scenes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseRenderCheck {
    pub prompts: usize,
    pub sampling_steps: usize,
    pub class_accuracy: f64,
    pub scene_accuracy: f64,
    pub both_accuracy: f64,
    /// Per prompt: the prompt, and the class and scene the judge named.
    pub readings: Vec<(String, String, String)>,
}

/// A subject given as photos (a folder such as `assets/subject`) and the world class it
/// belongs to.
pub struct PhotoSubject {
    pub name: String,
    pub class: String,
    pub photos: Vec<RgbImage>,
}

fn embed_images(model: &ClipModel, imgs: &[RgbImage]) -> Tensor {
    let _g = tch::no_grad_guard();
    let pre = Preprocess::clip(SIZE);
    let px: Vec<Tensor> = imgs.iter().map(|i| pre.pixel_values_rgb(i)).collect();
    normalize(&model.image_embeds(&Tensor::stack(&px, 0)))
}

fn embed_texts(model: &ClipModel, tok: &ClipTokenizer, texts: &[String]) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let ids: Vec<Tensor> = texts
        .iter()
        .map(|t| tok.encode(t).map(|v| Tensor::from_slice(&v)))
        .collect::<Result<_>>()?;
    Ok(normalize(&model.text_embeds(&Tensor::stack(&ids, 0))))
}

/// ROC AUC: the chance that a random positive scores above a random negative (ties half).
pub fn roc_auc(pos: &[f64], neg: &[f64]) -> f64 {
    let mut wins = 0.0;
    for p in pos {
        for n in neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()).max(1) as f64
}

/// Measure the judge (held-out world seed `seed + 3`) on the world and the generated
/// subjects, and on `extra` subjects given as photos.
pub fn evaluate(
    model: &ClipModel,
    tok: &ClipTokenizer,
    seed: u64,
    extra: &[PhotoSubject],
) -> Result<JudgeReport> {
    let world = World::new(seed.wrapping_add(3));
    let pics: Vec<_> = (0..600u64)
        .map(|i| world.picture(i))
        .filter(|p| p.content.class.is_some())
        .take(400)
        .collect();
    let imgs: Vec<RgbImage> = pics.iter().map(|p| p.image.clone()).collect();
    let e = embed_images(model, &imgs);
    let (class_pred, scene_pred) = read_embeddings(model, tok, &e)?;
    let (mut c_ok, mut s_ok, mut col_ok) = (0, 0, 0);
    for (i, p) in pics.iter().enumerate() {
        let k = p.content.class.expect("filtered");
        c_ok += (class_pred[i] == k) as usize;
        s_ok += (scene_pred[i] == p.content.scene) as usize;
        let colour_texts: Vec<String> = (0..COLOURS.len())
            .map(|c| {
                caption(
                    &probe(Some(CLASSES[k].name), c, Scene::Beach),
                    Says::ColourClass,
                )
            })
            .collect();
        let tcol = embed_texts(model, tok, &colour_texts)?;
        let pred = e
            .get(i as i64)
            .matmul(&tcol.tr())
            .argmax(0, false)
            .int64_value(&[]) as usize;
        col_ok += (pred == p.content.colour) as usize;
    }
    let n = pics.len() as f64;
    let mut subject_auc = Vec::new();
    for s in &SUBJECTS {
        let photos: Vec<RgbImage> = (0..15).map(|i| subjects::photo(s, i)).collect();
        let others = class_pictures(&world, class_index(s.class)?, 100);
        let ep = embed_images(model, &photos);
        let reference = normalize(&ep.narrow(0, 0, 5).mean_dim(&[0i64][..], true, Kind::Float));
        let pos = Vec::<f64>::try_from(
            ep.narrow(0, 5, 10)
                .matmul(&reference.tr())
                .view([-1])
                .to_kind(Kind::Double),
        )
        .unwrap();
        let neg = Vec::<f64>::try_from(
            embed_images(model, &others)
                .matmul(&reference.tr())
                .view([-1])
                .to_kind(Kind::Double),
        )
        .unwrap();
        subject_auc.push((s.name.to_string(), roc_auc(&pos, &neg)));
    }
    for s in extra {
        let others = class_pictures(&world, class_index(&s.class)?, 100);
        subject_auc.push((
            s.name.clone(),
            leave_one_out_auc(
                &embed_images(model, &s.photos),
                &embed_images(model, &others),
            ),
        ));
    }
    Ok(JudgeReport {
        class_accuracy: c_ok as f64 / n,
        colour_accuracy: col_ok as f64 / n,
        scene_accuracy: s_ok as f64 / n,
        held_out: pics.len(),
        subject_auc,
        base_renders: None,
    })
}

fn class_index(name: &str) -> Result<usize> {
    CLASSES.iter().position(|c| c.name == name).ok_or_else(|| {
        let names: Vec<&str> = CLASSES.iter().map(|c| c.name).collect();
        Error::msg(format!(
            "'{name}' is not a class of the toy world (one of: {})",
            names.join(", ")
        ))
    })
}

/// The first `n` pictures of class `k` in `world`, the negatives of a subject of that class.
fn class_pictures(world: &World, k: usize, n: usize) -> Vec<RgbImage> {
    (0..5000u64)
        .map(|i| world.picture(i))
        .filter(|p| p.content.class == Some(k))
        .take(n)
        .map(|p| p.image)
        .collect()
}

/// ROC AUC for a handful of photos (`photos`, normalised embeddings): each photo in turn is
/// scored against the mean of the others, and so is every negative; the pairs are pooled.
fn leave_one_out_auc(photos: &Tensor, negatives: &Tensor) -> f64 {
    let n = photos.size()[0];
    let (mut wins, mut pairs) = (0.0, 0.0);
    for i in 0..n {
        let rest: Vec<Tensor> = (0..n).filter(|&j| j != i).map(|j| photos.get(j)).collect();
        let reference =
            normalize(&Tensor::stack(&rest, 0).mean_dim(&[0i64][..], true, Kind::Float));
        let pos = photos.get(i).dot(&reference.view([-1])).double_value(&[]);
        let neg = Vec::<f64>::try_from(
            negatives
                .matmul(&reference.tr())
                .view([-1])
                .to_kind(Kind::Double),
        )
        .expect("a vector");
        let k = neg.len() as f64;
        wins += roc_auc(&[pos], &neg) * k;
        pairs += k;
    }
    wins / pairs.max(1.0)
}

/// What the judge reads in each picture, zero-shot: its class (an index into [`CLASSES`],
/// against "a photo of a {class}") and its scene (against "a photo of {the scene}").
pub fn read_pictures(
    judge: &ClipModel,
    tok: &ClipTokenizer,
    images: &[RgbImage],
) -> Result<(Vec<usize>, Vec<Scene>)> {
    read_embeddings(judge, tok, &embed_images(judge, images))
}

/// [`read_pictures`] on image embeddings already made (normalised, one row per picture).
fn read_embeddings(
    judge: &ClipModel,
    tok: &ClipTokenizer,
    e: &Tensor,
) -> Result<(Vec<usize>, Vec<Scene>)> {
    let class_texts: Vec<String> = CLASSES
        .iter()
        .map(|c| caption(&probe(Some(c.name), 0, Scene::Beach), Says::Class))
        .collect();
    let scene_texts: Vec<String> = Scene::ALL
        .iter()
        .map(|&s| caption(&probe(None, 0, s), Says::Scene))
        .collect();
    let pick = |t: &Tensor| -> Vec<usize> {
        Vec::<i64>::try_from(e.matmul(&t.tr()).argmax(1, false))
            .expect("indices")
            .into_iter()
            .map(|i| i as usize)
            .collect()
    };
    let classes = pick(&embed_texts(judge, tok, &class_texts)?);
    let scenes = pick(&embed_texts(judge, tok, &scene_texts)?)
        .into_iter()
        .map(|i| Scene::ALL[i])
        .collect();
    Ok((classes, scenes))
}

/// The world prompts of the base-render check: every class in turn, each in the next scene
/// and colour, so that `n` prompts cover the classes and scenes evenly.
pub fn base_render_prompts(n: usize) -> Vec<(usize, Scene, String)> {
    (0..n)
        .map(|i| {
            let class = i % CLASSES.len();
            let scene = Scene::ALL[(i + i / CLASSES.len()) % Scene::ALL.len()];
            let content = Content {
                class: Some(class),
                colour: (i * 3) % COLOURS.len(),
                scene,
                shiny: false,
                caption_style: super::world::CaptionStyle::Full,
            };
            (class, scene, content.caption())
        })
        .collect()
}

/// Render `n` world prompts with the model at `model_dir` (seed = prompt index, guidance 4,
/// `sampling_steps` Euler steps) and let the judge name each render's class and scene.
pub fn check_base_renders(
    model_dir: &Path,
    judge: &ClipModel,
    tok: &ClipTokenizer,
    n: usize,
    sampling_steps: usize,
) -> Result<BaseRenderCheck> {
    use crate::sdxl::model_dir::ModelDir;
    use crate::sdxl::pipeline::{Denoiser, GenerateOptions, RunOptions, TextEncoders};
    let md = ModelDir::open(model_dir)?;
    let opts = RunOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
    };
    let text = TextEncoders::load(&md, opts)?;
    let den = Denoiser::load(&md, opts)?;
    let size = SIZE as i64;
    let prompts = base_render_prompts(n);
    let mut renders = Vec::with_capacity(n);
    for (i, (_, _, prompt)) in prompts.iter().enumerate() {
        let cond = text.encode(prompt)?;
        let uncond = cond.zeros_like();
        let g = GenerateOptions {
            steps: sampling_steps,
            guidance: 4.0,
            width: size,
            height: size,
            seed: i as u64,
            sampler: crate::schedule::sampler::SamplerKind::Euler,
        };
        let noise = den.initial_noise(g.seed, size, size)?;
        let lat = den.sample(&cond, &uncond, &noise, &g, |_| {})?;
        let rgb = den.decode(&lat);
        let data = Vec::<u8>::try_from(rgb.permute([1, 2, 0]).contiguous().view([-1]))
            .expect("RGB8 pixels");
        renders.push(RgbImage::from_raw(SIZE, SIZE, data).expect("a 64-pixel render"));
    }
    let (class_pred, scene_pred) = read_pictures(judge, tok, &renders)?;
    let (mut c_ok, mut s_ok, mut both) = (0, 0, 0);
    let mut readings = Vec::with_capacity(n);
    for (i, (class, scene, prompt)) in prompts.iter().enumerate() {
        let c = class_pred[i] == *class;
        let s = scene_pred[i] == *scene;
        c_ok += c as usize;
        s_ok += s as usize;
        both += (c && s) as usize;
        readings.push((
            prompt.clone(),
            CLASSES[class_pred[i]].name.to_string(),
            scene_pred[i].name().to_string(),
        ));
    }
    let n_f = n.max(1) as f64;
    Ok(BaseRenderCheck {
        prompts: n,
        sampling_steps,
        class_accuracy: c_ok as f64 / n_f,
        scene_accuracy: s_ok as f64 / n_f,
        both_accuracy: both as f64 / n_f,
        readings,
    })
}

/// A content with the given class name, colour and scene (for zero-shot captions).
fn probe(class: Option<&str>, colour: usize, scene: Scene) -> Content {
    Content {
        class: class.map(|n| {
            CLASSES
                .iter()
                .position(|c| c.name == n)
                .expect("world class")
        }),
        colour,
        scene,
        shiny: false,
        caption_style: super::world::CaptionStyle::Full,
    }
}

/// Prompt fidelity the toy world can check directly: per adapter of a render folder, the
/// share of its renders whose scene the judge names as their prompt does (prompts that name
/// no world scene are left out). Returns (adapter, share, renders counted).
pub fn scene_fidelity(
    judge: &ClipModel,
    tok: &ClipTokenizer,
    renders: &Path,
    m: &crate::render::manifest::Manifest,
) -> Result<Vec<(String, f64, usize)>> {
    scene_fidelity_in(judge, tok, renders, m, None)
}

/// [`scene_fidelity`] over the renders of one scene's prompts only (`Some(Scene::Snow)`: the
/// prompts "in the snow"), or over all (None).
pub fn scene_fidelity_in(
    judge: &ClipModel,
    tok: &ClipTokenizer,
    renders: &Path,
    m: &crate::render::manifest::Manifest,
    only: Option<Scene>,
) -> Result<Vec<(String, f64, usize)>> {
    let mut out = Vec::new();
    for a in &m.adapters {
        let mut imgs = Vec::new();
        let mut want = Vec::new();
        for i in m.images.iter().filter(|i| i.adapter == a.name) {
            let Some(scene) = Scene::ALL
                .iter()
                .copied()
                .find(|s| i.prompt.contains(s.phrase()))
            else {
                continue;
            };
            if only.is_some_and(|o| o != scene) {
                continue;
            }
            let path = renders.join(&i.file);
            let img = image::open(&path)
                .map_err(|e| Error::BadFile {
                    path: path.clone(),
                    what: format!("not a readable render: {e}"),
                })?
                .to_rgb8();
            imgs.push(img);
            want.push(scene);
        }
        if imgs.is_empty() {
            continue;
        }
        let (_, read) = read_pictures(judge, tok, &imgs)?;
        let ok = read.iter().zip(&want).filter(|(r, w)| r == w).count();
        out.push((a.name.clone(), ok as f64 / imgs.len() as f64, imgs.len()));
    }
    Ok(out)
}
