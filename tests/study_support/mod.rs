//! Test support for the study tests: render folders as `moslora render` writes them (manifest,
//! PNGs with text metadata, photos), made in milliseconds without a model, and helpers to
//! run the command line and read PNG chunks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use image::{Rgb, RgbImage};
use moslora::adapter::file::ModelIdentity;
use moslora::fsutil::write_png;
use moslora::render::manifest::{
    AdapterEntry, GridEntry, ImageEntry, Manifest, PromptEntry, Settings, Subject,
};

use super::common;

/// A scratch folder for one test, removed when the test passes and kept when it fails (or
/// when MOSLORA_KEEP_SCRATCH is set), to look at what went wrong.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("MOSLORA_KEEP_SCRATCH").is_some() {
            eprintln!("scratch folder kept: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh scratch folder (common::scratch) that cleans up after a passing test.
pub fn scratch(name: &str) -> Scratch {
    Scratch(common::scratch(name))
}

/// What to put in a fake render folder.
pub struct RenderSpec<'a> {
    pub subject: &'a str,
    pub class: &'a str,
    /// Prompt templates with `[V]` and `{class}`.
    pub prompts: Vec<String>,
    pub seeds: Vec<u64>,
    pub size: u32,
    /// Add a `lora` image that has no `moslora` partner.
    pub unpaired: bool,
}

impl<'a> RenderSpec<'a> {
    pub fn new(subject: &'a str, class: &'a str, prompts: usize, seeds: u64, size: u32) -> Self {
        let places = [
            "in the jungle",
            "on a beach",
            "in the snow",
            "on a red rug",
            "at night",
        ];
        RenderSpec {
            subject,
            class,
            prompts: (0..prompts)
                .map(|i| format!("a [V] {{class}} {} {}", places[i % places.len()], i))
                .collect(),
            seeds: (0..seeds).collect(),
            size,
            unpaired: false,
        }
    }
}

pub const ADAPTERS: [(&str, &str); 3] =
    [("base", "Base"), ("lora", "LoRA"), ("moslora", "MoSLoRA")];

/// Deterministic pixels per image. The `moslora` ones are noisy (they compress worse), so the
/// PNG sizes of the two methods differ systematically, as real renders may.
pub fn picture(size: u32, tag: u64, adapter: &str) -> RgbImage {
    let mut state = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let base = next();
    RgbImage::from_fn(size, size, |x, y| {
        let g = ((x * 255) / size.max(1)) as u8;
        let h = ((y * 255) / size.max(1)) as u8;
        match adapter {
            "moslora" => {
                let n = next();
                Rgb([n as u8, (n >> 8) as u8 ^ g, (n >> 16) as u8 ^ h])
            }
            "lora" => Rgb([g, h, base as u8]),
            _ => Rgb([h, (base >> 8) as u8, g]),
        }
    })
}

/// A JPEG with an EXIF block and a comment, as cameras and editors leave them.
pub fn photo_with_metadata(size: u32, tag: u64) -> Vec<u8> {
    let img = picture(size, tag, "base");
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&img)
        .unwrap();
    // Minimal valid EXIF (little-endian TIFF header, an empty IFD), then a comment.
    let mut exif = b"Exif\0\0II*\0\x08\0\0\0\0\0\0\0\0\0".to_vec();
    exif.extend_from_slice(b"owner secret-camera-serial");
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    seg.extend_from_slice(&exif);
    let com = b"made by the lora run of robot-run";
    seg.extend_from_slice(&[0xFF, 0xFE]);
    seg.extend_from_slice(&((com.len() + 2) as u16).to_be_bytes());
    seg.extend_from_slice(com);
    jpeg.splice(2..2, seg);
    jpeg
}

