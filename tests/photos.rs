//! The subject's photo folder as a new user fills it: a phone's HEIC files beside JPEGs, a
//! TIFF, a GIF, an empty file, captions saved as UTF-16. HEIC and TIFF are read upright (the
//! HEIC compared with pillow-heif's reading of it), every file not used is named with its
//! reason, and fewer than 3 usable photos is refused with exit 2, naming each file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{repo, run_reference, scratch, tiny_model, Failures};
use image::RgbImage;

/// The phone-like photos of tests/reference/make_phone_photos.py, made once per test.
fn phone_photos(name: &str) -> PathBuf {
    let dir = scratch(name).join("made");
    run_reference("make_phone_photos.py", &[&dir]);
    dir
}

fn rgb(path: &Path) -> RgbImage {
    moslora::image_file::open(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .to_rgb8()
}

/// Largest and mean absolute difference of two pictures of one size, in 0..255 levels.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions(), "sizes differ");
    let d: Vec<u8> = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .collect();
    let mean = d.iter().map(|&v| v as f64).sum::<f64>() / d.len() as f64;
    (d.iter().copied().max().unwrap_or(0), mean)
}

/// One phone scene stored sideways: as HEIC (turned by its `irot` box, with EXIF orientation 6
/// as a phone writes it), as JPEG and TIFF (turned by EXIF orientation 6). All come out upright
/// and alike; the HEIC matches pillow-heif's decoding of it.
#[test]
fn phone_heic_jpeg_and_tiff_of_one_scene_come_out_upright_alike() {
    let dir = phone_photos("upright");
    let upright = rgb(&dir.join("upright.png"));
    let mut f = Failures::new();
    // Lossless 4:4:4 HEIC: the only difference from pillow-heif (libheif 1.23) is the rounding of
    // the YCbCr -> RGB conversion in the system's libheif: at most 2 levels.
    let heic = rgb(&dir.join("phone.heic"));
    f.check("HEIC size", heic.dimensions() == (96, 64), || {
        format!("{:?}, expected 96 x 64 (upright)", heic.dimensions())
    });
    if heic.dimensions() == (96, 64) {
        let (max, mean) = diff(&heic, &rgb(&dir.join("ref_heic.png")));
        println!("HEIC vs pillow-heif: max {max}, mean {mean:.3} levels (tolerance: max 2)");
        f.check("HEIC vs pillow-heif", max <= 2, || format!("max {max}"));
        let (max, mean) = diff(&heic, &upright);
        println!("HEIC vs the scene: max {max}, mean {mean:.3} (tolerance: mean 1)");
        f.check("HEIC upright", mean <= 1.0, || format!("mean {mean}"));
    }
    // A 10-bit HEIC (an iPhone's HDR photo) comes down to the 8-bit scene it was made from.
    let deep = rgb(&dir.join("phone10.heic"));
    f.check("10-bit HEIC size", deep.dimensions() == (96, 64), || {
        format!("{:?}", deep.dimensions())
    });
    if deep.dimensions() == (96, 64) {
        let (max, mean) = diff(&deep, &upright);
        println!("10-bit HEIC vs the scene: max {max}, mean {mean:.3} (tolerance: mean 1)");
        f.check("10-bit HEIC", mean <= 1.0, || format!("mean {mean}"));
    }
    // The JPEG (quality 95, 4:4:4) is lossy: within 3 levels on average. A picture turned the
    // wrong way would differ by about 100 (or not even have the scene's size).
    let jpeg = rgb(&dir.join("phone.jpg"));
    f.check("JPEG size", jpeg.dimensions() == (96, 64), || {
        format!("{:?}", jpeg.dimensions())
    });
    if jpeg.dimensions() == (96, 64) {
        let (_, mean) = diff(&jpeg, &upright);
        println!("JPEG vs the scene: mean {mean:.3} (tolerance 3)");
        f.check("JPEG upright", mean <= 3.0, || format!("mean {mean}"));
        let (_, mean) = diff(&jpeg, &heic);
        println!("JPEG vs HEIC: mean {mean:.3} (tolerance 3)");
        f.check("JPEG like HEIC", mean <= 3.0, || format!("mean {mean}"));
    }
    // Uncompressed TIFF: exact.
    let tiff = rgb(&dir.join("phone.tiff"));
    f.check("TIFF", tiff == upright, || {
        format!("{:?} differs from the upright scene", tiff.dimensions())
    });
    f.assert_none();
}

fn moslora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(args)
        .output()
        .unwrap()
}

/// A RUN.yaml training one LoRA step at 64 pixels on the tiny model, on the photos in `photos`.
fn write_run(dir: &Path, photos: &Path) -> PathBuf {
    let run = dir.join("run.yaml");
    std::fs::write(
        &run,
        format!(
            "model: {}\noutput: {}\nsubject:\n  images: {}\ntrain:\n  steps: 1\n  resolution: 64\n  \
             batch_size: 1\n  crops_per_image: 1\n  random_flip: false\n",
            tiny_model().display(),
            dir.join("out").display(),
            photos.display()
        ),
    )
    .unwrap();
    run
}

