//! Side-by-side renders on the tiny model: identical noise across adapters, byte-identical
//! re-renders, grid layout, a manifest that lists exactly the files there, `compare` that
//! does not retrain, merged = unmerged, text-encoder adapters with their own prompt
//! embeddings, and clear errors for bad input.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{adapter_meta, randomize_b, repo, scratch, tiny_model};
use moslora::adapter::file::{self, AdapterFile};
use moslora::adapter::{self, AdapterConfig};
use moslora::config::RunConfig;
use moslora::render::manifest::Manifest;
use moslora::render::picture::GridLayout;
use moslora::render::{self, Column, RenderProgress};
use moslora::schedule::sampler::SamplerKind;
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::{
    load_unet, seeded_randn, Denoiser, GenerateOptions, RunOptions, TextEncoders,
};
use moslora::train::{self, AdapterKind, Quiet};
use sha2::{Digest, Sha256};

fn config(out: &Path) -> RunConfig {
    let mut c = RunConfig {
        model: tiny_model(),
        output: out.to_path_buf(),
        ..RunConfig::default()
    };
    c.subject.images = repo().join("assets/subject");
    c.subject.class_noun = "toy".into();
    c.train.steps = 3;
    c.train.resolution = 64;
    c.train.batch_size = 2;
    c.train.crops_per_image = 1;
    c.train.checkpoint_every = 0;
    // The gallery shows the validation curves (bookkeeping: the adapters are the same).
    c.train.validate_every = 2;
    // Far above a real run's rate, so that three steps give adapters whose effect on a render
    // stands well clear of the merge tolerance.
    c.train.learning_rate = 1e-3;
    c.render.steps = 4;
    c.render.width = Some(64);
    c.render.height = Some(64);
    c.render.seeds = vec![0, 1];
    c.render.include_base = true;
    let prompts = out.join("prompts.yaml");
    std::fs::write(
        &prompts,
        "prompts:\n  - \"a [V] {class} in the snow\"\n  - \"a red [V] {class}\"\n",
    )
    .unwrap();
    c.render.prompts = Some(prompts);
    c
}

/// Trained tiny adapters, shared by the tests of this file (training once keeps them quick).
fn trained() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = scratch("trained");
        train::train(
            &config(&out),
            &AdapterKind::BOTH,
            RunOptions::default(),
            false,
            &mut Quiet,
        )
        .unwrap();
        out
    })
}

#[derive(Default)]
struct Recorder {
    notes: Vec<String>,
    reused: u64,
    rendered: u64,
}

impl RenderProgress for Recorder {
    fn image(&mut self, _: u64, _: &str, reused: bool) {
        if reused {
            self.reused += 1
        } else {
            self.rendered += 1
        }
    }
    fn note(&mut self, msg: &str) {
        self.notes.push(msg.to_string());
    }
}

fn render_into(cfg: &RunConfig, out: &Path) -> (Manifest, Recorder) {
    let mut cfg = cfg.clone();
    cfg.render.out = Some(out.to_path_buf());
    let plan = render::plan(&cfg, None, None, None, Vec::new(), false).unwrap();
    let mut rec = Recorder::default();
    let m = render::render(&cfg, &plan, RunOptions::default(), &mut rec).unwrap();
    (m, rec)
}

fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn renders_are_fair_reproducible_and_fully_listed() {
    let cfg = config(trained());
    let a = scratch("a");
    let (m, rec) = render_into(&cfg, &a);
    assert_eq!(rec.rendered, 2 * 2 * 3);
    assert_eq!(
        m.adapters
            .iter()
            .map(|x| x.name.as_str())
            .collect::<Vec<_>>(),
        ["base", "lora", "moslora"]
    );

    // Same prompt and seed: the same initial noise in every column, and it is torch.randn's.
    let mut noise: HashMap<(String, u64), BTreeSet<String>> = HashMap::new();
    for i in &m.images {
        noise
            .entry((i.prompt_id.clone(), i.seed))
            .or_default()
            .insert(i.noise_sha256.clone());
    }
    let torch_randn = common::reference("training");
    assert_eq!(noise.len(), 2 * 2, "2 prompts x 2 seeds");
    for ((p, seed), hashes) in &noise {
        assert_eq!(
            hashes.len(),
            1,
            "{p} seed {seed}: columns started from different noise"
        );
        let redrawn = seeded_randn(*seed, &[1, 4, 8, 8]);
        // torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(seed)),
        // drawn in Python by tests/reference/ref_training.py: bit for bit.
        let torch_noise = &torch_randn[&format!("noise.seed{seed}")];
        assert!(
            redrawn.equal(torch_noise),
            "seed {seed}: moslora's noise is not torch.randn's"
        );
        let mut bytes = vec![0u8; 256 * 4];
        redrawn.copy_data_u8(&mut bytes, 256);
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            hashes.contains(&hex),
            "{p} seed {seed}: recorded noise is not the re-drawn noise"
        );
    }

    // The manifest lists every file in the folder and nothing else.
    let mut listed: BTreeSet<String> = m.files().into_iter().collect();
    listed.insert("manifest.json".into());
    assert_eq!(files_under(&a), listed);

    // Grid: expected size and cell layout (columns = adapters, rows = seeds).
    let layout = GridLayout::new(64, 64, 2, 3);
    for g in &m.grids {
        let grid = image::open(a.join(&g.file)).unwrap().to_rgb8();
        assert_eq!(
            grid.dimensions(),
            (layout.width(), layout.height()),
            "{}",
            g.file
        );
        for (r, seed) in [0u64, 1].iter().enumerate() {
            for (c, name) in ["base", "lora", "moslora"].iter().enumerate() {
                let e = m
                    .images
                    .iter()
                    .find(|i| i.prompt_id == g.prompt_id && i.seed == *seed && i.adapter == *name)
                    .unwrap();
                let cell = image::open(a.join(&e.file)).unwrap().to_rgb8();
                let (x, y) = layout.cell_origin(r as u32, c as u32);
                let crop = image::imageops::crop_imm(&grid, x, y, 64, 64).to_image();
                assert!(
                    crop == cell,
                    "{}: cell ({r}, {c}) is not {}",
                    g.file,
                    e.file
                );
            }
        }
    }
    // The gallery references only files that exist.
    let html = std::fs::read_to_string(a.join("index.html")).unwrap();
    for src in html
        .split("src=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
    {
        assert!(a.join(src).exists(), "gallery references missing {src}");
    }
    // The validation curves, each adapter's as its run logged it.
    let curves: Vec<(&str, Vec<u64>)> = m
        .validation
        .iter()
        .map(|c| (c.adapter.as_str(), c.points.iter().map(|p| p.0).collect()))
        .collect();
    assert_eq!(
        curves,
        [("lora", vec![0, 2, 3]), ("moslora", vec![0, 2, 3])]
    );
    assert!(html.contains("training and validation loss"));
    assert!(html.contains("<h2>Validation loss</h2>"));
    for k in ["lora", "moslora"] {
        let line = html
            .split(&format!("<polyline data-adapter=\"{k}\""))
            .nth(1)
            .unwrap_or_else(|| panic!("no {k} validation curve in the gallery"));
        let points = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 3, "{k}: {points}");
    }
    assert!(html.contains("Lowest validation loss: LoRA "), "{html}");

    // Rendering again elsewhere gives byte-identical PNGs.
    let b = scratch("b");
    let (m2, _) = render_into(&cfg, &b);
    for i in &m2.images {
        assert_eq!(
            std::fs::read(a.join(&i.file)).unwrap(),
            std::fs::read(b.join(&i.file)).unwrap(),
            "{}",
            i.file
        );
    }
    // Rendering again in place reuses every image.
    let (_, rec) = render_into(&cfg, &a);
    assert_eq!((rec.rendered, rec.reused), (0, 12));
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn merged_adapter_renders_like_the_unmerged_one() {
    let cfg = config(trained());
    let dir = ModelDir::open(&cfg.model).unwrap();
    let opts = RunOptions::default();
    let text = TextEncoders::load(&dir, opts).unwrap();
    let cond = text.encode("a sks toy in the snow").unwrap();
    let uncond = text.encode_negative(None, &cond).unwrap();
    let mut den = Denoiser::load(&dir, opts).unwrap();
    let path = cfg.output.join("moslora/adapter.safetensors");
    AdapterFile::read(&path)
        .unwrap()
        .apply(&mut den.unet, 1.0, &path)
        .unwrap();
    let o = GenerateOptions {
        steps: 8,
        guidance: 5.0,
        width: 64,
        height: 64,
        seed: 3,
        sampler: SamplerKind::Euler,
    };
    let noise = den.initial_noise(3, 64, 64).unwrap();
    let unmerged = den.sample(&cond, &uncond, &noise, &o, |_| {}).unwrap();
    adapter::merge_all(&mut den.unet);
    let merged = den.sample(&cond, &uncond, &noise, &o, |_| {}).unwrap();
    // Tolerance: 1e-4 in latent space.
    common::assert_close("merged vs unmerged latents", &merged, &unmerged, 1e-4);
    adapter::remove_all(&mut den.unet);
    let base = den.sample(&cond, &uncond, &noise, &o, |_| {}).unwrap();
    let effect = common::max_abs_diff(&base, &unmerged);
    println!("adapter effect on latents: {effect:.3e} (must exceed 100 x the tolerance, 1e-2)");
    // Merging that did nothing (or an adapter that does nothing) would pass the comparison
    // above; the adapter must move the latents far beyond its tolerance.
    assert!(
        effect > 1e-2,
        "the adapter moves the latents by only {effect:.3e}: the merge check proves nothing"
    );
}