fn sha_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write a render folder like `moslora render` does and return it.
pub fn write_render(dir: &Path, spec: &RenderSpec) -> PathBuf {
    std::fs::create_dir_all(dir.join("photos")).unwrap();
    let photos: Vec<String> = (0..2)
        .map(|i| {
            let rel = format!("photos/0{}_{}.jpg", i + 1, spec.subject);
            std::fs::write(dir.join(&rel), photo_with_metadata(40, 1000 + i)).unwrap();
            rel
        })
        .collect();
    let identifier = "sks";
    let prompts: Vec<PromptEntry> = spec
        .prompts
        .iter()
        .enumerate()
        .map(|(i, t)| PromptEntry {
            id: format!("p{i:02}"),
            template: t.clone(),
            text: t.replace("[V]", identifier).replace("{class}", spec.class),
        })
        .collect();
    let mut images = Vec::new();
    let mut tag = spec.subject.bytes().map(u64::from).sum::<u64>() * 1_000_003;
    for p in &prompts {
        for &seed in &spec.seeds {
            let noise = sha_hex(&format!("{}-{}-{seed}", spec.subject, p.id));
            for (name, label) in ADAPTERS {
                tag += 1;
                let file = format!("images/{}_s{seed}_{name}.png", p.id);
                let img = picture(spec.size, tag, name);
                let text = [
                    ("prompt", p.text.clone()),
                    ("seed", seed.to_string()),
                    ("adapter", name.to_string()),
                    ("label", label.to_string()),
                    ("software", "moslora render".to_string()),
                ];
                write_png(&dir.join(&file), &img, &text).unwrap();
                images.push(ImageEntry {
                    file,
                    prompt_id: p.id.clone(),
                    prompt: p.text.clone(),
                    seed,
                    adapter: name.into(),
                    noise_sha256: noise.clone(),
                    width: spec.size as i64,
                    height: spec.size as i64,
                    key: sha_hex(&format!("{tag}")),
                    scores: None,
                });
            }
        }
    }
    if spec.unpaired {
        let file = "images/p99_s0_lora.png".to_string();
        write_png(&dir.join(&file), &picture(spec.size, 7, "lora"), &[]).unwrap();
        images.push(ImageEntry {
            file,
            prompt_id: "p99".into(),
            prompt: "a sks toy alone".into(),
            seed: 0,
            adapter: "lora".into(),
            noise_sha256: sha_hex("alone"),
            width: spec.size as i64,
            height: spec.size as i64,
            key: sha_hex("alone-key"),
            scores: None,
        });
    }
    let adapters = ADAPTERS
        .iter()
        .map(|(name, label)| AdapterEntry {
            name: name.to_string(),
            label: label.to_string(),
            file: (*name != "base")
                .then(|| format!("/abs/runs/{}-run/{name}/adapter.safetensors", spec.subject)),
            sha256: None,
            rank: None,
            mixer: None,
            steps: None,
            parameters: None,
        })
        .collect();
    let m = Manifest {
        format_version: 1,
        subject: Subject {
            name: spec.subject.into(),
            identifier: identifier.into(),
            class: spec.class.into(),
            photos,
        },
        model: ModelIdentity {
            name: "tiny-sdxl".into(),
            architecture: sha_hex("arch"),
            weights: sha_hex("weights"),
        },
        settings: Settings {
            steps: 50,
            guidance: 5.0,
            scheduler: "euler".into(),
            width: spec.size as i64,
            height: spec.size as i64,
            negative_prompt: None,
            dtype: "f32".into(),
        },
        adapters,
        prompts: prompts.clone(),
        images,
        grids: prompts
            .iter()
            .zip(moslora::render::grid_files(&prompts))
            .map(|(p, file)| GridEntry {
                prompt_id: p.id.clone(),
                file,
            })
            .collect(),
        contact_sheet: "contact_sheet.png".into(),
        gallery: "index.html".into(),
        loss_curve: None,
        validation: Vec::new(),
        metrics: None,
    };
    m.write(dir).unwrap();
    dir.to_path_buf()
}

/// Run the `moslora` binary.
pub fn moslora(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_moslora"))
        .args(args)
        .output()
        .expect("running moslora")
}

/// Run and require success; returns (stdout, stderr).
pub fn moslora_ok(args: &[&str]) -> (String, String) {
    let out = moslora(args);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "moslora {args:?} failed\nstdout:\n{so}\nstderr:\n{se}"
    );
    (so, se)
}

/// `moslora study make` over the given render folders.
pub fn make_study(renders: &[&Path], out: &Path, extra: &[&str]) -> (String, String) {
    let mut args: Vec<String> = vec!["study".into(), "make".into()];
    for r in renders {
        args.push("--renders".into());
        args.push(r.display().to_string());
    }
    for s in ["--a", "LoRA", "--b", "MoSLoRA", "--out"] {
        args.push(s.into());
    }
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    moslora_ok(&refs)
}

/// The chunks of a PNG file: (type, data).
pub fn png_chunks(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let mut at = 8;
    let mut out = Vec::new();
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned();
        out.push((kind, bytes[at + 8..at + 8 + len].to_vec()));
        at += 12 + len;
    }
    assert_eq!(at, bytes.len(), "trailing bytes after the last chunk");
    out
}

/// Every file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The headless browser the page tests drive: Debian's chromium and chromedriver (or the
/// ones CHROMIUM and CHROMEDRIVER name).
pub fn require_browser() {
    for (tool, var) in [
        ("/usr/bin/chromium", "CHROMIUM"),
        ("/usr/bin/chromedriver", "CHROMEDRIVER"),
    ] {
        assert!(
            std::env::var_os(var).is_some() || Path::new(tool).exists(),
            "{tool} is missing: run `make browser` (installs Debian's chromium and chromium-driver, and selenium)"
        );
    }
}

/// An answer as the page and the votes files spell it.
pub fn choice(s: &str) -> moslora::study::Choice {
    use moslora::study::Choice;
    match s {
        "left" => Choice::Left,
        "tie" => Choice::Tie,
        "right" => Choice::Right,
        other => panic!("answer {other:?}"),
    }
}

/// A browser script's answers (`{trial: {similarity, prompt}}`): trial -> (similarity, prompt).
pub fn scripted_answers(
    answers: &serde_json::Value,
) -> std::collections::HashMap<String, (moslora::study::Choice, moslora::study::Choice)> {
    answers
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, a)| {
            (
                id.clone(),
                (
                    choice(a["similarity"].as_str().unwrap()),
                    choice(a["prompt"].as_str().unwrap()),
                ),
            )
        })
        .collect()
}
