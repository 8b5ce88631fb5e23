//! `study make`: pair two adapters' renders of the same prompt and seed, blind them, and write
//! the rater folder with its key kept outside.
//!
//! What the rater folder could give away, and what is done about it:
//! - file names: every image and photo gets a random hex name; the original names (which
//!   carry the adapter name) appear only in the key;
//! - image metadata: the pixels are decoded and re-encoded as fresh PNGs (RGB8, one encoder
//!   setting for all), so no text, time or colour-profile chunk of the render survives;
//!   reference photos are re-encoded as JPEG, dropping EXIF;
//! - file sizes: the two images of a pair are padded to the same byte length with a private
//!   ancillary chunk of zeros (`paDd`, which viewers skip), so the larger file of a pair does
//!   not point to one method;
//! - sides and order: left/right is random per pair but balanced within each subject, trial
//!   ids are given after a shuffle, and files are written in the order of their random names
//!   and then all stamped with the same modification time;
//! - page source: the page holds only the random names, the prompts (without the rare-token
//!   identifier) and the study id.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::Rng;

use super::page::{self, PageStudy, PageSubject, PageTrial};
use super::{
    fresh_seed, key_path_for, seeded_rng, Key, KeyAdapter, KeySubject, KeyTrial, Which,
    FORMAT_VERSION, KEY_FORMAT,
};
use crate::error::{Error, Result};
use crate::fsutil::{self, png_bytes};
use crate::render::manifest::{self, AdapterEntry, ImageEntry, Manifest};

/// A render folder's manifest, with a clear message when the folder is not one.
fn load_manifest(dir: &Path) -> Result<Manifest> {
    if !dir.join(manifest::FILE).is_file() {
        return Err(Error::setting(
            "--renders",
            format!(
                "--renders {}: no {} there (expected a folder written by `moslora render`)",
                dir.display(),
                manifest::FILE
            ),
        ));
    }
    Manifest::read(dir)
}

