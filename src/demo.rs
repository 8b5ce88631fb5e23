//! `moslora demo`: the whole product end to end on a CPU, on the toy world's pretrained
//! SDXL-architecture model: train LoRA and MoSLoRA on the bundled robot (a subject the world
//! does not contain), render the comparison in the world's scenes, score it with the world's
//! judge, and build a blind study kit.

use std::path::{Path, PathBuf};

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::render::{self, manifest::Manifest, RenderProgress};
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

/// The masks of the bundled subject's photos (white = the robot), drawn with them by
/// `assets/make_subject.py`: `moslora demo --masked` trains with them.
pub const SUBJECT_MASKS: &[(&str, &[u8])] = &[
    (
        "01_sky.mask.png",
        include_bytes!("../assets/subject-masks/01_sky.mask.png"),
    ),
    (
        "02_sand.mask.png",
        include_bytes!("../assets/subject-masks/02_sand.mask.png"),
    ),
    (
        "03_room.mask.png",
        include_bytes!("../assets/subject-masks/03_room.mask.png"),
    ),
    (
        "04_night.mask.png",
        include_bytes!("../assets/subject-masks/04_night.mask.png"),
    ),
    (
        "05_grass.mask.png",
        include_bytes!("../assets/subject-masks/05_grass.mask.png"),
    ),
];

pub struct DemoOptions {
    /// Everything goes here (the photos, the run, the study).
    pub dir: PathBuf,
    /// The pretrained toy-world model (`assets/toy-model`, or `make toy-model`'s).
    pub model: PathBuf,
    /// The toy world's judge (a CLIP folder, `assets/toy-judge`); None skips the scores.
    pub judge: Option<PathBuf>,
    /// Override the training steps (tests run the same path with fewer).
    pub train_steps: Option<u64>,
    /// Override the sampling steps of the renders.
    pub render_steps: Option<usize>,
    /// Train with the photos' masks (`train.masked_loss`), so that the photos' grounds are
    /// not learned with the robot.
    pub masked: bool,
    /// With `masked`: `train.mask_background_weight` (default 0, the background ignored).
    pub mask_background_weight: Option<f64>,
    /// Render seeds 0 to N - 1 instead of the demo's four (more pictures per prompt to
    /// measure with).
    pub seeds: Option<u64>,
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
    /// Per adapter: the share of renders whose scene the judge names as the prompt does, and
    /// how many were read (empty without a judge).
    pub scene_fidelity: Vec<(String, f64, usize)>,
    /// The same over the snow prompt's renders only: the scene the photos' grounds crowd out.
    pub snow_fidelity: Vec<(String, f64, usize)>,
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

/// The demo's run configuration for a demo folder, model and judge.
pub fn demo_config(dir: &Path, model: &Path, judge: Option<&Path>) -> Result<RunConfig> {
    let mut cfg =
        RunConfig::parse(DEMO_RUN).map_err(|e| Error::msg(format!("configs/demo.yaml: {e}")))?;
    cfg.model = model.to_path_buf();
    cfg.metrics.clip = judge.map(Path::to_path_buf);
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
    let mut cfg = demo_config(dir, &o.model, o.judge.as_deref())?;
    if let Some(s) = o.train_steps {
        cfg.train.steps = s;
    }
    if let Some(s) = o.render_steps {
        cfg.render.steps = s;
    }
    if let Some(n) = o.seeds {
        cfg.render.seeds = (0..n).collect();
    }
    cfg.train.masked_loss = o.masked;
    if o.masked {
        cfg.train.mask_background_weight = o.mask_background_weight.unwrap_or(0.0);
    }
    cfg.validate()
        .map_err(|e| Error::setting("--mask-background-weight", e))?;
    if !cfg.model.join("model_index.json").exists() {
        return Err(Error::msg(format!(
            "no toy-world model at {}: run the demo from the repository (`make demo`), pass \
             --model, or pretrain one with `make toy-model`",
            cfg.model.display()
        )));
    }
    let masks = if o.masked { SUBJECT_MASKS } else { &[] };
    for (name, bytes) in SUBJECT.iter().chain(masks) {
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
    // Scores by the judge, an encoder trained apart from the model it judges.
    let manifest = if cfg.metrics.any() {
        let so = crate::metrics::ScoreOptions {
            clip: cfg.metrics.clip.clone(),
            dino: cfg.metrics.dino.clone(),
            device: opts.device,
            dino_eps: None,
        };
        crate::metrics::score(&render_dir, &so, &mut crate::metrics::Quiet)?.manifest
    } else {
        manifest
    };
    // Prompt fidelity the toy world can check directly: does the render show the prompt's scene?
    let (scene_fidelity, snow_fidelity) = match &cfg.metrics.clip {
        Some(judge) => {
            use crate::toyworld::{judge::scene_fidelity_in, world::Scene};
            let j = crate::sdxl::encoders::load_clip(judge, opts.device)?;
            let (m, t) = (&j.model, &j.tokenizer);
            (
                scene_fidelity_in(m, t, &render_dir, &manifest, None)?,
                scene_fidelity_in(m, t, &render_dir, &manifest, Some(Scene::Snow))?,
            )
        }
        None => (Vec::new(), Vec::new()),
    };
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
        scene_fidelity,
        snow_fidelity,
    })
}
