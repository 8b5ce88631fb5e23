//! Hostile and odd input files, each crafted for real: photos whose header claims 60,000 x
//! 60,000 pixels, a 1 x 1 photo, 16-bit and CMYK photos, animated WebP and GIF, a symlink loop
//! in the photo folder; safetensors files with a huge claimed header, overlapping offsets,
//! a dtype or shape that does not match the bytes, duplicate names; weights holding NaN;
//! prompts longer than CLIP keeps, prompt files that are not UTF-8, and empty prompt lists.
//! Each is refused with one line that names the file and what was expected, or read as
//! documented; none panics or allocates by a claimed size.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{copy_dir, fixtures, python, scratch, tiny_model, Failures};
use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder, RgbImage};
use moslora::sdxl::model_dir::ModelDir;
use moslora::sdxl::pipeline::{load_unet, RunOptions, TextEncoders};
use moslora::sdxl::weights::{save_safetensors, MappedFile};
use moslora::train::dataset;
use tch::{Kind, Tensor};

fn error_text<T>(r: moslora::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// The process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

fn small_picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 37) as u8, (y * 53) as u8, 128])
    })
}

fn png_of(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// A real PNG whose IHDR (with a correct CRC) claims `w` x `h` pixels.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    patch_ihdr(png_of(&small_picture(4, 4)), w, h)
}

/// A real 16-bit RGBA PNG (8 bytes a pixel) whose IHDR claims `w` x `h` pixels.
fn png16_claiming(w: u32, h: u32) -> Vec<u8> {
    let img = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::from_pixel(
        4,
        4,
        image::Rgba([1, 2, 3, 4]),
    );
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba16(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    patch_ihdr(out.into_inner(), w, h)
}

fn patch_ihdr(mut png: Vec<u8>, w: u32, h: u32) -> Vec<u8> {
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A real baseline JPEG whose SOF0 claims `w` x `h` pixels.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut jpg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpg, 90)
        .encode_image(&small_picture(16, 16))
        .unwrap();
    let sof = jpg
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("a baseline JPEG has SOF0");
    jpg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpg
}