#[test]
fn compare_twice_does_not_retrain() {
    let out = scratch("compare");
    let cfg = config(&out);
    let (trained, m) = render::compare(
        &cfg,
        RunOptions::default(),
        &mut Quiet,
        &mut Recorder::default(),
    )
    .unwrap();
    assert_eq!(trained.len(), 2);
    assert_eq!(m.images.len(), 12);
    let adapter = out.join("lora/adapter.safetensors");
    let before = std::fs::metadata(&adapter).unwrap().modified().unwrap();
    let mut rec = Recorder::default();
    let (trained, _) = render::compare(&cfg, RunOptions::default(), &mut Quiet, &mut rec).unwrap();
    assert!(trained.is_empty(), "compare retrained up-to-date adapters");
    assert_eq!(
        std::fs::metadata(&adapter).unwrap().modified().unwrap(),
        before
    );
    assert_eq!((rec.rendered, rec.reused), (0, 12));
    // The command line says what it kept, and ends by naming the next step with this run's
    // paths.
    let run = out.join("run.yaml");
    std::fs::write(&run, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_moslora"))
        .arg("compare")
        .arg(&run)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains(
            "rendered 0, kept 12 from before (12 images = 2 prompts x 3 columns x 2 seeds)"
        ),
        "{stdout}"
    );
    let next = format!(
        "moslora study make --renders {} --a lora --b moslora --out {}",
        cfg.render_dir().display(),
        out.join("study").display()
    );
    assert!(stdout.trim_end().ends_with(&next), "{stdout}");
    // A changed training setting makes the adapters stale: both retrain.
    let mut changed = cfg.clone();
    changed.train.learning_rate = 2e-4;
    let (trained, _) = render::compare(
        &changed,
        RunOptions::default(),
        &mut Quiet,
        &mut Recorder::default(),
    )
    .unwrap();
    assert_eq!(trained.len(), 2);
    std::fs::remove_dir_all(&out).unwrap();
}

/// An adapter with random B in the UNet and in both text encoders, saved as training saves
/// one.
fn text_encoder_adapter(out: &Path) -> PathBuf {
    let dir = ModelDir::open(&tiny_model()).unwrap();
    let opts = RunOptions::default();
    let mut unet = load_unet(&dir, opts).unwrap();
    let mut text = TextEncoders::load(&dir, opts).unwrap();
    let cfg = AdapterConfig {
        text_encoder_targets: vec!["q_proj".into(), "v_proj".into()],
        ..AdapterConfig::default()
    };
    let mut layers = adapter::inject(&mut unet, &cfg, 1).unwrap();
    layers += adapter::inject_text_encoders(&mut text, &cfg, 1).unwrap();
    randomize_b(&mut unet, Some(&mut text), 5);
    let meta = adapter_meta("te", cfg, "", layers);
    let path = out.join("te.safetensors");
    file::save_with_text(&mut unet, Some(&mut text), &meta, &path).unwrap();
    path
}

