//! Automatic subject-driven metrics of a render folder, as DreamBooth reports them (Ruiz et al.
//! 2023, Table 1):
//!
//! * **DINO**: mean cosine between the DINO ViT-S/16 class-token feature of a render and of
//!   every subject photo (subject fidelity);
//! * **CLIP-I**: the same with CLIP image embeddings;
//! * **CLIP-T**: cosine between a render's CLIP image embedding and its prompt's CLIP text
//!   embedding (prompt fidelity). The identifier is removed from the prompt and the class
//!   noun kept ("a [V] dog on the beach" is scored as "a dog on the beach"): the rare token
//!   means nothing to CLIP, and its BPE pieces would only move the text embedding;
//! * the subject photos against each other, the "real images" row: the ceiling.
//!
//! Preprocessing follows the references exactly (`sdxl::image_processing`); the encoders run
//! in batches under `no_grad`. Per-adapter means come with percentile-bootstrap 95 %
//! intervals, and two adapters are compared on identical (prompt, seed, noise) pairs (see
//! [`stats`]). Everything is computed before anything is written; the files are then written
//! atomically: `scores.csv`, `scores.md`, the gallery, and the manifest last.

pub mod report;
pub mod stats;
pub mod verdict;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use image::DynamicImage;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::render::manifest::{
    AdapterMetrics, ImageScores, Manifest, MetricsSummary, PairedMetric,
};
use crate::sdxl::clip_model::normalize;
use crate::sdxl::encoders::{load_clip, load_dino, LoadedClip, LoadedDino};
use crate::sdxl::image_processing::Preprocess;

/// `|b - a|` up to this is a tie in the paired comparison: half a hundredth of a cosine, below
/// what separates methods in the published tables (their differences are 0.01 and more).
pub const TIE_MARGIN: f64 = 0.005;
/// Images per encoder batch.
pub const BATCH: usize = 32;
/// How CLIP-T's prompts are written, as the manifest and reports state it.
pub const CLIP_T_PROMPT_RULE: &str =
    "identifier removed, class noun kept (\"a [V] dog\" -> \"a dog\")";

/// What to score with.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// A transformers `CLIPModel` folder (CLIP-I, CLIP-T).
    pub clip: Option<PathBuf>,
    /// A transformers `ViTModel` DINO folder.
    pub dino: Option<PathBuf>,
    pub device: Device,
    /// Override DINO's layer-norm epsilon (default: the config file's).
    pub dino_eps: Option<f64>,
}

/// The prompt CLIP-T scores against: the template with "[V]" removed and "{class}" filled.
pub fn clip_t_prompt(template: &str, class: &str) -> String {
    template
        .replace("[V]", " ")
        .replace("{class}", class)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decode a picture with its EXIF orientation applied (as training applies it: a phone photo
/// is scored upright); each encoder's preprocessing makes it RGB its reference's way. One line
/// naming the file when it cannot be read.
pub fn read_image(path: &Path) -> Result<DynamicImage> {
    crate::image_file::open(path)
}

/// Run `f` on `BATCH`-sized batches of preprocessed pictures ((3, S, S) each) and stack the
/// rows.
fn batched(pixels: &[Tensor], f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    batched_counted(pixels, f, &mut |_| {})
}

/// [`batched`], calling `tick` with each batch's size once it is done.
fn batched_counted(
    pixels: &[Tensor],
    f: impl Fn(&Tensor) -> Tensor,
    tick: &mut dyn FnMut(usize),
) -> Tensor {
    let rows: Vec<Tensor> = pixels
        .chunks(BATCH)
        .map(|chunk| {
            let row = tch::no_grad(|| f(&Tensor::stack(chunk, 0))).to_kind(Kind::Float);
            tick(chunk.len());
            row
        })
        .collect();
    Tensor::cat(&rows, 0).to_device(Device::Cpu)
}

/// Decode every picture and preprocess it for each of `pre`, on a few threads (decoding a
/// 1024 px PNG and resampling it cost more than the encoders per image on a small CPU); the
/// decoded picture is dropped at once, so memory holds only the small pixel tensors.
/// `out[k][i]`: picture `i` for preprocessing `k`. The first unreadable file fails, named.
pub fn prepare(paths: &[PathBuf], pre: &[&Preprocess]) -> Result<Vec<Vec<Tensor>>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(paths.len().max(1));
    let chunk = paths.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<Vec<Tensor>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|p| {
                            let img = read_image(p)?;
                            Ok(pre.iter().map(|q| q.pixel_values(&img)).collect())
                        })
                        .collect::<Result<Vec<Vec<Tensor>>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a preprocessing thread panicked"))
            .collect()
    });
    let mut out: Vec<Vec<Tensor>> = pre
        .iter()
        .map(|_| Vec::with_capacity(paths.len()))
        .collect();
    for part in parts {
        for per_image in part? {
            for (k, t) in per_image.into_iter().enumerate() {
                out[k].push(t);
            }
        }
    }
    Ok(out)
}

