//! Side-by-side renders: every prompt and seed through every adapter (and optionally the
//! base model), from the SAME initial noise, with the same sampler, into labelled grids, a
//! contact sheet and a gallery page.
//!
//! Fast by construction: prompt embeddings once per prompt (and per adapter that changes the
//! text encoders), adapters merged into the weights
//! (one merge per column, not a side branch per layer per step), the conditional and
//! unconditional passes in one batch, and images whose inputs did not change reused.

pub mod gallery;
pub mod generate;
pub mod manifest;
pub mod picture;
pub mod prompts;
pub mod steps;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::adapter::{self, file::AdapterFile};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::fsutil::write_png;
use crate::schedule::sampler::SamplerKind;
use crate::sdxl::image_processing::rgb_image;
use crate::sdxl::model_dir::ModelDir;
use crate::sdxl::pipeline::{Denoiser, GenerateOptions, PromptEmbeds, RunOptions, TextEncoders};
use crate::train::{AdapterKind, RunPaths};
use manifest::{AdapterEntry, GridEntry, ImageEntry, Manifest, PromptEntry, Settings, Subject};
use prompts::PromptTemplate;

/// One column of the comparison.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub label: String,
    /// None: the base model.
    pub adapter: Option<PathBuf>,
}

impl Column {
    pub fn base() -> Self {
        Column {
            name: "base".into(),
            label: "Base".into(),
            adapter: None,
        }
    }

    /// The run's own adapter of `kind`.
    pub fn of_run(cfg: &RunConfig, kind: AdapterKind) -> Self {
        Column {
            name: kind.name().into(),
            label: kind.label().into(),
            adapter: Some(RunPaths::new(cfg, kind).adapter()),
        }
    }

    /// `NAME=FILE` from the command line.
    pub fn parse(spec: &str) -> Result<Self> {
        let (name, file) = spec.split_once('=').ok_or_else(|| {
            Error::setting(
                "--adapter",
                format!("--adapter {spec:?}: expected NAME=FILE, e.g. rank16=runs/r16.safetensors"),
            )
        })?;
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(Error::setting(
                "--adapter",
                format!("--adapter {spec:?}: NAME may use letters, digits, - and _"),
            ));
        }
        Ok(Column {
            name: name.to_ascii_lowercase(),
            label: name.to_string(),
            adapter: Some(PathBuf::from(file)),
        })
    }
}

/// What to render.
pub struct RenderPlan {
    pub prompts: Vec<PromptTemplate>,
    pub seeds: Vec<u64>,
    pub columns: Vec<Column>,
    pub out: PathBuf,
}

