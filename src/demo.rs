//! `moslora demo`: the whole product on a tiny random SDXL-architecture model, end to end on a
//! CPU: make the model, train LoRA and MoSLoRA on the bundled subject with the paper's recipe,
//! render the comparison, and build a blind study kit.

use std::path::{Path, PathBuf};

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::render::{self, manifest::Manifest, RenderProgress};
use crate::sdxl::init_model::{init_model, InitOptions};
use crate::sdxl::pipeline::RunOptions;
use crate::study;
use crate::train::{AdapterKind, Progress, RunPaths, TrainOutcome};

/// The demo's RUN.yaml (its paths are replaced by the demo folder's).
pub const DEMO_RUN: &str = include_str!("../configs/demo.yaml");

/// The bundled subject: a toy robot drawn by `assets/make_subject.py`.
pub const SUBJECT: &[(&str, &[u8])] = &[
    ("01_sky.jpg", include_bytes!("../assets/subject/01_sky.jpg")),
    (
        "02_sand.jpg",
        include_bytes!("../assets/subject/02_sand.jpg"),
    ),
    (
        "03_room.png",
        include_bytes!("../assets/subject/03_room.png"),
    ),
    (
        "04_night.webp",
        include_bytes!("../assets/subject/04_night.webp"),
    ),
    (
        "05_grass.jpg",
        include_bytes!("../assets/subject/05_grass.jpg"),
    ),
];

pub struct DemoOptions {
    /// Everything goes here (the model, the photos, the run, the study).
    pub dir: PathBuf,
    /// Override the training steps (tests run the same path with fewer).
    pub train_steps: Option<u64>,
    /// Override the sampling steps of the renders.
    pub render_steps: Option<usize>,
}

/// Where everything the demo made is.
pub struct DemoReport {
    pub config: RunConfig,
    pub config_path: PathBuf,
    pub trained: Vec<TrainOutcome>,
    pub manifest: Manifest,
    pub render_dir: PathBuf,
    pub study_dir: PathBuf,
    pub study_key: PathBuf,
    pub study_trials: usize,
}

impl DemoReport {
    pub fn gallery(&self) -> PathBuf {
        self.render_dir.join(&self.manifest.gallery)
    }
    pub fn loss_curves(&self) -> Vec<PathBuf> {
        let mut v = vec![self.config.output.join("loss.png")];
        v.extend(
            AdapterKind::BOTH
                .iter()
                .map(|&k| RunPaths::new(&self.config, k).loss_png()),
        );
        v
    }
    pub fn adapters(&self) -> Vec<PathBuf> {
        AdapterKind::BOTH
            .iter()
            .map(|&k| RunPaths::new(&self.config, k).adapter())
            .collect()
    }
}

/// The demo's run configuration for a demo folder.
pub fn demo_config(dir: &Path) -> Result<RunConfig> {
    let mut cfg =
        RunConfig::parse(DEMO_RUN).map_err(|e| Error::msg(format!("configs/demo.yaml: {e}")))?;
    cfg.model = dir.join("tiny-sdxl");
    cfg.output = dir.join("run");
    cfg.subject.images = dir.join("subject");
    cfg.render.out = None;
    cfg.validate()
        .map_err(|e| Error::msg(format!("configs/demo.yaml: {e}")))?;
    Ok(cfg)
}

pub fn run(
    o: &DemoOptions,
    train_progress: &mut dyn Progress,
    render_progress: &mut dyn RenderProgress,
) -> Result<DemoReport> {
    let dir = &o.dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut cfg = demo_config(dir)?;
    if let Some(s) = o.train_steps {
        cfg.train.steps = s;
    }
    if let Some(s) = o.render_steps {
        cfg.render.steps = s;
    }
    if !cfg.model.join("model_index.json").exists() {
        render_progress.note(&format!(
            "making the tiny SDXL-architecture model in {}",
            cfg.model.display()
        ));
        init_model(
            &cfg.model,
            &InitOptions {
                preset: "tiny",
                seed: 0,
                dtype: tch::Kind::Float,
                force: true,
            },
        )?;
    }
    for (name, bytes) in SUBJECT {
        let path = cfg.subject.images.join(name);
        if !path.exists() {
            crate::fsutil::write_bytes(&path, bytes)?;
        }
    }
    // The effective RUN.yaml, for the user to read and to reuse with `moslora compare`.
    let config_path = dir.join("run.yaml");
    let yaml = serde_yaml::to_string(&cfg).map_err(|e| Error::msg(format!("run.yaml: {e}")))?;
    let header =
        "# The demo's run, as `moslora demo` used it. Re-run with: moslora compare this-file\n";
    crate::fsutil::write_bytes(&config_path, format!("{header}{yaml}").as_bytes())?;

    let opts = RunOptions::default();
    let (trained, manifest) = render::compare(&cfg, opts, train_progress, render_progress)?;
    let render_dir = cfg.render_dir();
    let study_dir = dir.join("study");
    let made = study::make::make(&study::make::MakeOptions {
        renders: vec![render_dir.clone()],
        a: "lora".into(),
        b: "moslora".into(),
        repeats: None,
        seed: Some(cfg.seed),
        out: study_dir.clone(),
        force: true,
    })?;
    Ok(DemoReport {
        config: cfg,
        config_path,
        trained,
        manifest,
        render_dir,
        study_dir: made.dir,
        study_key: made.key_path,
        study_trials: made.key.trials.len(),
    })
}