/// CLIP image embeddings (projected, not normalised), (n, projection_dim).
pub fn clip_image_embeds(clip: &LoadedClip, imgs: &[DynamicImage]) -> Tensor {
    let px: Vec<Tensor> = imgs
        .iter()
        .map(|i| clip.preprocess.pixel_values(i))
        .collect();
    batched(&px, |px| clip.model.image_embeds(px))
}

/// CLIP text embeddings (projected, not normalised), (n, projection_dim). Every prompt is
/// tokenized as CLIP's processor does (BOS, tokens cut to fit, EOS); the batch is cut after
/// its longest EOS, which changes nothing (causal tower pooled at the EOS) but the work.
pub fn clip_text_embeds(clip: &LoadedClip, texts: &[String]) -> Result<Tensor> {
    let max_pos = clip.model.config.text_config.max_position_embeddings as usize;
    let mut rows = Vec::new();
    for chunk in texts.chunks(BATCH) {
        let ids: Vec<Vec<i64>> = chunk
            .iter()
            .map(|t| clip.tokenizer.encode(t))
            .collect::<Result<_>>()?;
        let eos = clip.tokenizer.eos_id();
        let len = ids
            .iter()
            .map(|v| v.iter().position(|&i| i == eos).map_or(v.len(), |p| p + 1))
            .max()
            .unwrap_or(1)
            .min(max_pos);
        let flat: Vec<i64> = ids.iter().flat_map(|v| v[..len].to_vec()).collect();
        let t = Tensor::from_slice(&flat).view([chunk.len() as i64, len as i64]);
        rows.push(tch::no_grad(|| clip.model.text_embeds(&t)).to_kind(Kind::Float));
    }
    Ok(Tensor::cat(&rows, 0).to_device(Device::Cpu))
}

/// DINO features (class token after the final norm), (n, hidden).
pub fn dino_features(dino: &LoadedDino, imgs: &[DynamicImage]) -> Tensor {
    let px: Vec<Tensor> = imgs
        .iter()
        .map(|i| dino.preprocess.pixel_values(i))
        .collect();
    batched(&px, |px| dino.model.cls_features(px))
}

/// For every row of `a`: its mean cosine with the rows of `b`.
pub fn mean_cosine(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let s = normalize(&a.to_kind(Kind::Double)).matmul(&normalize(&b.to_kind(Kind::Double)).tr());
    Vec::<f64>::try_from(s.mean_dim(1, false, Kind::Double)).expect("a vector")
}

/// Row-wise cosine of `a` with `b` (same shapes).
pub fn cosine(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let s = (normalize(&a.to_kind(Kind::Double)) * normalize(&b.to_kind(Kind::Double)))
        .sum_dim_intlist(-1, false, Kind::Double);
    Vec::<f64>::try_from(s).expect("a vector")
}

