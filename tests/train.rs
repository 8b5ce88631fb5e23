//! DreamBooth training on the tiny model: the loss goes down, runs are reproducible, an
//! interrupted and resumed run ends where an uninterrupted one does (text-encoder adapters
//! included), and bad input gets a clear error with nothing half-written left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

use common::{adapter_meta, assert_same_tensors, repo, scratch, tensors, tiny_model, Failures};
use moslora::adapter::file::{self, AdapterFile, AdapterMeta};
use moslora::adapter::{self, AdapterConfig, Component};
use moslora::config::RunConfig;
use moslora::schedule::config::SchedulerConfig;
use moslora::schedule::ddpm::DdpmSchedule;
use moslora::sdxl::config::{read_json, UNetConfig};
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::{load_unet, RunOptions};
use moslora::sdxl::unet::UNet2DConditionModel;
use moslora::sdxl::weights::{ShapeSource, TensorSource, Weights};
use moslora::train::{self, AdapterKind, Progress, Quiet, RunPaths};
use tch::{Device, Kind, Tensor};

fn config(out: &Path, steps: u64) -> RunConfig {
    let mut c = common::tiny_run(out, steps);
    c.train.batch_size = 2;
    c.train.crops_per_image = 2;
    c
}

/// Mean loss over fixed batches (the batches of steps 1..=8), without gradients.
fn eval_loss(cfg: &RunConfig, data: &train::TrainData, unet: &UNet2DConditionModel) -> f64 {
    let _g = tch::no_grad_guard();
    let sched = DdpmSchedule::new(&SchedulerConfig::default()).unwrap();
    let mut total = 0.0;
    for step in 1..=8 {
        let b = train::make_batch(data, &sched, cfg, step, Device::Cpu, Kind::Float);
        total += train::loss(unet, &b, &sched, None, 0.0).double_value(&[]);
    }
    total / 8.0
}