/// A GIF, as a user's folder holds one (PIL writes it).
fn write_gif(path: &Path) {
    let code = format!(
        "from PIL import Image\nImage.new('RGB', (32, 32), 'red').save({:?})\n",
        path.to_str().unwrap()
    );
    let out = Command::new(common::python())
        .args(["-c", &code])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// UTF-16 text with a byte-order mark, little-endian, as Windows' Notepad saves "Unicode".
fn utf16_le_with_bom(text: &str) -> Vec<u8> {
    let mut b = vec![0xFF, 0xFE];
    b.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    b
}

/// The folder: 2 JPEGs, 4 HEIC (named as an iPhone names them), a TIFF, a GIF, an empty
/// JPEG, a corrupt PNG, a 4 x 4 PNG, a sub-folder, a caption in UTF-16 with a byte-order mark.
/// `moslora train` trains on the 7 photos and names each of the 5 others with its reason.
#[test]
fn train_reads_heic_and_tiff_and_names_every_file_it_does_not_use() {
    let made = phone_photos("mixed");
    let dir = made.parent().unwrap().to_path_buf();
    let photos = dir.join("photos");
    std::fs::create_dir_all(photos.join("edits")).unwrap();
    for j in ["01_sky.jpg", "02_sand.jpg"] {
        std::fs::copy(repo().join("assets/subject").join(j), photos.join(j)).unwrap();
    }
    for i in 1..=4 {
        std::fs::copy(
            made.join("phone.heic"),
            photos.join(format!("IMG_000{i}.HEIC")),
        )
        .unwrap();
    }
    std::fs::copy(made.join("phone.tiff"), photos.join("scan.tiff")).unwrap();
    write_gif(&photos.join("IMG_0005.gif"));
    std::fs::write(photos.join("empty.jpg"), b"").unwrap();
    std::fs::write(
        photos.join("broken.png"),
        b"\x89PNG\r\n\x1a\nthis is no PNG",
    )
    .unwrap();
    image::save_buffer(
        photos.join("tiny.png"),
        &[200; 4 * 4 * 3],
        4,
        4,
        image::ColorType::Rgb8,
    )
    .unwrap();
    std::fs::write(
        photos.join("01_sky.txt"),
        utf16_le_with_bom("a photo of [V] {class} under a blue sky"),
    )
    .unwrap();
    let run = write_run(&dir, &photos);
    let o = moslora(&["train", run.to_str().unwrap(), "--adapter", "lora"]);
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{err}");
    let mut f = Failures::new();
    f.check("exit", o.status.success(), || format!("{:?}", o.status));
    f.contains_all(
        "listing",
        &err,
        &[
            "7 photos in",
            "5 file(s) in",
            "IMG_0005.gif: GIF is not a photo format moslora reads (use JPEG, PNG, WebP, HEIC or TIFF)",
            "empty.jpg: empty file",
            "broken.png: not a readable image (expected JPEG, PNG, WebP, HEIC or TIFF: ",
            "tiny.png: 4 x 4 pixels is too small to train at train.resolution 64: the short side \
             must be at least 16 pixels",
            "edits/: a folder",
            // The UTF-16 caption was read.
            "1 of 7 photos has its own caption",
        ],
    );
    f.check(
        "captions are not skipped photos",
        !err.contains("01_sky.txt"),
        || "the caption file was listed".into(),
    );
    f.assert_none();
}

/// Two usable photos among unusable files: refused with exit 2 before any model is loaded,
/// naming every file and why it is not used. A caption saved as UTF-16 without a byte-order
/// mark is refused naming UTF-16.
#[test]
fn fewer_than_three_usable_photos_and_utf16_captions_are_refused_by_name() {
    let dir = scratch("few");
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for j in ["01_sky.jpg", "02_sand.jpg"] {
        std::fs::copy(repo().join("assets/subject").join(j), photos.join(j)).unwrap();
    }
    write_gif(&photos.join("IMG_0003.gif"));
    std::fs::write(photos.join("empty.jpg"), b"").unwrap();
    // A HEIC cut short, as an interrupted copy leaves it.
    std::fs::write(
        photos.join("IMG_0004.heic"),
        b"\0\0\0\x18ftypheic\0\0\0\0mif1heic",
    )
    .unwrap();
    let run = write_run(&dir, &photos);
    let o = moslora(&["train", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{err}");
    let mut f = Failures::new();
    f.check("exit 2", o.status.code() == Some(2), || {
        format!("{:?}", o.status)
    });
    f.contains_all(
        "refusal",
        &err,
        &[
            "subject.images",
            "holds 2 usable photo(s) (01_sky.jpg, 02_sand.jpg); at least 3 are needed",
            "3 other file(s) are not used, as listed above (IMG_0003.gif, IMG_0004.heic, \
             empty.jpg)",
            "\n  IMG_0003.gif: GIF is not a photo format moslora reads",
            "\n  empty.jpg: empty file\n",
            "\n  IMG_0004.heic: not a readable image (expected JPEG, PNG, WebP, HEIC or TIFF: ",
        ],
    );
    f.check(
        "one error line",
        err.lines().filter(|l| l.starts_with("error")).count() == 1,
        || "not one error line".into(),
    );

    // Three photos, one captioned in UTF-16 without a byte-order mark.
    std::fs::copy(
        repo().join("assets/subject/05_grass.jpg"),
        photos.join("05_grass.jpg"),
    )
    .unwrap();
    let caption: Vec<u8> = "a photo of [V] {class}"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    std::fs::write(photos.join("05_grass.txt"), caption).unwrap();
    let o = moslora(&["train", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{err}");
    f.check("UTF-16 refused", !o.status.success(), || "trained".into());
    f.contains_all(
        "UTF-16",
        &err,
        &[
            "05_grass.txt",
            "UTF-16 (little-endian) text without a byte-order mark",
            "UTF-8",
        ],
    );
    f.assert_none();
}