/// Mean cosine over every unordered pair of rows (self-pairs left out): the "real images"
/// ceiling. `None` for fewer than two rows.
pub fn pairwise_mean(x: &Tensor) -> Option<f64> {
    let n = x.size()[0];
    if n < 2 {
        return None;
    }
    let x = normalize(&x.to_kind(Kind::Double));
    let s = x.matmul(&x.tr());
    // Sum of the off-diagonal, halved, over n (n - 1) / 2 pairs.
    let total = s.sum(Kind::Double).double_value(&[]) - s.trace().double_value(&[]);
    Some(total / (n * (n - 1)) as f64)
}

/// Progress and notes while scoring.
pub trait ScoreProgress {
    fn note(&mut self, _msg: &str) {}
    /// Scoring begins: `total` pictures to encode (each once per scorer).
    fn start(&mut self, _total: u64) {}
    /// `done` of them are encoded.
    fn encoded(&mut self, _done: u64) {}
}

pub struct Quiet;
impl ScoreProgress for Quiet {}

/// A batch counter that moves `progress` on: `done` pictures so far.
fn counter<'a>(done: &'a mut u64, progress: &'a mut dyn ScoreProgress) -> impl FnMut(usize) + 'a {
    move |k| {
        *done += k as u64;
        progress.encoded(*done);
    }
}

/// What `score` wrote.
pub struct Scored {
    pub manifest: Manifest,
    pub files: Vec<PathBuf>,
}

/// Score every image of the render folder `dir` and write the results (see the module
/// documentation).
pub fn score(dir: &Path, opts: &ScoreOptions, progress: &mut dyn ScoreProgress) -> Result<Scored> {
    if opts.clip.is_none() && opts.dino.is_none() {
        return Err(Error::msg(
            "nothing to score with: give --clip DIR (a transformers CLIPModel folder) and/or \
             --dino DIR (a transformers ViTModel DINO folder)",
        ));
    }
    // Loading and encoding write nothing: a stop signal meanwhile ends the run at once.
    let quiet = crate::runtime::nothing_to_save();
    let mut m = Manifest::read(dir)?;
    if m.subject.photos.is_empty() {
        return Err(Error::config(
            &dir.join(crate::render::manifest::FILE),
            "lists no subject photos: DINO and CLIP-I compare every render with them",
        ));
    }
    let clip = opts
        .clip
        .as_deref()
        .map(|d| load_clip(d, opts.device))
        .transpose()?;
    let dino = opts
        .dino
        .as_deref()
        .map(|d| load_dino(d, opts.device, opts.dino_eps))
        .transpose()?;
    // Every picture decoded and preprocessed before anything runs or is written: a bad file
    // fails first, naming itself.
    let mut pres: Vec<&Preprocess> = Vec::new();
    pres.extend(clip.as_ref().map(|c| &c.preprocess));
    pres.extend(dino.as_ref().map(|d| &d.preprocess));
    let paths: Vec<PathBuf> = m
        .subject
        .photos
        .iter()
        .chain(m.images.iter().map(|i| &i.file))
        .map(|rel| dir.join(rel))
        .collect();
    let mut pixels = prepare(&paths, &pres)?.into_iter();
    let np = m.subject.photos.len();
    let split = |v: Vec<Tensor>| {
        let mut photos = v;
        let renders = photos.split_off(np);
        (photos, renders)
    };
    let clip_px = clip
        .as_ref()
        .map(|_| split(pixels.next().expect("clip pixels")));
    let dino_px = dino
        .as_ref()
        .map(|_| split(pixels.next().expect("dino pixels")));
    progress.note(&format!(
        "scoring {} images against {} subject photos",
        m.images.len(),
        np
    ));

    let n = m.images.len();
    let scorers = clip.is_some() as u64 + dino.is_some() as u64;
    progress.start(scorers * (np + n) as u64);
    let mut done = 0u64;
    let mut scores = vec![ImageScores::default(); n];
    let mut ceiling = ImageScores::default();
    if let (Some(c), Some((photos, renders))) = (&clip, &clip_px) {
        let embed = |px: &Tensor| c.model.image_embeds(px);
        let photo_emb = batched_counted(photos, embed, &mut counter(&mut done, progress));
        let render_emb = batched_counted(renders, embed, &mut counter(&mut done, progress));
        ceiling.clip_i = pairwise_mean(&photo_emb);
        if n > 0 {
            for (s, v) in scores.iter_mut().zip(mean_cosine(&render_emb, &photo_emb)) {
                s.clip_i = Some(v);
            }
            let texts = clip_t_texts(&m);
            let mut unique: Vec<String> = texts.clone();
            unique.sort();
            unique.dedup();
            // A text longer than CLIP reads is scored on its start only: say what is left out,
            // as diffusers does for prompts.
            for t in &unique {
                if let Some(cut) = c.tokenizer.truncated_part(t)? {
                    progress.note(&format!(
                        "warning: CLIP-T text {t:?}: the following part was truncated because \
                         CLIP can only handle sequences up to {} tokens, so it is not scored: \
                         {cut:?}",
                        c.tokenizer.max_len()
                    ));
                }
            }
            let text_emb = clip_text_embeds(c, &unique)?;
            let idx: Vec<i64> = texts
                .iter()
                .map(|t| unique.binary_search(t).expect("present") as i64)
                .collect();
            let per_image = text_emb.index_select(0, &Tensor::from_slice(&idx));
            for (s, v) in scores.iter_mut().zip(cosine(&render_emb, &per_image)) {
                s.clip_t = Some(v);
            }
        }
    }
    if let (Some(d), Some((photos, renders))) = (&dino, &dino_px) {
        let features = |px: &Tensor| d.model.cls_features(px);
        let photo_f = batched_counted(photos, features, &mut counter(&mut done, progress));
        ceiling.dino = pairwise_mean(&photo_f);
        if n > 0 {
            let render_f = batched_counted(renders, features, &mut counter(&mut done, progress));
            for (s, v) in scores.iter_mut().zip(mean_cosine(&render_f, &photo_f)) {
                s.dino = Some(v);
            }
        }
    }
    for (img, s) in m.images.iter_mut().zip(&scores) {
        img.scores = Some(*s);
    }
    let summary = summarise(
        &m,
        ceiling,
        clip.as_ref().map(|c| c.dir.display().to_string()),
        dino.as_ref().map(|d| d.dir.display().to_string()),
    );
    m.metrics = Some(summary);
    drop(quiet);

    let csv_path = dir.join("scores.csv");
    let md_path = dir.join("scores.md");
    crate::fsutil::write_bytes(&csv_path, report::csv(&m).as_bytes())?;
    crate::fsutil::write_bytes(&md_path, report::markdown(&m).as_bytes())?;
    crate::render::gallery::write(dir, &m)?;
    m.write(dir)?;
    Ok(Scored {
        files: vec![
            csv_path,
            md_path,
            dir.join(&m.gallery),
            dir.join(crate::render::manifest::FILE),
        ],
        manifest: m,
    })
}