#[test]
fn short_run_lowers_the_loss_for_every_adapter() {
    let out = scratch("lowers");
    let mut cfg = config(&out, 30);
    cfg.train.learning_rate = 1e-3;
    let dir = ModelDir::open(&cfg.model).unwrap();
    let opts = RunOptions::default();
    let data = train::prepare_data(&cfg, &dir, opts, |_| {}).unwrap();
    let mut unet = load_unet(&dir, opts).unwrap();
    let identity = train::model_identity(&dir, &mut unet, Kind::Float).unwrap();
    let before = eval_loss(&cfg, &data, &unet);
    for kind in AdapterKind::ALL {
        adapter::remove_all(&mut unet);
        let job = train::TrainJob {
            cfg: &cfg,
            kind,
            data: &data,
            identity: &identity,
            opts,
            resume: false,
        };
        let o = job.run(&mut unet, None, &mut Quiet).unwrap();
        assert_eq!(o.steps_done, 30);
        let after = eval_loss(&cfg, &data, &unet);
        println!(
            "{}: loss on fixed batches {before:.5} -> {after:.5}",
            kind.label()
        );
        assert!(
            after < before,
            "{}: loss did not go down ({before} -> {after})",
            kind.label()
        );
        let paths = RunPaths::new(&cfg, kind);
        assert_eq!(
            train::loss_log::read_csv(&paths.loss_csv()).unwrap().len(),
            30
        );
        let png = image::open(paths.loss_png()).unwrap();
        assert!(png.width() > 100);
        assert!(train::is_current(&cfg, kind, &paths.adapter()));
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn the_same_run_twice_gives_the_same_adapters() {
    let (a, b) = (scratch("twice-a"), scratch("twice-b"));
    for out in [&a, &b] {
        train::train(
            &config(out, 5),
            &AdapterKind::BOTH,
            RunOptions::default(),
            false,
            &mut Quiet,
        )
        .unwrap();
    }
    for kind in AdapterKind::BOTH {
        let f = format!("{}/adapter.safetensors", kind.name());
        assert_same_tensors(&a.join(&f), &b.join(&f));
    }
    // LoRA and MoSLoRA share the seed's data but differ in the mixer: different results.
    let lora = tensors(&a.join("lora/adapter.safetensors"));
    let mos = tensors(&a.join("moslora/adapter.safetensors"));
    assert_eq!(mos.len(), lora.len() / 2 * 3);
    let name = lora.keys().find(|k| k.ends_with("lora_B.weight")).unwrap();
    assert!(!lora[name].equal(&mos[name]));
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

/// libtorch has one random generator per process, and cargo runs the tests of a file in
/// parallel threads: a test that seeded it between another run's seed and that run's draws
/// gave the other run different numbers. That is how `the_same_run_twice_gives_the_same_adapters`
/// once failed in a parallel `cargo test` (its two runs drew other noise while the other
/// training tests of this file seeded and drew). Every seeded draw in moslora now holds a
/// lock on the generator; here two threads draw seeded batches and noise as fast as they can
/// and must get exactly what each draws alone.
#[test]
fn seeded_draws_are_not_disturbed_by_other_threads() {
    use moslora::sdxl::pipeline::seeded_randn;
    // Tensors cannot cross threads: compare their values.
    let noise = |s: u64| -> Vec<f32> {
        Vec::try_from(seeded_randn(s, &[1, 4, 16, 16]).view([-1])).unwrap()
    };
    let ints = |s: i64| -> Vec<i64> {
        let _rng = moslora::runtime::seeded(100 + s);
        Vec::try_from(Tensor::randint(1000, [64], (Kind::Int64, Device::Cpu))).unwrap()
    };
    let alone: Vec<Vec<f32>> = (0..4).map(noise).collect();
    let alone_ints: Vec<Vec<i64>> = (0..4).map(ints).collect();
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| {
            (0..3000u64)
                .filter(|i| noise(i % 4) != alone[(i % 4) as usize])
                .count()
        });
        let b = scope.spawn(|| {
            (0..3000i64)
                .filter(|i| ints(i % 4) != alone_ints[(i % 4) as usize])
                .count()
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!((a, b), (0, 0), "seeded draws disturbed by the other thread");
}

/// Stops the run before the given step, as Ctrl-C does.
struct StopAt(u64, u64);
impl Progress for StopAt {
    fn step(&mut self, step: u64, _: f32, _: f64) {
        self.1 = step;
    }
    fn should_stop(&self) -> bool {
        self.1 >= self.0
    }
}

#[test]
fn an_interrupted_and_resumed_run_equals_the_uninterrupted_one() {
    let (whole, parts) = (scratch("whole"), scratch("parts"));
    let opts = RunOptions::default();
    let kinds = [AdapterKind::Moslora];
    train::train(&config(&whole, 10), &kinds, opts, false, &mut Quiet).unwrap();

    let cfg = config(&parts, 10);
    let o = train::train(&cfg, &kinds, opts, false, &mut StopAt(4, 0)).unwrap();
    assert!(o[0].interrupted);
    assert_eq!(o[0].steps_done, 4);
    let paths = RunPaths::new(&cfg, AdapterKind::Moslora);
    assert!(
        !paths.adapter().exists(),
        "an interrupted run must not write the final adapter"
    );
    assert!(paths.checkpoint().join("state.json").exists());

    let o = train::train(&cfg, &kinds, opts, true, &mut Quiet).unwrap();
    assert!(!o[0].interrupted);
    assert_eq!(o[0].steps_done, 10);
    assert_same_tensors(&whole.join("moslora/adapter.safetensors"), &paths.adapter());
    assert_eq!(
        std::fs::read_to_string(whole.join("moslora/loss.csv")).unwrap(),
        std::fs::read_to_string(paths.loss_csv()).unwrap()
    );
    // A checkpoint made with other settings is refused, not silently mixed in.
    let mut other = config(&parts, 10);
    other.train.learning_rate = 5e-4;
    let e = match train::train(&other, &kinds, opts, true, &mut Quiet) {
        Ok(_) => panic!("resumed across changed settings"),
        Err(e) => e,
    };
    // Its own kind, so that a caller (a sweep, a script) can start afresh on it.
    assert!(matches!(e, moslora::Error::StaleCheckpoint { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("other settings"), "{e}");
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&parts).unwrap();
}

#[test]
fn dora_loha_and_lokr_resume_to_the_bit_and_their_adapters_load_back() {
    let opts = RunOptions::default();
    for kind in [AdapterKind::Dora, AdapterKind::Loha, AdapterKind::Lokr] {
        let (whole, parts) = (
            scratch(&format!("whole-{}", kind.name())),
            scratch(&format!("parts-{}", kind.name())),
        );
        let mut cfg = config(&whole, 6);
        cfg.adapter.lokr_factor = 4;
        let o = train::train(&cfg, &[kind], opts, false, &mut Quiet).unwrap();
        assert_eq!(o[0].layers, 136);
        let mut cfg = config(&parts, 6);
        cfg.adapter.lokr_factor = 4;
        let o = train::train(&cfg, &[kind], opts, false, &mut StopAt(3, 0)).unwrap();
        assert!(o[0].interrupted, "{}", kind.name());
        let o = train::train(&cfg, &[kind], opts, true, &mut Quiet).unwrap();
        assert_eq!(o[0].steps_done, 6);
        let paths = RunPaths::new(&cfg, kind);
        let name = kind.name();
        assert_same_tensors(
            &whole.join(format!("{name}/adapter.safetensors")),
            &paths.adapter(),
        );
        assert_eq!(
            std::fs::read_to_string(whole.join(format!("{name}/loss.csv"))).unwrap(),
            std::fs::read_to_string(paths.loss_csv()).unwrap(),
            "{name}: loss logs differ"
        );
        // The file names its family and the family's own tensors, and attaches back.
        let f = AdapterFile::read(&paths.adapter()).unwrap();
        let family = f.meta.adapter.family;
        assert_eq!(family.name(), name);
        let parts_seen: std::collections::BTreeSet<&str> = f
            .layers
            .values()
            .flat_map(|t| t.parts.keys().map(String::as_str))
            .collect();
        assert!(
            parts_seen.iter().all(|p| family.part_names().contains(p)),
            "{name}: {parts_seen:?}"
        );
        let dir = ModelDir::open(&cfg.model).unwrap();
        let mut unet = load_unet(&dir, opts).unwrap();
        f.apply(&mut unet, 1.0, &paths.adapter()).unwrap();
        assert_eq!(adapter::adapted(&mut unet).len(), 136);
        std::fs::remove_dir_all(&whole).unwrap();
        std::fs::remove_dir_all(&parts).unwrap();
    }
}

/// A run file for the SIGINT test: `steps` steps, a checkpoint every 2.
fn write_long_run(dir: &Path, steps: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let yaml = format!(
        "model: {}\noutput: {}\nsubject:\n  images: {}\ntrain:\n  steps: {steps}\n  \
         resolution: 64\n  batch_size: 1\n  crops_per_image: 1\n  checkpoint_every: 2\n",
        tiny_model().display(),
        dir.join("out").display(),
        repo().join("assets/subject").display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn a_real_sigint_checkpoints_and_resume_ends_where_the_whole_run_ends() {
    let root = scratch("sigint");
    let steps = 8;
    let (whole, parts) = (
        write_long_run(&root.join("whole"), steps),
        write_long_run(&root.join("parts"), steps),
    );
    let (ok, err) = moslora(&["train", whole.to_str().unwrap(), "--adapter", "moslora"]);
    assert!(ok, "{err}");

    // Ctrl-C as a terminal delivers it: SIGINT to the running process, once the run is past
    // its first checkpoint (step 2) and so in the middle of training.
    let mut child = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["train", parts.to_str().unwrap(), "--adapter", "moslora"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = root.join("parts/out/moslora");
    let started = std::time::Instant::now();
    while !out.join("checkpoint/state.json").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        assert!(
            started.elapsed().as_secs() < 300,
            "no checkpoint after 5 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(130),
        "exit status after SIGINT: {err}"
    );
    assert!(err.contains("interrupted: saving a checkpoint"), "{err}");
    let stopped: u64 = err
        .split("stopped at step ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `stopped at step N` in: {err}"));
    println!("SIGINT stopped the run at step {stopped} of {steps}");
    assert!(
        (2..steps).contains(&stopped),
        "stopped at step {stopped}: not mid-run"
    );
    assert!(
        !out.join("adapter.safetensors").exists(),
        "an interrupted run must not write the final adapter"
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"].as_u64(), Some(stopped), "checkpoint step");

    let (ok, err) = moslora(&[
        "train",
        parts.to_str().unwrap(),
        "--adapter",
        "moslora",
        "--resume",
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("resuming at step {stopped}")),
        "{err}"
    );
    assert_same_tensors(
        &root.join("whole/out/moslora/adapter.safetensors"),
        &out.join("adapter.safetensors"),
    );
    assert_eq!(
        std::fs::read_to_string(root.join("whole/out/moslora/loss.csv")).unwrap(),
        std::fs::read_to_string(out.join("loss.csv")).unwrap()
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// How many layers of each component have moved B away from its zero start.
fn trained_layers(path: &Path) -> Vec<(Component, usize, usize)> {
    let f = AdapterFile::read(path).unwrap();
    Component::ALL
        .iter()
        .map(|&c| {
            let layers = f.component_layers(c);
            let moved = layers
                .values()
                .filter(|t| t.b().abs().max().double_value(&[]) > 0.0)
                .count();
            (c, moved, layers.len())
        })
        .collect()
}

#[test]
fn text_encoder_adapters_train_and_resume() {
    let (whole, parts) = (scratch("te-whole"), scratch("te-parts"));
    let te_config = |out: &Path| {
        let mut c = config(out, 4);
        c.adapter.text_encoder_targets = ["q_proj", "k_proj", "v_proj", "out_proj"]
            .map(String::from)
            .to_vec();
        c
    };
    let opts = RunOptions::default();
    let kinds = [AdapterKind::Moslora];
    let o = train::train(&te_config(&whole), &kinds, opts, false, &mut Quiet).unwrap();
    // 136 UNet projections and 5 layers x 4 projections in each text encoder.
    assert_eq!(o[0].layers, 136 + 2 * 20);
    let adapter = whole.join("moslora/adapter.safetensors");
    for (c, moved, total) in trained_layers(&adapter) {
        println!(
            "{}: {moved} of {total} layers trained away from B = 0",
            c.prefix()
        );
        assert!(total > 0 && moved > 0, "{}: no adapter moved", c.prefix());
    }
    // Interrupted after 2 steps and resumed: the uninterrupted run's adapter, to the bit.
    let cfg = te_config(&parts);
    let o = train::train(&cfg, &kinds, opts, false, &mut StopAt(2, 0)).unwrap();
    assert!(o[0].interrupted);
    let o = train::train(&cfg, &kinds, opts, true, &mut Quiet).unwrap();
    assert_eq!(o[0].steps_done, 4);
    let paths = RunPaths::new(&cfg, AdapterKind::Moslora);
    assert_same_tensors(&adapter, &paths.adapter());
    assert_eq!(
        std::fs::read_to_string(whole.join("moslora/loss.csv")).unwrap(),
        std::fs::read_to_string(paths.loss_csv()).unwrap()
    );
    assert!(train::is_current(
        &cfg,
        AdapterKind::Moslora,
        &paths.adapter()
    ));
    // The text encoders cannot train through recomputed UNet segments: refused up front.
    let mut bad = te_config(&parts);
    bad.train.gradient_checkpointing = true;
    assert!(bad.validate().unwrap_err().contains("text_encoder_targets"));
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&parts).unwrap();
}

/// Run `moslora` with a RUN.yaml; return (success, stderr).
fn moslora(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write_run(dir: &Path, images: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let yaml = format!(
        "model: {}\noutput: {}\nsubject:\n  images: {}\ntrain:\n  steps: 2\n  resolution: 64\n  batch_size: 1\n{extra}",
        tiny_model().display(),
        dir.join("out").display(),
        images.display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `moslora train` refuses `run` with one clear line saying every `expect`, and leaves no
/// partial output; what it got wrong goes to `failures` under `case`.
fn check_refused(failures: &mut Failures, case: &str, run: &Path, expect: &[&str]) {
    let (ok, err) = moslora(&["train", run.to_str().unwrap()]);
    failures.check(case, !ok, || {
        format!("expected failure for {}", run.display())
    });
    for e in expect {
        failures.check(case, err.contains(e), || {
            format!("stderr lacks {e:?}: {err}")
        });
    }
    // One error line, the last; files not used are listed above it, one line each.
    let errors = err.lines().filter(|l| l.starts_with("error")).count();
    let last = err.trim().lines().last().unwrap_or_default();
    failures.check(case, errors == 1 && last.starts_with("error"), || {
        format!("one clear error line, the last: {err}")
    });
    let out = run.parent().unwrap().join("out");
    failures.check(case, !out.exists(), || {
        format!("partial output left in {}", out.display())
    });
}

/// A RUN.yaml in `dir` for the photos of `assets/subject`, with `extra` appended.
fn run_with(dir: &Path, extra: &str) -> PathBuf {
    write_run(dir, &repo().join("assets/subject"), extra)
}

/// A RUN.yaml in `dir` for a photo folder `dir/photos` holding `files` (name, bytes).
fn run_with_photos(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for (name, bytes) in files {
        std::fs::write(photos.join(name), bytes).unwrap();
    }
    write_run(dir, &photos, "")
}

/// The bad inputs: what is wrong, how to write a RUN.yaml with it into a folder, and what the
/// one line must say.
type BadRun = (&'static str, fn(&Path) -> PathBuf, &'static [&'static str]);

const BAD_RUNS: [BadRun; 6] = [
    (
        "an empty image folder",
        |dir| run_with_photos(dir, &[]),
        &["subject.images", "is empty"],
    ),
    (
        "a folder of non-images",
        |dir| run_with_photos(dir, &[("notes.txt", b"hello")]),
        &[
            "no photo moslora can use",
            "notes.txt: a caption file with no photo",
        ],
    ),
    (
        "an unreadable image",
        |dir| {
            let good = std::fs::read(repo().join("assets/subject/01_sky.jpg")).unwrap();
            run_with_photos(
                dir,
                &[
                    ("good.jpg", &good),
                    ("bad.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg"),
                ],
            )
        },
        &["bad.jpg: not a readable image", "at least 3 are needed"],
    ),
    (
        "an unknown YAML field, with the nearest name suggested",
        |dir| run_with(dir, "  learning_rat: 0.001\n"),
        &["learning_rat", "did you mean `learning_rate`?", "run.yaml"],
    ),
    (
        "a rank of 0",
        |dir| run_with(dir, "adapter:\n  rank: 0\n"),
        &["adapter.rank must be at least 1"],
    ),
    (
        "a missing model folder",
        |dir| {
            let run = run_with(dir, "");
            let text = std::fs::read_to_string(&run)
                .unwrap()
                .replace(tiny_model().to_str().unwrap(), "/nonexistent/sdxl");
            std::fs::write(&run, text).unwrap();
            run
        },
        &["/nonexistent/sdxl", "does not exist"],
    ),
];

#[test]
fn bad_input_is_refused_clearly() {
    let root = scratch("bad");
    let mut failures = Failures::new();
    for (i, (case, write, expect)) in BAD_RUNS.iter().enumerate() {
        let run = write(&root.join(format!("r{}", i + 1)));
        check_refused(&mut failures, case, &run, expect);
    }
    failures.assert_none();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_adapter_for_another_model_is_refused() {
    // A UNet of another architecture (cross-attention width 48 instead of 64), built from
    // shapes alone, with an adapter saved from it.
    let mut cfg: UNetConfig = read_json(&tiny_model().join("unet/config.json")).unwrap();
    cfg.cross_attention_dim = 48;
    let src = Rc::new(ShapeSource::new());
    let w = Weights::new(
        src as Rc<dyn TensorSource>,
        "unet",
        Kind::Float,
        Device::Cpu,
    );
    let mut other = UNet2DConditionModel::new(&w, &cfg).unwrap();
    let acfg = AdapterConfig::default();
    let layers = adapter::inject(&mut other, &acfg, 0).unwrap();
    let meta = AdapterMeta {
        training: serde_json::Value::Null,
        ..adapter_meta("moslora", acfg, "other-sdxl", layers)
    };
    let dir = scratch("foreign");
    let path = dir.join("foreign.safetensors");
    file::save(&mut other, &meta, &path).unwrap();
    let png = dir.join("out.png");
    let (ok, err) = moslora(&[
        "generate",
        "--model",
        tiny_model().to_str().unwrap(),
        "--prompt",
        "a photo of sks toy",
        "--steps",
        "2",
        "--adapter",
        path.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("does not fit this model")
            && err.contains("other-sdxl")
            && err.contains("attn2.to_k"),
        "{err}"
    );
    assert!(!png.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn training_from_the_command_line_writes_adapters_that_render() {
    let root = scratch("cli");
    let run = write_run(&root, &repo().join("assets/subject"), "");
    let (ok, err) = moslora(&["train", run.to_str().unwrap(), "--adapter", "moslora"]);
    assert!(ok, "{err}");
    let adapter = root.join("out/moslora/adapter.safetensors");
    let f = file::AdapterFile::read(&adapter).unwrap();
    assert_eq!(f.meta.steps, 2);
    assert_eq!(f.meta.layers, 136);
    assert!(
        !root.join("out/lora").exists(),
        "--adapter moslora trains MoSLoRA only"
    );
    let png = root.join("x.png");
    let (ok, err) = moslora(&[
        "generate",
        "--model",
        tiny_model().to_str().unwrap(),
        "--prompt",
        "a photo of sks toy",
        "--steps",
        "3",
        "--width",
        "64",
        "--height",
        "64",
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(image::open(&png).unwrap().width(), 64);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn prior_preservation_makes_class_images_and_samples_are_rendered() {
    let out = scratch("prior");
    let mut cfg = config(&out, 2);
    cfg.render.steps = 3;
    // Class images and samples are drawn with the renders' sampler, here a stochastic one.
    cfg.render.scheduler = "Euler a".into();
    cfg.train.sample_every = 1;
    cfg.train.prior_preservation = Some(moslora::config::PriorPreservation {
        class_images: out.join("class"),
        generate: 2,
        prompt: "a photo of {class}".into(),
        weight: 1.0,
    });
    let o = train::train(
        &cfg,
        &[AdapterKind::Lora],
        RunOptions::default(),
        false,
        &mut Quiet,
    )
    .unwrap();
    assert!(o[0].losses.iter().all(|l| l.is_finite()));
    for i in 0..2 {
        let p = out.join(format!("class/class_{i:04}.png"));
        assert_eq!(image::open(&p).unwrap().width(), 64, "{}", p.display());
    }
    for step in [1, 2] {
        let p = out.join(format!("lora/samples/step_{step:06}.png"));
        // At the training resolution (tests/toy_model.rs checks a VAE factor of 4).
        let sample = image::open(&p).unwrap();
        assert_eq!(
            (sample.width(), sample.height()),
            (64, 64),
            "{}",
            p.display()
        );
    }
    // A second run finds the class images already there and makes none.
    let before = std::fs::metadata(out.join("class/class_0000.png"))
        .unwrap()
        .modified()
        .unwrap();
    train::train(
        &cfg,
        &[AdapterKind::Lora],
        RunOptions::default(),
        false,
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(
        std::fs::metadata(out.join("class/class_0000.png"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn an_exploding_loss_stops_with_its_step_and_keeps_the_last_checkpoint() {
    let out = scratch("diverges");
    let mut cfg = config(&out, 40);
    // Adam moves every weight by about the learning rate per step: 1e12 overflows f32
    // activations within a few steps.
    cfg.train.learning_rate = 1e12;
    cfg.train.checkpoint_every = 1;
    let e = match train::train(
        &cfg,
        &[AdapterKind::Lora],
        RunOptions::default(),
        false,
        &mut Quiet,
    ) {
        Ok(o) => panic!(
            "trained {} steps with a learning rate of 1e12",
            o[0].steps_done
        ),
        Err(e) => e,
    };
    let moslora::Error::Diverged {
        step, checkpoint, ..
    } = &e
    else {
        panic!("expected a diverged run, got {e:?}")
    };
    println!("{e}");
    assert!(
        *step >= 2,
        "step 1 starts from B = 0 and cannot diverge: {e}"
    );
    let kept = checkpoint
        .as_ref()
        .expect("a checkpoint was written every step");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kept.join("state.json")).unwrap()).unwrap();
    // The kept checkpoint is the last step whose loss was finite.
    assert_eq!(state["step"].as_u64(), Some(step - 1), "{state}");
    assert!(e.to_string().contains(&format!("at step {step}")), "{e}");
    assert!(!RunPaths::new(&cfg, AdapterKind::Lora).adapter().exists());
    std::fs::remove_dir_all(&out).unwrap();
}
