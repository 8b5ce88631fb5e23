//! Masked training from the command line (`train.masked_loss`): a subject whose photos have a
//! mask through their alpha channel, through a `.mask.png` beside them, or none, trains, says
//! once how many lack one, and keeps which mask each photo had in the run's settings; a mask
//! of another size than its photo is refused naming both; `--resume` refuses masks that
//! changed. The loss itself is checked against Python in tests/training_parity.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo, scratch, tiny_model};
use image::{GrayImage, Luma, Rgba, RgbaImage};
use moslora::adapter::file::AdapterFile;

/// Run `moslora` with `args`; (exit code, stderr).
fn moslora(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn subject(name: &str) -> image::DynamicImage {
    image::open(repo().join("assets/subject").join(name)).unwrap()
}

/// A grey mask of `w` x `h`, white inside the centred half-size box.
fn box_mask(w: u32, h: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        let inside = x >= w / 4 && x < 3 * w / 4 && y >= h / 4 && y < 3 * h / 4;
        Luma([if inside { 255 } else { 0 }])
    })
}

/// Photos in `dir/photos`: `a.png` masked by its alpha channel, `b.jpg` by `b.mask.png`
/// beside it, `c.jpg` without a mask.
fn photos(dir: &Path) -> PathBuf {
    let p = dir.join("photos");
    std::fs::create_dir_all(&p).unwrap();
    let sky = subject("01_sky.jpg").to_rgb8();
    let (w, h) = sky.dimensions();
    let mask = box_mask(w, h);
    let rgba = RgbaImage::from_fn(w, h, |x, y| {
        let c = sky.get_pixel(x, y);
        Rgba([c[0], c[1], c[2], mask.get_pixel(x, y)[0]])
    });
    rgba.save(p.join("a.png")).unwrap();
    std::fs::copy(repo().join("assets/subject/02_sand.jpg"), p.join("b.jpg")).unwrap();
    let sand = subject("02_sand.jpg");
    box_mask(sand.width(), sand.height())
        .save(p.join("b.mask.png"))
        .unwrap();
    std::fs::copy(repo().join("assets/subject/05_grass.jpg"), p.join("c.jpg")).unwrap();
    p
}

fn write_run(dir: &Path, images: &Path, extra: &str) -> PathBuf {
    let yaml = format!(
        "model: {}\noutput: {}\nsubject:\n  images: {}\ntrain:\n  steps: 2\n  resolution: 64\n  \
         batch_size: 2\n  checkpoint_every: 0\n{extra}",
        tiny_model().display(),
        dir.join("out").display(),
        images.display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn masks_from_alpha_and_mask_files_train_and_missing_ones_are_said_once() {
    let root = scratch("masked");
    let images = photos(&root);
    let run = write_run(
        &root,
        &images,
        "  masked_loss: true\n  mask_background_weight: 0.1\n",
    );
    let (code, err) = moslora(&["train", run.to_str().unwrap(), "--adapter", "lora"]);
    assert_eq!(code, 0, "{err}");
    println!("{err}");
    // The mask file is not a photo.
    assert!(err.contains("3 photos in"), "{err}");
    let notice = "masked loss: 1 of 3 photos has no mask";
    assert_eq!(err.matches(notice).count(), 1, "said once: {err}");
    assert!(err.contains("it trains unmasked"), "{err}");
    // Which mask each photo had is part of the run's settings.
    let meta = AdapterFile::read(&root.join("out/lora/adapter.safetensors"))
        .unwrap()
        .meta;
    let masks = &meta.training["settings"]["masks"];
    let said = |photo: &str| masks[photo].as_str().unwrap_or_default().to_string();
    assert!(said("a.png").starts_with("alpha "), "{masks}");
    assert!(said("b.jpg").starts_with("mask file "), "{masks}");
    assert_eq!(said("c.jpg"), "none", "{masks}");
    assert_eq!(masks.as_object().unwrap().len(), 3, "{masks}");

    // A changed mask: the run's checkpoint is of other settings, and --resume names the photo.
    let sand = subject("02_sand.jpg");
    GrayImage::from_pixel(sand.width(), sand.height(), Luma([200]))
        .save(images.join("b.mask.png"))
        .unwrap();
    let (code, err) = moslora(&[
        "train",
        run.to_str().unwrap(),
        "--adapter",
        "lora",
        "--resume",
    ]);
    assert_eq!(code, 2, "{err}");
    println!("{err}");
    assert!(err.contains("masks.b.jpg"), "names the changed mask: {err}");
    assert!(!err.contains("masks.a.png"), "only the changed one: {err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// Aspect-ratio buckets resize and crop the photos otherwise (PIL's Lanczos, kohya's crop):
/// the masks follow them there too, latent for latent.
#[test]
fn masks_follow_their_photos_into_buckets() {
    let root = scratch("buckets");
    let images = photos(&root);
    let run = write_run(
        &root,
        &images,
        "  masked_loss: true\n  buckets: kohya\n  random_flip: true\n",
    );
    let (code, err) = moslora(&["train", run.to_str().unwrap(), "--adapter", "lora"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("buckets: "), "trained in buckets: {err}");
    assert_eq!(
        err.matches("masked loss: 1 of 3 photos has no mask")
            .count(),
        1,
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_mask_of_another_size_is_refused_naming_both_files() {
    let root = scratch("mismatched");
    let images = photos(&root);
    std::fs::copy(
        repo().join("assets/subject/03_room.png"),
        images.join("d.png"),
    )
    .unwrap();
    let room = subject("03_room.png");
    let (w, h) = (room.width(), room.height());
    box_mask(w / 2, h).save(images.join("d.mask.png")).unwrap();
    let run = write_run(&root, &images, "  masked_loss: true\n");
    let (code, err) = moslora(&["train", run.to_str().unwrap()]);
    assert_ne!(code, 0, "{err}");
    println!("{err}");
    let line = err.trim().lines().last().unwrap_or_default();
    for want in [
        "d.mask.png".to_string(),
        "d.png".to_string(),
        format!("{} x {h}", w / 2),
        format!("{w} x {h}"),
    ] {
        assert!(line.contains(&want), "the error names {want:?}: {err}");
    }
    assert!(!root.join("out/lora/adapter.safetensors").exists());

    // With masked_loss off the masks are not read: the same folder trains. A mask with no
    // photo is named as a file not used.
    box_mask(64, 64).save(images.join("e.mask.png")).unwrap();
    let run = write_run(&root, &images, "");
    let (code, err) = moslora(&["train", run.to_str().unwrap(), "--adapter", "lora"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("4 photos in"),
        "mask files are not photos: {err}"
    );
    assert!(!err.contains("masked loss"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