/// The adapter named `query` by name or label, case-insensitively. An unknown one is an
/// invocation to change: the message lists the folder's adapters and the closest one.
pub fn find_adapter<'m>(
    m: &'m Manifest,
    query: &str,
    dir: &Path,
    flag: &str,
) -> Result<&'m AdapterEntry> {
    let q = query.trim();
    m.adapters
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case(q) || a.label.eq_ignore_ascii_case(q))
        .ok_or_else(|| {
            let known: Vec<String> = m
                .adapters
                .iter()
                .map(|a| format!("{} ({})", a.name, a.label))
                .collect();
            // The closest adapter by name or label, suggested by its label (as the README
            // spells them: `--a LoRA --b MoSLoRA`).
            let similarity = |c: &str| {
                strsim::normalized_damerau_levenshtein(&q.to_lowercase(), &c.to_lowercase())
            };
            let closest = m
                .adapters
                .iter()
                .map(|a| (similarity(&a.name).max(similarity(&a.label)), a))
                .fold(
                    None,
                    |best: Option<(f64, &AdapterEntry)>, (score, a)| match best {
                        Some((b, _)) if b >= score => best,
                        _ => Some((score, a)),
                    },
                )
                .filter(|(score, _)| *score >= 0.5)
                .map(|(_, a)| format!("; did you mean `{}`?", a.label))
                .unwrap_or_default();
            Error::setting(
                flag,
                format!(
                    "{flag} {query}: no such adapter in {} (it has: {}){closest}",
                    dir.display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
}

/// What `study make` is asked to do.
#[derive(Debug, Clone)]
pub struct MakeOptions {
    pub renders: Vec<PathBuf>,
    /// Adapter A (the baseline), by name or label.
    pub a: String,
    /// Adapter B (the method under test), by name or label.
    pub b: String,
    /// Pairs shown a second time with sides swapped (default: 10 % of the pairs, at least 1).
    pub repeats: Option<usize>,
    /// Seed of every random choice (default: fresh randomness, recorded in the key).
    pub seed: Option<u64>,
    pub out: PathBuf,
    /// Replace an existing study folder and key.
    pub force: bool,
}

/// A written study.
#[derive(Debug)]
pub struct MadeStudy {
    pub dir: PathBuf,
    pub key_path: PathBuf,
    pub key: Key,
    /// Things the user should know (images without a partner, merged subjects).
    pub notes: Vec<String>,
}

/// One pair before blinding.
struct Pair {
    subject: usize,
    prompt_id: String,
    prompt: String,
    display_prompt: String,
    seed: u64,
    a_source: PathBuf,
    b_source: PathBuf,
}

/// One subject before blinding.
struct Subject {
    name: String,
    class: String,
    render_dir: PathBuf,
    photos: Vec<PathBuf>,
}

/// The prompt as raters read it: the rare-token identifier (`sks`) means nothing to them.
pub fn display_prompt(prompt: &str, identifier: &str) -> String {
    let id = identifier.trim();
    prompt
        .split_whitespace()
        .filter(|w| {
            id.is_empty()
                || !w
                    .trim_matches(|c: char| !c.is_alphanumeric())
                    .eq_ignore_ascii_case(id)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Gather subjects and pairs from the render folders.
fn collect(
    opts: &MakeOptions,
    notes: &mut Vec<String>,
) -> Result<(KeyAdapters, Vec<Subject>, Vec<Pair>)> {
    if opts.renders.is_empty() {
        return Err(Error::setting(
            "--renders",
            "study make: give at least one --renders folder",
        ));
    }
    let mut adapters: Option<KeyAdapters> = None;
    let mut subjects: Vec<Subject> = Vec::new();
    let mut pairs = Vec::new();
    for dir in &opts.renders {
        let m = load_manifest(dir)?;
        // The key names sources by absolute path, so it stays valid wherever tally runs.
        let dir = &std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
        let a = find_adapter(&m, &opts.a, dir, "--a")?;
        let b = find_adapter(&m, &opts.b, dir, "--b")?;
        if a.name == b.name {
            return Err(Error::setting(
                "--b",
                format!(
                    "--a {} and --b {} name the same adapter `{}`: compare two different ones",
                    opts.a, opts.b, a.name
                ),
            ));
        }
        let ka = KeyAdapter {
            name: a.name.clone(),
            label: a.label.clone(),
        };
        let kb = KeyAdapter {
            name: b.name.clone(),
            label: b.label.clone(),
        };
        match &adapters {
            None => adapters = Some((ka, kb)),
            Some((pa, pb)) if pa.name != ka.name || pb.name != kb.name => notes.push(format!(
                "{}: --a/--b match `{}`/`{}` here but `{}`/`{}` in the first folder; the key uses the first",
                dir.display(),
                ka.name,
                kb.name,
                pa.name,
                pb.name
            )),
            Some(_) => {}
        }
        let subject = match subjects.iter().position(|s| s.name == m.subject.name) {
            Some(i) => {
                notes.push(format!(
                    "{}: subject `{}` is also in {}: tallied as one subject, with the photos of the first",
                    dir.display(),
                    m.subject.name,
                    subjects[i].render_dir.display()
                ));
                i
            }
            None => {
                subjects.push(Subject {
                    name: m.subject.name.clone(),
                    class: m.subject.class.clone(),
                    render_dir: dir.clone(),
                    photos: m.subject.photos.iter().map(|p| dir.join(p)).collect(),
                });
                subjects.len() - 1
            }
        };
        let mut by_key: BTreeMap<(String, u64), [Option<&ImageEntry>; 2]> = BTreeMap::new();
        let mut order = Vec::new();
        for img in &m.images {
            let side = if img.adapter == a.name {
                0
            } else if img.adapter == b.name {
                1
            } else {
                continue;
            };
            let k = (img.prompt_id.clone(), img.seed);
            let slot = by_key.entry(k.clone()).or_insert_with(|| {
                order.push(k.clone());
                [None, None]
            });
            if slot[side].is_some() {
                return Err(Error::msg(format!(
                    "{}: two `{}` images for prompt {} seed {}",
                    dir.display(),
                    img.adapter,
                    img.prompt_id,
                    img.seed
                )));
            }
            slot[side] = Some(img);
        }
        let mut single = [0usize; 2];
        for k in &order {
            match by_key[k] {
                [Some(ia), Some(ib)] => {
                    if ia.noise_sha256 != ib.noise_sha256 {
                        return Err(Error::msg(format!(
                            "{}: prompt {} seed {}: the two images were rendered from different initial noise, so they are not a fair pair",
                            dir.display(),
                            ia.prompt_id,
                            ia.seed
                        )));
                    }
                    if (ia.width, ia.height) != (ib.width, ib.height) {
                        return Err(Error::msg(format!(
                            "{}: prompt {} seed {}: the images differ in size ({}x{} and {}x{})",
                            dir.display(),
                            ia.prompt_id,
                            ia.seed,
                            ia.width,
                            ia.height,
                            ib.width,
                            ib.height
                        )));
                    }
                    pairs.push(Pair {
                        subject,
                        prompt_id: ia.prompt_id.clone(),
                        prompt: ia.prompt.clone(),
                        display_prompt: display_prompt(&ia.prompt, &m.subject.identifier),
                        seed: ia.seed,
                        a_source: dir.join(&ia.file),
                        b_source: dir.join(&ib.file),
                    });
                }
                [Some(_), None] => single[0] += 1,
                [None, Some(_)] => single[1] += 1,
                [None, None] => unreachable!("a slot holds at least one image"),
            }
        }
        for (n, (have, lack)) in single.iter().zip([(a, b), (b, a)]) {
            if *n > 0 {
                notes.push(format!(
                    "{}: {n} `{}` {} no `{}` image of the same prompt and seed: left out",
                    dir.display(),
                    have.name,
                    crate::words::verb(*n, "image has", "images have"),
                    lack.name
                ));
            }
        }
    }
    if pairs.is_empty() {
        return Err(Error::msg(format!(
            "study make: no image pairs of `{}` and `{}` with the same prompt and seed in the render folders",
            opts.a, opts.b
        )));
    }
    let adapters = adapters.expect("at least one folder");
    Ok((adapters, subjects, pairs))
}

type KeyAdapters = (KeyAdapter, KeyAdapter);

/// Which adapter goes left, per pair: random, but exactly balanced within each subject (an
/// odd pair out is a coin flip), so a side preference of raters cancels out.
pub fn assign_sides(subject_of: &[usize], rng: &mut impl Rng) -> Vec<Which> {
    let mut sides = vec![Which::A; subject_of.len()];
    let subjects: std::collections::BTreeSet<usize> = subject_of.iter().copied().collect();
    for s in subjects {
        let idx: Vec<usize> = (0..subject_of.len())
            .filter(|&i| subject_of[i] == s)
            .collect();
        let n = idx.len();
        let mut pool: Vec<Which> = (0..n)
            .map(|i| if i < n / 2 { Which::A } else { Which::B })
            .collect();
        if n % 2 == 1 {
            pool[n - 1] = if rng.random_bool(0.5) {
                Which::A
            } else {
                Which::B
            };
        }
        pool.shuffle(rng);
        for (i, side) in idx.into_iter().zip(pool) {
            sides[i] = side;
        }
    }
    sides
}

/// `len` random lowercase hex digits.
fn hex(rng: &mut impl Rng, len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).expect("a hex digit"))
        .collect()
}

/// Random hex file names, none used twice.
struct Names {
    used: HashSet<String>,
}

impl Names {
    fn next(&mut self, rng: &mut impl Rng, folder: &str, ext: &str) -> String {
        loop {
            let name = format!("{folder}/{}.{ext}", hex(rng, 12));
            if self.used.insert(name.clone()) {
                return name;
            }
        }
    }
}

/// Build the study. See the module comment for what is done to blind it.
pub fn make(opts: &MakeOptions) -> Result<MadeStudy> {
    let mut notes = Vec::new();
    let out = std::path::absolute(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let key_path = key_path_for(&out)?;
    check_free(&out, &key_path, opts.force)?;
    let ((a, b), subjects, pairs) = collect(opts, &mut notes)?;

    let seed = opts.seed.unwrap_or_else(fresh_seed);
    let mut rng = seeded_rng(seed);
    let study_id = hex(&mut rng, 16);
    let repeats = opts.repeats.unwrap_or(pairs.len().div_ceil(10));
    if repeats > pairs.len() {
        return Err(Error::setting(
            "--repeats",
            format!(
                "--repeats {repeats}: there are only {} pairs to repeat",
                pairs.len()
            ),
        ));
    }

    let mut names = Names {
        used: HashSet::new(),
    };
    // Photos: one random name each, per subject.
    let mut photo_jobs = Vec::new();
    let mut key_subjects = Vec::new();
    for s in &subjects {
        let mut photos = Vec::new();
        for p in &s.photos {
            let name = names.next(&mut rng, "ref", "jpg");
            photo_jobs.push((p.clone(), name.clone()));
            photos.push(name);
        }
        key_subjects.push(KeySubject {
            name: s.name.clone(),
            class: s.class.clone(),
            render_dir: s.render_dir.clone(),
            photos,
        });
    }

    // Pairs: sides, names, then trials (originals and swapped repeats) in random order.
    let subject_of: Vec<usize> = pairs.iter().map(|p| p.subject).collect();
    let sides = assign_sides(&subject_of, &mut rng);
    let files: Vec<(String, String)> = pairs
        .iter()
        .map(|_| {
            let a = names.next(&mut rng, "img", "png");
            let b = names.next(&mut rng, "img", "png");
            (a, b)
        })
        .collect();
    let mut repeated: Vec<usize> = (0..pairs.len()).collect();
    repeated.shuffle(&mut rng);
    repeated.truncate(repeats);
    // (pair index, left adapter, is a repeat)
    let mut slots: Vec<(usize, Which, bool)> = (0..pairs.len())
        .map(|i| (i, sides[i], false))
        .chain(repeated.iter().map(|&i| (i, sides[i].other(), true)))
        .collect();
    slots.shuffle(&mut rng);
    let width = slots.len().to_string().len().max(3);
    let id_of = |k: usize| format!("t{:0width$}", k + 1);
    let pair_width = pairs.len().to_string().len().max(3);
    let original_trial: BTreeMap<usize, String> = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.2)
        .map(|(k, s)| (s.0, id_of(k)))
        .collect();
    let trials: Vec<KeyTrial> = slots
        .iter()
        .enumerate()
        .map(|(k, &(i, left, repeat))| {
            let p = &pairs[i];
            let (fa, fb) = &files[i];
            let (left_file, right_file) = match left {
                Which::A => (fa.clone(), fb.clone()),
                Which::B => (fb.clone(), fa.clone()),
            };
            KeyTrial {
                id: id_of(k),
                pair: format!("p{:0pair_width$}", i + 1),
                subject: p.subject,
                prompt_id: p.prompt_id.clone(),
                prompt: p.prompt.clone(),
                seed: p.seed,
                left,
                left_file,
                right_file,
                a_source: p.a_source.clone(),
                b_source: p.b_source.clone(),
                repeat_of: repeat.then(|| original_trial[&i].clone()),
            }
        })
        .collect();

    let page = PageStudy {
        study_id: study_id.clone(),
        subjects: key_subjects
            .iter()
            .map(|s| PageSubject {
                photos: s.photos.clone(),
            })
            .collect(),
        trials: trials
            .iter()
            .zip(&slots)
            .map(|(t, &(i, _, _))| PageTrial {
                id: t.id.clone(),
                subject: t.subject,
                prompt: pairs[i].display_prompt.clone(),
                left: t.left_file.clone(),
                right: t.right_file.clone(),
            })
            .collect(),
    };
    let key = Key {
        format: KEY_FORMAT.to_string(),
        format_version: FORMAT_VERSION,
        study_id,
        seed,
        a,
        b,
        subjects: key_subjects,
        trials,
    };

    // A key replaced with --force is the only record of its study's sides: it is kept under
    // its study id before anything is replaced, so that votes already given for that study
    // still tally, even when this run is stopped between writing the key and the folder.
    let json = serde_json::to_vec_pretty(&key).map_err(|e| Error::msg(e.to_string()))?;
    if let Some(kept) = keep_replaced_key(&key_path, &key.study_id, &json)? {
        notes.push(format!(
            "the replaced study's key is kept as {}: votes given for that study tally with it",
            kept.display()
        ));
    }

    // Everything is written into a hidden sibling folder and renamed into place at the end,
    // so an interrupted run leaves no half study.
    let tmp = fsutil::temp_path(&out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let result = (|| {
        write_images(&tmp, &pairs, &files)?;
        write_photos(&tmp, &photo_jobs)?;
        fsutil::write_bytes(&tmp.join("index.html"), page::render(&page)?.as_bytes())?;
        same_mtime(&tmp)?;
        fsutil::write_private(&key_path, &json)?;
        replace_dir(&tmp, &out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    // A full disk is reported against the study folder, not the hidden one it was built in.
    result.map_err(|e| match e {
        Error::NoSpace {
            reason,
            needed,
            free,
            path,
        } if path.starts_with(&tmp) => Error::NoSpace {
            path: out.clone(),
            reason,
            needed,
            free,
        },
        e => e,
    })?;
    Ok(MadeStudy {
        dir: out,
        key_path,
        key,
        notes,
    })
}

/// Refuse to overwrite a study (or its key, which may be the only record of a running study)
/// unless asked to.
fn check_free(out: &Path, key: &Path, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    if out.is_dir() {
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        if entries.next().is_some() {
            return Err(Error::OutputExists {
                path: out.to_path_buf(),
                hint: "--out names a folder that is not empty; pass --force to replace the \
                       study there (its key is kept), or choose another --out"
                    .into(),
            });
        }
    } else if out.exists() {
        return Err(Error::OutputExists {
            path: out.to_path_buf(),
            hint: "--out names a file, not a folder; choose another --out".into(),
        });
    }
    if key.exists() {
        return Err(Error::OutputExists {
            path: key.to_path_buf(),
            hint: "it is a study key, the only record of which side was which; pass \
                   --force to replace it (it is then kept beside the new one), or choose \
                   another --out"
                .into(),
        });
    }
    Ok(())
}

/// Copy the key at `key_path`, if there is one and it is not `new` itself, to
/// `NAME.key.<its study id>.json` beside it (atomically); the path of the copy. A key that
/// cannot be read as one is kept as it is, under `NAME.key.replaced.json`.
fn keep_replaced_key(key_path: &Path, new_id: &str, new: &[u8]) -> Result<Option<PathBuf>> {
    let bytes = match std::fs::read(key_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(key_path, e)),
    };
    if bytes == new {
        return Ok(None);
    }
    let id = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("study_id")?.as_str().map(str::to_string))
        // Only file-name-safe ids name a file; anything else is kept under a fixed name.
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .unwrap_or_else(|| "replaced".to_string());
    // The same id made again (the same --seed) over other renders: still another study.
    let id = if id == new_id {
        format!("{id}-replaced")
    } else {
        id
    };
    let kept = super::beside_key(key_path, &format!(".key.{id}.json"));
    fsutil::write_private(&kept, &bytes)?;
    Ok(Some(kept))
}

/// Move the finished folder into place, replacing an old one.
fn replace_dir(tmp: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        let old = out.with_file_name(format!(
            ".{}.old-{}",
            out.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        std::fs::rename(tmp, out).map_err(|e| Error::io(out, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))
    } else {
        std::fs::rename(tmp, out).map_err(|e| Error::io(out, e))
    }
}

fn decode(path: &Path) -> Result<RgbImage> {
    Ok(crate::image_file::open(path)?.to_rgb8())
}

/// The PNG chunk that pads a file to a given length: ancillary (viewers skip it), private,
/// safe to copy, and all zeros.
pub const PAD_CHUNK: &[u8; 4] = b"paDd";

/// Insert a padding chunk of `len` zero bytes before IEND.
pub fn pad_png(png: &mut Vec<u8>, len: usize) {
    const IEND_LEN: usize = 12;
    let at = png.len() - IEND_LEN;
    let mut chunk = Vec::with_capacity(len + 12);
    chunk.extend_from_slice(&(len as u32).to_be_bytes());
    chunk.extend_from_slice(PAD_CHUNK);
    chunk.resize(8 + len, 0);
    let crc = crc32fast::hash(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());
    png.splice(at..at, chunk);
}

/// Both images of a pair, re-encoded and padded to one length: every file gets a padding
/// chunk (an empty one for the larger), so all have the same structure.
pub fn blind_pair(a: &RgbImage, b: &RgbImage) -> Result<(Vec<u8>, Vec<u8>)> {
    // Fresh files of the pixels only (no text chunks): nothing of the source files survives.
    let mut pa = png_bytes(a, &[])?;
    let mut pb = png_bytes(b, &[])?;
    let target = pa.len().max(pb.len());
    let (la, lb) = (target - pa.len(), target - pb.len());
    pad_png(&mut pa, la);
    pad_png(&mut pb, lb);
    Ok((pa, pb))
}

/// Decode, blind and write every pair, on all cores. Pairs are written in the order of their
/// random names, so write order (and inode order) says nothing about the method.
fn write_images(dir: &Path, pairs: &[Pair], files: &[(String, String)]) -> Result<()> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by(|&i, &j| {
        let key = |k: usize| files[k].0.clone().min(files[k].1.clone());
        key(i).cmp(&key(j))
    });
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= order.len() || failure.lock().expect("lock").is_some() {
                    return;
                }
                let i = order[k];
                let run = || -> Result<()> {
                    let a = decode(&pairs[i].a_source)?;
                    let b = decode(&pairs[i].b_source)?;
                    if a.dimensions() != b.dimensions() {
                        return Err(Error::msg(format!(
                            "{} and {}: the images differ in size",
                            pairs[i].a_source.display(),
                            pairs[i].b_source.display()
                        )));
                    }
                    let (pa, pb) = blind_pair(&a, &b)?;
                    let (fa, fb) = &files[i];
                    let mut out = [(fa, pa), (fb, pb)];
                    out.sort_by(|x, y| x.0.cmp(y.0));
                    for (name, bytes) in out {
                        fsutil::write_bytes(&dir.join(name), &bytes)?;
                    }
                    Ok(())
                };
                if let Err(e) = run() {
                    failure.lock().expect("lock").get_or_insert(e);
                }
            });
        }
    });
    match failure.into_inner().expect("lock") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The longest side of a reference photo in the rater folder: enough to judge the subject,
/// small enough for a page of thumbnails.
const PHOTO_MAX_SIDE: u32 = 768;

/// Reference photos: EXIF orientation applied, scaled down, re-encoded without metadata.
fn write_photos(dir: &Path, jobs: &[(PathBuf, String)]) -> Result<()> {
    let mut jobs: Vec<&(PathBuf, String)> = jobs.iter().collect();
    jobs.sort_by(|x, y| x.1.cmp(&y.1));
    for (src, name) in jobs {
        let mut img = crate::train::dataset::load_photo(src)?.image;
        let (w, h) = img.dimensions();
        if w.max(h) > PHOTO_MAX_SIDE {
            let s = PHOTO_MAX_SIDE as f64 / w.max(h) as f64;
            let (nw, nh) = (
                ((w as f64 * s).round() as u32).max(1),
                ((h as f64 * s).round() as u32).max(1),
            );
            img = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Lanczos3);
        }
        let mut buf = Vec::new();
        JpegEncoder::new_with_quality(&mut buf, 90)
            .encode_image(&img)
            .map_err(|e| Error::msg(format!("{}: encoding a JPEG: {e}", src.display())))?;
        fsutil::write_bytes(&dir.join(name), &buf)?;
    }
    Ok(())
}

/// Give every file the same modification time, so times do not tell the write order.
fn same_mtime(dir: &Path) -> Result<()> {
    let now = std::time::SystemTime::now();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let path = entry.map_err(|e| Error::io(&d, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(now))
                    .map_err(|e| Error::io(&path, e))?;
            }
        }
    }
    Ok(())
}
