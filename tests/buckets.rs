//! Aspect-ratio buckets and caption files against tests/reference/ref_buckets.py (kohya's
//! `make_bucket_resolutions` and `select_bucket`, SDXL's list, PIL's Lanczos, diffusers' VAE):
//! the bucket lists and choices, the pixels, `time_ids` and cached latents of every crop, one
//! bucket per batch (with prior preservation's class pictures of that bucket), captions in the
//! batches, exact resume with both, and bad input refused in one clear line.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures, max_abs_diff, reference, repo, scratch, tensors, tiny_model, Failures};
use moslora::config::{Buckets, PriorPreservation, RunConfig};
use moslora::schedule::config::SchedulerConfig;
use moslora::schedule::ddpm::DdpmSchedule;
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::RunOptions;
use moslora::sdxl::vae::AutoencoderKL;
use moslora::train::buckets::{self, Bucket};
use moslora::train::{self, dataset, AdapterKind, Progress, Quiet, RunPaths};
use tch::{Device, Kind};

fn reference_json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("ref/buckets.json"))
        .expect("ref/buckets.json: run `make fixtures`");
    serde_json::from_str(&text).unwrap()
}

fn photos_dir() -> PathBuf {
    fixtures().join("bucket-photos")
}

/// `[[w, h], ...]` as buckets.
fn bucket_list(v: &serde_json::Value) -> Vec<Bucket> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| Bucket {
            width: p[0].as_u64().unwrap() as u32,
            height: p[1].as_u64().unwrap() as u32,
        })
        .collect()
}