/// The CLIP-T prompt of every image, in manifest order.
pub fn clip_t_texts(m: &Manifest) -> Vec<String> {
    let templates: HashMap<&str, &str> = m
        .prompts
        .iter()
        .map(|p| (p.id.as_str(), p.template.as_str()))
        .collect();
    m.images
        .iter()
        .map(|i| match templates.get(i.prompt_id.as_str()) {
            Some(t) => clip_t_prompt(t, &m.subject.class),
            // An image without its template: take the filled prompt and drop the identifier.
            None => clip_t_prompt(
                &i.prompt.replace(&m.subject.identifier, "[V]"),
                &m.subject.class,
            ),
        })
        .collect()
}

/// Which adapters are compared pairwise: LoRA against MoSLoRA when both are there (MoSLoRA
/// is B, the one measured against the baseline), else the two non-base adapters if there are
/// exactly two.
pub fn compared_pair(m: &Manifest) -> Option<(String, String)> {
    let names: Vec<&str> = m.adapters.iter().map(|a| a.name.as_str()).collect();
    if names.contains(&"lora") && names.contains(&"moslora") {
        return Some(("lora".into(), "moslora".into()));
    }
    let others: Vec<&str> = names.into_iter().filter(|n| *n != "base").collect();
    match others.as_slice() {
        [a, b] => Some((a.to_string(), b.to_string())),
        _ => None,
    }
}