/// Hooks for progress display.
pub trait RenderProgress {
    fn start(&mut self, _total: u64) {}
    fn image(&mut self, _done: u64, _label: &str, _reused: bool) {}
    fn note(&mut self, _msg: &str) {}
    fn finish(&mut self) {}
    /// A phase before the images (`load`): `total` units of `unit`.
    fn phase(&mut self, _name: &str, _unit: &'static str, _total: u64) {}
    /// `done` units of the current phase are done.
    fn phase_step(&mut self, _done: u64) {}
    /// Checked before each image: stop (every finished image in place) when true.
    fn should_stop(&self) -> bool {
        crate::train::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The PNG text chunk holding an image's render key: a re-run after an interrupted render
/// (which wrote no manifest) knows from the file itself that it is done.
pub const KEY_CHUNK: &str = "moslora-key";

pub struct QuietRender;
impl RenderProgress for QuietRender {}

/// The plan `render` follows for a RUN.yaml and its command-line overrides.
pub fn plan(
    cfg: &RunConfig,
    prompts_source: Option<&str>,
    set: Option<&str>,
    seeds: Option<Vec<u64>>,
    extra: Vec<Column>,
    only_extra: bool,
) -> Result<RenderPlan> {
    let source = match prompts_source {
        Some(s) => s.to_string(),
        None => cfg
            .render
            .prompts
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "study8".into()),
    };
    let prompts = prompts::load(&source, set.or(cfg.render.set.as_deref()))?;
    let mut columns = Vec::new();
    if cfg.render.include_base {
        columns.push(Column::base());
    }
    if !only_extra {
        for kind in AdapterKind::of_run(cfg) {
            columns.push(Column::of_run(cfg, kind));
        }
    }
    for c in extra {
        if columns.iter().any(|x| x.name == c.name) {
            return Err(Error::setting(
                "--adapter",
                format!(
                    "two adapters are named `{}`: give each column its own name",
                    c.name
                ),
            ));
        }
        columns.push(c);
    }
    Ok(RenderPlan {
        prompts,
        seeds: seeds.unwrap_or_else(|| cfg.render.seeds.clone()),
        columns,
        out: cfg.render_dir(),
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of an adapter's settings and tensor bytes (the file after its header). An
/// adapter file read successfully has a well-formed header, so the length is in range.
fn adapter_content_sha(f: &AdapterFile, bytes: &[u8]) -> String {
    let header = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let settings = serde_json::to_string(&f.meta.adapter).expect("serialisable");
    let mut h = Sha256::new();
    h.update(settings.as_bytes());
    h.update(&bytes[8 + header..]);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn tensor_sha256(t: &Tensor) -> Result<String> {
    let t = t.to_kind(tch::Kind::Float).contiguous();
    let n = t.numel();
    let mut bytes = vec![0u8; n * 4];
    t.f_copy_data_u8(&mut bytes, n)?;
    Ok(sha256_hex(&bytes))
}

/// Check up front that the output folder can be written, so a read-only folder fails with one
/// clear message before any work.
fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::msg(format!(
            "cannot create the render folder {} ({e})",
            dir.display()
        ))
    })?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            Error::msg(format!(
                "the render folder {} is not writable ({e})",
                dir.display()
            ))
        }
        _ => crate::fsutil::no_space(Error::io(&probe, e), dir, None),
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Render the plan. Returns the manifest written to `plan.out`.
pub fn render(
    cfg: &RunConfig,
    plan: &RenderPlan,
    opts: RunOptions,
    progress: &mut dyn RenderProgress,
) -> Result<Manifest> {
    if plan.columns.is_empty() {
        return Err(Error::setting(
            "--only-adapters",
            "nothing to render: no adapters and no base column (give --adapter NAME=FILE, or \
             set render.include_base)",
        ));
    }
    let sampler = SamplerKind::parse_setting("render.scheduler", &cfg.render.scheduler)?;
    // Read every adapter before the long work, so a missing or foreign file fails first.
    let mut adapters: Vec<(Column, Option<(AdapterFile, String)>)> = Vec::new();
    // What an adapter's pictures depend on: its settings and tensors, not where it was trained
    // (the file's metadata names its photo folder), so the same training in another folder
    // (a sweep's task on another node) keys, and so writes, the very same PNG bytes.
    let mut contents: Vec<String> = Vec::new();
    for c in &plan.columns {
        let loaded = match &c.adapter {
            Some(p) => {
                if !p.exists() {
                    return Err(Error::msg(format!(
                        "adapter `{}`: {} does not exist (train it first: moslora train RUN.yaml, or moslora compare RUN.yaml)",
                        c.name,
                        p.display()
                    )));
                }
                let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
                let f = AdapterFile::read(p)?;
                contents.push(adapter_content_sha(&f, &bytes));
                Some((f, sha256_hex(&bytes)))
            }
            None => {
                contents.push(String::new());
                None
            }
        };
        adapters.push((c.clone(), loaded));
    }
    for p in &plan.prompts {
        if !p.template.contains("[V]") {
            progress.note(&format!(
                "warning: prompt {} {:?} has no \"[V]\": it does not mention the subject, rendering it anyway",
                p.id, p.template
            ));
        }
    }
    let out = &plan.out;
    check_writable(out)?;
    for sub in ["images", "grids", "photos"] {
        std::fs::create_dir_all(out.join(sub)).map_err(|e| Error::io(&out.join(sub), e))?;
    }

    let dir = ModelDir::open(&cfg.model)?;
    let native_size = dir.native_size()?;
    let native = native_size.pixels();
    if cfg.render.width.is_some() || cfg.render.height.is_some() {
        let (w, h) = (
            cfg.render.width.unwrap_or(native),
            cfg.render.height.unwrap_or(native),
        );
        if let Some(warning) = native_size.warning(&format!("render size {w}x{h}"), w, h) {
            progress.note(&warning);
        }
    }
    let settings = Settings {
        steps: cfg.render.steps,
        guidance: cfg.render.guidance,
        // The canonical name: "DPM++ 2M Karras" and "dpmpp_2m_karras" key the same pictures,
        // and another sampler keys other pictures.
        scheduler: sampler.name().to_string(),
        width: cfg.render.width.unwrap_or(native),
        height: cfg.render.height.unwrap_or(native),
        negative_prompt: cfg.render.negative_prompt.clone(),
        dtype: crate::runtime::dtype_name(opts.dtype).to_string(),
    };
    let o = |seed| GenerateOptions {
        steps: settings.steps,
        guidance: settings.guidance,
        width: settings.width,
        height: settings.height,
        seed,
        sampler,
    };

    let prompt_entries: Vec<PromptEntry> = plan
        .prompts
        .iter()
        .map(|p| PromptEntry {
            id: p.id.clone(),
            template: p.template.clone(),
            text: cfg.subject.fill(&p.template),
        })
        .collect();
    // Prompt embeddings once per prompt with the base text encoders, and once per prompt for
    // each column whose adapter changes the text encoders; then the text encoders are freed.
    let encode_all = |text: &TextEncoders| -> Result<Vec<(PromptEmbeds, PromptEmbeds)>> {
        let mut v = Vec::new();
        for p in &prompt_entries {
            let cond = text.encode(&p.text)?;
            let uncond = text.encode_negative(settings.negative_prompt.as_deref(), &cond)?;
            v.push((cond, uncond));
        }
        Ok(v)
    };
    // Loading writes nothing: a stop signal meanwhile ends the run at once.
    let quiet = crate::runtime::nothing_to_save();
    progress.phase("load", "model part", 2);
    let (base_embeds, column_embeds) = {
        let mut text = TextEncoders::load(&dir, opts)?;
        progress.phase_step(1);
        for p in &prompt_entries {
            if let Some(warning) = text.truncation_warning(&p.text)? {
                progress.note(&warning);
            }
        }
        let base = encode_all(&text)?;
        let mut per_column = Vec::new();
        for (column, loaded) in &adapters {
            let own = match (loaded, &column.adapter) {
                (Some((f, _)), Some(path)) if f.has_text_encoder_layers() => {
                    f.apply_text_encoders(&mut text, 1.0, path)?;
                    adapter::merge_text_encoders(&mut text);
                    let v = encode_all(&text)?;
                    adapter::remove_text_encoders(&mut text);
                    Some(v)
                }
                _ => None,
            };
            per_column.push(own);
        }
        (base, per_column)
    };
    let mut den = Denoiser::load(&dir, opts)?;
    let identity = crate::train::model_identity(&dir, &mut den.unet, opts.dtype)?;
    progress.phase_step(2);
    drop(quiet);

    let previous: HashMap<String, ImageEntry> = Manifest::read(out)
        .map(|m| {
            m.images
                .into_iter()
                .filter(|i| out.join(&i.file).exists())
                .map(|i| (i.key.clone(), i))
                .collect()
        })
        .unwrap_or_default();

    let total = (plan.columns.len() * plan.prompts.len() * plan.seeds.len()) as u64;
    progress.start(total);
    let mut images = Vec::new();
    let mut adapter_entries = Vec::new();
    let mut done = 0;
    for (((column, loaded), own_embeds), adapter_sha) in
        adapters.iter().zip(&column_embeds).zip(&contents)
    {
        adapter::remove_all(&mut den.unet);
        let embeds = own_embeds.as_ref().unwrap_or(&base_embeds);
        let mut entry = AdapterEntry {
            name: column.name.clone(),
            label: column.label.clone(),
            file: None,
            sha256: None,
            rank: None,
            mixer: None,
            steps: None,
            parameters: None,
        };
        let mut merged = false;
        if let (Some((f, sha)), Some(path)) = (loaded, &column.adapter) {
            entry.file = Some(path.display().to_string());
            entry.sha256 = Some(sha.clone());
            entry.rank = Some(f.meta.adapter.rank);
            entry.mixer = Some(f.meta.adapter.mixer.name().to_string());
            entry.steps = Some(f.meta.steps);
            entry.parameters = Some(f.trained_parameters());
        }
        adapter_entries.push(entry);
        for (pi, p) in prompt_entries.iter().enumerate() {
            for &seed in &plan.seeds {
                let file = format!("images/{}_s{seed}_{}.png", p.id, column.name);
                // The manifest's entry of this picture, rendered now or kept from before.
                let entry = |file: String, noise: &Tensor, key: String| -> Result<ImageEntry> {
                    Ok(ImageEntry {
                        file,
                        prompt_id: p.id.clone(),
                        prompt: p.text.clone(),
                        seed,
                        adapter: column.name.clone(),
                        noise_sha256: tensor_sha256(noise)?,
                        width: settings.width,
                        height: settings.height,
                        key,
                        scores: None,
                    })
                };
                let key = sha256_hex(
                    serde_json::json!({
                        "prompt": p.text, "seed": seed, "settings": settings, "adapter": adapter_sha,
                        "column": column.name, "model": identity,
                    })
                    .to_string()
                    .as_bytes(),
                );
                done += 1;
                let finished_file =
                    || crate::fsutil::png_text(&out.join(&file), KEY_CHUNK).as_ref() == Some(&key);
                if !previous.contains_key(&key) && finished_file() {
                    // Left by an interrupted render of the same inputs: the noise is cheap
                    // to draw again for the manifest, the picture is not.
                    let noise = den.initial_noise(seed, settings.width, settings.height)?;
                    images.push(entry(file, &noise, key)?);
                    progress.image(done, &column.label, true);
                    continue;
                }
                if let Some(prev) = previous.get(&key).filter(|prev| prev.file == file) {
                    // The pixels are reused; scores belong to a scoring run of the old
                    // manifest, whose tables this one does not carry: score again.
                    images.push(ImageEntry {
                        scores: None,
                        ..prev.clone()
                    });
                    progress.image(done, &column.label, true);
                    continue;
                }
                if progress.should_stop() {
                    let written = images.len();
                    return Err(Error::Interrupted {
                        what: format!(
                            "render stopped: {written} of {total} images are in {}; run the same command again to render the rest",
                            out.display()
                        ),
                    });
                }
                if !merged {
                    if let (Some((f, _)), Some(path)) = (loaded, &column.adapter) {
                        f.apply(&mut den.unet, 1.0, path)?;
                        adapter::merge_all(&mut den.unet);
                    }
                    merged = true;
                }
                let noise = den.initial_noise(seed, settings.width, settings.height)?;
                let (cond, uncond) = &embeds[pi];
                let latents = den.sample(cond, uncond, &noise, &o(seed), |_| {})?;
                let img = rgb_image(&den.decode(&latents))?;
                let meta = vec![
                    ("Software", "moslora".to_string()),
                    ("prompt", p.text.clone()),
                    ("seed", seed.to_string()),
                    ("adapter", column.label.clone()),
                    (
                        "settings",
                        serde_json::to_string(&settings).expect("serialisable"),
                    ),
                    (KEY_CHUNK, key.clone()),
                ];
                write_png(&out.join(&file), &img, &meta)?;
                images.push(entry(file, &noise, key)?);
                progress.image(done, &column.label, false);
            }
        }
    }
    adapter::remove_all(&mut den.unet);
    progress.finish();

    let grids = write_grids(out, &plan.seeds, &adapter_entries, &prompt_entries, &images)?;
    let contact_sheet = write_contact_sheet(out, &grids)?;
    let photos = copy_photos(cfg, out)?;
    let loss_curve = copy_loss_curve(cfg, out)?;
    let validation = crate::train::AdapterKind::BOTH
        .iter()
        .filter_map(|&k| {
            let csv = crate::train::RunPaths::new(cfg, k).validation_csv();
            let points = crate::train::loss_log::read_validation_csv(&csv).ok()?;
            Some(manifest::ValidationCurve {
                adapter: k.name().into(),
                label: k.label().into(),
                points,
            })
        })
        .collect();
    let subject_name = cfg.subject.display_name();
    let manifest = Manifest {
        format_version: manifest::FORMAT_VERSION,
        subject: Subject {
            name: subject_name,
            identifier: cfg.subject.identifier.clone(),
            class: cfg.subject.class_noun.clone(),
            photos,
        },
        model: identity,
        settings,
        adapters: adapter_entries,
        prompts: prompt_entries,
        images,
        grids,
        contact_sheet,
        gallery: "index.html".into(),
        loss_curve,
        validation,
        metrics: None,
    };
    gallery::write(out, &manifest)?;
    remove_stale(out, &manifest)?;
    manifest.write(out)?;
    Ok(manifest)
}

/// Lay out a render folder whose images are already in place, from its manifest: grids,
/// contact sheet, gallery page and `manifest.json` (how `sweep gather` puts the columns of
/// many tasks side by side).
pub fn lay_out(out: &Path, mut m: Manifest) -> Result<Manifest> {
    let mut seeds: Vec<u64> = Vec::new();
    for i in &m.images {
        if !seeds.contains(&i.seed) {
            seeds.push(i.seed);
        }
    }
    m.grids = write_grids(out, &seeds, &m.adapters, &m.prompts, &m.images)?;
    m.contact_sheet = write_contact_sheet(out, &m.grids)?;
    gallery::write(out, &m)?;
    m.write(out)?;
    Ok(m)
}

/// One grid per prompt: columns are the adapters, rows the seeds.
fn write_grids(
    out: &Path,
    seeds: &[u64],
    adapters: &[AdapterEntry],
    prompts: &[PromptEntry],
    images: &[ImageEntry],
) -> Result<Vec<GridEntry>> {
    let by_key: HashMap<(&str, u64, &str), &ImageEntry> = images
        .iter()
        .map(|i| ((i.prompt_id.as_str(), i.seed, i.adapter.as_str()), i))
        .collect();
    let mut grids = Vec::new();
    let names = grid_files(prompts);
    for (p, file) in prompts.iter().zip(names) {
        let mut rows = Vec::new();
        for &seed in seeds {
            let mut row = Vec::new();
            for a in adapters {
                let e = by_key[&(p.id.as_str(), seed, a.name.as_str())];
                let img = image::open(out.join(&e.file))
                    .map_err(|err| Error::msg(format!("{}: {err}", out.join(&e.file).display())))?
                    .to_rgb8();
                row.push(img);
            }
            rows.push(row);
        }
        let cols: Vec<String> = adapters.iter().map(|a| a.label.clone()).collect();
        let row_labels: Vec<String> = seeds.iter().map(|s| format!("seed {s}")).collect();
        let (page, _) = picture::grid(&p.text, &cols, &row_labels, &rows);
        write_png(&out.join(&file), &page, &[("prompt", p.text.clone())])?;
        grids.push(GridEntry {
            prompt_id: p.id.clone(),
            file,
        });
    }
    Ok(grids)
}

/// Each prompt's grid file, named after the prompt: `grids/p00-a-photo-of-sks-dog-on-the-beach.png`
/// (the prompt's id, then its words; safe characters only, at most 80 bytes before `.png`,
/// and unique: a name already taken gets `-2`, `-3`, ...).
pub fn grid_files(prompts: &[PromptEntry]) -> Vec<String> {
    use crate::words::{slug, SLUG_MAX};
    let mut taken = std::collections::HashSet::new();
    prompts
        .iter()
        .map(|p| {
            let id = slug(&p.id, 16);
            let words = slug(&p.text, SLUG_MAX);
            let stem = match (id.is_empty(), words.is_empty()) {
                (false, false) => format!("{id}-{words}"),
                (false, true) => id,
                (true, false) => words,
                (true, true) => "prompt".to_string(),
            };
            let mut name = stem.clone();
            let mut n = 1;
            while !taken.insert(name.clone()) {
                n += 1;
                name = format!("{stem}-{n}");
            }
            format!("grids/{name}.png")
        })
        .collect()
}

/// All grids tiled on one sheet (scaled down so the sheet stays a reasonable size).
fn write_contact_sheet(out: &Path, grids: &[GridEntry]) -> Result<String> {
    let imgs: Vec<RgbImage> = grids
        .iter()
        .map(|g| {
            image::open(out.join(&g.file))
                .map(|i| i.to_rgb8())
                .map_err(|e| Error::msg(format!("{}: {e}", g.file)))
        })
        .collect::<Result<_>>()?;
    let (w, h) = imgs[0].dimensions();
    let scale = (600.0 / w.max(h) as f64).min(1.0);
    let (tw, th) = ((w as f64 * scale) as u32, (h as f64 * scale) as u32);
    let cols = (imgs.len() as f64).sqrt().ceil() as u32;
    let rows = (imgs.len() as u32).div_ceil(cols);
    let mut sheet = RgbImage::from_pixel(
        cols * (tw + 8) + 8,
        rows * (th + 8) + 8,
        image::Rgb([235, 235, 235]),
    );
    for (i, img) in imgs.iter().enumerate() {
        let small = image::imageops::resize(img, tw, th, image::imageops::FilterType::Triangle);
        let (c, r) = (i as u32 % cols, i as u32 / cols);
        image::imageops::replace(
            &mut sheet,
            &small,
            (8 + c * (tw + 8)) as i64,
            (8 + r * (th + 8)) as i64,
        );
    }
    let file = "contact_sheet.png".to_string();
    write_png(&out.join(&file), &sheet, &[])?;
    Ok(file)
}

/// The subject's photos that trained, beside the renders (the gallery shows them, `score`
/// compares with them): JPEG, PNG and WebP as they are, HEIC and TIFF (which browsers do not
/// show) as upright PNGs named `NAME.png`. Files the run did not use are left out.
fn copy_photos(cfg: &RunConfig, out: &Path) -> Result<Vec<String>> {
    use crate::train::dataset;
    let resolution = cfg.train.resolution;
    let folder = dataset::scan_photos(
        &cfg.subject.images,
        dataset::min_photo_side(resolution),
        resolution,
    )?;
    let mut rel = Vec::new();
    for photo in folder.photos {
        let p = &photo.path;
        let name = p
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        let shown = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["jpg", "jpeg", "png", "webp"].contains(&e.to_lowercase().as_str()));
        if shown {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            crate::fsutil::write_bytes(&out.join("photos").join(&name), &bytes)?;
            rel.push(format!("photos/{name}"));
        } else {
            let name = format!("{name}.png");
            write_png(&out.join("photos").join(&name), &photo.image, &[])?;
            rel.push(format!("photos/{name}"));
        }
    }
    Ok(rel)
}

fn copy_loss_curve(cfg: &RunConfig, out: &Path) -> Result<Option<String>> {
    let src = cfg.output.join("loss.png");
    if !src.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
    crate::fsutil::write_bytes(&out.join("loss.png"), &bytes)?;
    Ok(Some("loss.png".into()))
}

/// Remove images and grids of earlier runs that this manifest no longer lists, so the folder
/// and the manifest agree.
fn remove_stale(out: &Path, m: &Manifest) -> Result<()> {
    let keep: std::collections::HashSet<String> = m.files().into_iter().collect();
    for sub in ["images", "grids", "photos"] {
        for e in std::fs::read_dir(out.join(sub))
            .map_err(|e| Error::io(&out.join(sub), e))?
            .flatten()
        {
            let rel = format!("{sub}/{}", e.file_name().to_string_lossy());
            if !keep.contains(&rel) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// `compare`: train whichever adapter is missing or stale for this RUN.yaml (resuming a
/// matching checkpoint), then render. Re-running reuses adapters and images already made.
pub fn compare(
    cfg: &RunConfig,
    opts: RunOptions,
    train_progress: &mut dyn crate::train::Progress,
    render_progress: &mut dyn RenderProgress,
) -> Result<(Vec<crate::train::TrainOutcome>, Manifest)> {
    let stale: Vec<AdapterKind> = AdapterKind::of_run(cfg)
        .into_iter()
        .filter(|&k| !crate::train::is_current(cfg, k, &RunPaths::new(cfg, k).adapter()))
        .collect();
    let mut outcomes = Vec::new();
    if !stale.is_empty() {
        for &k in &stale {
            // A checkpoint of other settings cannot be resumed: start that adapter afresh.
            let ckpt = RunPaths::new(cfg, k).checkpoint();
            if !crate::train::checkpoint::matches(
                &ckpt,
                &crate::train::training_fingerprint(cfg, k),
            ) {
                let _ = std::fs::remove_dir_all(&ckpt);
            }
        }
        outcomes = crate::train::train(cfg, &stale, opts, true, train_progress)?;
        if outcomes.iter().any(|o| o.interrupted) {
            return Err(Error::Interrupted {
                what: "training stopped with a checkpoint saved; run the same command again to continue".into(),
            });
        }
    } else {
        render_progress.note("LoRA and MoSLoRA adapters are up to date: not retraining");
    }
    let plan = plan(cfg, None, None, None, Vec::new(), false)?;
    let manifest = render(cfg, &plan, opts, render_progress)?;
    Ok((outcomes, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_are_named_after_their_prompts() {
        let p = |id: &str, text: &str| PromptEntry {
            id: id.into(),
            template: String::new(),
            text: text.into(),
        };
        let files = grid_files(&[
            p("p00", "a photo of a sks robot on the beach"),
            p("p01", "a sks robot, in the style of <b>Monet</b> & friends"),
            p("p 1", ""),
            p("p-1", ""),
            p(
                "../x",
                "a very long prompt that goes on and on about a sks robot walking through a \
                 city at night in the rain",
            ),
        ]);
        assert_eq!(
            files[0],
            "grids/p00-a-photo-of-a-sks-robot-on-the-beach.png"
        );
        assert_eq!(
            files[1],
            "grids/p01-a-sks-robot-in-the-style-of-b-monet-b-friends.png"
        );
        assert_eq!(files[2], "grids/p-1.png");
        assert_eq!(files[3], "grids/p-1-2.png");
        assert!(
            files[4].starts_with("grids/x-a-very-long-prompt"),
            "{}",
            files[4]
        );
        for f in &files {
            let stem = f.strip_prefix("grids/").unwrap();
            let stem = stem.strip_suffix(".png").unwrap();
            assert!(stem.len() <= 80, "{f}");
            assert!(
                stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "{f}"
            );
        }
    }
}