fn pair(v: &serde_json::Value) -> (u32, u32) {
    (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
}

/// The test rule: kohya's at 128 px, sides of 64 to 256 in steps of 32.
fn test_buckets() -> Vec<Bucket> {
    buckets::kohya_buckets(128, 64, 256, 32)
}

#[test]
fn bucket_lists_and_choices_follow_kohya_and_sdxl() {
    let r = reference_json();
    let mut failures = Failures::new();
    let lists = [
        (
            "kohya at 1024",
            buckets::kohya_buckets(1024, 256, 2048, 64),
            "kohya_1024",
        ),
        ("kohya at 128", test_buckets(), "test_buckets"),
        ("sdxl", buckets::sdxl_buckets(), "sdxl"),
    ];
    for (what, ours, key) in &lists {
        let want = bucket_list(&r[key]);
        failures.check(what, *ours == want, || format!("{ours:?} != {want:?}"));
    }
    let mut compared = 0;
    for (list, key) in [
        (&lists[2].1, "sizes_sdxl"),
        (&lists[0].1, "sizes_kohya_1024"),
    ] {
        for case in r[key].as_array().unwrap() {
            let (w, h) = pair(&case["size"]);
            let p = buckets::select(list, w, h);
            let (bw, bh) = pair(&case["bucket"]);
            let resized = pair(&case["resized"]);
            let (rw, rh) = p.resized;
            let crop = buckets::crop_offsets((rh, rw), (bh, bw), true, 1)[0];
            let want_crop = pair(&case["crop"]);
            let ok = p.bucket
                == Bucket {
                    width: bw,
                    height: bh,
                }
                && p.resized == resized
                && crop == want_crop;
            failures.check(&format!("{key} {w}x{h}"), ok, || {
                format!(
                    "ours {} resized {:?} crop {crop:?}; kohya's {bw}x{bh} resized {resized:?} \
                     crop {want_crop:?}",
                    p.bucket, p.resized
                )
            });
            compared += 1;
        }
    }
    failures.assert_none();
    println!("3 bucket lists equal; {compared} photo sizes placed as kohya places them");
}

fn tiny_vae() -> AutoencoderKL {
    let dir = ModelDir::open(&tiny_model()).unwrap();
    let w = dir.weights("vae", Kind::Float, Device::Cpu).unwrap();
    AutoencoderKL::new(&w, &dir.vae_config().unwrap()).unwrap()
}

#[test]
fn pixels_time_ids_and_cached_latents_match_the_reference() {
    let r = reference_json();
    let t = reference("buckets");
    let vae = tiny_vae();
    let list = test_buckets();
    let mut failures = Failures::new();
    let (mut worst_mean, mut worst_std) = (0.0f64, 0.0f64);
    let cases = r["cases"].as_array().unwrap();
    for case in cases {
        let tag = case["tag"].as_str().unwrap();
        let photo =
            dataset::load_photo(&photos_dir().join(case["file"].as_str().unwrap())).unwrap();
        let (w, h) = photo.image.dimensions();
        let placed = buckets::select(&list, w, h);
        let resized = buckets::resize_for(&photo, &placed);
        let (center, flip) = (
            case["center"].as_bool().unwrap(),
            case["flip"].as_bool().unwrap(),
        );
        let crops = {
            // The reference draws after torch.manual_seed(seed).
            let _rng = moslora::runtime::seeded(case["seed"].as_i64().unwrap());
            buckets::crops(&photo, &resized, placed.bucket, center, flip, 1)
        };
        let (pixels, ids) = &crops[0];
        let want_ids: Vec<f32> = Vec::try_from(&t[&format!("{tag}.time_ids")]).unwrap();
        failures.check(tag, ids.as_slice() == want_ids.as_slice(), || {
            format!("time_ids {ids:?}, reference {want_ids:?}")
        });
        let want = t[&format!("{tag}.pixels")].unsqueeze(0);
        if pixels.size() != want.size() {
            failures.check(tag, false, || {
                format!("pixels {:?}, reference {:?}", pixels.size(), want.size())
            });
            continue;
        }
        // Exactly PIL's Lanczos resize, flip and crop.
        let d = max_abs_diff(pixels, &want);
        failures.check(tag, d == 0.0, || format!("pixels differ by up to {d}"));
        let dist = tch::no_grad(|| vae.encode(pixels));
        let dm = max_abs_diff(&dist.mean, &t[&format!("{tag}.mean")].unsqueeze(0));
        let ds = max_abs_diff(&dist.std(), &t[&format!("{tag}.std")].unsqueeze(0));
        worst_mean = worst_mean.max(dm);
        worst_std = worst_std.max(ds);
        // Tolerance: float32 convolutions in another order (as tests/vae_parity.rs).
        failures.check(tag, dm < 1e-4 && ds < 1e-4, || {
            format!("latent mean differs by {dm:.2e}, std by {ds:.2e}")
        });
    }
    failures.assert_none();
    println!(
        "{} crops: pixels and time_ids equal; latents within {worst_mean:.2e} (mean), \
         {worst_std:.2e} (std) of diffusers' VAE",
        cases.len()
    );
}

/// A run on the reference photos in kohya buckets at 128 px (sides 64..256 in steps of 32).
fn bucket_config(out: &Path, images: &Path) -> RunConfig {
    let mut c = RunConfig {
        model: tiny_model(),
        output: out.to_path_buf(),
        ..RunConfig::default()
    };
    c.subject.images = images.to_path_buf();
    c.subject.class_noun = "toy".into();
    c.train.resolution = 128;
    c.train.buckets = Buckets::Kohya;
    c.train.bucket_step = Some(32);
    c.train.bucket_min = Some(64);
    c.train.bucket_max = Some(256);
    c.train.batch_size = 3;
    c.train.crops_per_image = 1;
    c.train.center_crop = true;
    c.train.checkpoint_every = 0;
    c
}

#[test]
fn batches_hold_one_bucket_with_its_class_pictures() {
    let out = scratch("batches");
    let class = out.join("class");
    common::copy_dir(&repo().join("assets/subject"), &class);
    let mut cfg = bucket_config(&out.join("run"), &photos_dir());
    cfg.train.prior_preservation = Some(PriorPreservation {
        class_images: class,
        generate: 5,
        prompt: "a photo of {class}".into(),
        weight: 1.0,
    });
    let dir = ModelDir::open(&cfg.model).unwrap();
    let mut notes = Vec::new();
    let data = train::prepare_data(&cfg, &dir, RunOptions::default(), |m| {
        notes.push(m.to_string())
    })
    .unwrap();
    let mut failures = Failures::new();
    let enlarged: Vec<&String> = notes
        .iter()
        .filter(|n| n.contains("photo enlarged"))
        .collect();
    failures.check(
        "warning",
        enlarged.len() == 1 && enlarged[0].contains("small_90x120.png"),
        || format!("one named warning for the enlarged photo, got {notes:?}"),
    );

    // The cached latents, photo by photo (sorted by name), unflipped then flipped.
    let r = reference_json();
    let t = reference("buckets");
    let mut files: Vec<String> = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["file"].as_str().unwrap().to_string())
        .collect();
    files.sort();
    files.dedup();
    assert_eq!(
        data.instance.len(),
        files.len() * 2,
        "one centre crop per photo and flip"
    );
    let mut by_bucket: HashMap<(i64, i64), Vec<[f32; 6]>> = HashMap::new();
    for (i, e) in data.instance.iter().enumerate() {
        let tag = format!("{}.center.{}", files[i / 2], i % 2);
        let want_ids: Vec<f32> = Vec::try_from(&t[&format!("{tag}.time_ids")]).unwrap();
        failures.check(&tag, e.time_ids.as_slice() == want_ids.as_slice(), || {
            format!("cached time_ids {:?}, reference {want_ids:?}", e.time_ids)
        });
        let want = t[&format!("{tag}.mean")].unsqueeze(0);
        let ok = e.mean.size() == want.size() && max_abs_diff(&e.mean, &want) < 1e-4;
        failures.check(&tag, ok, || {
            "cached latent differs from diffusers' VAE".into()
        });
        by_bucket
            .entry(buckets::latent_size(e))
            .or_default()
            .push(e.time_ids);
    }
    let (class_examples, _, _) = data.class.as_ref().unwrap();
    // 5 class pictures x 2 flips in each of the 4 buckets the photos use.
    assert_eq!(by_bucket.len(), 4, "{:?}", by_bucket.keys());
    assert_eq!(class_examples.len(), 5 * 2 * 4);

    let sched = DdpmSchedule::new(&SchedulerConfig::default()).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for step in 1..=24 {
        let b = train::make_batch(&data, &sched, &cfg, step, Device::Cpu, Kind::Float);
        let s = b.noisy.size();
        assert_eq!(s[0], 6, "3 photos and 3 class pictures");
        let (h, w) = (s[2], s[3]);
        seen.insert((h, w));
        let ids: Vec<Vec<f32>> = (0..6)
            .map(|i| Vec::try_from(&b.time_ids.get(i)).unwrap())
            .collect();
        for (i, row) in ids.iter().enumerate() {
            let target = [row[4] as i64, row[5] as i64];
            failures.check(
                &format!("step {step} row {i}"),
                target == [h * 8, w * 8],
                || format!("time_ids target {target:?} in a batch of latents {h}x{w}"),
            );
            if i < 3 {
                let known = by_bucket[&(h, w)]
                    .iter()
                    .any(|k| k.as_slice() == row.as_slice());
                failures.check(&format!("step {step} row {i}"), known, || {
                    format!("time_ids {row:?} are not those of a photo in bucket {h}x{w}")
                });
            }
        }
        // The same step draws the same batch (exact resume rests on it).
        let again = train::make_batch(&data, &sched, &cfg, step, Device::Cpu, Kind::Float);
        assert!(again.noisy.equal(&b.noisy) && again.time_ids.equal(&b.time_ids));
    }
    failures.check("buckets drawn", seen.len() >= 3, || {
        format!("24 steps drew only the buckets {seen:?}")
    });
    failures.assert_none();
    println!("24 batches, each of one bucket; buckets drawn: {seen:?}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// A copy of three subject photos with caption files.
fn captioned_photos(dir: &Path) -> PathBuf {
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for name in ["01_sky.jpg", "02_sand.jpg", "03_room.png"] {
        std::fs::copy(repo().join("assets/subject").join(name), photos.join(name)).unwrap();
    }
    std::fs::write(
        photos.join("01_sky.txt"),
        "a photo of [V] {class}\nwearing a red collar\n",
    )
    .unwrap();
    std::fs::write(photos.join("03_room.txt"), "\u{feff}a cosy room").unwrap();
    photos
}

#[test]
fn captions_go_with_their_photos() {
    let out = scratch("captions");
    let photos = captioned_photos(&out);
    let mut cfg = bucket_config(&out.join("run"), &photos);
    cfg.train.buckets = Buckets::None;
    cfg.train.bucket_step = None;
    cfg.train.bucket_min = None;
    cfg.train.bucket_max = None;
    cfg.train.resolution = 64;
    cfg.train.batch_size = 4;
    let dir = ModelDir::open(&cfg.model).unwrap();
    let mut notes = Vec::new();
    let data = train::prepare_data(&cfg, &dir, RunOptions::default(), |m| {
        notes.push(m.to_string())
    })
    .unwrap();
    let texts: Vec<&str> = data.captions.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        texts,
        ["a photo of sks toy wearing a red collar", "a cosy room"]
    );
    let of_photo: Vec<Option<usize>> = data.instance.iter().map(|e| e.caption).collect();
    assert_eq!(of_photo, [Some(0), Some(0), None, None, Some(1), Some(1)]);
    let warned = notes
        .iter()
        .any(|n| n.contains("caption without the subject") && n.contains("03_room.txt"));
    assert!(
        warned,
        "a named warning for a caption without the subject: {notes:?}"
    );

    let sched = DdpmSchedule::new(&SchedulerConfig::default()).unwrap();
    let mut rows = [0usize; 3];
    for step in 1..=6 {
        let b = train::make_batch(&data, &sched, &cfg, step, Device::Cpu, Kind::Float);
        for (i, c) in b.captions.iter().enumerate() {
            let want = match c {
                Some(k) => &data.captions[*k].1,
                None => &data.instance_prompt,
            };
            rows[c.map_or(2, |k| k)] += 1;
            let hidden = b.hidden.get(i as i64).unsqueeze(0);
            assert!(
                hidden.equal(&want.hidden),
                "step {step} row {i}: not its prompt"
            );
            assert!(b.pooled.get(i as i64).unsqueeze(0).equal(&want.pooled));
        }
    }
    assert!(rows.iter().all(|&n| n > 0), "rows per prompt {rows:?}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// Stops the run once step `.0` is done.
struct StopAfter(u64, u64);
impl Progress for StopAfter {
    fn step(&mut self, step: u64, _: f32, _: f64) {
        self.1 = step;
    }
    fn should_stop(&self) -> bool {
        self.1 >= self.0
    }
}

#[test]
fn bucketed_captioned_runs_resume_exactly() {
    let root = scratch("resume");
    let photos = root.join("photos");
    common::copy_dir(&photos_dir(), &photos);
    std::fs::write(
        photos.join("portrait_3x4.txt"),
        "[V] {class} wearing a red collar",
    )
    .unwrap();
    let config = |out: &Path| {
        let mut c = bucket_config(out, &photos);
        c.train.steps = 6;
        c.train.batch_size = 2;
        c.train.save_adapter_every = 2;
        c
    };
    let kinds = [AdapterKind::Moslora];
    let opts = RunOptions::default();
    let whole = config(&root.join("whole"));
    train::train(&whole, &kinds, opts, false, &mut Quiet).unwrap();
    let parts = config(&root.join("parts"));
    let o = train::train(&parts, &kinds, opts, false, &mut StopAfter(3, 0)).unwrap();
    assert!(o[0].interrupted && o[0].steps_done == 3);
    let o = train::train(&parts, &kinds, opts, true, &mut Quiet).unwrap();
    assert_eq!(o[0].steps_done, 6);
    let (a, b) = (
        RunPaths::new(&whole, AdapterKind::Moslora),
        RunPaths::new(&parts, AdapterKind::Moslora),
    );
    let mut files = vec![(a.adapter(), b.adapter())];
    for step in [2, 4, 6] {
        files.push((a.step_adapter(step), b.step_adapter(step)));
    }
    for (x, y) in files {
        let (tx, ty) = (tensors(&x), tensors(&y));
        assert_eq!(tx.len(), ty.len(), "{}", y.display());
        for (name, t) in &tx {
            assert!(
                t.equal(&ty[name]),
                "{name} differs: {} vs {}",
                x.display(),
                y.display()
            );
        }
    }
    // The adapter kept at the last step is the final adapter.
    let (last, fin) = (tensors(&a.step_adapter(6)), tensors(&a.adapter()));
    assert!(last.iter().all(|(n, t)| t.equal(&fin[n])));
    std::fs::remove_dir_all(&root).unwrap();
}

/// `moslora train RUN` fails with one line holding every `expect`.
fn refused(failures: &mut Failures, case: &str, run: &Path, expect: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["train", run.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    failures.check(case, !o.status.success(), || "expected a failure".into());
    failures.contains_all(case, &err, expect);
    // Progress notes may come first; the error is the last line.
    let last = err.trim().lines().last().unwrap_or_default();
    failures.check(case, expect.iter().all(|e| last.contains(e)), || {
        format!("one line should say it all: {err}")
    });
}

fn write_run(dir: &Path, photos: &Path, train: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let yaml = format!(
        "model: {}\noutput: {}\nsubject:\n  images: {}\ntrain:\n  steps: 1\n  batch_size: 1\n\
         {train}",
        tiny_model().display(),
        dir.join("out").display(),
        photos.display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn photos_with(dir: &Path, extra: &[(&str, &[u8])]) -> PathBuf {
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    // The fewest a subject trains on.
    for name in ["01_sky.jpg", "02_sand.jpg", "05_grass.jpg"] {
        std::fs::copy(repo().join("assets/subject").join(name), photos.join(name)).unwrap();
    }
    for (name, bytes) in extra {
        std::fs::write(photos.join(name), bytes).unwrap();
    }
    photos
}

/// What is wrong, the files added beside three good photos, the `train:` lines, and what the
/// one line must say.
type BadRun<'a> = (&'a str, Vec<(&'a str, &'a [u8])>, &'a str, Vec<&'a str>);

#[test]
fn bad_captions_photos_and_buckets_are_refused_clearly() {
    let root = scratch("bad");
    let mut failures = Failures::new();
    let kohya_128 = "  resolution: 128\n  buckets: kohya\n  bucket_step: 32\n  bucket_min: 64\n  \
                     bucket_max: 256\n";
    let tiny = {
        let img = image::RgbImage::from_pixel(50, 60, image::Rgb([200, 100, 50]));
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
        bytes
    };
    let cases: Vec<BadRun> = vec![
        (
            "a caption that is not UTF-8",
            vec![("01_sky.txt", b"[V] dog \xff\xfe collar")],
            "  resolution: 64\n",
            vec!["01_sky.txt", "not UTF-8", "offset 8"],
        ),
        (
            "an empty caption",
            vec![("01_sky.txt", b"  \n")],
            "  resolution: 64\n",
            vec!["01_sky.txt", "caption file is empty"],
        ),
        (
            "a photo too small for the smallest bucket",
            vec![("tiny.png", &tiny)],
            kohya_128,
            vec![
                "tiny.png",
                "50x60",
                "too small for the smallest bucket",
                "64 px",
            ],
        ),
        (
            "SDXL's buckets for a model trained at another size",
            vec![],
            "  resolution: 64\n  buckets: sdxl\n",
            vec!["train.buckets", "1024", "resolution is 64"],
        ),
        (
            "kohya buckets the model's size does not divide",
            vec![],
            "  resolution: 64\n  buckets: kohya\n  bucket_step: 16\n  bucket_min: 16\n",
            vec!["train.buckets", "does not fit the model", "multiples of 32"],
        ),
        (
            "a bucket setting without buckets",
            vec![],
            "  resolution: 64\n  bucket_step: 32\n",
            vec!["train.bucket_step", "train.buckets is `none`"],
        ),
    ];
    for (i, (case, files, train, expect)) in cases.iter().enumerate() {
        let dir = root.join(format!("r{i}"));
        let photos = photos_with(&dir, files);
        let run = write_run(&dir, &photos, train);
        refused(&mut failures, case, &run, expect);
    }
    failures.assert_none();
    std::fs::remove_dir_all(&root).unwrap();
}