/// Per-adapter estimates and the paired comparison from the manifest's image scores.
pub fn summarise(
    m: &Manifest,
    ceiling: ImageScores,
    clip: Option<String>,
    dino: Option<String>,
) -> MetricsSummary {
    let (resamples, seed) = (stats::BOOTSTRAP_RESAMPLES, stats::BOOTSTRAP_SEED);
    let values = |adapter: &str, metric: &str| -> Vec<f64> {
        m.images
            .iter()
            .filter(|i| i.adapter == adapter)
            .filter_map(|i| i.scores.and_then(|s| s.get(metric)))
            .collect()
    };
    let adapters = m
        .adapters
        .iter()
        .map(|a| {
            let est = |metric| stats::bootstrap_mean(&values(&a.name, metric), resamples, seed);
            AdapterMetrics {
                adapter: a.name.clone(),
                label: a.label.clone(),
                dino: est("dino"),
                clip_i: est("clip_i"),
                clip_t: est("clip_t"),
            }
        })
        .collect();
    let mut paired = Vec::new();
    if let Some((a, b)) = compared_pair(m) {
        // (prompt, seed) -> the two images; pairs must share their initial noise.
        let mut by_key: BTreeMap<(&str, u64), [Option<usize>; 2]> = BTreeMap::new();
        for (i, img) in m.images.iter().enumerate() {
            let side = if img.adapter == a {
                0
            } else if img.adapter == b {
                1
            } else {
                continue;
            };
            by_key
                .entry((img.prompt_id.as_str(), img.seed))
                .or_default()[side] = Some(i);
        }
        let pairs: Vec<(usize, usize)> = by_key
            .values()
            .filter_map(|p| match p {
                [Some(x), Some(y)] if m.images[*x].noise_sha256 == m.images[*y].noise_sha256 => {
                    Some((*x, *y))
                }
                _ => None,
            })
            .collect();
        for metric in ImageScores::NAMES {
            let v: Vec<(f64, f64)> = pairs
                .iter()
                .filter_map(|&(x, y)| {
                    let s = |i: usize| m.images[i].scores.and_then(|s| s.get(metric));
                    Some((s(x)?, s(y)?))
                })
                .collect();
            if let Some(p) = stats::paired(&v, TIE_MARGIN, resamples, seed) {
                paired.push(PairedMetric {
                    a: a.clone(),
                    b: b.clone(),
                    metric: metric.to_string(),
                    diff: p.diff,
                    wins: p.wins,
                    ties: p.ties,
                    losses: p.losses,
                    tie_margin: p.tie_margin,
                    sign_test_p: p.sign_test_p,
                });
            }
        }
    }
    let mut s = MetricsSummary {
        clip,
        dino,
        clip_t_prompt: CLIP_T_PROMPT_RULE.into(),
        photos: m.subject.photos.len(),
        ceiling,
        adapters,
        paired,
        bootstrap_resamples: resamples,
        bootstrap_seed: seed,
        verdicts: Vec::new(),
    };
    s.verdicts = verdict::sentences(&s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_t_prompt_drops_the_identifier() {
        assert_eq!(
            clip_t_prompt("a [V] {class} on the beach", "dog"),
            "a dog on the beach"
        );
        assert_eq!(
            clip_t_prompt("a red [V] {class}", "backpack"),
            "a red backpack"
        );
        assert_eq!(
            clip_t_prompt("[V] {class}, watercolor", "cat"),
            "cat, watercolor"
        );
    }

    #[test]
    fn pairwise_mean_leaves_out_self_pairs() {
        let x = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]).view([3, 2]);
        // cos(e1, e2) = 0, cos(e1, d) = cos(e2, d) = 1/sqrt 2.
        let want = (2.0 / 2f64.sqrt()) / 3.0;
        assert!((pairwise_mean(&x).unwrap() - want).abs() < 1e-12);
        assert!(pairwise_mean(&x.narrow(0, 0, 1)).is_none());
    }
}