/// Run the project's Python on `code` (PIL makes the formats we do not write ourselves).
fn py(code: &str) {
    let out = Command::new(python()).args(["-c", code]).output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn photos_claiming_60000_pixels_are_refused_before_decoding() {
    let dir = scratch("bombs");
    let mut f = Failures::new();
    let before = peak_rss_mib();
    for (name, bytes) in [
        ("bomb.png", png_claiming(60_000, 60_000)),
        ("bomb.jpg", jpeg_claiming(60_000, 60_000)),
        // The format in the name lies: the content decides.
        ("bomb-named.webp", png_claiming(60_000, 60_000)),
        // Within the side limit, over the decoded-size limit (16,000^2 x 8 bytes = 1.9 GiB).
        ("deep.png", png16_claiming(16_000, 16_000)),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let t = Instant::now();
        let e = error_text(dataset::load_photo(&path));
        println!("{name}: {e} ({:.1} ms)", t.elapsed().as_secs_f64() * 1e3);
        f.contains_all(
            name,
            &e,
            &[
                path.to_str().unwrap(),
                "over the limit of 16384 pixels a side and 1024 MiB",
            ],
        );
        f.check(name, e.lines().count() == 1, || format!("one line: {e}"));
    }
    // 60,000^2 RGB would be 10 GB: the peak must not have moved by anything like it.
    let grew = peak_rss_mib().saturating_sub(before);
    println!("peak resident memory grew by {grew} MiB");
    f.check("memory", grew < 64, || {
        format!("peak memory grew by {grew} MiB")
    });
    f.assert_none();
}

#[test]
fn odd_photos_convert_or_are_refused_by_name() {
    let dir = scratch("odd");
    let mut f = Failures::new();

    // 16-bit RGB: converted to 8 bits (the high byte), not refused.
    let deep = dir.join("deep16.png");
    {
        let img = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(20, 20, |x, _| {
            image::Rgb([0xAB00 + x as u16, 0x1200, 0xFFFF])
        });
        img.save(&deep).unwrap();
    }
    match dataset::load_photo(&deep) {
        Ok(p) => {
            let px = p.image.get_pixel(0, 0).0;
            println!("16-bit PNG: read as RGB8 {px:?}");
            // 16 to 8 bits rounds v / 257, as PIL and the image crate both do.
            let want = [0xAB00u16, 0x1200, 0xFFFF].map(|v| (v as f64 / 257.0).round() as u8);
            f.check("16-bit", px == want, || {
                format!("pixel {px:?}, expected {want:?}")
            });
        }
        Err(e) => f.check("16-bit", false, || e.to_string()),
    }

    // CMYK JPEG (made by PIL, as Photoshop exports them): converted to RGB.
    let cmyk = fixtures().join("photos/cmyk.jpg");
    match dataset::load_photo(&cmyk) {
        Ok(p) => println!("CMYK JPEG: read as {:?} RGB8", p.image.dimensions()),
        Err(e) => f.check("CMYK", false, || e.to_string()),
    }

    // 1 x 1: reads, but is refused for training, naming the minimum for the resolution.
    let tiny = dir.join("one.png");
    std::fs::write(&tiny, png_of(&small_picture(1, 1))).unwrap();
    let photo = dataset::load_photo(&tiny).unwrap();
    let e = error_text(dataset::check_photo_size(&photo, 1024));
    println!("1 x 1: {e}");
    f.contains_all(
        "1x1",
        &e,
        &[
            "one.png",
            "1 x 1 pixels",
            "train.resolution 1024",
            "at least 256 pixels",
        ],
    );
    // The smallest accepted photo for 1024 is 256 on its short side.
    let ok = dataset::Photo {
        path: tiny.clone(),
        image: small_picture(256, 300),
    };
    f.check(
        "256 px",
        dataset::check_photo_size(&ok, 1024).is_ok(),
        || "256 x 300 refused at 1024".into(),
    );

    // Animated WebP and GIF (two frames each), written by PIL; the GIF also under a .png name.
    let anim = dir.join("anim.webp");
    let gif = dir.join("anim.gif");
    let gif_named_png = dir.join("gif-in-disguise.png");
    py(&format!(
        "from PIL import Image\n\
         fr = [Image.new('RGB', (32, 32), c) for c in ('red', 'blue')]\n\
         fr[0].save({:?}, save_all=True, append_images=fr[1:], duration=100, loop=0)\n\
         fr[0].save({:?}, save_all=True, append_images=fr[1:], duration=100, loop=0)\n\
         fr[0].save({:?}, format='GIF', save_all=True, append_images=fr[1:])\n",
        anim.to_str().unwrap(),
        gif.to_str().unwrap(),
        gif_named_png.to_str().unwrap()
    ));
    let e = error_text(dataset::load_photo(&anim));
    println!("animated WebP: {e}");
    f.contains_all("animated WebP", &e, &["anim.webp", "animated WebP"]);
    let e = error_text(dataset::load_photo(&gif_named_png));
    println!("GIF named .png: {e}");
    f.contains_all(
        "GIF",
        &e,
        &[
            "gif-in-disguise.png",
            "expected JPEG, PNG, WebP, HEIC or TIFF",
        ],
    );
    f.assert_none();
}

#[test]
fn a_symlink_loop_in_the_photo_folder_is_named_not_followed() {
    let dir = scratch("loop");
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::write(photos.join("good.png"), png_of(&small_picture(64, 64))).unwrap();
    // A link to the folder itself: the folder is read one level deep, so it is passed over.
    std::os::unix::fs::symlink(".", photos.join("again")).unwrap();
    let t = Instant::now();
    let got = dataset::load_photos(&photos).unwrap();
    assert_eq!(got.len(), 1, "the folder link is not a photo");
    // Two photo-named links pointing at each other.
    std::os::unix::fs::symlink("b.jpg", photos.join("a.jpg")).unwrap();
    std::os::unix::fs::symlink("a.jpg", photos.join("b.jpg")).unwrap();
    let e = error_text(dataset::load_photos(&photos));
    println!(
        "symlink loop: {e} ({:.1} ms)",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(
        (e.contains("a.jpg") || e.contains("b.jpg")) && e.contains("symbolic link that loops"),
        "{e}"
    );
}

/// `moslora train` on a folder holding a hostile photo beside good ones: it is named on one
/// line with its reason and not used. Beside one good photo, that leaves too few: refused with
/// exit 2, the error naming both files. Beside three, the run goes on; its instance prompt is
/// longer than CLIP keeps, and the warning names the words cut off.
#[test]
fn train_names_hostile_photos_one_line_each() {
    let mut f = Failures::new();
    let words: Vec<String> = (0..80).map(|i| format!("w{i}")).collect();
    let long = format!(
        "  prompt: \"a photo of [V] {{class}} {}\"\n",
        words.join(" ")
    );
    for (case, name, bytes, good, extra, expect) in [
        (
            "bomb",
            "bomb.png",
            png_claiming(60_000, 60_000),
            1,
            String::new(),
            &[
                "usable photo(s) (good0.png)",
                "bomb.png: its header claims 60000 x 60000",
                "16384 pixels a side",
                "at least 3 are needed",
            ][..],
        ),
        (
            "1x1 and a long prompt",
            "dot.png",
            png_of(&small_picture(1, 1)),
            3,
            long,
            &[
                "dot.png: 1 x 1 pixels",
                "at least 16 pixels",
                "truncated because CLIP can only handle sequences up to 77 tokens",
                "w 7 9\"",
            ][..],
        ),
    ] {
        let dir = scratch(&format!("train-{}", case.replace(' ', "-")));
        let photos = dir.join("photos");
        std::fs::create_dir_all(&photos).unwrap();
        for i in 0..good {
            std::fs::write(
                photos.join(format!("good{i}.png")),
                png_of(&small_picture(64, 64)),
            )
            .unwrap();
        }
        std::fs::write(photos.join(name), &bytes).unwrap();
        let run = dir.join("run.yaml");
        std::fs::write(
            &run,
            format!(
                "model: {}\noutput: {}\nsubject:\n  images: {}\n{extra}train:\n  steps: 2\n  resolution: 64\n  batch_size: 1\n",
                tiny_model().display(),
                dir.join("out").display(),
                photos.display()
            ),
        )
        .unwrap();
        let t = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_moslora"))
            .args(["train", run.to_str().unwrap(), "--adapter", "lora"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        println!("{case}: {err} ({:.1} s)", t.elapsed().as_secs_f64());
        let want = if good < 3 { Some(2) } else { Some(0) };
        f.check(case, o.status.code() == want, || {
            format!("exit {:?}, expected {want:?}", o.status)
        });
        f.contains_all(case, &err, expect);
        // The hostile photo's reason is on the line that names it.
        f.check(
            case,
            err.lines().any(|l| l.contains(name) && l.contains("pixel")),
            || format!("no one line names {name} with its reason: {err}"),
        );
    }
    f.assert_none();
}

/// One crafted safetensors file: the 8-byte length, the header, then `data` bytes.
fn safetensors_bytes(header: &str, data: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(b.len() + data, 0);
    b
}

#[test]
fn hostile_safetensors_headers_are_refused_naming_the_tensor() {
    let dir = scratch("safetensors");
    let mut f = Failures::new();
    let with_len = |claimed: u64, rest: &[u8]| {
        let mut b = claimed.to_le_bytes().to_vec();
        b.extend_from_slice(rest);
        b
    };
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "a header claiming 2^62 bytes",
            with_len(1 << 62, b"{}"),
            vec!["claims 4611686018427387904 bytes", "holds 2 bytes"],
        ),
        (
            "a header claiming more than the file",
            with_len(5000, b"{\"a\":{}}"),
            vec!["claims 5000 bytes"],
        ),
        ("four bytes", vec![1, 2, 3, 4], vec!["4 bytes, too short"]),
        (
            "overlapping offsets",
            safetensors_bytes(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
                24,
            ),
            vec!["tensor `b` (bytes 8..24) overlaps tensor `a`, which ends at byte 16"],
        ),
        (
            "a shape that does not match the bytes",
            safetensors_bytes(
                r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#,
                12,
            ),
            vec![
                "tensor `w` is F32 [2, 2], which takes 16 bytes",
                "[0, 12] span 12 bytes",
            ],
        ),
        (
            "a dtype that does not match the bytes",
            safetensors_bytes(
                r#"{"w":{"dtype":"F64","shape":[4],"data_offsets":[0,16]}}"#,
                16,
            ),
            vec!["tensor `w` is F64 [4], which takes 32 bytes"],
        ),
        (
            "a shape whose size overflows",
            safetensors_bytes(
                r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#,
                16,
            ),
            vec!["tensor `w`", "takes 316912650057057350374175801344 bytes"],
        ),
        (
            "a shape whose size overflows even 128 bits",
            safetensors_bytes(
                r#"{"w":{"dtype":"F32","shape":[9223372036854775808,9223372036854775808,9223372036854775808],"data_offsets":[0,16]}}"#,
                16,
            ),
            vec!["tensor `w`", "more bytes than can be counted"],
        ),
        (
            "an unknown dtype",
            safetensors_bytes(
                r#"{"w":{"dtype":"Q9","shape":[4],"data_offsets":[0,4]}}"#,
                4,
            ),
            vec!["tensor `w`: expected", "Q9"],
        ),
        (
            "offsets running backwards",
            safetensors_bytes(
                r#"{"w":{"dtype":"U8","shape":[0],"data_offsets":[16,0]}}"#,
                16,
            ),
            vec!["tensor `w`", "a negative length"],
        ),
        (
            // Identical entries: the crate's map keeps one and accepts the file.
            "duplicate names",
            safetensors_bytes(
                r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                16,
            ),
            vec!["the name `w` appears twice"],
        ),
        (
            "data the tensors do not cover",
            safetensors_bytes(
                r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                1 << 20,
            ),
            vec!["cover 16 bytes of data", "holds 1048576"],
        ),
        (
            "a header that is not JSON",
            safetensors_bytes("{\"w\": [1, 2", 0),
            vec!["not a JSON object of tensors"],
        ),
    ];
    let before = peak_rss_mib();
    for (case, bytes, expect) in &cases {
        let path = dir.join(format!("{}.safetensors", case.replace(' ', "_")));
        std::fs::write(&path, bytes).unwrap();
        let crate_alone = safetensors::SafeTensors::deserialize(bytes).map(|_| ());
        let e = error_text(MappedFile::open(&path));
        println!("{case}: {e}\n    (safetensors crate alone: {crate_alone:?})");
        f.contains_all(case, &e, expect);
        f.contains_all(case, &e, &[path.to_str().unwrap()]);
        f.check(case, e.lines().count() == 1, || format!("one line: {e}"));
    }
    let grew = peak_rss_mib().saturating_sub(before);
    f.check("memory", grew < 64, || {
        format!("peak memory grew by {grew} MiB")
    });
    // A well-formed file with the same layout still opens (the checks are not over-strict).
    let good = dir.join("good.safetensors");
    std::fs::write(
        &good,
        safetensors_bytes(
            r#"{"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[16,24]}}  "#,
            24,
        ),
    )
    .unwrap();
    f.check("good file", MappedFile::open(&good).is_ok(), || {
        format!("{:?}", MappedFile::open(&good).err())
    });
    f.assert_none();
}

/// A scratch copy of the tiny model with `component` copied (the rest linked).
fn model_with_copied(name: &str, component: &str) -> PathBuf {
    let dir = scratch(name);
    for entry in std::fs::read_dir(tiny_model()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == component {
            copy_dir(&entry.path(), &dir.join(component));
        } else {
            std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// Put `value` into one element of `tensor` in `file`.
fn poison(file: &Path, tensor: &str, value: f64) {
    let mut tensors = Tensor::read_safetensors(file).unwrap();
    let t = &mut tensors.iter_mut().find(|(n, _)| n == tensor).unwrap().1;
    let flat = t.view([-1]);
    let _ = flat.get(0).fill_(value);
    save_safetensors(&tensors, None, file).unwrap();
}

#[test]
fn weights_holding_nan_or_inf_are_named_when_loaded() {
    let mut f = Failures::new();
    let opts = RunOptions::default();

    // The clean model, timed, for the cost of the check.
    let t = Instant::now();
    load_unet(&ModelDir::open(&tiny_model()).unwrap(), opts).unwrap();
    println!("tiny UNet load: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);

    let dir = model_with_copied("nan-unet", "unet");
    let tensor = "down_blocks.0.resnets.0.conv1.weight";
    poison(
        &dir.join("unet/diffusion_pytorch_model.safetensors"),
        tensor,
        f64::NAN,
    );
    let e = error_text(load_unet(&ModelDir::open(&dir).unwrap(), opts));
    println!("NaN in the UNet: {e}");
    f.contains_all(
        "NaN UNet",
        &e,
        &[
            "unet",
            tensor,
            "diffusion_pytorch_model.safetensors",
            "1 NaN or infinite value(s)",
        ],
    );

    let dir = model_with_copied("inf-text", "text_encoder_2");
    let file = dir.join("text_encoder_2/model.safetensors");
    let name = Tensor::read_safetensors(&file)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| n.contains("layers.0.self_attn.q_proj.weight"))
        .unwrap();
    poison(&file, &name, f64::INFINITY);
    let e = error_text(TextEncoders::load(&ModelDir::open(&dir).unwrap(), opts));
    println!("inf in text_encoder_2: {e}");
    f.contains_all(
        "inf text encoder",
        &e,
        &["text_encoder_2", &name, "NaN or infinite"],
    );

    // What the check costs over 64 M f32 weights, scaled to SDXL's 3.5 G frozen parameters
    // (UNet 2.57 G, text encoders 0.82 G, VAE 0.08 G); beside it, copying them once.
    let big = Tensor::randn([64 << 20], (Kind::Float, tch::Device::Cpu));
    let per_sdxl = |secs: f64| secs * 3.5e9 / (64u64 << 20) as f64;
    let t = Instant::now();
    moslora::sdxl::weights::check_finite(&big, "big", Path::new("memory")).unwrap();
    let check = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let _copy = big.copy();
    let copy = t.elapsed().as_secs_f64();
    println!(
        "finite check over 64 M f32 values: {:.1} ms (SDXL: about {:.1} s); one copy of them: \
         {:.1} ms (SDXL: about {:.1} s)",
        check * 1e3,
        per_sdxl(check),
        copy * 1e3,
        per_sdxl(copy)
    );
    f.assert_none();
}

#[test]
fn long_prompts_warn_naming_the_cut_words_as_diffusers_does() {
    let text = TextEncoders::load(
        &ModelDir::open(&tiny_model()).unwrap(),
        RunOptions::default(),
    )
    .unwrap();
    let short = "a photo of sks dog";
    assert!(text.truncation_warning(short).unwrap().is_none());
    let words: Vec<String> = (0..90).map(|i| format!("word{i}")).collect();
    let long = format!("a photo of sks dog {}", words.join(" "));
    let warning = text.truncation_warning(&long).unwrap().expect("a warning");
    println!("{warning}");

    // The words transformers' CLIPTokenizer cuts off, as diffusers computes them for its warning.
    let tok_dir = tiny_model().join("tokenizer");
    let out = Command::new(python())
        .args([
            "-c",
            "import sys; from transformers import CLIPTokenizer\n\
             t = CLIPTokenizer.from_pretrained(sys.argv[1])\n\
             ids = t(sys.argv[2], padding='longest', return_tensors='pt').input_ids\n\
             print(t.batch_decode(ids[:, t.model_max_length - 1 : -1])[0])",
            tok_dir.to_str().unwrap(),
            &long,
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cut = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!("diffusers would name: {cut:?}");
    assert!(!cut.is_empty());
    assert!(
        warning.contains(&format!("{cut:?}")),
        "the warning names what diffusers names ({cut:?}): {warning}"
    );
    assert!(
        warning.contains("CLIP can only handle sequences up to 77 tokens"),
        "{warning}"
    );
}

/// `moslora generate` gives the same warning for its one prompt, above its progress bar.
#[test]
fn generate_warns_about_a_long_prompt() {
    let dir = scratch("generate-long");
    let out = dir.join("long.png");
    let words: Vec<String> = (0..80).map(|i| format!("w{i}")).collect();
    let long = format!("a photo of sks dog {}", words.join(" "));
    let run = Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(["generate", "--model"])
        .arg(tiny_model())
        .args(["--prompt", &long, "--steps", "2", "--width", "32"])
        .args(["--height", "32", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    println!("{err}");
    assert!(run.status.success(), "{err}");
    assert!(out.exists());
    assert!(
        err.contains("truncated because CLIP can only handle sequences up to 77 tokens")
            && err.contains("w 7 9\""),
        "no warning naming the cut words:\n{err}"
    );
}

#[test]
fn prompt_files_not_utf8_or_empty_are_refused_by_name() {
    use moslora::render::prompts;
    let dir = scratch("prompts");
    let mut f = Failures::new();
    let cases: [(&str, &[u8], &[&str]); 5] = [
        (
            "latin1.yaml",
            b"prompts:\n  - a [V] caf\xe9\n",
            &["latin1.yaml", "not UTF-8", "byte 0xE9 at line 2"],
        ),
        (
            "utf16.yaml",
            b"\xff\xfep\x00r\x00o\x00",
            &["utf16.yaml", "not UTF-8", "byte 0xFF at line 1"],
        ),
        (
            "empty-list.yaml",
            b"prompts: []\n",
            &["empty-list.yaml", "has no prompts"],
        ),
        (
            "blank-prompts.yaml",
            b"prompts:\n  - '   '\n  - ''\n",
            &["blank-prompts.yaml", "has no prompts"],
        ),
        (
            "empty-file.yaml",
            b"",
            &["empty-file.yaml", "not a prompt set"],
        ),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let e = error_text(prompts::load(path.to_str().unwrap(), None));
        println!("{name}: {e}");
        f.contains_all(name, &e, expect);
    }
    f.assert_none();
}