#[test]
fn text_encoder_adapters_render_with_their_own_prompt_embeddings() {
    let out = scratch("te");
    let adapter = text_encoder_adapter(&out);
    let mut cfg = config(&out);
    cfg.render.seeds = vec![2];
    cfg.render.out = Some(out.join("renders"));
    let column = Column::parse(&format!("te={}", adapter.display())).unwrap();
    let plan = render::plan(&cfg, None, None, None, vec![column], true).unwrap();
    let m = render::render(&cfg, &plan, RunOptions::default(), &mut Recorder::default()).unwrap();
    assert_eq!(m.images.len(), 2 * 2, "2 prompts x (base, te)");
    // Each image is what `generate` makes of its prompt with the column's adapter: the
    // prompts were encoded through the adapted text encoders for the adapter's column only.
    let o = GenerateOptions {
        steps: cfg.render.steps,
        guidance: cfg.render.guidance,
        width: 64,
        height: 64,
        seed: 2,
        sampler: SamplerKind::Euler,
    };
    for p in &m.prompts {
        let mut pixels = Vec::new();
        for name in ["base", "te"] {
            let i = m
                .images
                .iter()
                .find(|i| i.prompt_id == p.id && i.adapter == name)
                .unwrap();
            let png = image::open(cfg.render_dir().join(&i.file))
                .unwrap()
                .to_rgb8();
            let with = (name == "te").then_some((adapter.as_path(), 1.0));
            let want = moslora::render::generate::generate(
                &cfg.model,
                &p.text,
                None,
                with,
                &o,
                RunOptions::default(),
                &mut moslora::render::generate::Silent,
            )
            .unwrap()
            .permute([1, 2, 0])
            .contiguous();
            let mut bytes = vec![0u8; want.numel()];
            want.copy_data_u8(&mut bytes, want.numel());
            assert!(
                png.as_raw() == &bytes,
                "{}: render differs from generate with the same adapter",
                i.file
            );
            pixels.push(bytes);
        }
        assert_ne!(pixels[0], pixels[1], "the adapter must change the picture");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

fn render_error(cfg: &RunConfig, prompts: Option<&str>, extra: Vec<Column>) -> String {
    let plan = match render::plan(cfg, prompts, None, None, extra, false) {
        Ok(p) => p,
        Err(e) => return e.to_string(),
    };
    match render::render(cfg, &plan, RunOptions::default(), &mut Recorder::default()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_input_is_refused_clearly() {
    let cfg = config(trained());
    let dir = scratch("bad");
    // A prompt set with no prompts.
    let empty = dir.join("empty.yaml");
    std::fs::write(&empty, "prompts: []\n").unwrap();
    let e = render_error(&cfg, Some(empty.to_str().unwrap()), Vec::new());
    assert!(e.contains("empty.yaml") && e.contains("no prompts"), "{e}");
    // An unknown adapter file.
    let e = render_error(
        &cfg,
        None,
        vec![Column::parse("mine=/nonexistent/adapter.safetensors").unwrap()],
    );
    assert!(
        e.contains("/nonexistent/adapter.safetensors") && e.contains("does not exist"),
        "{e}"
    );
    // A read-only output folder: one clear error, and no manifest listing anything.
    let ro = dir.join("readonly");
    std::fs::create_dir_all(&ro).unwrap();
    let mut perms = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    std::fs::set_permissions(&ro, perms).unwrap();
    // root may write anyway; sysfs refuses even root.
    let target = if std::fs::write(ro.join("probe"), b"").is_ok() {
        PathBuf::from("/sys/moslora-renders")
    } else {
        ro.clone()
    };
    let mut c = cfg.clone();
    c.render.out = Some(target.clone());
    let e = render_error(&c, None, Vec::new());
    assert!(
        e.contains(target.to_str().unwrap())
            && (e.contains("not writable") || e.contains("cannot create")),
        "{e}"
    );
    assert!(!target.join("manifest.json").exists());
    // A prompt without "[V]": a warning, and it still renders.
    let plain = dir.join("plain.yaml");
    std::fs::write(&plain, "prompts:\n  - \"a lighthouse at dusk\"\n").unwrap();
    let mut c = cfg.clone();
    c.render.out = Some(dir.join("plain"));
    c.render.seeds = vec![0];
    let plan = render::plan(
        &c,
        Some(plain.to_str().unwrap()),
        None,
        None,
        Vec::new(),
        false,
    )
    .unwrap();
    let mut rec = Recorder::default();
    let m = render::render(&c, &plan, RunOptions::default(), &mut rec).unwrap();
    assert_eq!(m.images.len(), 3);
    assert!(
        rec.notes.iter().any(|n| n.contains("no \"[V]\"")),
        "{:?}",
        rec.notes
    );
    let mut perms = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&ro, perms).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn another_sampler_renders_anew_and_a_spelling_keys_the_same_pictures() {
    let cfg = config(trained());
    let dir = scratch("samplers");
    let (euler, rec) = render_into(&cfg, &dir);
    assert_eq!((rec.rendered, rec.reused), (12, 0));
    assert_eq!(euler.settings.scheduler, "euler");
    let euler_png = std::fs::read(dir.join(&euler.images[0].file)).unwrap();
    // Another sampler: no kept picture is reused, and the pictures change.
    let mut c = cfg.clone();
    c.render.scheduler = "DPM++ 2M Karras".into();
    let (m, rec) = render_into(&c, &dir);
    assert_eq!((rec.rendered, rec.reused), (12, 0));
    assert_eq!(m.settings.scheduler, "dpmpp_2m_karras");
    assert_ne!(
        std::fs::read(dir.join(&m.images[0].file)).unwrap(),
        euler_png
    );
    // The same sampler by its own name: every picture is kept.
    c.render.scheduler = "dpmpp_2m_karras".into();
    let (_, rec) = render_into(&c, &dir);
    assert_eq!((rec.rendered, rec.reused), (0, 12));
    // A misspelt one: refused before anything renders, naming the setting.
    c.render.scheduler = "Euler ancestral a".into();
    let e = render_error(&c, None, Vec::new());
    assert!(
        e.contains("render.scheduler") && e.contains("did you mean `euler_a`?"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `moslora render RUN.yaml ARGS...`: (success, stdout, stderr).
fn moslora_render(run: &Path, args: &[&str]) -> (bool, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_moslora"))
        .arg("render")
        .arg(run)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_step_series_renders_as_columns() {
    let out = scratch("steps");
    let mut cfg = config(&out);
    cfg.train.steps = 4;
    cfg.train.save_adapter_every = 2;
    cfg.render.include_base = false;
    cfg.render.seeds = vec![0];
    train::train(
        &cfg,
        &[AdapterKind::Moslora],
        RunOptions::default(),
        false,
        &mut Quiet,
    )
    .unwrap();
    let kind_dir = out.join("moslora");
    for step in [2, 4] {
        let f = AdapterFile::read(&kind_dir.join(format!("adapters/step{step:06}.safetensors")))
            .unwrap();
        assert_eq!(f.meta.steps, step, "the metadata's step");
    }
    let run = out.join("run.yaml");
    std::fs::write(&run, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    let (ok, stdout, stderr) = moslora_render(
        &run,
        &["--adapters-from", out.to_str().unwrap(), "--steps", "2,4"],
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout
            .contains("rendered 4, kept 0 from before (4 images = 2 prompts x 2 columns x 1 seed)"),
        "{stdout}"
    );
    // The same command again keeps every picture, and says so.
    let (ok, again, stderr) = moslora_render(
        &run,
        &["--adapters-from", out.to_str().unwrap(), "--steps", "2,4"],
    );
    assert!(ok, "{stderr}");
    assert!(again.contains("rendered 0, kept 4 from before"), "{again}");
    // Beside the comparison's folder, not in it.
    let series = out.join("renders-steps");
    assert!(
        !cfg.render_dir().exists(),
        "the comparison's folder is left alone"
    );
    let m = Manifest::read(&series).unwrap();
    let columns: Vec<(&str, &str, Option<u64>)> = m
        .adapters
        .iter()
        .map(|a| (a.name.as_str(), a.label.as_str(), a.steps))
        .collect();
    assert_eq!(
        columns,
        [("step2", "step 2", Some(2)), ("step4", "step 4", Some(4))],
        "one column per step, in order, and only those"
    );
    // Two steps of training apart, the pictures differ; the grid shows both side by side.
    let image = |name: &str| {
        let e = m.images.iter().find(|i| i.adapter == name).unwrap();
        common::read_png(&series.join(&e.file))
    };
    assert!(common::mean_pixel_diff(&image("step2"), &image("step4")) > 0.0);
    let grid = image::open(series.join(&m.grids[0].file)).unwrap();
    assert!(grid.width() > 2 * 64, "two columns of 64 px pictures");

    // A step that was not kept: one line naming it and the steps there are.
    let (ok, _, stderr) = moslora_render(
        &run,
        &["--adapters-from", out.to_str().unwrap(), "--steps", "2,3"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--steps 3") && stderr.contains("steps there: 2, 4"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // --steps without --adapters-from is refused by the parser.
    let (ok, _, stderr) = moslora_render(&run, &["--steps", "2"]);
    assert!(!ok && stderr.contains("--adapters-from"), "{stderr}");
    std::fs::remove_dir_all(&out).unwrap();
}
